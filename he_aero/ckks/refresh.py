"""Interactive refresh: the stand-in for bootstrapping (which neither SEAL nor TenSEAL has).

Protocol, one round for a batch of ciphertexts (security argument in docs/security.md, section "Refresh"):
1. server: re-randomise x (add a fresh public-key encryption of zero: c1 no longer depends on the weights),
   then y = x + r, r = r_re + i r_im with r_re, r_im uniform in [-W, W) per slot (real AND imaginary parts),
   fresh for every ciphertext and every round, W = bound * 2^hiding_bits (bound: the plan's bound on |x|).
2. client: decrypt y, re-encrypt the real parts at the top level (scale 2^scale_bits); serialise.
3. server: subtract r_re (encoded at the top level), giving x at the top level again.
The client sees only x + r, whose distribution is within statistical distance |x| / (2W) <= 2^-(hiding_bits+1)
of r's per slot and part. Rounds and bytes (both directions, serialised sizes) are counted.

The mask must fit the ciphertext's headroom: |x + r| < 2^(headroom_bits(level)), so a refresh needs the
ciphertext at or above `min_level()`; kernels call `ensure` with the levels their next stage consumes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.params import HIDING_BITS
from he_aero.errors import HeAeroError

ClientCallback = Callable[[list[bytes]], list[bytes]]
"""The client's half of a round (he_aero/client/client.py, `Client.refresh_values`): serialised masked
ciphertexts in, serialised fresh top-level ciphertexts out."""


@dataclass
class RefreshLog:
    rounds: int = 0
    ciphertexts: int = 0
    bytes_to_client: int = 0
    bytes_to_server: int = 0
    masks_seen: list = field(
        default_factory=list, repr=False
    )  # first mask values per ct (tests: fresh masks)

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
    hiding_bits : statistical hiding per slot (mask width W = bound * 2^hiding_bits).
    seed : None draws masks from the OS CSPRNG (production); an int (numpy, predictable) only for tests.
    allow : False forbids refreshes (a stage short of levels raises instead; the planner's depth count).
    """

    def __init__(
        self,
        ev: Evaluator,
        client: ClientCallback | None,
        bound: float = 64.0,
        hiding_bits: int = HIDING_BITS,
        seed: int | None = None,
        allow: bool = True,
    ):
        if not bound > 0 or not math.isfinite(bound):
            raise HeAeroError(f"refresh: bound must be a positive number, got {bound}")
        if not 1 <= hiding_bits <= 40:
            raise HeAeroError(f"refresh: hiding_bits must be in [1, 40], got {hiding_bits}")
        self.ev, self.client, self.bound, self.hiding_bits = ev, client, float(bound), int(hiding_bits)
        self.allow = allow
        self.width = self.bound * 2.0**self.hiding_bits
        self.rng = None if seed is None else np.random.default_rng(seed)
        self.log = RefreshLog()
        self.trace: list[dict] = []  # one entry per stage: the planner's level assignment
        if self.min_level() is None:
            raise HeAeroError(
                f"refresh: a mask of width 2^{math.log2(self.width):.1f} does not fit any level of "
                f"{ev.params.describe()}; lower hiding_bits or the bound"
            )

    def _mask(self, n: int) -> np.ndarray:
        """n uniform values in [-W, W): from the OS CSPRNG (53 random bits each) unless seeded for a test.
        Why not numpy's generator: PCG64 is predictable from its outputs, and masks must not be."""
        if self.rng is not None:
            return self.rng.uniform(-self.width, self.width, n)
        bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
        return (bits.astype(np.float64) * 2.0**-53 * 2.0 - 1.0) * self.width

    @property
    def enabled(self) -> bool:
        return self.allow and (self.client is not None or self.ev.symbolic)

    def min_level(self) -> int | None:
        """Lowest level whose headroom holds |x + r| <= bound + sqrt(2) W (a complex mask; headroom_bits
        already keeps a sign bit)."""
        need = math.log2(math.sqrt(2) * self.width + self.bound)
        for lvl in range(self.ev.top + 1):
            if self.ev.params.headroom_bits(lvl) > need:
                return lvl
        return None

    def usable_levels(self) -> int:
        """Levels a stage may consume between two refreshes."""
        return self.ev.top - self.min_level()

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
        """One round: mask, send, receive at the top level, unmask."""
        ev = self.ev
        self.log.rounds += 1
        self.log.ciphertexts += len(cts)
        ev.stats.refresh_rounds += 1
        for c in cts:
            ev.stats.refresh_cts[c.level] += 1
        if ev.symbolic:
            n = ev.params.poly_modulus_degree
            for c in cts:  # uncompressed size estimate: 2 polynomials x (level + 1) primes x N words
                self.log.bytes_to_client += 16 * n * (c.level + 1)
                self.log.bytes_to_server += 16 * n * (ev.top + 1)
            return [Ct(None, ev.top, c.layout) for c in cts]
        # real AND imaginary parts masked: the imaginary parts of x hold CKKS noise that correlates with the
        # weights (and, from a client that probes them, more); an honest client keeps the real parts only
        masks = [self._mask(ev.slots) + 1j * self._mask(ev.slots) for _ in cts]
        self.log.masks_seen.append([float(m[0].real) for m in masks])
        blobs = []
        for c, r in zip(cts, masks, strict=True):
            # re-randomised first: c1 of what the client sees no longer depends on the weights
            masked = ev.add_plain(ev.rerandomize(c), None, lambda r=r: r)
            blobs.append(ev.to_bytes(masked))
        self.log.bytes_to_client += sum(len(b) for b in blobs)
        replies = self.client(blobs)
        self.log.bytes_to_server += sum(len(b) for b in replies)
        out = []
        for i, (blob, r, c) in enumerate(zip(replies, masks, cts, strict=True)):
            fresh = ev.load_client(blob, f"refresh reply ciphertext {i}", c.layout)
            out.append(ev.add_plain(fresh, None, lambda r=r: -r.real))
        return out
