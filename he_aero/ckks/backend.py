"""The CKKS backend seam: the only server-side module that touches SEAL (`tenseal.sealapi`) types.

Everything above this module (`Evaluator`, kernels, the pipeline, the server) handles SEAL objects as opaque
handles (`Ct.data`) and calls the functions and the `SealOps` methods here. Another CKKS library would be
added as a second module with the same surface (`public_context`, `SealOps`, `to_bytes`, `load_ciphertext`)
plus a client-side key module (`he_aero/client/keys.py` is SEAL's); nothing else would change.

Public half only: a `PublicContext` holds the public, relinearisation and rotation keys the client sent; it
cannot decrypt and cannot make keys (secret-key code lives in `he_aero/client/`, which the server side never
imports: tests/he_aero/test_imports.py).

Serialisation (why memfd): the binding saves and loads SEAL objects only through file paths. Going through
an anonymous in-memory file (`memfd_create`, opened by path under /proc/self/fd) keeps ciphertexts and keys
off the disk and leaves nothing behind when a process is killed (named temporary files did: up to 44 MB per
killed run). Where memfd does not exist, a named temporary file is used and removed on every exit path.
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal
import zstandard

from he_aero.ckks import rns
from he_aero.ckks.params import CkksParams
from he_aero.errors import HeAeroError

LOAD_ERRORS = (RuntimeError, ValueError, TypeError, OSError)
"""What the binding raises on bytes that do not parse as the expected SEAL object."""


# --- contexts and the modulus chain ----------------------------------------------------------------------
def seal_context(params: CkksParams) -> seal.SEALContext:
    """SEAL's context for `params`, checked against the 128-bit table unless the params are test-only."""
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


def seal_max_bits(poly_modulus_degree: int) -> int:
    """SEAL's own 128-bit limit on the total modulus bits (`CoeffModulus.MaxBitCount`, tc128)."""
    return int(seal.CoeffModulus.MaxBitCount(poly_modulus_degree, seal.SEC_LEVEL_TYPE.TC128))


def conjugation_element(poly_modulus_degree: int) -> int:
    """SEAL's Galois element of complex conjugation of the slots: X -> X^(2N - 1)."""
    return 2 * poly_modulus_degree - 1


def galois_element(step: int, poly_modulus_degree: int) -> int:
    """SEAL's Galois element for a left rotation by `step` slots (negative: right): 3^(step mod slots) mod 2N.

    Passing elements (not steps) avoids TenSEAL's binding pitfall where a list of non-negative ints binds to
    the element overload."""
    slots = poly_modulus_degree // 2
    return pow(3, step % slots, 2 * poly_modulus_degree)


def chain_tables(ctx: seal.SEALContext, params: CkksParams) -> tuple[dict, dict, dict]:
    """(parms_id, dropped prime, exact scale) per level of `params`' chain under `ctx`.

    Scales: S_{l-1} = S_l^2 / q_l keeps every ct x ct product on the table, but iterated forward from 2^s it
    doubles any relative drift per level (22 levels at N=32768 blow up). So S_base = 2^s is fixed first at the
    lowest level computed on (`CkksParams.base_level`) and S_l = sqrt(S_{l-1} q_l) is run upwards (a
    contraction), then the table is recomputed downwards from that S_top with SEAL's own double arithmetic
    (S * S / q), so products land bit-for-bit on it. Levels below the base get the same recurrence; no
    product lands there."""
    parms_ids, primes = {}, {}
    data = ctx.first_context_data()
    while data is not None:
        lvl = data.chain_index()
        parms_ids[lvl] = data.parms_id()
        primes[lvl] = data.parms().coeff_modulus()[-1].value()
        data = data.next_context_data()
    top = max(parms_ids)
    s = float(2**params.scale_bits)
    for lvl in range(params.base_level + 1, top + 1):
        s = (s * primes[lvl]) ** 0.5
    scales = {top: s}
    for lvl in range(top, 0, -1):
        scales[lvl - 1] = scales[lvl] * scales[lvl] / primes[lvl]
    return parms_ids, primes, scales


# --- bytes ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _scratch() -> Iterator[tuple[int, str]]:
    """(fd, path) of an in-memory file (see the module docstring), closed and gone on exit."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("he_aero", os.MFD_CLOEXEC)
        try:
            yield fd, f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="he_aero_")
    try:
        yield fd, path
    finally:
        os.close(fd)
        os.unlink(path)


def to_bytes(obj) -> bytes:
    """Serialise a SEAL object (ciphertext, plaintext or key) to bytes (SEAL's compressed format)."""
    with _scratch() as (fd, path):
        obj.save(path)
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)


def from_bytes(cls, ctx: seal.SEALContext, data: bytes):
    """Load a SEAL object of type `cls` under `ctx`; the binding's errors pass through (see LOAD_ERRORS)."""
    with _scratch() as (fd, path):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        obj = cls()
        obj.load(ctx, path)
        return obj


# --- RNS words (the flooding refresh works on the integer polynomials) ------------------------------------
# SEAL's serialised layout (seal/serialization.h, ciphertext.cpp, plaintext.cpp, dynarray.h), read and written
# here so that numpy sees the words without a per-word binding call (`DynArray.at` costs ~0.6 us a word):
#   header (16 B): magic 0xA15E, header size 16, version major, minor, compression mode, reserved, total size
#   Ciphertext: parms_id (4 x u64), is_ntt_form (u8), size, N, coeff_modulus_size (u64 each), scale (f64),
#     correction factor (u64), then a DynArray: its own header, a word count (u64) and the words, stored
#     polynomial by polynomial, prime by prime: shape (size, coeff_modulus_size, N)
#   Plaintext: parms_id (4 x u64), coeff_count (u64), scale (f64), then the DynArray (shape (primes, N))
_HEADER = struct.Struct("<HBBBBHQ")
_MAGIC, _COMPR_NONE, _COMPR_ZSTD = 0xA15E, 0, 2
_CT_MEMBERS = struct.Struct("<32sBQQQdQ")


def uncompressed(blob: bytes) -> bytes:
    """The members of a serialised SEAL object with its compression undone (HeAeroError if it is not one)."""
    if len(blob) < _HEADER.size:
        raise HeAeroError("backend: not a SEAL serialisation")
    magic, hsize, _, _, compr, _, size = _HEADER.unpack_from(blob)
    if magic != _MAGIC or hsize != _HEADER.size or size != len(blob):
        raise HeAeroError("backend: not a SEAL serialisation")
    body = blob[hsize:]
    if compr == _COMPR_ZSTD:
        body = zstandard.ZstdDecompressor().decompress(body, max_output_size=1 << 31)
    elif compr != _COMPR_NONE:
        raise HeAeroError(f"backend: SEAL compression mode {compr} is not supported")
    return body


@functools.cache
def _seal_version() -> tuple[int, int]:
    """SEAL's (major, minor) version bytes, as its own serialisation writes them."""
    _, _, major, minor, *_ = _HEADER.unpack_from(to_bytes(seal.Plaintext()))
    return major, minor


def _dynarray_words(body: bytes, offset: int) -> np.ndarray:
    count = struct.unpack_from("<Q", body, offset + _HEADER.size)[0]
    start = offset + _HEADER.size + 8
    return np.frombuffer(body, dtype="<u8", count=count, offset=start).astype(np.uint64)


def ciphertext_words(ct: seal.Ciphertext) -> np.ndarray:
    """(size, primes, N) uint64: the ciphertext's RNS words (NTT form or not, as the ciphertext is)."""
    body = uncompressed(to_bytes(ct))
    _, _, size, n, primes, _, _ = _CT_MEMBERS.unpack_from(body)
    return _dynarray_words(body, _CT_MEMBERS.size).reshape(size, primes, n)


def ciphertext_like(
    ctx: seal.SEALContext, template: seal.Ciphertext, words: np.ndarray, ntt: bool, scale: float
) -> seal.Ciphertext:
    """A ciphertext at `template`'s level with the given (size, primes, N) words, NTT flag and scale (SEAL's
    own loader parses and validates it). With words [m, 0] it is the trivial encryption of m."""
    major, minor = _seal_version()
    parms_id = struct.pack("<4Q", *template.parms_id())
    size, primes, n = words.shape
    if (primes, n) != (template.coeff_modulus_size(), template.poly_modulus_degree()):
        raise HeAeroError(f"backend: words of shape {words.shape} do not fit the template's level")
    payload = np.ascontiguousarray(words, dtype="<u8").tobytes()
    dyn = _HEADER.pack(_MAGIC, _HEADER.size, major, minor, _COMPR_NONE, 0, _HEADER.size + 8 + len(payload))
    members = _CT_MEMBERS.pack(parms_id, int(ntt), size, n, primes, float(scale), 1)
    members += dyn + struct.pack("<Q", words.size) + payload
    head = _HEADER.pack(_MAGIC, _HEADER.size, major, minor, _COMPR_NONE, 0, _HEADER.size + len(members))
    return from_bytes(seal.Ciphertext, ctx, head + members)


def _unit_pair(template, c0: np.ndarray | None, ntt: bool) -> np.ndarray:
    """Words of (c0, 1) at `template`'s level: c1 is the constant polynomial 1, all ones in NTT form and
    (1, 0, ..., 0) per prime in coefficient form. Why a unit c1: SEAL refuses to transform or combine a
    transparent ciphertext (c1 = 0), and a known c1 is removed again exactly (`add_polynomial`)."""
    shape = (template.coeff_modulus_size(), template.poly_modulus_degree())
    c1 = np.ones(shape, np.uint64) if ntt else np.zeros(shape, np.uint64)
    if not ntt:
        c1[:, 0] = 1
    return np.stack([np.zeros(shape, np.uint64) if c0 is None else c0, c1])


_UNITS: dict = {}


def _unit(ctx: seal.SEALContext, template):
    """The ciphertext (0, 1) in NTT form at `template`'s level and scale, built once per (level, scale): a
    refresh needs it twice per ciphertext. (A parms_id is a hash of the whole parameter set, so a unit made
    under one context serves any context with the same parameters.)"""
    key = (tuple(template.parms_id()), template.scale)
    unit = _UNITS.get(key)
    if unit is None:
        if len(_UNITS) > 64:  # a few levels and scales per context; contexts come and go in tests
            _UNITS.clear()
        unit = _UNITS[key] = ciphertext_like(
            ctx, template, _unit_pair(template, None, ntt=True), True, template.scale
        )
    return unit


def add_polynomial(ctx: seal.SEALContext, evaluator, a, poly: rns.IntPoly, subtract: bool = False):
    """a + (m, 0) (or a - (m, 0)): the integer polynomial m added exactly to a's c0, at a's level and scale
    (reduced modulo a's primes; SEAL's NTT moves it into a's NTT form)."""
    words = poly.residues(level_primes(ctx, a.parms_id()))
    t = ciphertext_like(ctx, a, _unit_pair(a, words, ntt=False), ntt=False, scale=a.scale)
    evaluator.transform_to_ntt_inplace(t)  # (NTT(m), NTT(1) = all ones)
    unit = _unit(ctx, a)
    out = seal.Ciphertext()
    try:
        if subtract:
            evaluator.sub(a, t, out)
            evaluator.add_inplace(out, unit)  # c1 back to a's
        else:
            evaluator.add(a, t, out)
            evaluator.sub_inplace(out, unit)
    except RuntimeError as exc:  # c1 cancelled: only a crafted c1 (the negated unit) can do that
        if "transparent" not in str(exc):
            raise
        raise HeAeroError("a ciphertext whose c1 cancels against the constant 1: crafted, refused") from exc
    return out


def plaintext_poly(ctx: seal.SEALContext, evaluator, pt: seal.Plaintext, template) -> rns.IntPoly:
    """The exact integer polynomial of an NTT-form plaintext at `template`'s level: its inverse NTT, then
    the CRT over the level's primes (centred)."""
    carrier = ciphertext_like(ctx, template, _unit_pair(template, None, ntt=True), ntt=True, scale=pt.scale)
    evaluator.add_plain_inplace(carrier, pt)  # (P, 1)
    evaluator.transform_from_ntt_inplace(carrier)
    return rns.IntPoly.from_residues(ciphertext_words(carrier)[0], level_primes(ctx, template.parms_id()))


def level_primes(ctx: seal.SEALContext, parms_id) -> list[int]:
    """The primes q_0..q_l of the level `parms_id` (the ciphertext modulus there)."""
    return [q.value() for q in ctx.get_context_data(parms_id).parms().coeff_modulus()]


# --- the public context -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PublicKeys:
    """What the client sends the server once, as bytes: public, relinearisation and rotation keys."""

    params: CkksParams
    public_key: bytes
    relin_keys: bytes
    galois_keys: bytes
    rotation_steps: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return len(self.public_key) + len(self.relin_keys) + len(self.galois_keys)


@dataclass
class PublicContext:
    """The server's view: SEAL context, public key, relinearisation and rotation keys; no secret key.

    Build with `public_context(keys)` from the client's serialised keys."""

    params: CkksParams
    seal_context: seal.SEALContext
    public_key: seal.PublicKey
    relin_keys: seal.RelinKeys
    galois_keys: seal.GaloisKeys
    rotation_steps: tuple[int, ...]
    key_bytes: int = 0

    def has_rotation(self, step: int) -> bool:
        slots = self.params.slots
        return step % slots == 0 or self.galois_keys.has_key(
            galois_element(step, self.params.poly_modulus_degree)
        )

    def has_conjugation(self) -> bool:
        return self.galois_keys.has_key(conjugation_element(self.params.poly_modulus_degree))


def public_context(keys: PublicKeys) -> PublicContext:
    """Load the client's public key material; HeAeroError when a part does not parse under the params."""
    ctx = seal_context(keys.params)
    try:
        return PublicContext(
            params=keys.params,
            seal_context=ctx,
            public_key=from_bytes(seal.PublicKey, ctx, keys.public_key),
            relin_keys=from_bytes(seal.RelinKeys, ctx, keys.relin_keys),
            galois_keys=from_bytes(seal.GaloisKeys, ctx, keys.galois_keys)
            if keys.galois_keys
            else seal.GaloisKeys(),  # SEAL cannot load an empty key set
            rotation_steps=keys.rotation_steps,
            key_bytes=keys.nbytes,
        )
    except LOAD_ERRORS as exc:
        raise HeAeroError(f"the public keys do not load under {keys.params.describe()} ({exc})") from exc


def load_ciphertext(ctx: seal.SEALContext, blob: bytes, what: str) -> seal.Ciphertext:
    """A serialised ciphertext loaded under `ctx`; HeAeroError naming `what` when it does not parse."""
    try:
        return from_bytes(seal.Ciphertext, ctx, blob)
    except LOAD_ERRORS as exc:
        raise HeAeroError(f"{what} does not load under this session's parameters ({exc})") from exc


def is_fresh(ct: seal.Ciphertext, parms_id, scale: float) -> bool:
    """True for a two-polynomial ciphertext at the given level (`parms_id`) and exact scale whose c1 is not
    zero (an encryption has a random c1; c1 = 0 is a plaintext in disguise)."""
    return (
        ct.size() == 2
        and ct.parms_id() == parms_id
        and ct.scale == scale
        and ct.is_ntt_form()
        and not ct.is_transparent()
    )


# --- evaluation primitives --------------------------------------------------------------------------------
class SealOps:
    """SEAL's evaluator and encoder behind plain functions: each returns a new object (no `out` arguments).

    `Evaluator` (he_aero/ckks/ciphertext.py) owns levels, scales and counts; this class only calls SEAL."""

    def __init__(self, ctx: PublicContext):
        self.ctx = ctx
        self._ev = seal.Evaluator(ctx.seal_context)
        self._enc = seal.CKKSEncoder(ctx.seal_context)
        self._zero = seal.Encryptor(ctx.seal_context, ctx.public_key)

    def encode(self, values, parms_id, scale: float, slots: int) -> seal.Plaintext:
        """A scalar, or a slot vector zero-padded to `slots`, encoded at `scale` on level `parms_id`."""
        pt = seal.Plaintext()
        if np.isscalar(values):
            self._enc.encode(float(values), parms_id, scale, pt)
        else:
            arr = np.asarray(values).ravel()
            v = np.zeros(slots, dtype=complex if np.iscomplexobj(arr) else float)
            v[: arr.size] = arr
            self._enc.encode(v.tolist(), parms_id, scale, pt)
        return pt

    def _out(self, fn, *args) -> seal.Ciphertext:
        """fn(*args, out) into a new ciphertext. A result whose c1 cancels to 0 (x - x, (x + 5) - x, x times
        a plaintext that encodes to zero: weights below the plaintext resolution) is one SEAL refuses to
        hand out ("result ciphertext is transparent") although it has already written it, at the right
        level and scale, into `out`; adding a fresh encryption of zero makes it an ordinary ciphertext of the
        same value (found by review: the raw SEAL error reached users; replacing the result by a zero lost
        c0, e.g. the 5 of (x + 5) - x)."""
        out = seal.Ciphertext()
        try:
            fn(*args, out)
        except RuntimeError as exc:
            if out.size() != 2:
                raise
            self._opaque(out, exc)
        return out

    def _opaque(self, ct, exc: RuntimeError) -> None:
        """Re-raise `exc` unless it is SEAL's "transparent" refusal of `ct` (already written, c1 = 0); then
        add a fresh encryption of zero in place, leaving the value as it is (see `_out`)."""
        if "transparent" not in str(exc):
            raise exc
        self._ev.add_inplace(ct, self.zero_like(ct, ct.scale))

    def zero_like(self, a, scale: float) -> seal.Ciphertext:
        """A fresh public-key encryption of zero at a's level with the given scale."""
        zero = seal.Ciphertext()
        self._zero.encrypt_zero(a.parms_id(), zero)
        zero.scale = scale  # an encryption of zero decodes to zero at any scale
        return zero

    def rescale(self, a):
        return self._out(self._ev.rescale_to_next, a)

    def rescale_inplace(self, a) -> None:
        self._ev.rescale_to_next_inplace(a)

    def mod_switch(self, a, parms_id):
        return self._out(self._ev.mod_switch_to, a, parms_id)

    def multiply(self, a, b):
        """a x b (a square when a is b); size 3, relinearise before anything but additions."""
        return self._out(self._ev.square, a) if a is b else self._out(self._ev.multiply, a, b)

    def relinearize_inplace(self, a) -> None:
        self._ev.relinearize_inplace(a, self.ctx.relin_keys)

    def multiply_plain(self, a, pt):
        return self._out(self._ev.multiply_plain, a, pt)

    def add(self, a, b):
        return self._out(self._ev.add, a, b)

    def sub(self, a, b):
        return self._out(self._ev.sub, a, b)

    def add_inplace(self, acc, b) -> None:
        """acc += b; an exactly-zero sum is kept as a fresh encryption of zero (see `_out`)."""
        try:
            self._ev.add_inplace(acc, b)
        except RuntimeError as exc:  # acc holds the transparent sum
            self._opaque(acc, exc)

    def add_plain(self, a, pt):
        return self._out(self._ev.add_plain, a, pt)

    def rotate(self, a, step: int):
        return self._out(self._ev.rotate_vector, a, step, self.ctx.galois_keys)

    def add_conjugate(self, a):
        """a + conj(a): twice the real part of each slot (one key switch, no level)."""
        out = self._out(self._ev.complex_conjugate, a, self.ctx.galois_keys)
        self._ev.add_inplace(out, a)
        return out

    def rerandomize(self, a):
        """a + a fresh public-key encryption of zero at a's level and scale: the result's c1 is uniformly
        random, no longer a function of the computation (the weights) that produced a."""
        return self._out(self._ev.add, a, self.zero_like(a, a.scale))

    @staticmethod
    def scale(a) -> float:
        return a.scale

    def add_trivial(self, a, poly: rns.IntPoly, subtract: bool = False):
        """a + m (or a - m) for an integer polynomial m added to c0 coefficient by coefficient (at a's
        level; SEAL's NTT moves it into a's NTT form): the refresh's mask, exact to the last bit."""
        return add_polynomial(self.ctx.seal_context, self._ev, a, poly, subtract)
