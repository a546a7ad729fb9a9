"""The planner: ring degree, modulus chain, levels per stage, refresh points and rotation keys, decided before
anything is encrypted.

How: for each candidate ring (N = 8192 / 16384 / 32768, `default_params`) the real kernels of
`he_aero.ckks.layer` run on a *symbolic* evaluator (levels and counts, no SEAL objects): one prefill of
T_max tokens and one decode step at the last position, every layer. That yields, exactly as the runtime will
do them, the level at every stage, where refreshes fall (rounds, ciphertexts, bytes), the rotation steps the
keys must cover, and operation counts by level. Latency is estimated from measured per-operation costs
(`OP_LATENCY_MS`, scaled by the primes left at each level); bytes from ciphertext and key sizes.

Approximation plans: given ones are used as they are (a ring whose refresh budget cannot hold one of their
steps is infeasible, and the reason says which); otherwise `approx` fits, per ring, the plan of least depth
whose single polynomial step fits between two refreshes (more squarings / Newton steps on small rings).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from approx.errors import ApproxError
from approx.plans import Plan, plan_exp, plan_reciprocal
from he_aero.ckks.attention import KVCache
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.layer import EncryptedLayer
from he_aero.ckks.packing import feature_layout
from he_aero.ckks.params import CkksParams, default_params
from he_aero.ckks.poly import atomic_depth, step_depth
from he_aero.ckks.refresh import Refresher
from he_aero.errors import HeAeroError

FORMAT_VERSION = 1
RINGS = (8192, 16384, 32768)

OP_LATENCY_MS = {
    # he_aero.ckks.oplatency.measure_op_latency at the top level of default_params(N), median of 3, copied
    # from docs/kernels.json (make bench-kernels, 2026-11-29, 2 shared vCPUs under other jobs: noisy, x2)
    8192: {
        "rotate": 3.432,
        "ctct_mult": 13.548,
        "pt_mult": 1.749,
        "add": 0.084,
        "encrypt": 16.916,
        "decrypt": 1.486,
    },
    16384: {
        "rotate": 37.953,
        "ctct_mult": 56.933,
        "pt_mult": 5.64,
        "add": 0.396,
        "encrypt": 33.146,
        "decrypt": 40.535,
    },
    32768: {
        "rotate": 318.401,
        "ctct_mult": 646.096,
        "pt_mult": 58.275,
        "add": 2.58,
        "encrypt": 158.519,
        "decrypt": 155.567,
    },
}
KEY_BYTES = {  # one rotation key; public + relinearisation keys (serialised, same run)
    8192: (1_905_621, 2_380_816),
    16384: (18_044_269, 19_848_295),
    32768: (182_210_946, 189_796_666),
}


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of the model: sizes, per-layer sink logits (only their count matters)."""

    d_model: int
    n_head: int
    n_layer: int
    t_max: int

    def __post_init__(self):
        for name in ("d_model", "n_head", "n_layer", "t_max"):
            if int(getattr(self, name)) < 1:
                raise HeAeroError(f"model shape: {name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise HeAeroError(
                f"model shape: d_model {self.d_model} is not a multiple of n_head {self.n_head}"
            )


@dataclass(frozen=True)
class Ranges:
    """Calibrated ranges (widened by a margin): z = q.k - c window per layer, activation bound for masks."""

    z_window: tuple[tuple[float, float], ...]
    activation_bound: float = 64.0
    exp_error: float = 1e-4
    exp_error_kind: str = "abs"
    recip_rel_error: float = 1e-4
    denominator: tuple[tuple[float, float], ...] | None = None  # per layer; default `denominator_domain`

    def __post_init__(self):
        for a, b in self.z_window + (self.denominator or ()):
            if not a < b:
                raise HeAeroError(f"ranges: window [{a}, {b}] is empty")
        if self.exp_error_kind not in ("abs", "rel"):
            raise HeAeroError(f"ranges: exp_error_kind must be 'abs' or 'rel', got {self.exp_error_kind!r}")
        if not self.activation_bound > 0:
            raise HeAeroError(f"ranges: activation_bound must be > 0, got {self.activation_bound}")


@dataclass
class RingReport:
    """One candidate ring: feasibility, plans, stage levels, counts, latency and byte estimates."""

    params: CkksParams
    feasible: bool
    reason: str = ""
    usable_levels: int = 0
    refresh_min_level: int = 0
    plans: list = field(default_factory=list)  # per layer: (exp Plan, recip Plan)
    prefill: dict = field(default_factory=dict)
    decode: dict = field(default_factory=dict)
    stages: list = field(default_factory=list)  # prefill level assignment: one dict per stage
    rotation_steps: tuple = ()
    key_bytes: int = 0

    def to_dict(self) -> dict:
        out = {
            "poly_modulus_degree": self.params.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.params.coeff_mod_bit_sizes),
            "scale_bits": self.params.scale_bits,
            "feasible": self.feasible,
            "reason": self.reason,
        }
        if self.feasible:
            out.update(
                usable_levels=self.usable_levels,
                refresh_min_level=self.refresh_min_level,
                plans=[{"exp": e.describe(), "recip": r.describe()} for e, r in self.plans],
                prefill=self.prefill,
                decode=self.decode,
                stages=self.stages,
                rotation_steps=list(self.rotation_steps),
                key_bytes=self.key_bytes,
            )
        return out


@dataclass
class HePlan:
    """The planner's decision: the chosen ring and all candidates, with the reason."""

    shape: ModelShape
    ranges: Ranges
    hiding_bits: int
    candidates: list[RingReport]
    chosen: RingReport
    why: str

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "shape": vars(self.shape),
            "ranges": {
                "z_window": [list(w) for w in self.ranges.z_window],
                "activation_bound": self.ranges.activation_bound,
            },
            "hiding_bits": self.hiding_bits,
            "chosen": self.chosen.params.poly_modulus_degree,
            "why": self.why,
            "candidates": [c.to_dict() for c in self.candidates],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def explain(self) -> str:
        """Human-readable plan: the comparison table, the choice and why, then the chosen ring's stages."""
        lines = [
            f"model: d={self.shape.d_model} heads={self.shape.n_head} layers={self.shape.n_layer} "
            f"T_max={self.shape.t_max}; refresh masks hide {self.hiding_bits} bits, |x| <= "
            f"{self.ranges.activation_bound:g}",
            "",
            f"{'N':>6} {'levels':>6} {'usable':>6} {'prefill s':>9} {'decode s':>8} {'rounds p/d':>10} "
            f"{'MB p/d':>13} {'keys MB':>8}  note",
        ]
        for c in self.candidates:
            p = c.params
            if not c.feasible:
                lines.append(
                    f"{p.poly_modulus_degree:>6} {p.levels:>6} {'-':>6} {'-':>9} {'-':>8} {'-':>10} "
                    f"{'-':>13} {'-':>8}  infeasible: {c.reason}"
                )
                continue
            pre, dec = c.prefill, c.decode
            lines.append(
                f"{p.poly_modulus_degree:>6} {p.levels:>6} {c.usable_levels:>6} {pre['latency_s']:>9.1f} "
                f"{dec['latency_s']:>8.2f} {pre['refresh_rounds']:>4}/{dec['refresh_rounds']:<5} "
                f"{pre['refresh_mb']:>6.1f}/{dec['refresh_mb']:<6.1f} {c.key_bytes / 1e6:>8.1f}  "
                f"{'<- chosen' if c is self.chosen else ''}"
            )
        ch = self.chosen
        lines += ["", f"choice: N={ch.params.poly_modulus_degree}. {self.why}", "", ch.params.describe()]
        for i, (e, r) in enumerate(ch.plans):
            lines.append(
                f"layer {i}: exp: {e.describe()} (err {e.max_error:.2g}); 1/x: {r.describe()} "
                f"(err {r.max_error:.2g})"
            )
        lines.append(f"rotation keys: {len(ch.rotation_steps)} steps {list(ch.rotation_steps)}")
        lines.append("prefill stages (level on entry, levels needed, ciphertexts refreshed):")
        for s in ch.stages:
            mark = f"  REFRESH x{s['refreshed']}" if s["refreshed"] else ""
            lines.append(f"  {s['stage']:<28} level {s['level_in']:>2}  needs {s['need']}{mark}")
        return "\n".join(lines)


def _layer_arrays(shape: ModelShape, index: int):
    """Shape-only stand-in for a LayerView: counts do not depend on values (all diagonals non-zero)."""
    d = shape.d_model
    ones, vec = np.ones((d, d)), np.ones(d)
    return SimpleNamespace(
        w_q=ones, b_q=vec, w_k=ones, b_k=vec, w_v=ones, b_v=vec, w_o=ones, b_o=vec,
        w_mix=ones, b_mix=vec, sink=np.zeros(shape.n_head), n_head=shape.n_head,
    )  # fmt: skip


def denominator_domain(z_window, t_max: int) -> tuple[float, float]:
    """[1, 1 + T exp(max z)]: the sink's 1 plus at most T weights, each at most exp of the window's top."""
    return 1.0, 1.0 + t_max * math.exp(max(0.0, float(z_window[1])))


def fit_plans(window, denominator, ranges: Ranges, usable: int) -> tuple[Plan, Plan]:
    """Least-depth exp (on `window`) and 1/x (on `denominator`) plans whose polynomial step fits `usable`
    levels (the affine map of exp is folded into the score mask; the reciprocal's costs a level: folding its
    scale into the lag selection shrinks the weights ~100x against fixed-size noise, measured 2+ bits worse
    and once unstable)."""
    exp = recip = None
    for k in range(0, 9):
        try:
            cand = plan_exp(window, squarings=k, **{f"max_{ranges.exp_error_kind}_error": ranges.exp_error})
        except ApproxError:  # unreachable with k squarings: try more
            continue
        if step_depth(cand.steps[0], mapped=True) <= usable:
            exp = cand
            break
    for n in range(0, 9):
        try:
            cand = plan_reciprocal(tuple(denominator), max_rel_error=ranges.recip_rel_error, newton=n)
        except ApproxError:
            continue
        if step_depth(cand.steps[0]) <= usable:
            recip = cand
            break
    if exp is None or recip is None:
        raise HeAeroError(f"no exp / 1/x plan fits {usable} levels between refreshes")
    return exp, recip


def _run(params, shape, plans, ranges, hiding_bits, allow_refresh=True):
    """Symbolic prefill (T_max tokens) and decode (last position) through every layer."""
    out = {}
    block = 1 << max(0, (shape.t_max - 1).bit_length())
    layout = feature_layout(params.slots, shape.t_max, shape.d_model, block=block)
    steps: set = set()
    for phase in ("prefill", "decode"):
        ev = Evaluator(params)
        ref = Refresher(ev, None, ranges.activation_bound, hiding_bits, allow=allow_refresh)
        lay = layout if phase == "prefill" else layout.with_tokens(1)
        xs = [Ct(None, params.levels, lay) for _ in range(lay.n_ct)]
        for i in range(shape.n_layer):
            layer = EncryptedLayer(i, _layer_arrays(shape, i), *plans[i])
            if phase == "prefill":
                xs, _ = layer.prefill(ev, ref, xs, lay)
            else:
                cache = KVCache(
                    [Ct(None, params.levels)] * lay.n_ct,
                    [Ct(None, params.levels)] * lay.n_ct,
                    shape.t_max - 1,
                )
                xs = layer.decode(ev, ref, xs, cache, lay)
        steps |= ev.stats.steps_used
        out[phase] = (ev, ref, xs)
    return out, tuple(sorted(steps))


def _latency(stats, ref, params) -> float:
    """Seconds: op counts by level x measured top-level latency x (primes at that level / primes at top)."""
    lat = OP_LATENCY_MS[params.poly_modulus_degree]
    top = params.levels

    def scaled(counter, name, with_special):
        extra = 1 if with_special else 0
        return sum(n * lat[name] * (lvl + 1 + extra) / (top + 1 + extra) for lvl, n in counter.items())

    ms = scaled(stats.rotations, "rotate", True) + scaled(stats.ctct_mults, "ctct_mult", True)
    ms += scaled(stats.pt_mults, "pt_mult", False) + stats.adds * lat["add"]
    ms += ref.log.ciphertexts * (lat["decrypt"] + lat["encrypt"])  # client side of refreshes
    return ms / 1000.0


def _phase_summary(ev, ref, params) -> dict:
    s = ev.stats.summary()
    s.pop("seal_seconds")
    s["latency_s"] = round(_latency(ev.stats, ref, params), 2)
    s["refresh_mb"] = round((ref.log.bytes_to_client + ref.log.bytes_to_server) / 1e6, 2)
    return s


def evaluate_ring(
    params: CkksParams, shape: ModelShape, ranges: Ranges, hiding_bits: int, plans: list | None
) -> RingReport:
    """Plan one ring (see the module docstring); infeasible rings carry the reason."""
    report = RingReport(params, False)
    try:
        probe = Refresher(Evaluator(params), None, ranges.activation_bound, hiding_bits)
    except HeAeroError as exc:
        report.reason = str(exc)
        return report
    usable, floor = probe.usable_levels(), probe.min_level()
    report.usable_levels, report.refresh_min_level = usable, floor
    if plans is None:
        try:
            cache: dict = {}
            plans = []
            dens = ranges.denominator or tuple(denominator_domain(w, shape.t_max) for w in ranges.z_window)
            for w, den in zip(ranges.z_window, dens, strict=True):
                key = (tuple(w), tuple(den))
                if key not in cache:
                    cache[key] = fit_plans(*key, ranges, usable)
                plans.append(cache[key])
        except HeAeroError as exc:
            report.reason = str(exc)
            return report
    deepest = [
        max(
            max(atomic_depth(s, mapped=(j == 0)) for j, s in enumerate(e.steps)),
            max(atomic_depth(s) for s in r.steps),
        )
        for e, r in plans
    ]
    if max(deepest) > usable:
        report.reason = (
            f"a plan step needs {max(deepest)} levels between refreshes (per layer: {deepest}), "
            f"the ring leaves {usable}"
        )
        return report
    report.plans = plans
    runs, steps = _run(params, shape, plans, ranges, hiding_bits)
    report.prefill = _phase_summary(*runs["prefill"][:2], params)
    report.decode = _phase_summary(*runs["decode"][:2], params)
    report.stages = runs["prefill"][1].trace
    report.rotation_steps = steps
    rot_key, base = KEY_BYTES[params.poly_modulus_degree]
    report.key_bytes = base + rot_key * len(steps)
    report.feasible = True
    return report


def layer_depths(shape: ModelShape, plans: list) -> list[int]:
    """Levels each layer consumes with no refresh at all (on an unbounded chain)."""
    deep = CkksParams(8192, (60,) + (32,) * 60 + (60,), 32, insecure_for_tests=True)
    out = []
    for i in range(shape.n_layer):
        one = ModelShape(shape.d_model, shape.n_head, 1, shape.t_max)
        runs, _ = _run(deep, one, [plans[i]], Ranges(((-1.0, 1.0),)), 20, allow_refresh=False)
        out.append(deep.levels - min(c.level for c in runs["prefill"][2]))
    return out


def check_depth_budget(shape: ModelShape, plans: list, params: CkksParams, refresh: bool) -> None:
    """Raise before any encryption if the model cannot run on `params`: without refresh each layer's whole
    depth must fit the chain; with refresh, every plan step must fit between two refreshes."""
    if refresh:
        rep = evaluate_ring(params, shape, Ranges(((-1.0, 1.0),) * shape.n_layer), 20, plans)
        if not rep.feasible:
            raise HeAeroError(f"depth budget on {params.describe()}: {rep.reason}")
        return
    depths = layer_depths(shape, plans)
    if sum(depths) > params.levels:
        per = ", ".join(f"layer {i}: {d}" for i, d in enumerate(depths))
        raise HeAeroError(
            f"depth budget exceeded without refresh: {per} (total {sum(depths)}) > {params.levels} levels "
            f"of {params.describe()}"
        )


def make_plan(
    shape: ModelShape,
    ranges: Ranges,
    plans: list | None = None,
    hiding_bits: int = 20,
    rings=RINGS,
) -> HePlan:
    """Compare the rings and choose the one with the lowest estimated prefill + 16 decode steps latency."""
    if len(ranges.z_window) != shape.n_layer:
        raise HeAeroError(f"ranges: {len(ranges.z_window)} z windows for {shape.n_layer} layers")
    if plans is not None and len(plans) != shape.n_layer:
        raise HeAeroError(f"plans: {len(plans)} for {shape.n_layer} layers")
    cands = [evaluate_ring(default_params(n), shape, ranges, hiding_bits, plans) for n in rings]
    ok = [c for c in cands if c.feasible]
    if not ok:
        raise HeAeroError("no ring can run this model: " + "; ".join(
            f"N={c.params.poly_modulus_degree}: {c.reason}" for c in cands))  # fmt: skip

    def cost(c):
        return c.prefill["latency_s"] + 16 * c.decode["latency_s"]

    best = min(ok, key=cost)
    others = [c for c in ok if c is not best]
    why = (
        f"lowest estimated latency (prefill {best.prefill['latency_s']:.1f} s + 16 decode steps x "
        f"{best.decode['latency_s']:.2f} s)"
    )
    if others:
        why += "; " + "; ".join(
            f"N={c.params.poly_modulus_degree} would take {cost(c) / cost(best):.1f}x as long with "
            f"{best.prefill['refresh_rounds'] - c.prefill['refresh_rounds']} fewer prefill refresh rounds, "
            f"{c.key_bytes / max(best.key_bytes, 1):.0f}x the key bytes"
            for c in others
        )
    for c in cands:
        if not c.feasible:
            why += f"; N={c.params.poly_modulus_degree} is out: {c.reason}"
    if math.isfinite(cost(best)):
        return HePlan(shape, ranges, hiding_bits, cands, best, why)
    raise HeAeroError("planner: non-finite latency estimate")
