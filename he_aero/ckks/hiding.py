"""What a flooding refresh hides, in bits: one formula for the planner, the server and the client.

The refresh (he_aero/ckks/refresh.py) shows the client V = M + r for each refreshed polynomial, where M is
the message polynomial (the server's activation, with CKKS noise) and r has N coefficients uniform over the
2^(k+1) integers in [-2^k, 2^k). If every coefficient of M satisfies |M_j| <= T, the statistical distance
between V and r is at most N T / 2^(k+1) per polynomial, and over a session of n refreshed polynomials at most
n N T / 2^(k+1) (triangle inequality over independent masks). Hiding is its -log2:
    per polynomial:  k + 1 - log2(N) - log2(T)
    per session:     per polynomial - log2(n).

T from the calibrated bound B on every refreshed slot value: a polynomial whose slots z satisfy |z| <= S |x|
has coefficients of magnitude <= max |z| (the inverse canonical embedding averages N terms); |x| <= sqrt(2) B
(real part <= B, an imaginary part of CKKS noise bounded the same way), the exact scale S < 2^(s+1) (the
evaluator refuses drift beyond 2x) and a factor sqrt(2) of slack for the noise term: T = 2^(s+2) B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from he_aero.errors import HeAeroError

MASK_BITS = 113
"""k of the default chains: masks uniform in [-2^113, 2^113), refreshed at a level whose modulus holds 115
bits (he_aero/ckks/params.py, `default_params`)."""

SESSION_HIDING_BITS = 40
"""The hiding a session must keep (plan default; the client's default minimum): the server caps the refreshed
polynomials of a session so that per-session hiding stays at or above it."""


@dataclass(frozen=True)
class RefreshHiding:
    """Hiding of the flooding refresh for a ring, a mask width and a message bound.

    Attributes
    ----------
    ring_degree : N (coefficients per polynomial).
    mask_bits : k (each mask coefficient uniform in [-2^k, 2^k)).
    scale_bits : s (nominal scale 2^s of a refreshed ciphertext).
    bound : B, the calibrated bound on |x| of every refreshed slot value.
    """

    ring_degree: int
    mask_bits: int
    scale_bits: int
    bound: float

    def __post_init__(self):
        if not (self.bound > 0 and math.isfinite(self.bound)):
            raise HeAeroError(f"refresh hiding: bound must be a positive number, got {self.bound}")
        if isinstance(self.mask_bits, bool) or not isinstance(self.mask_bits, int) or self.mask_bits < 1:
            raise HeAeroError(f"refresh hiding: mask_bits must be a positive integer, got {self.mask_bits!r}")

    @property
    def message_bits(self) -> float:
        """log2 T: the bound on any coefficient of a refreshed message polynomial."""
        return self.scale_bits + 2 + math.log2(self.bound)

    @property
    def per_polynomial_bits(self) -> float:
        return self.mask_bits + 1 - math.log2(self.ring_degree) - self.message_bits

    def session_bits(self, polynomials: int) -> float:
        """Hiding over a session that refreshes `polynomials` polynomials (inf for none)."""
        if polynomials <= 0:
            return math.inf
        return self.per_polynomial_bits - math.log2(polynomials)

    def max_polynomials(self, session_bits: float) -> int:
        """The most polynomials a session may refresh and keep `session_bits` of hiding (0: none)."""
        return max(0, math.floor(2.0 ** (self.per_polynomial_bits - session_bits)))

    def modulus_bits_needed(self) -> float:
        """log2 of the ciphertext modulus a refresh level needs: |M + r| < 2^k + T must stay below Q/2."""
        return math.log2(2.0**self.mask_bits + 2.0**self.message_bits) + 1
