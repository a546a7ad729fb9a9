"""Interactive refresh by coefficient-domain flooding: the stand-in for bootstrapping (SEAL has none).

Protocol, one round for a batch of ciphertexts (security argument and numbers: he_aero/ckks/hiding.py and
docs/security.md, section "Refresh"):
1. server: move x down to the refresh level (`min_level`: the lowest whose modulus holds the mask),
   re-randomise it (add a fresh public-key encryption of zero: c1 no longer depends on the weights), then add
   to c0 an integer polynomial r, every coefficient uniform in [-2^k, 2^k) from the OS CSPRNG
   (`rns.IntPoly.uniform`).
2. client: decrypt to the exact integer polynomial V = M + r (inverse NTT and CRT: no slot decoding, no
   floating point), convert it to the top scale by the factor P / 2^60 ~ S_top / S (`rns.scale_factor`,
   computed by both parties from the same two doubles), encrypt it afresh at the top level
   (`ClientKeys.reencrypt_exact`).
3. server: subtract r converted by the same factor, giving x at the top level.
Both sides round once with the same rule, so the result is M P / 2^60 within one unit: an error of 2^-32
relative to the scale plus |M| 2^-61 from the dyadic factor, far below a fresh encryption's noise.

The client sees V only, within statistical distance N T / 2^(k+1) of a uniform mask per polynomial
(`RefreshHiding`); the server caps a session's refreshed polynomials (`max_polynomials`) so that the
session's total stays within the hiding the plan states. Rounds and bytes (serialised, both directions) are
counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from he_aero.ckks import rns
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.hiding import MASK_BITS, RefreshHiding
from he_aero.ckks.params import CkksParams
from he_aero.errors import HeAeroError

ClientCallback = Callable[[list[bytes]], list[bytes]]
"""The client's half of a round (he_aero/client/client.py, `refresh_reply`): serialised masked ciphertexts
in, serialised fresh top-level ciphertexts out."""


def refresh_level(params: CkksParams, hiding: RefreshHiding) -> int | None:
    """The lowest level (at or above the chain's base) whose modulus holds a masked value, |M + r| < Q/2,
    with one bit to spare for SEAL's primes lying just below their nominal 2^bits; None if none does.
    Client and server both call this: the client refuses refresh ciphertexts at any other level."""
    need = hiding.modulus_bits_needed() + 1
    for lvl in range(params.base_level, params.levels + 1):
        if params.modulus_bits(lvl) >= need:
            return lvl
    return None


@dataclass
class RefreshLog:
    rounds: int = 0
    ciphertexts: int = 0
    bytes_to_client: int = 0
    bytes_to_server: int = 0

    def summary(self) -> dict:
        return {
            "rounds": self.rounds,
            "ciphertexts": self.ciphertexts,
            "bytes_to_client": self.bytes_to_client,
            "bytes_to_server": self.bytes_to_server,
        }


class Refresher:
    """Server side of the refresh protocol.

    Parameters
    ----------
    ev : the evaluator (symbolic evaluators count rounds and estimate bytes without a client).
    client : the client's callback (None: refresh disabled; a stage that runs out of levels raises).
    bound : bound on |x| of any refreshed value (from calibration; the plan's activation bound).
    mask_bits : k; mask coefficients are uniform in [-2^k, 2^k).
    allow : False forbids refreshes (a stage short of levels raises instead; the planner's depth count).
    max_polynomials : refuse a round that would take the refreshed polynomials past this many (the session's
        budget for its stated hiding); None: no cap (tests, symbolic runs).

    Raises HeAeroError when no level of the chain holds the mask.
    """

    def __init__(
        self,
        ev: Evaluator,
        client: ClientCallback | None,
        bound: float,
        mask_bits: int = MASK_BITS,
        allow: bool = True,
        max_polynomials: int | None = None,
    ):
        self.hiding = RefreshHiding(ev.params.poly_modulus_degree, mask_bits, ev.params.scale_bits, bound)
        self.ev, self.client, self.bound, self.mask_bits = ev, client, float(bound), mask_bits
        self.allow, self.max_polynomials = allow, max_polynomials
        self.log = RefreshLog()
        self.trace: list[dict] = []  # one entry per stage: the planner's level assignment
        self._floor = refresh_level(ev.params, self.hiding)
        if self._floor is None:
            raise HeAeroError(
                f"refresh: a mask of 2^{mask_bits} needs a modulus of "
                f"{self.hiding.modulus_bits_needed() + 1:.1f} bits, which no level of "
                f"{ev.params.describe()} has; lower mask_bits or widen the chain's base"
            )
        headroom = ev.params.modulus_bits(self._floor) - ev.params.scale_bits - 2  # sign, prime slack
        if 2 * math.log2(self.bound) > headroom:
            # a product of two values within the bound must fit the lowest level values reach, or it
            # decrypts as a wrong number with no error (found by review on a 50-bit q0 at level 0)
            raise HeAeroError(
                f"refresh: products of values up to {self.bound:.3g} need {2 * math.log2(self.bound):.1f} "
                f"bits of headroom, the refresh level {self._floor} of {ev.params.describe()} has {headroom}"
            )

    @property
    def enabled(self) -> bool:
        return self.allow and (self.client is not None or self.ev.symbolic)

    def min_level(self) -> int:
        """The refresh level: ciphertexts are masked and sent there."""
        return self._floor

    def usable_levels(self) -> int:
        """Levels a stage may consume between two refreshes."""
        return self.ev.top - self._floor

    def affords(self, cts: list[Ct], need: int, base: int = 1) -> bool:
        """Whether `ensure(cts, need)` runs no round that `ensure(cts, base)` (base < need) would not: the
        ciphertexts hold `need` levels above `min_level()` already, or one lacks even `base` (the round due
        anyway refreshes them to the top, `usable_levels()` >= need). A stage takes an optional level this
        way (the decode kernel's row mask) only where it costs no round; such a round may refresh more of
        `cts` (those holding base but not need levels)."""
        if need > self.usable_levels():
            return False
        have = min(c.level - c.pending for c in cts) - self.min_level()
        return have >= need or (have < base and self.enabled)

    def headroom(self, cts: list[Ct], need: int) -> int:
        """Levels above `min_level()` the lowest of cts holds after `ensure(cts, need)` (refreshed ones hold
        `usable_levels()`)."""
        have = [c.level - c.pending - self.min_level() for c in cts]
        return min(h if h >= need else self.usable_levels() for h in have)

    def ensure(self, cts: list[Ct], need: int, what: str = "stage") -> list[Ct]:
        """cts with at least `need` levels above `min_level()`, refreshing (one round) those without."""
        floor = self.min_level()
        if need > self.usable_levels():
            raise HeAeroError(
                f"depth budget: {what} needs {need} levels between refreshes but {self.ev.params.describe()} "
                f"leaves {self.usable_levels()} (top {self.ev.top}, refresh needs level >= {floor})"
            )
        # a pending product has one level less to give (its rescale is still due)
        low = [i for i, c in enumerate(cts) if c.level - c.pending < floor + need]
        self.trace.append(
            {
                "stage": what,
                "need": need,
                "level_in": min(c.level - c.pending for c in cts),
                "refreshed": len(low),
            }
        )
        if not low:
            return cts
        if not self.enabled:
            raise HeAeroError(
                f"depth budget: {what} needs {need} levels, a ciphertext is at level "
                f"{min(cts[i].level for i in low)} and refresh is disabled"
            )
        if any(cts[i].level - cts[i].pending < floor for i in low):
            raise HeAeroError(
                f"refresh: {what}: a ciphertext fell below level {floor}, its mask would overflow"
            )
        fresh = self.refresh([self.ev.rescale(cts[i]) for i in low])
        out = list(cts)
        for i, c in zip(low, fresh, strict=True):
            out[i] = c
        return out

    def refresh(self, cts: list[Ct]) -> list[Ct]:
        """One round: move down, re-randomise, flood, send; receive at the top level, unmask."""
        t0 = time.perf_counter()
        try:
            return self._round(cts)
        finally:
            self.ev.stats.refresh_seconds += time.perf_counter() - t0

    def _round(self, cts: list[Ct]) -> list[Ct]:
        ev = self.ev
        if self.max_polynomials is not None and self.log.ciphertexts + len(cts) > self.max_polynomials:
            raise HeAeroError(
                f"refresh: this session has refreshed {self.log.ciphertexts} polynomials; {len(cts)} more "
                f"would pass its budget of {self.max_polynomials}, beyond which the hiding it was offered "
                "no longer holds"
            )
        self.log.rounds += 1
        self.log.ciphertexts += len(cts)
        ev.stats.refresh_rounds += 1
        for c in cts:
            ev.stats.refresh_cts[c.level] += 1
        floor, n = self.min_level(), ev.params.poly_modulus_degree
        if ev.symbolic:
            for _ in cts:  # uncompressed size estimate: 2 polynomials x (level + 1) primes x N words
                self.log.bytes_to_client += 16 * n * (floor + 1)
                self.log.bytes_to_server += 16 * n * (ev.top + 1)
            return [Ct(None, ev.top, c.layout) for c in cts]
        masks, scales, blobs = [], [], []
        for c in cts:
            r = rns.IntPoly.uniform(self.mask_bits, n)
            # re-randomised first: c1 of what the client sees no longer depends on the weights
            masked = ev.add_integer_poly(ev.rerandomize(ev.drop_to(c, floor)), r)
            masks.append(r)
            scales.append(ev.scale_of(masked))
            blobs.append(ev.to_bytes(masked))
        self.log.bytes_to_client += sum(len(b) for b in blobs)
        replies = self.client(blobs)
        self.log.bytes_to_server += sum(len(b) for b in replies)
        if len(replies) != len(cts):
            raise HeAeroError(f"refresh: the client returned {len(replies)} ciphertexts for {len(cts)}")
        out = []
        for i, (blob, r, scale, c) in enumerate(zip(replies, masks, scales, cts, strict=True)):
            fresh = ev.load_client(blob, f"refresh reply ciphertext {i}", c.layout)
            # the client converted V = M + r with this same factor: the mask's share cancels exactly
            r_top = r.scaled(rns.scale_factor(ev.scales[ev.top], scale))
            out.append(ev.add_integer_poly(fresh, r_top, subtract=True))
        return out
