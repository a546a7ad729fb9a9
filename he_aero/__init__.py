"""he-aero: private inference of a Softmax-only decoder (AERO) under CKKS homomorphic encryption.

The package is split by trust boundary: `he_aero.client` is the only module that ever holds a secret key;
`he_aero.server` runs the encrypted decoder on a public context. `approx` (polynomial fitting) and `models`
(the plaintext reference model) never import `he_aero`.
"""

__version__ = "0.1.0"
