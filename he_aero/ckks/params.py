"""CKKS parameters: ring degree, modulus chain and scale, validated against SEAL's 128-bit security table.

A chain is `[base primes, rescale primes, P]`: the base primes (wider than the scale) hold what no level
computes on: the magnitude of values and, at the refresh level, the refresh's mask (he_aero/ckks/hiding.py);
the rescale primes (~2^scale_bits each) are consumed one per level by products; P is the special prime used
only by key switching (relinearisation and rotations). Level l keeps primes q_0..q_l; `base_level` is the
lowest level a product may land on. Measured on this machine (tests/he_aero/ckks/test_params.py
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
    def base_level(self) -> int:
        """The lowest level computed on: the leading primes wider than the scale are the base, and the exact
        scales are anchored at its top (`backend.chain_tables`)."""
        n = 1
        while n < len(self.coeff_mod_bit_sizes) - 2 and self.coeff_mod_bit_sizes[n] > self.scale_bits:
            n += 1
        return n - 1

    def modulus_bits(self, level: int) -> int:
        """Nominal bits of the ciphertext modulus at `level` (q_0..q_level)."""
        return sum(self.coeff_mod_bit_sizes[: level + 1])

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def is_secure(self) -> bool:
        return self.total_bits <= SEAL_MAX_BITS[self.poly_modulus_degree]

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


BASE_PRIMES = (39, 38, 38)
"""The default base: 115 bits, the modulus a flooding refresh with 113-bit masks needs (hiding.MASK_BITS).
With P = 39 and two 32-bit rescale primes the N=8192 chain has 218 bits: all of SEAL's 128-bit budget, the
spare bits spent on the mask (each is a bit of hiding)."""


def default_params(poly_modulus_degree: int) -> CkksParams:
    """The chain this project uses for each ring: the 115-bit base, P = 39 bits and as many 32-bit rescale
    primes as SEAL's 128-bit limit allows (N=8192: 2, 16384: 8, 32768: 22 usable levels).

    Why a 115-bit base: the refresh adds a mask of 2^113 to every coefficient (he_aero/ckks/hiding.py); the
    masked value must stay below half the modulus where it is refreshed. Why P = 39: key switching needs the
    special prime at least as wide as the widest prime it decomposes over (see the module docstring). Why
    32-bit rescale primes: with exact scale tracking they lose no precision to prime drift."""
    if poly_modulus_degree not in (8192, 16384, 32768):
        raise HeAeroError(f"ring degree: expected 8192, 16384 or 32768, got {poly_modulus_degree}")
    mid, special = 32, max(BASE_PRIMES)
    n_mid = (SEAL_MAX_BITS[poly_modulus_degree] - sum(BASE_PRIMES) - special) // mid
    return CkksParams(poly_modulus_degree, BASE_PRIMES + (mid,) * n_mid + (special,), mid)
