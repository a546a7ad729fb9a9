"""The client's keys: the only code that generates or holds a CKKS secret key (SEAL backend, secret half).

`ClientKeys` generates the secret, public and relinearisation keys and exactly the rotation keys an offer
lists (the default Galois set would be ~33 MB at N=8192, ~400 MB at 16384, ~5 GB at 32768), encrypts at the
top level with the chain's exact top scale (`backend.chain_tables`) and decrypts. `public_keys()` returns
the public material as bytes (`backend.PublicKeys`): that, and nothing else, goes to the server.

The server side (he_aero/server/, he_aero/ckks/) never imports this package; tests/he_aero/test_imports.py
loads the server in a fresh interpreter and checks.
"""

from __future__ import annotations

import numpy as np
import tenseal.sealapi as seal

from he_aero.ckks import rns
from he_aero.ckks.backend import (
    PublicKeys,
    add_polynomial,
    chain_tables,
    conjugation_element,
    galois_element,
    load_ciphertext,
    plaintext_poly,
    seal_context,
    to_bytes,
)
from he_aero.ckks.params import CkksParams
from he_aero.errors import HeAeroError

MAX_ABS_VALUE = 2.0**30
"""Largest |value| encrypted: the encoder's FFT runs in doubles, so a value v costs every slot ~v 2^-52 of
precision (measured: [1e30, 1.0, 0.5] decrypts its neighbours as -1.5e14 and -6.4e13); 2^30 keeps 2^-22."""


class ClientKeys:
    """A fresh key set for `params` with rotation keys for `rotation_steps` (slot steps; 0 and duplicates
    are dropped, negative steps taken mod slots).

    Raises HeAeroError when SEAL refuses the parameters."""

    def __init__(self, params: CkksParams, rotation_steps=()):
        self.params = params
        self.seal_context = seal_context(params)
        keygen = seal.KeyGenerator(self.seal_context)
        self._secret_key = keygen.secret_key()
        self._public_key = seal.PublicKey()
        keygen.create_public_key(self._public_key)
        self._relin_keys = seal.RelinKeys()
        keygen.create_relin_keys(self._relin_keys)
        slots = params.slots
        self.rotation_steps = tuple(sorted({int(s) % slots for s in rotation_steps} - {0}))
        self._galois_keys = seal.GaloisKeys()
        # every key set has the conjugation key: the server projects each client ciphertext to its real part
        elements = [galois_element(s, params.poly_modulus_degree) for s in self.rotation_steps]
        elements.append(conjugation_element(params.poly_modulus_degree))
        keygen.create_galois_keys(elements, self._galois_keys)
        self._encoder = seal.CKKSEncoder(self.seal_context)
        self._encryptor = seal.Encryptor(self.seal_context, self._public_key)
        self._decryptor = seal.Decryptor(self.seal_context, self._secret_key)
        self._symmetric = seal.Encryptor(self.seal_context, self._secret_key)
        self._evaluator = seal.Evaluator(self.seal_context)  # NTT transforms of the exact refresh
        self.parms_ids, _, scales = chain_tables(self.seal_context, params)
        self.scale = scales[params.levels]

    def encrypt(self, values, scale: float | None = None) -> seal.Ciphertext:
        """Encrypt a slot vector (zero-padded to N/2; complex values allowed) at the top level and its exact
        scale (~2^scale_bits), or at `scale`."""
        values = np.asarray(values).ravel()
        if values.size > self.params.slots:
            raise HeAeroError(f"encrypt: {values.size} values do not fit {self.params.slots} slots")
        peak = float(np.abs(values).max(initial=0.0))
        if not np.isfinite(peak) or peak > MAX_ABS_VALUE:
            raise HeAeroError(
                f"encrypt: a value of magnitude {peak:.3g} exceeds {MAX_ABS_VALUE:.3g}: "
                "the encoding (a double precision FFT) would corrupt every other slot"
            )
        v = np.zeros(self.params.slots, dtype=complex if np.iscomplexobj(values) else float)
        v[: values.size] = values
        pt = seal.Plaintext()
        self._encoder.encode(v.tolist(), self.seal_context.first_parms_id(), scale or self.scale, pt)
        ct = seal.Ciphertext()
        self._encryptor.encrypt(pt, ct)
        return ct

    def encrypt_upload(self, values) -> bytes:
        """What the client sends the server (tokens, refresh replies): the values encrypted at the top level
        and its exact scale, serialised."""
        return to_bytes(self.encrypt(values))

    def decrypt(self, ct: seal.Ciphertext, complex_slots: bool = False) -> np.ndarray:
        """Decrypt and decode all N/2 slots (SEAL divides by the ciphertext's exact scale): their real parts,
        or the complex values with `complex_slots`."""
        pt = seal.Plaintext()
        self._decryptor.decrypt(ct, pt)
        if complex_slots:
            return np.asarray(self._encoder.decode_complex(pt))
        return np.asarray(self._encoder.decode_double(pt))

    def decrypt_bytes(self, blob: bytes, what: str = "ciphertext") -> np.ndarray:
        """Load a serialised ciphertext under these keys and decrypt it; HeAeroError names `what`."""
        return self.decrypt(load_ciphertext(self.seal_context, blob, what))

    # --- exact integer polynomials (the flooding refresh, he_aero/ckks/refresh.py) ------------------------
    def decrypt_poly(self, ct: seal.Ciphertext) -> rns.IntPoly:
        """The exact integer polynomial a ciphertext decrypts to (N coefficients), centred modulo the
        ciphertext's modulus (inverse NTT and CRT; no slot decoding, no floating point)."""
        pt = seal.Plaintext()
        self._decryptor.decrypt(ct, pt)
        return plaintext_poly(self.seal_context, self._evaluator, pt, ct)

    def encrypt_poly(self, poly: rns.IntPoly) -> seal.Ciphertext:
        """A fresh top-level encryption of the integer polynomial `poly` at the top scale:
        a secret-key encryption of zero plus the polynomial added exactly to c0."""
        zero = seal.Ciphertext()
        self._symmetric.encrypt_zero_symmetric(zero)  # secret-key encryption: 3 ms instead of 8 (N=8192)
        zero.scale = self.scale
        return add_polynomial(self.seal_context, self._evaluator, zero, poly)

    def reencrypt_exact(self, ct: seal.Ciphertext, mask_bits: int | None = None) -> seal.Ciphertext:
        """The client's half of a flooding refresh: decrypt to the exact polynomial V, convert it from the
        ciphertext's scale to the top scale by the dyadic factor P / 2^60 of `rns.scale_factor` (the server
        removes its mask with the same factor; rounded once, to the nearest integer) and encrypt it afresh
        at the top level.

        With `mask_bits` k, refuse (HeAeroError) a polynomial that was not flooded: an honest mask has some
        coefficient above 2^(k-2) except with probability 4^-N; a smaller V means the server sent its
        activation unmasked, and it is not re-encrypted."""
        poly = self.decrypt_poly(ct)
        if mask_bits is not None:
            peak = poly.max_abs_bits()
            if not peak >= mask_bits - 2:
                raise HeAeroError(
                    f"refresh: the polynomial is not flooded (largest coefficient 2^{peak:.1f}, a "
                    f"2^{mask_bits} mask was promised): refusing to handle an unmasked activation"
                )
        return self.encrypt_poly(poly.scaled(rns.scale_factor(self.scale, ct.scale)))

    def public_keys(self) -> PublicKeys:
        """The public material as bytes: public, relinearisation and rotation keys (no secret key)."""
        return PublicKeys(
            params=self.params,
            public_key=to_bytes(self._public_key),
            relin_keys=to_bytes(self._relin_keys),
            galois_keys=to_bytes(self._galois_keys),
            rotation_steps=self.rotation_steps,
        )
