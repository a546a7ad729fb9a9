"""The data owner's side: the only package that generates or holds a secret key.

`keys` (key generation, encryption, decryption), `policy` (what the client accepts from an offer), `client`
(the protocol: tokens out, logits and the client's half of each refresh in). The server side never imports it.
"""
