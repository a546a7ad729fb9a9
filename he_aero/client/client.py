"""The client role: the ONLY place a secret key exists.

Lifecycle (each stage refuses to run before the one it needs, naming it):
    Client(offer bytes, policy) -> keygen() -> SETUP bytes -> encrypt_tokens() -> TOKENS bytes
    -> [handle_refresh(REFRESH_REQUEST bytes) -> REFRESH_RESPONSE bytes]* -> decrypt_logits(LOGITS bytes)

The client never sees the weights: it learns the runtime's public description from the server's OFFER, makes
exactly the rotation keys listed there, and sends tokens as encrypted one-hot rows (SLOT-LAYOUT "features",
he_aero/ckks/packing.py, with vocab features: slot j * block + t of ciphertext c is 1 iff token t is byte
c * F + j). Decrypted logits are checked before anyone uses them: non-finite values, padding slots that
should be ~0 but are not (a wrong key, a broken ciphertext), or logits outside the calibrated range (the
activations left the domain the polynomials were fitted on) flag the token instead of printing garbage.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np

from he_aero.ckks.backend import load_ciphertext, to_bytes
from he_aero.ckks.packing import FeatureLayout, pack, rows_count, rows_pack, rows_unpack, unpack
from he_aero.ckks.refresh import refresh_level
from he_aero.client.keys import ClientKeys
from he_aero.client.policy import ClientPolicy
from he_aero.errors import HeAeroError
from he_aero.protocol import Kind, Message, RuntimeOffer, meta_field, parse_frame, to_frame

PADDING_TOLERANCE = 1e-2
"""Slots the server leaves exactly 0 decrypt to CKKS noise (~1e-6 here); anything above this means the
ciphertext was not made under this key or is broken (a foreign key decrypts to values ~1e9)."""


@dataclass(frozen=True)
class DecryptedLogits:
    """Logits of `n_tokens` positions starting at `position`, and why they are implausible (None: fine)."""

    logits: np.ndarray  # (n_tokens, vocab)
    position: int
    flag: str | None


class Client:
    """The data owner: keys, encryption of tokens, decryption of logits, the client half of refreshes."""

    def __init__(self, offer: bytes, policy: ClientPolicy | None = None):
        self.offer = RuntimeOffer.from_message(parse_frame(offer, Kind.OFFER))
        self.policy = policy or ClientPolicy()
        self.params = self.policy.accept(self.offer)  # refuses before any key exists
        self.hiding = self.policy.offer_hiding(self.offer, self.params)
        self.refresh_level = refresh_level(self.params, self.hiding)
        self._keys: ClientKeys | None = None
        self.session: bytes | None = None
        self.decryptions: Counter = Counter()  # purpose ("logits", "refresh") -> ciphertexts decrypted

    # --- stages -------------------------------------------------------------------------------------------
    def keygen(self) -> bytes:
        """Generate the session's keys (exactly the offered rotation steps); return the SETUP message."""
        self._keys = ClientKeys(self.params, self.offer.rotation_steps)
        self.session = os.urandom(16)  # binds every later ciphertext to these keys
        bundle = self._keys.public_keys()
        meta = {
            "rotation_steps": list(bundle.rotation_steps),
            "params": list(self.params.coeff_mod_bit_sizes),
        }
        parts = (bundle.public_key, bundle.relin_keys, bundle.galois_keys)
        return to_frame(Message(Kind.SETUP, self.session, meta, parts))

    def _require_keys(self, stage: str) -> ClientKeys:
        if self._keys is None:
            raise HeAeroError(f"client: {stage} needs keys; run keygen() first")
        return self._keys

    def token_layout(self, n_tokens: int) -> FeatureLayout:
        return FeatureLayout(self.params.slots, self.offer.block, self.offer.vocab, n_tokens)

    def encrypt_tokens(self, tokens, position: int) -> bytes:
        """Encrypt tokens (ints in [0, vocab)) occupying positions position .. position + n - 1."""
        keys = self._require_keys("encrypt_tokens")
        tokens = np.asarray(list(tokens), dtype=np.int64)
        n = tokens.size
        if n == 0:
            raise HeAeroError("client: nothing to encrypt (empty token list)")
        if tokens.min() < 0 or tokens.max() >= self.offer.vocab:
            raise HeAeroError(f"client: tokens must lie in [0, {self.offer.vocab})")
        if position < 0 or position + n > self.offer.context:
            raise HeAeroError(
                f"client: positions {position}..{position + n - 1} exceed the context window "
                f"of {self.offer.context}"
            )
        onehot = np.zeros((n, self.offer.vocab))
        onehot[np.arange(n), tokens] = 1.0
        rows = self._rows(n, position)
        if rows:  # one decode token: SLOT-LAYOUT "rows" (protocol.rows_pack)
            vectors = rows_pack(onehot[0], self.params.slots, self.offer.block)
        else:  # SLOT-LAYOUT "features" with vocab features
            vectors = pack(onehot, self.token_layout(n))
        blobs = tuple(keys.encrypt_upload(v) for v in vectors)
        meta = {"position": int(position), "n_tokens": int(n), "layout": "rows" if rows else "features"}
        return to_frame(Message(Kind.TOKENS, self.session, meta, blobs))

    def _rows(self, n: int, position: int) -> bool:
        """Decode steps (one token after the prompt) use the "rows" layout when the server offers it."""
        return self.offer.decode_rows and n == 1 and position > 0

    def decrypt_logits(self, data: bytes) -> DecryptedLogits:
        """Decrypt a LOGITS message and check the values are plausible (see the module docstring)."""
        keys = self._require_keys("decrypt_logits")
        msg = parse_frame(data, Kind.LOGITS, self.session)
        n, position = meta_field(msg, "n_tokens"), meta_field(msg, "position")
        vocab, block = self.offer.vocab, self.offer.block
        rows = self._rows(n, position)
        if msg.meta.get("layout") != ("rows" if rows else "features"):
            raise HeAeroError(
                f"client: LOGITS message has layout {msg.meta.get('layout')!r}, not the expected one"
            )
        layout = FeatureLayout(self.params.slots, block, vocab, n)
        expected = rows_count(vocab, block) if rows else layout.n_ct
        if len(msg.parts) != expected:
            raise HeAeroError(f"client: LOGITS message has {len(msg.parts)} ciphertexts, expected {expected}")
        slots = [keys.decrypt_bytes(b, f"client: logits ciphertext {i}") for i, b in enumerate(msg.parts)]
        self.decryptions["logits"] += len(slots)
        if rows:  # chunk c of the logits in row t of block 0 of ciphertext c, every other slot 0
            logits = rows_unpack(slots, vocab, block)[None, :]
            real = [np.arange(self.params.slots) < min(block, vocab - c * block) for c in range(expected)]
        else:
            logits = unpack(slots, layout)
            real = pack(np.ones((n, vocab)), layout)
        return DecryptedLogits(logits, position, self._plausibility(slots, logits, real))

    def _plausibility(self, slots, logits: np.ndarray, real) -> str | None:
        """Why the logits are implausible (None if they are not); `real`: per ciphertext, the slots that
        hold logits (every other slot must decrypt to ~0)."""
        if not np.all(np.isfinite(logits)):
            return "non-finite logits"
        pad = max(
            float(np.abs(s[~np.asarray(m, bool)]).max(initial=0.0)) for s, m in zip(slots, real, strict=True)
        )
        if pad > PADDING_TOLERANCE:
            return f"padding slots decrypt to {pad:.3g}, not ~0: a foreign key or a broken ciphertext"
        lo, hi = self.offer.logit_domain
        if logits.min() < lo or logits.max() > hi:
            return (
                f"logits in [{logits.min():.3g}, {logits.max():.3g}] leave the calibrated range "
                f"[{lo:.3g}, {hi:.3g}]: "
                "activations left the domain the approximations cover"
            )
        return None

    def handle_refresh(self, data: bytes) -> bytes:
        """The client's half of a refresh round: decrypt the masked values, re-encrypt at the top level.

        It sees V = M + r only: every coefficient of r uniform in [-2^k, 2^k), k the offer's mask_bits
        (he_aero/ckks/hiding.py; docs/security.md)."""
        self._require_keys("handle_refresh")
        msg = parse_frame(data, Kind.REFRESH_REQUEST, self.session)
        fresh = self.refresh_values(list(msg.parts))
        return to_frame(Message(Kind.REFRESH_RESPONSE, self.session, {"n": len(fresh)}, tuple(fresh)))

    def refresh_values(self, blobs: list[bytes]) -> list[bytes]:
        """`refresh_reply` with this session's keys, counted."""
        keys = self._require_keys("refresh")
        done, cap = self.decryptions["refresh"], self.offer.max_refresh_polynomials
        if done + len(blobs) > cap:
            raise HeAeroError(
                f"client: the server asks to refresh {len(blobs)} more polynomials after {done}, past the "
                f"offered cap of {cap}: refused"
            )
        fresh = refresh_reply(keys, blobs, self.refresh_level, self.offer.mask_bits)
        self.decryptions["refresh"] += len(blobs)
        return fresh


def refresh_reply(
    keys: ClientKeys, blobs: list[bytes], level: int | None = None, mask_bits: int | None = None
) -> list[bytes]:
    """The client's half of a refresh round on bare ciphertexts (the `Refresher` callback's shape;
    `Client.handle_refresh` wraps it in frames): each masked ciphertext decrypted to its exact integer
    polynomial and re-encrypted at the top level (`ClientKeys.reencrypt_exact`).

    HeAeroError when a ciphertext does not load under these keys, is not a two-polynomial ciphertext at the
    refresh `level` (when given), or is not flooded with a 2^mask_bits mask (when given)."""
    out = []
    for i, blob in enumerate(blobs):
        what = f"client: refresh ciphertext {i}"
        ct = load_ciphertext(keys.seal_context, blob, what)
        if ct.size() != 2 or (level is not None and ct.parms_id() != keys.parms_ids[level]):
            raise HeAeroError(f"{what} is not a two-polynomial ciphertext at the refresh level {level}")
        if not (math.isfinite(ct.scale) and 0.5 < ct.scale / keys.scale < 2.0):
            raise HeAeroError(f"{what} has scale {ct.scale!r}, not within 2x of the chain's {keys.scale:.6g}")
        out.append(to_bytes(keys.reencrypt_exact(ct, mask_bits)))
    return out
