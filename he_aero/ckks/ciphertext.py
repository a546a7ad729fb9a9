"""Ciphertexts with an exact level and scale, and the server's evaluator (SEAL calls via `ckks.backend`).

Scale discipline (why): SEAL's primes are only close to 2^s, and TenSEAL's reset to the nominal scale after
each rescale costs precision. Here every ciphertext at level l has scale exactly S_l, a per-level constant:
S_{l-1} = S_l^2 / q_l (q_l: the prime a rescale from level l drops; S_0 = 2^scale_bits, see
`keys.chain_tables`). Then
- ct x ct at level l, rescaled, lands exactly on S_{l-1} (S_base = 2^scale_bits at `CkksParams.base_level`,
  the lowest level a product may land on);
- ct x plaintext encodes the plaintext at scale q_l * S_{l-1} / S_l, so the product also lands on S_{l-1};
- a ciphertext moved down from level l to m < l is mod-switched to m + 1 and multiplied by 1 encoded at
  scale q_{m+1} * S_m / S_l (one cheap plaintext product), landing exactly on S_m.
Additions therefore never see mismatched scales, and no value is rescaled by an approximate factor.

Pending rescales (why): a rotation adds key-switching noise of fixed absolute size (~2^-14 of a 2^32 scale
at N=8192), whatever the ciphertext's scale. Rotating a product *before* its rescale (scale ~2^64) makes
that noise ~2^32 times smaller relative to the value. Products can therefore return `pending` ciphertexts;
rotations and additions of pending ciphertexts of one level are allowed, everything else rescales first.

The same `Evaluator` runs symbolically (no SEAL objects, `Ct.data is None`) when built without a server
context: the planner runs the real kernels that way to count levels, operations and rotation keys.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

from he_aero.ckks.backend import PublicContext, SealOps, chain_tables, is_fresh, load_ciphertext, to_bytes
from he_aero.ckks.params import CkksParams
from he_aero.errors import HeAeroError


@dataclass
class Ct:
    """One ciphertext: the SEAL object (None when symbolic), its level, what its slots hold (`layout`), and
    whether a product's rescale is still pending (scale ~ S_level^2; see `Evaluator.rescale`)."""

    data: object | None  # the backend's ciphertext handle (he_aero/ckks/backend.py)
    level: int
    layout: object = None
    pending: bool = False


@dataclass
class OpStats:
    """Operation counts (by level where latency depends on it) and the wall time spent inside SEAL calls."""

    rotations: Counter = field(default_factory=Counter)  # level -> count
    ctct_mults: Counter = field(default_factory=Counter)
    pt_mults: Counter = field(default_factory=Counter)
    adds: int = 0
    encodes: int = 0
    refresh_rounds: int = 0
    refresh_cts: Counter = field(default_factory=Counter)  # level at which ciphertexts were refreshed
    steps_used: set = field(default_factory=set)
    seal_seconds: float = 0.0
    refresh_seconds: float = 0.0  # wall time of refresh rounds (both halves when the client is in process)

    @property
    def n_rotations(self) -> int:
        return sum(self.rotations.values())

    @property
    def n_ctct(self) -> int:
        return sum(self.ctct_mults.values())

    @property
    def n_pt(self) -> int:
        return sum(self.pt_mults.values())

    relins: int = 0
    conjugations: int = 0  # real projections of client ciphertexts (`Evaluator.load_client`)

    BY_LEVEL = ("rotations", "ctct_mults", "pt_mults", "refresh_cts")
    TOTALS = ("adds", "encodes", "refresh_rounds", "relins", "conjugations")
    """The count fields (seconds and `steps_used` aside): what other processes' counts add to."""

    def add(self, other: OpStats, sign: int = 1) -> None:
        """Add (sign -1: subtract) another evaluator's counts, not its seconds (they overlap in time) nor its
        rotation steps (`steps_used` is a union: callers that need it merge it)."""
        for name in self.BY_LEVEL:
            counter = getattr(self, name)
            for level, n in getattr(other, name).items():
                counter[level] += sign * n
        for name in self.TOTALS:
            setattr(self, name, getattr(self, name) + sign * getattr(other, name))

    @property
    def key_switches(self) -> int:
        """Rotations, relinearisations (`dot` relinearises a whole sum of products once), conjugations."""
        return self.n_rotations + self.relins + self.conjugations

    def summary(self) -> dict:
        return {
            "rotations": self.n_rotations,
            "ctct_mults": self.n_ctct,
            "pt_mults": self.n_pt,
            "key_switches": self.key_switches,
            "adds": self.adds,
            "refresh_rounds": self.refresh_rounds,
            "refreshed_ciphertexts": sum(self.refresh_cts.values()),
            "seal_seconds": round(self.seal_seconds, 4),
        }


class _Timer:
    def __init__(self, owner: Evaluator):
        self.owner = owner

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.owner.stats.seal_seconds += time.perf_counter() - self.t0


class Evaluator:
    """Server-side CKKS arithmetic on `Ct` with exact levels and scales, cached plaintexts and op counts.

    Parameters
    ----------
    params : the CKKS parameters (their chain fixes the levels and exact scales).
    server : the public context; None runs symbolically (levels and counts only, no SEAL objects).
    cache_limit : bytes the cache of encoded plaintexts may hold (None: no limit). Past it, a plaintext is
        encoded at each use instead (`stats.encodes` counts them): a model whose weight plaintexts do not
        fit in memory (a GPT-2-size layer on N=16384 asks for ~75 GB) runs slower instead of not at all.
    """

    def __init__(
        self, params: CkksParams, server: PublicContext | None = None, cache_limit: int | None = None
    ):
        if cache_limit is not None and cache_limit < 0:
            raise HeAeroError(f"evaluator: the plaintext cache limit must be >= 0 bytes, got {cache_limit}")
        self.params = params
        self.cache_limit = cache_limit
        self.server = server
        self.symbolic = server is None
        self.top = params.levels
        self.base = params.base_level
        self.slots = params.slots
        if self.symbolic:  # nominal primes: a symbolic run tracks levels, not values (and skips SEAL setup)
            bits = params.coeff_mod_bit_sizes
            self.parms_ids = {}
            self.primes = {lvl: float(2 ** bits[lvl]) for lvl in range(self.top + 1)}
            self.scales = {lvl: float(2**params.scale_bits) for lvl in range(self.top + 1)}
        else:
            ctx = server.seal_context
            self.parms_ids, self.primes, self.scales = chain_tables(ctx, params)
        nominal = 2.0**params.scale_bits
        computed = [s for lvl, s in self.scales.items() if lvl >= self.base]
        if not self.symbolic and any(not 0.5 < s / nominal < 2.0 for s in computed):
            raise HeAeroError(
                f"exact scales drift beyond a factor 2 of 2^{params.scale_bits} on {params.describe()}"
            )
        self.stats = OpStats()
        self._cache: dict = {}
        self._cache_bytes = 0
        self.requests: dict = {}  # symbolic runs: (key, level, for_mul) -> make, every plaintext asked for
        self.executor = None  # runs independent parts on other processes (he_aero/ckks/parallel.py)
        if not self.symbolic:
            self._ops = SealOps(server)
            self._timer = _Timer(self)

    # --- plaintexts ----------------------------------------------------------------------------------------
    def _encode(self, values, level: int, scale: float):
        if self.symbolic:
            return None
        self.stats.encodes += 1
        with self._timer:
            return self._ops.encode(values, self.parms_ids[level], scale, self.slots)

    def _mul_scale(self, level: int) -> float:
        """Scale of a plaintext factor at `level` so the rescaled product lands exactly on S_{level-1}."""
        return self.primes[level] * self.scales[level - 1] / self.scales[level]

    def plaintext(self, key, make, level: int, for_mul: bool):
        """A cached encoded plaintext: `make()` gives the slot vector, encoded once per (key, level, use).
        A symbolic evaluator encodes nothing and records the request (`requests`, for `prepare`)."""
        if self.symbolic:
            if key is not None:
                self.requests.setdefault((key, level, for_mul), make)
            return None
        ck = (key, level, for_mul)
        pt = self._cache.get(ck) if key is not None else None
        if pt is None:
            scale = self._mul_scale(level) if for_mul else self.scales[level]
            pt = self._encode(make(), level, scale)
            if key is not None:
                self._keep(ck, pt)
        return pt

    def _room_for(self, size: int) -> bool:
        """Whether `size` more bytes of plaintexts stay within `cache_limit`."""
        return self.cache_limit is None or self._cache_bytes + size <= self.cache_limit

    def _keep(self, ck, pt) -> None:
        """Cache `pt` under `ck` unless that takes the cache past `cache_limit`. Why the first ones stay
        (no eviction): the layers read their weights in the same order on every pass, and a cyclic scan over
        more plaintexts than fit would evict each one before its next use (LRU would cache nothing useful)."""
        size = pt.coeff_count() * 8
        if self._room_for(size):
            self._cache[ck] = pt
            self._cache_bytes += size

    def reset_stats(self) -> OpStats:
        """Start counting afresh; returns the previous counts."""
        old, self.stats = self.stats, OpStats()
        return old

    def clear_cache(self):
        self._cache.clear()
        self._cache_bytes = 0

    def prepare(self, requests: dict) -> int:
        """Encode ahead of use every plaintext a symbolic run asked for (its `requests`) that fits the cache,
        so the real run finds them cached; returns how many were encoded now."""
        before = len(self._cache)
        for (key, level, for_mul), make in requests.items():
            # a plaintext at `level` holds N words per prime q_0..q_level; one that cannot be kept is
            # encoded at use instead (encoding it now would be thrown away)
            if self._room_for(8 * self.params.poly_modulus_degree * (level + 1)):
                self.plaintext(key, make, level, for_mul)
        return len(self._cache) - before

    def cache_bytes(self) -> int:
        """Bytes held by the cached plaintexts (8 per RNS word: primes at their level x N)."""
        return self._cache_bytes

    # --- level management ----------------------------------------------------------------------------------
    def rescale(self, a: Ct) -> Ct:
        """Finish a pending product (no-op otherwise): the level drops by one, the scale lands on S_level."""
        if not a.pending:
            return a
        out = Ct(None, a.level - 1, a.layout)
        if not self.symbolic:
            with self._timer:
                out.data = self._ops.rescale(a.data)
        return out

    def _finish(self, out: Ct, rescale: bool) -> Ct:
        if rescale:
            self._rescaled(out)
            out.level -= 1
        else:
            out.pending = True
        return out

    def _need(self, a: Ct, what: str):
        if a.level <= self.base:
            raise HeAeroError(
                f"depth budget exhausted: {what} needs a level but the ciphertext is at level {a.level}, "
                f"the base of the chain (levels {self.base + 1}..{self.top} compute); a refresh must come "
                "before this operation"
            )

    def _rescaled(self, out: Ct) -> Ct:
        if not self.symbolic:
            with self._timer:
                self._ops.rescale_inplace(out.data)
        return out

    def align(self, a: Ct, level: int) -> Ct:
        """Move `a` down to `level` with the exact scale S_level (no-op if already there)."""
        a = self.rescale(a)
        if a.level == level:
            return a
        if a.level < level:
            raise HeAeroError(f"align: cannot raise a ciphertext from level {a.level} to {level}")
        out = Ct(a.data, a.level, a.layout)
        if not self.symbolic:
            src = a.data
            if a.level > level + 1:
                with self._timer:
                    src = self._ops.mod_switch(a.data, self.parms_ids[level + 1])
            pt = self._encode(
                1.0, level + 1, self.primes[level + 1] * self.scales[level] / self.scales[a.level]
            )
            with self._timer:
                out = Ct(self._ops.multiply_plain(src, pt), level + 1, a.layout)
            self._rescaled(out)
        self.stats.pt_mults[level + 1] += 1
        out.level = level
        return out

    def _pair(self, a: Ct, b: Ct) -> tuple[Ct, Ct]:
        if a.pending and b.pending and a.level == b.level:
            return a, b
        a, b = self.rescale(a), self.rescale(b)
        lvl = min(a.level, b.level)
        return self.align(a, lvl), self.align(b, lvl)

    # --- arithmetic ----------------------------------------------------------------------------------------
    def mul(self, a: Ct, b: Ct, layout=None, rescale: bool = True) -> Ct:
        """ct x ct: multiply, relinearise, rescale (one level; `rescale=False` leaves it pending)."""
        a, b = self._pair(self.rescale(a), self.rescale(b))
        self._need(a, "a ciphertext product")
        out = Ct(None, a.level, layout or a.layout)
        if not self.symbolic:
            with self._timer:
                out.data = self._ops.multiply(a.data, a.data if a is b else b.data)
                self._ops.relinearize_inplace(out.data)
        self.stats.ctct_mults[a.level] += 1
        self.stats.relins += 1
        return self._finish(out, rescale)

    def dot(self, pairs: list[tuple[Ct, Ct]], layout=None, rescale: bool = True) -> Ct:
        """sum_i a_i x b_i with ONE relinearisation and ONE rescale: the size-3 products share a level and a
        scale, so they add exactly before the (costly) key switch. Counts one ct-ct product per pair."""
        if not pairs:
            raise HeAeroError("dot: no terms")
        pairs = [(self.rescale(a), self.rescale(b)) for a, b in pairs]
        level = min(min(a.level, b.level) for a, b in pairs)
        self._need(Ct(None, level), "a ciphertext product")
        out = Ct(None, level, layout or pairs[0][0].layout)
        for i, (a, b) in enumerate(pairs):
            a, b = self.align(a, level), self.align(b, level)
            self.stats.ctct_mults[level] += 1
            if self.symbolic:
                continue
            with self._timer:
                prod = self._ops.multiply(a.data, a.data if a is b else b.data)
                if i == 0:
                    out.data = prod
                else:
                    self._ops.add_inplace(out.data, prod)
            self.stats.adds += i > 0
        if not self.symbolic:
            with self._timer:
                self._ops.relinearize_inplace(out.data)
        self.stats.relins += 1
        return self._finish(out, rescale)

    def mul_plain(self, a: Ct, key, make, layout=None, rescale: bool = True) -> Ct:
        """ct x plaintext slot vector `make()` (cached under `key`), rescaled (one level)."""
        a = self.rescale(a)
        self._need(a, "a plaintext product")
        pt = self.plaintext(key, make, a.level, True)
        return self._mul_pt(a, pt, layout, rescale)

    def mul_scalar(self, a: Ct, c: float, layout=None) -> Ct:
        """ct x real constant, rescaled (one level)."""
        a = self.rescale(a)
        self._need(a, "a scalar product")
        if c == 0.0:
            raise HeAeroError(
                "mul_scalar: a product by exactly 0 gives a transparent ciphertext (SEAL refuses it)"
            )
        tiny = 2.0 ** -(self.params.scale_bits - 1)
        if abs(c) < tiny:  # would encode to the zero plaintext (transparent result); the error is below noise
            c = math.copysign(tiny, c)
        pt = self._encode(float(c), a.level, self._mul_scale(a.level))
        return self._mul_pt(a, pt, layout)

    def dot_plain(self, terms: list[tuple[Ct, object, object]], layout=None, rescale: bool = True) -> Ct:
        """sum_i ct_i x plaintext_i (each `(ct, key, make)` as in `mul_plain`) with ONE rescale at the end:
        the products share a level and a scale, so summing before rescaling is exact and saves a rescale
        (the costliest part of a plaintext product) per term."""
        if not terms:
            raise HeAeroError("dot_plain: no terms")
        terms = [(self.rescale(c), k, m) for c, k, m in terms]
        level = min(c.level for c, _, _ in terms)
        self._need(Ct(None, level), "a plaintext product")
        out = Ct(None, level, layout or terms[0][0].layout)
        for i, (c, key, make) in enumerate(terms):
            c = self.align(c, level)
            pt = self.plaintext(key, make, level, True)
            self.stats.pt_mults[level] += 1
            if self.symbolic:
                continue
            with self._timer:
                prod = self._ops.multiply_plain(c.data, pt)
                if i == 0:
                    out.data = prod
                else:
                    self._ops.add_inplace(out.data, prod)
            self.stats.adds += i > 0
        return self._finish(out, rescale)

    def _mul_pt(self, a: Ct, pt, layout, rescale: bool = True) -> Ct:
        out = Ct(None, a.level, layout or a.layout)
        if not self.symbolic:
            with self._timer:
                out.data = self._ops.multiply_plain(a.data, pt)
        self.stats.pt_mults[a.level] += 1
        return self._finish(out, rescale)

    def add(self, a: Ct, b: Ct, layout=None) -> Ct:
        return self._additive("add", a, b, layout)

    def sub(self, a: Ct, b: Ct, layout=None) -> Ct:
        return self._additive("sub", a, b, layout)

    def _additive(self, op: str, a: Ct, b: Ct, layout) -> Ct:
        """a + b or a - b (SEAL's `add` / `sub`) after aligning levels; counted as one addition."""
        a, b = self._pair(a, b)
        out = Ct(None, a.level, layout or a.layout, a.pending)
        if not self.symbolic:
            with self._timer:
                out.data = getattr(self._ops, op)(a.data, b.data)
        self.stats.adds += 1
        return out

    def add_many(self, cts: list[Ct], layout=None) -> Ct:
        """Sum of ciphertexts (aligned to the lowest level)."""
        if not cts:
            raise HeAeroError("add_many: nothing to add")
        acc = cts[0]
        for c in cts[1:]:
            acc = self.add(acc, c, layout)
        return acc

    def add_plain(self, a: Ct, key, make, layout=None) -> Ct:
        """ct + plaintext slot vector `make()` (cached under `key`), no level; a pending ct stays pending
        (the plaintext is encoded at its exact product scale)."""
        if a.pending:
            pt = None
            if not self.symbolic:
                scale = self._ops.scale(a.data)
                ck = (key, a.level, "pending", scale)
                pt = self._cache.get(ck) if key is not None else None
                if pt is None:
                    pt = self._encode(make(), a.level, scale)
                    if key is not None:
                        self._keep(ck, pt)
            out = self._add_pt(a, pt, layout)
            out.pending = True
            return out
        pt = self.plaintext(key, make, a.level, False)
        return self._add_pt(a, pt, layout)

    def add_scalar(self, a: Ct, c: float, layout=None) -> Ct:
        a = self.rescale(a)
        if c == 0.0:
            return a
        return self._add_pt(a, self._encode(float(c), a.level, self.scales[a.level]), layout)

    def _add_pt(self, a: Ct, pt, layout) -> Ct:
        out = Ct(None, a.level, layout or a.layout)
        if not self.symbolic:
            with self._timer:
                out.data = self._ops.add_plain(a.data, pt)
        self.stats.adds += 1
        return out

    def rotate(self, a: Ct, step: int, layout=None) -> Ct:
        """Left rotation by `step` slots (negative: right); the key must be in the server's set."""
        k = step % self.slots
        if k == 0:
            return Ct(a.data, a.level, layout or a.layout, a.pending)
        self.stats.steps_used.add(k)
        out = Ct(None, a.level, layout or a.layout, a.pending)
        if not self.symbolic:
            if not self.server.has_rotation(k):
                raise HeAeroError(f"rotate: no rotation key for step {step} (the plan's key list lacks it)")
            with self._timer:
                out.data = self._ops.rotate(a.data, k)
        self.stats.rotations[a.level] += 1
        return out

    def lowest(self, cts) -> int:
        return min(c.level for c in cts)

    # --- bytes ---------------------------------------------------------------------------------------------
    def load_client(self, blob: bytes, what: str, layout=None) -> Ct:
        """A ciphertext from the client (a token upload, a refresh reply): refused unless it is a fresh
        two-polynomial encryption at the top level and its exact scale (HeAeroError naming `what`)."""
        data = load_ciphertext(self.server.seal_context, blob, what)
        if not is_fresh(data, self.parms_ids[self.top], self.scales[self.top]):
            raise HeAeroError(f"{what} is not a fresh top-level encryption")
        return Ct(data, self.top, layout)

    def project_real(self, a: Ct) -> Ct:
        """a + conj(a): twice the real part of every slot, on a PENDING product (scale ~S^2), so that the
        conjugation's key-switching noise is ~2^-32 of the value instead of ~2^-12 (measured at N=8192 on a
        fresh ciphertext: 11.9 bits). Callers fold the 1/2 into the plaintext product that made `a`. Why: the
        circuit is real; whatever a client hides in the imaginary parts of its ciphertexts must not reach
        an output it decrypts (docs/security.md, "Imaginary parts")."""
        if not a.pending:
            raise HeAeroError(
                "project_real: takes a pending product (its key-switching noise is then negligible)"
            )
        out = Ct(None, a.level, a.layout, True)
        if not self.symbolic:
            if not self.server.has_conjugation():
                raise HeAeroError("the client's keys lack the conjugation key: cannot project to real parts")
            with self._timer:
                out.data = self._ops.add_conjugate(a.data)
        self.stats.conjugations += 1
        return out

    def rerandomize(self, a: Ct) -> Ct:
        """`a` plus a fresh encryption of zero (same level and value): its c1 no longer depends on the
        computation that produced it (the refresh does this before a ciphertext leaves the server)."""
        a = self.rescale(a)
        if self.symbolic:
            return a
        with self._timer:
            return Ct(self._ops.rerandomize(a.data), a.level, a.layout)

    # --- the refresh's primitives (he_aero/ckks/refresh.py) ------------------------------------------------
    def drop_to(self, a: Ct, level: int) -> Ct:
        """`a` mod-switched down to `level`, its scale unchanged (so no longer the level's exact S_level:
        only for a ciphertext about to leave the server)."""
        a = self.rescale(a)
        if a.level == level or self.symbolic:
            return Ct(a.data, level, a.layout)
        if a.level < level:
            raise HeAeroError(f"drop_to: cannot raise a ciphertext from level {a.level} to {level}")
        with self._timer:
            return Ct(self._ops.mod_switch(a.data, self.parms_ids[level]), level, a.layout)

    def add_integer_poly(self, a: Ct, poly, subtract: bool = False) -> Ct:
        """`a` + m (or - m), m an integer polynomial (`rns.IntPoly`) added to c0 coefficient by coefficient,
        exactly (the refresh's mask and its removal)."""
        if self.symbolic:
            return a
        with self._timer:
            return Ct(self._ops.add_trivial(a.data, poly, subtract), a.level, a.layout)

    def scale_of(self, a: Ct) -> float:
        return self._ops.scale(a.data)

    @staticmethod
    def to_bytes(a: Ct) -> bytes:
        """The ciphertext serialised (what crosses the wire)."""
        return to_bytes(a.data)


def real_parts(ev: Evaluator, pending: list[Ct]) -> list[Ct]:
    """2 Re(.) of pending products (callers fold the 1/2 into the product), rescaled: one conjugation each,
    whose key-switching noise is negligible on a pending product (`Evaluator.project_real`).

    Where (why): on the client's tokens right after the embedding product (imaginary probes in the one-hot
    would otherwise carry probe x W through the circuit), on the logits, the only values the client decrypts
    unmasked (docs/security.md), and on a baseline FFN's pre-activations (iterated sign stages would grow the
    rotations' imaginary noise: he_aero/ckks/ffn.py)."""
    return [ev.rescale(ev.project_real(c)) for c in pending]
