"""CKKS parameters: ring degree, modulus chain and scale, validated against SEAL's 128-bit security table.

A chain is `[q0, q1, ..., qL, P]`: q0 is the base prime (it bounds the magnitude of values at level 0),
q1..qL are the rescale primes (one per level, ~2^scale_bits each) and P is the special prime used only by
key switching (relinearisation and rotations). Measured on this machine (tests/he_aero/ckks/test_params.py
keeps the rule): P must be at least as large as q0, otherwise key-switching noise swamps the message
(N=8192, scale 2^35, |x| <= 1: [60, 35, 35, 35, 53] keeps 9 bits after one rotation, [50, 35, 35, 35, 60] 22).
"""

from __future__ import annotations

from dataclasses import dataclass

from he_aero.errors import HeAeroError

SEAL_MAX_BITS = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
"""Largest total coefficient-modulus bit count with 128-bit classical security (SEAL's
HomomorphicEncryption.org table, the one `CoeffModulus.MaxBitCount(N, tc128)` returns)."""

MIN_PRIME_BITS, MAX_PRIME_BITS = 20, 60

HIDING_BITS = 20
"""Statistical hiding of an interactive-refresh mask per slot, in bits (docs/security.md): the plan's default
and the client's default minimum."""


@dataclass(frozen=True)
class CkksParams:
    """A validated CKKS parameter set.

    Attributes
    ----------
    poly_modulus_degree : ring degree N (slots = N / 2).
    coeff_mod_bit_sizes : bit sizes of [q0, q1..qL, P].
    scale_bits : log2 of the top-level scale (fresh ciphertexts are encoded at exactly 2^scale_bits).
    insecure_for_tests : allow a chain beyond 128-bit security (tests only; every production entry point
        calls `require_secure()` and refuses such parameters).
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    insecure_for_tests: bool = False

    def __post_init__(self):
        n = self.poly_modulus_degree
        if n not in SEAL_MAX_BITS:
            raise HeAeroError(f"poly_modulus_degree: must be one of {sorted(SEAL_MAX_BITS)}, got {n}")
        bits = tuple(int(b) for b in self.coeff_mod_bit_sizes)
        object.__setattr__(self, "coeff_mod_bit_sizes", bits)
        if len(bits) < 3:
            raise HeAeroError(f"coeff_mod_bit_sizes: need [q0, >=1 rescale prime, P], got {list(bits)}")
        if any(not MIN_PRIME_BITS <= b <= MAX_PRIME_BITS for b in bits):
            raise HeAeroError(f"coeff_mod_bit_sizes: each prime must have 20..60 bits, got {list(bits)}")
        if not 20 <= self.scale_bits <= min(bits[1:-1]):
            raise HeAeroError(
                f"scale_bits: must lie in [20, smallest rescale prime = {min(bits[1:-1])}], "
                f"got {self.scale_bits}"
            )
        if bits[0] <= self.scale_bits:
            raise HeAeroError(
                f"coeff_mod_bit_sizes: q0 ({bits[0]} bits) must exceed the scale ({self.scale_bits})"
            )
        if bits[-1] < bits[0]:
            raise HeAeroError(
                f"coeff_mod_bit_sizes: the special prime P ({bits[-1]} bits) must be >= q0 ({bits[0]} bits), "
                "or key switching destroys the message"
            )
        if self.total_bits > SEAL_MAX_BITS[n] and not self.insecure_for_tests:
            raise HeAeroError(
                f"parameters below 128-bit security: N={n} allows at most {SEAL_MAX_BITS[n]} modulus bits, "
                f"this chain has {self.total_bits} ({list(bits)})"
            )

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def levels(self) -> int:
        """Rescales available to a fresh ciphertext (= number of rescale primes)."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def is_secure(self) -> bool:
        return self.total_bits <= SEAL_MAX_BITS[self.poly_modulus_degree]

    def headroom_bits(self, level: int) -> int:
        """log2 bound on |value| at `level`: bits of q0..q_level minus the scale, minus a sign bit."""
        return sum(self.coeff_mod_bit_sizes[: level + 1]) - self.scale_bits - 1

    def require_secure(self) -> CkksParams:
        """Production entry points call this: refuse test-only insecure parameters."""
        if not self.is_secure:
            raise HeAeroError(
                f"parameters below 128-bit security (N={self.poly_modulus_degree}, {self.total_bits} bits > "
                f"{SEAL_MAX_BITS[self.poly_modulus_degree]}): allowed only in tests"
            )
        return self

    def describe(self) -> str:
        return (
            f"N={self.poly_modulus_degree} chain={list(self.coeff_mod_bit_sizes)} ({self.total_bits} bits, "
            f"max {SEAL_MAX_BITS[self.poly_modulus_degree]}) scale=2^{self.scale_bits} levels={self.levels}"
        )


def default_params(poly_modulus_degree: int) -> CkksParams:
    """The chain this project uses for each ring: q0 = P = 60 bits and as many 32-bit rescale primes as
    SEAL's 128-bit limit allows (N=8192: 3, 16384: 9, 32768: 23 levels).

    Why 60-bit q0: a refresh masks values with r of width bound * 2^hiding_bits, and q0 / 2^32 leaves 27
    bits of headroom at level 0, so the last level is usable before a refresh (with 35-bit primes and q0 = 50
    only 14 bits: a refresh would have to happen one level early). Why 32-bit primes: with exact scale
    tracking they lose no precision to prime drift, and at N=8192 they buy a third level."""
    if poly_modulus_degree not in (8192, 16384, 32768):
        raise HeAeroError(f"ring degree: expected 8192, 16384 or 32768, got {poly_modulus_degree}")
    q0, mid, special = 60, 32, 60
    n_mid = (SEAL_MAX_BITS[poly_modulus_degree] - q0 - special) // mid
    return CkksParams(poly_modulus_degree, (q0,) + (mid,) * n_mid + (special,), mid)
