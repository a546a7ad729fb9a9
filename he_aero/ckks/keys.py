"""Keys and contexts on `tenseal.sealapi`: the client holds the secret key, the server a public context.

`ClientKeys` generates the secret, public and relinearisation keys and exactly the rotation keys a plan lists
(the default Galois set is ~33 MB at N=8192, ~400 MB at 16384, ~5 GB at 32768). `ClientKeys.public_context()`
serialises the public material through bytes and returns a `ServerContext` rebuilt from them, so nothing
secret can leak into the server object by reference. The server context cannot decrypt and cannot create keys.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import tenseal.sealapi as seal

from he_aero.ckks.params import CkksParams
from he_aero.errors import HeAeroError


def galois_element(step: int, poly_modulus_degree: int) -> int:
    """SEAL's Galois element for a left rotation by `step` slots (negative: right): 3^(step mod slots) mod 2N.

    Passing elements (not steps) avoids TenSEAL's binding pitfall where a list of non-negative ints binds to
    the element overload."""
    slots = poly_modulus_degree // 2
    return pow(3, step % slots, 2 * poly_modulus_degree)


def _seal_context(params: CkksParams) -> seal.SEALContext:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(params.poly_modulus_degree)
    parms.set_coeff_modulus(
        seal.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes))
    )
    level = seal.SEC_LEVEL_TYPE.TC128 if params.is_secure else seal.SEC_LEVEL_TYPE.NONE
    ctx = seal.SEALContext(parms, True, level)
    if not ctx.parameters_set():
        raise HeAeroError(
            f"SEAL refused the parameters {params.describe()}: {ctx.parameters_error_message()}"
        )
    return ctx


def chain_tables(ctx: seal.SEALContext, scale_bits: int) -> tuple[dict, dict, dict]:
    """(parms_id, dropped prime, exact scale) per level.

    Scales: S_{l-1} = S_l^2 / q_l keeps every ct x ct product on the table, but iterated forward from 2^s it
    doubles any relative drift per level (22 levels at N=32768 blow up). So S_0 = 2^s is fixed first and
    S_l = sqrt(S_{l-1} q_l) is run upwards (a contraction), then the table is recomputed downwards from that
    S_top with SEAL's own double arithmetic (S * S / q), so products land bit-for-bit on it."""
    parms_ids, primes = {}, {}
    data = ctx.first_context_data()
    while data is not None:
        lvl = data.chain_index()
        parms_ids[lvl] = data.parms_id()
        primes[lvl] = data.parms().coeff_modulus()[-1].value()
        data = data.next_context_data()
    top = max(parms_ids)
    s = float(2**scale_bits)
    for lvl in range(1, top + 1):
        s = (s * primes[lvl]) ** 0.5
    scales = {top: s}
    for lvl in range(top, 0, -1):
        scales[lvl - 1] = scales[lvl] * scales[lvl] / primes[lvl]
    return parms_ids, primes, scales


def _to_bytes(obj) -> bytes:
    """Serialise a SEAL object (the binding only saves to files)."""
    fd, path = tempfile.mkstemp(prefix="he_aero_")
    os.close(fd)
    try:
        obj.save(path)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)


def _from_bytes(cls, ctx: seal.SEALContext, data: bytes):
    fd, path = tempfile.mkstemp(prefix="he_aero_")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        obj = cls()
        obj.load(ctx, path)
        return obj
    finally:
        os.unlink(path)


def ciphertext_bytes(ct: seal.Ciphertext) -> int:
    """Serialised size of one ciphertext (what a refresh round trip sends)."""
    return len(_to_bytes(ct))


@dataclass
class PublicBundle:
    """What the client sends the server once: public, relinearisation and rotation keys, as bytes."""

    params: CkksParams
    public_key: bytes
    relin_keys: bytes
    galois_keys: bytes
    rotation_steps: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return len(self.public_key) + len(self.relin_keys) + len(self.galois_keys)


@dataclass
class ServerContext:
    """The server's view: SEAL context, public key (to encrypt masks and constants), relinearisation and
    rotation keys. It holds no secret key, so it cannot decrypt or create keys."""

    params: CkksParams
    seal_context: seal.SEALContext
    public_key: seal.PublicKey
    relin_keys: seal.RelinKeys
    galois_keys: seal.GaloisKeys
    rotation_steps: tuple[int, ...]
    key_bytes: int = 0

    @classmethod
    def from_bundle(cls, bundle: PublicBundle) -> ServerContext:
        ctx = _seal_context(bundle.params)
        return cls(
            params=bundle.params,
            seal_context=ctx,
            public_key=_from_bytes(seal.PublicKey, ctx, bundle.public_key),
            relin_keys=_from_bytes(seal.RelinKeys, ctx, bundle.relin_keys),
            galois_keys=_from_bytes(seal.GaloisKeys, ctx, bundle.galois_keys)
            if bundle.galois_keys
            else seal.GaloisKeys(),  # SEAL cannot load an empty key set
            rotation_steps=bundle.rotation_steps,
            key_bytes=bundle.nbytes,
        )

    def has_rotation(self, step: int) -> bool:
        slots = self.params.slots
        return step % slots == 0 or self.galois_keys.has_key(
            galois_element(step, self.params.poly_modulus_degree)
        )

    def decrypt(self, *_args, **_kwargs):
        """Always refused: the server context is public."""
        raise HeAeroError("the server context is public: it holds no secret key and cannot decrypt")

    def create_rotation_keys(self, *_args, **_kwargs):
        """Always refused: rotation keys need the secret key (the client makes them from the plan's list)."""
        raise HeAeroError("the server context is public: rotation keys can only be created by the client")


@dataclass
class ClientKeys:
    """Client side: the only object that ever holds a secret key. Encrypts at the top level with the chain's
    exact top scale (`chain_tables`), decrypts, and makes rotation keys for the steps a plan lists."""

    params: CkksParams
    rotation_steps: tuple[int, ...] = ()
    seal_context: seal.SEALContext = field(init=False, repr=False)

    def __post_init__(self):
        self.seal_context = _seal_context(self.params)
        keygen = seal.KeyGenerator(self.seal_context)
        self._secret_key = keygen.secret_key()
        self.public_key = seal.PublicKey()
        keygen.create_public_key(self.public_key)
        self.relin_keys = seal.RelinKeys()
        keygen.create_relin_keys(self.relin_keys)
        slots = self.params.slots
        steps = sorted({int(s) % slots for s in self.rotation_steps} - {0})
        self.rotation_steps = tuple(steps)
        self.galois_keys = seal.GaloisKeys()
        if steps:
            elements = [galois_element(s, self.params.poly_modulus_degree) for s in steps]
            keygen.create_galois_keys(elements, self.galois_keys)
        self._encoder = seal.CKKSEncoder(self.seal_context)
        self._encryptor = seal.Encryptor(self.seal_context, self.public_key)
        self._decryptor = seal.Decryptor(self.seal_context, self._secret_key)

        self.scale = chain_tables(self.seal_context, self.params.scale_bits)[2][self.params.levels]

    def encrypt(self, values) -> seal.Ciphertext:
        """Encrypt a slot vector (zero-padded to N/2) at the top level and its exact scale (~2^scale_bits)."""
        v = np.zeros(self.params.slots)
        values = np.asarray(values, dtype=float).ravel()
        if values.size > v.size:
            raise HeAeroError(f"encrypt: {values.size} values do not fit {v.size} slots")
        v[: values.size] = values
        pt = seal.Plaintext()
        self._encoder.encode(v.tolist(), self.seal_context.first_parms_id(), self.scale, pt)
        ct = seal.Ciphertext()
        self._encryptor.encrypt(pt, ct)
        return ct

    def decrypt(self, ct: seal.Ciphertext) -> np.ndarray:
        """Decrypt and decode all N/2 slots (SEAL divides by the ciphertext's exact scale)."""
        pt = seal.Plaintext()
        self._decryptor.decrypt(ct, pt)
        return np.asarray(self._encoder.decode_double(pt))

    def public_bundle(self) -> PublicBundle:
        return PublicBundle(
            params=self.params,
            public_key=_to_bytes(self.public_key),
            relin_keys=_to_bytes(self.relin_keys),
            galois_keys=_to_bytes(self.galois_keys) if self.rotation_steps else b"",
            rotation_steps=self.rotation_steps,
        )

    def public_context(self) -> ServerContext:
        """The server's context, rebuilt from serialised public material only."""
        return ServerContext.from_bundle(self.public_bundle())
