"""Exact integer arithmetic on polynomials with ~110-bit coefficients: the arithmetic of the flooding refresh.

A CKKS polynomial at level l is stored by SEAL as its coefficients modulo each prime q_0..q_l (the RNS
representation): (l + 1, N) uint64 words. The refresh (he_aero/ckks/refresh.py) needs the integers: the server
adds a mask r with |r_j| < 2^k to every coefficient, the client recovers V = M + r exactly (CRT), both convert
the scale by the same dyadic factor and re-reduce at the top level. No float touches a coefficient.

Representation (`IntPoly`): N signed integers v_j held as fields v_j + 2^192 of 256 bits, four uint64
limbs each, shape (N, 4). Why: numpy has no 110-bit integers, and numpy arrays of Python ints cost a
bignum operation per coefficient (~90 ms per N=8192 refresh, measured). Here the two wide operations work
on all N coefficients at once as ONE Python integer with a 256-bit field per coefficient (Kronecker
packing): multiplying it by a constant or adding packed values never carries across fields while every
field stays in [0, 2^256); reductions modulo the 32..60-bit primes run in numpy on 16-bit pieces of the
limbs, whose products with a constant below 2^44 never overflow 64 bits.

CRT (`from_residues`), after Bajard et al.'s fast base conversion with an exact correction: with
Q = prod q_i, y_i = w_i (Q/q_i)^-1 mod q_i, V = sum_i y_i (Q/q_i) - kappa Q, kappa = round(sum_i y_i / q_i)
centres V in [-Q/2, Q/2]; kappa is computed in doubles, exact when |V| <= Q/4 (the refresh keeps
|V| < 2^(k+1) <= Q/4, see `hiding.RefreshHiding.modulus_bits_needed`).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from he_aero.errors import HeAeroError

OFFSET_BITS = 192
"""Fields hold v + 2^192: non-negative for |v| < 2^192, and with room to 2^256 for a product by a 61-bit
factor (`scaled`)."""
OFFSET = 1 << OFFSET_BITS
SHIFT = 60
"""Scale factors are dyadic, P / 2^60 (`scale_factor`)."""
_FIELD_BYTES = 32


@functools.cache
def _ones(n: int) -> int:
    """The packed integer with every one of n fields equal to 1."""
    return int.from_bytes(_limbs_bytes(np.tile(np.array([1, 0, 0, 0], np.uint64), (n, 1))), "little")


def _limbs_bytes(limbs: np.ndarray) -> bytes:
    return np.ascontiguousarray(limbs, dtype="<u8").tobytes()


def _pack(limbs: np.ndarray) -> int:
    return int.from_bytes(_limbs_bytes(limbs), "little")


def _unpack(value: int, n: int) -> np.ndarray:
    return np.frombuffer(value.to_bytes(n * _FIELD_BYTES, "little"), dtype="<u8").reshape(n, 4).copy()


def _column(values: np.ndarray) -> np.ndarray:
    """(N,) uint64 values as (N, 4) limbs (the value in the lowest limb)."""
    limbs = np.zeros((values.size, 4), np.uint64)
    limbs[:, 0] = values
    return limbs


def _mod(pieces: np.ndarray, q: int) -> np.ndarray:
    """(N,) residues mod q of numbers given as (N, P) little-endian 16-bit pieces (uint64 array)."""
    acc = np.zeros(pieces.shape[0], np.uint64)
    for t in range(pieces.shape[1]):  # each term < 2^16 2^44 = 2^60, so 16 of them stay below 2^64
        acc += pieces[:, t] * np.uint64(pow(2, 16 * t, q))
    return acc % np.uint64(q)


WIDE_PRIME = 1 << 44
"""Primes from here up (the test rings' 50- and 60-bit q0) take a slower path through Python ints: a 16-bit
piece times a constant below 2^44 is the widest product that cannot overflow 64 bits in a sum of 16."""


def _mulmod(a: np.ndarray, c: int, q: int) -> np.ndarray:
    """(a * c) mod q for (N,) uint64 a < q."""
    if q >= WIDE_PRIME:
        return (a.astype(object) * c % q).astype(np.uint64)
    pieces = np.stack([(a >> np.uint64(16 * t)) & np.uint64(0xFFFF) for t in range(3)], axis=1)
    acc = np.zeros(a.size, np.uint64)
    for t in range(3):
        acc += pieces[:, t] * np.uint64(c * pow(2, 16 * t, q) % q)
    return acc % np.uint64(q)


def scale_factor(to_scale: float, from_scale: float) -> int:
    """P with P / 2^SHIFT the dyadic approximation of to_scale / from_scale that both parties of a refresh
    compute bit for bit from the same two doubles."""
    if not all(math.isfinite(s) and s > 0 for s in (to_scale, from_scale)):
        raise HeAeroError(f"rns: scales must be positive finite numbers, got {to_scale} and {from_scale}")
    ratio = Fraction(to_scale) / Fraction(from_scale)
    if not Fraction(1, 2) < ratio < 2:
        raise HeAeroError(f"rns: scale ratio {float(ratio):.6g} is outside (1/2, 2)")
    return round(ratio * (1 << SHIFT))


@dataclass(frozen=True)
class IntPoly:
    """N signed integers (the coefficients of one polynomial) as 256-bit offset fields; see the module
    docstring. `limbs`: (N, 4) uint64, field j = v_j + 2^192."""

    limbs: np.ndarray

    @property
    def n(self) -> int:
        return self.limbs.shape[0]

    # --- construction --------------------------------------------------------------------------------------
    @classmethod
    def uniform(cls, bits: int, n: int) -> IntPoly:
        """n integers uniform in [-2^bits, 2^bits), from the OS CSPRNG (`os.urandom`). Why not numpy's
        generator: PCG64 is predictable from its outputs, and masks must not be."""
        if not 1 <= bits <= 127:
            raise HeAeroError(f"rns: mask bits must lie in [1, 127], got {bits}")
        raw = np.frombuffer(os.urandom(16 * n), dtype="<u8").reshape(n, 2).copy()
        top = bits + 1  # u uniform in [0, 2^(bits+1)): the low `top` bits of 128 random ones
        if top <= 64:
            raw[:, 0] &= np.uint64((1 << top) - 1)
            raw[:, 1] = 0
        else:
            raw[:, 1] &= np.uint64((1 << (top - 64)) - 1)
        u = np.zeros((n, 4), np.uint64)
        u[:, :2] = raw
        return cls(_unpack(_pack(u) + (OFFSET - (1 << bits)) * _ones(n), n))

    @classmethod
    def from_ints(cls, values) -> IntPoly:
        """From Python ints (|v| < 2^192); for tests and small inputs."""
        fields = [int(v) + OFFSET for v in values]
        if any(not 0 <= f < 2 * OFFSET for f in fields):
            raise HeAeroError("rns: a value does not fit a field")
        data = b"".join(f.to_bytes(_FIELD_BYTES, "little") for f in fields)
        return cls(np.frombuffer(data, dtype="<u8").reshape(len(fields), 4).copy())

    @classmethod
    def from_residues(cls, words: np.ndarray, primes: list[int]) -> IntPoly:
        """The centred integers with residues `words` ((len(primes), N) uint64) modulo prod(primes), by the
        CRT of the module docstring. HeAeroError when the shapes disagree or a word is not reduced."""
        words = np.asarray(words, dtype=np.uint64)
        if words.ndim != 2 or words.shape[0] != len(primes):
            raise HeAeroError(f"rns: {words.shape} words for {len(primes)} primes")
        modulus = 1
        for q in primes:
            modulus *= q
        if modulus.bit_length() > OFFSET_BITS - 2 or max(primes) >= 1 << 62:
            raise HeAeroError("rns: primes too wide for the field layout")
        n = words.shape[1]
        packed, fraction = OFFSET * _ones(n), np.zeros(n)
        for row, q in zip(words, primes, strict=True):
            if n and int(row.max()) >= q:
                raise HeAeroError("rns: a residue is not reduced modulo its prime")
            cofactor = modulus // q
            y = _mulmod(row, pow(cofactor, -1, q), q)
            packed += _pack(_column(y)) * cofactor
            fraction += y.astype(np.float64) / q
        kappa = np.rint(fraction).astype(np.uint64)
        return cls(_unpack(packed - _pack(_column(kappa)) * modulus, n))

    # --- arithmetic ----------------------------------------------------------------------------------------
    def residues(self, primes: list[int]) -> np.ndarray:
        """(len(primes), N) uint64: each value reduced into [0, q) for each prime q (< 2^62)."""
        hi, top = self.limbs[:, 2], self.limbs[:, 3]
        if np.all(((hi == 0) & (top == 1)) | ((hi == ~np.uint64(0)) & (top == 0))):
            # every |v| < 2^128 (refresh polynomials are ~2^108): v = L - 2^128 [v < 0], L = v mod 2^128
            # in limbs 0 and 1, so 8 pieces instead of 16
            pieces = self.limbs[:, :2].copy().view(np.uint16).reshape(self.n, 8).astype(np.uint64)
            negative, wrap = top == 0, 1 << 128
        else:
            pieces = self.limbs.view(np.uint16).reshape(self.n, 16).astype(np.uint64)
            negative, wrap = np.ones(self.n, bool), OFFSET  # fields are v + 2^192
        out = []
        for q in primes:
            if q >= WIDE_PRIME:
                out.append((np.array(self.to_ints(), dtype=object) % q).astype(np.uint64))
                continue
            shift = np.where(negative, np.uint64(q - wrap % q), np.uint64(0))
            out.append((_mod(pieces, q) + shift) % np.uint64(q))
        return np.stack(out)

    def scaled(self, factor: int) -> IntPoly:
        """round(v * factor / 2^SHIFT) for each value (halves up), exactly; factor from `scale_factor`."""
        if not 0 < factor < 1 << (SHIFT + 1):
            raise HeAeroError(f"rns: scale factor {factor} out of range")
        n = self.n
        # (v + 2^192) P / 2^60 = v P / 2^60 + 2^132 P: the offset part is an integer, so rounding commutes
        shifted = (_pack(self.limbs) * factor + (1 << (SHIFT - 1)) * _ones(n)) >> SHIFT
        limbs = _unpack(shifted, n)
        limbs[:, 3] &= np.uint64((1 << (256 - SHIFT - 192)) - 1)  # drop the next field's low bits
        return IntPoly(_unpack(_pack(limbs) - ((OFFSET * factor) >> SHIFT) * _ones(n) + OFFSET * _ones(n), n))

    def to_ints(self) -> list[int]:
        """The values as Python ints (tests, diagnostics)."""
        data = _limbs_bytes(self.limbs)
        return [
            int.from_bytes(data[i : i + _FIELD_BYTES], "little") - OFFSET
            for i in range(0, len(data), _FIELD_BYTES)
        ]

    def max_abs_bits(self) -> float:
        """log2 of the largest |v| (approximate, in doubles; -inf for all zeros)."""
        low = self.limbs[:, :3]
        # |v| < 2^192: a field with limb 3 set holds v >= 0 in limbs 0..2, else 2^192 + v, whose bitwise
        # complement is |v| - 1 (a one-unit error is immaterial here)
        mag = np.where((self.limbs[:, 3] == 1)[:, None], low, ~low)
        peak = float((mag.astype(np.float64) @ np.array([1.0, 2.0**64, 2.0**128])).max(initial=0.0))
        return float(np.log2(peak)) if peak > 0 else float("-inf")
