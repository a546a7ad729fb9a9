"""The plan (compile) stage: checkpoint + calibration -> the execution plan the server loads and runs.

Stage 2 of the lifecycle (calibrate -> plan -> keygen -> encrypt -> run). Everything the runtime decides
before a key exists is decided here, once, and written to a versioned plan file bound to the checkpoint's
weights and to the exact calibration (their SHA-256): the ring and modulus chain, the slot layout, the
approximation plans that run (exp and 1/x per layer, fitted to the ring's levels between refreshes), the
refresh bound and hiding, the rotation steps the client must make keys for, and per-stage levels, refresh
points and operation counts. The server loads a plan and never fits anything.

How the ring is chosen: for each candidate ring (N = 8192 / 16384 / 32768, `default_params`) the least-depth
exp and 1/x plans whose single polynomial step fits between two refreshes are fitted (more squarings /
Newton steps on small rings), then the real pipeline (he_aero/ckks/pipeline.py) runs on a *symbolic*
evaluator (levels and counts, no SEAL objects): one prefill of T_max tokens and one decode step at the last
position. Latency is estimated from measured per-operation costs (`OP_LATENCY_MS`, scaled by the primes left
at each level), bytes from ciphertext and key sizes; the lowest estimated prefill + 16 decode steps wins.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from approx.errors import ApproxError
from approx.plans import Plan, plan_exp, plan_fit, plan_inv_sqrt, plan_reciprocal
from approx.sign import CompositeRelu, relu_composite
from he_aero import __version__
from he_aero.artifacts import MAX_PLAN_ERROR, interval, read_json
from he_aero.calibrate import baseline_refreshed
from he_aero.ckks.attention import head_size
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.hiding import MASK_BITS, SESSION_HIDING_BITS, RefreshHiding
from he_aero.ckks.layer import BaselinePlans, EncryptedLayer
from he_aero.ckks.norm import NormPlan, u_scale
from he_aero.ckks.packing import block_for, feature_layout, rows_count
from he_aero.ckks.params import CkksParams, default_params
from he_aero.ckks.pipeline import Pipeline, shape_only_view
from he_aero.ckks.poly import atomic_depth, step_depth
from he_aero.ckks.refresh import Refresher
from he_aero.errors import HeAeroError

FORMAT_VERSION = 3
KIND = "he-aero plan"
RINGS = (8192, 16384, 32768)
DEFAULT_PLAN = Path(__file__).parent / "data" / "default-plan.json"
MAX_REFINE = 14
"""Most squarings (exp) or Newton iterations (1/x) a fitted plan may use: range reduction for wide windows."""
ATTENTION_BOUND = 2.0**13
"""The largest exp weight, attention numerator or denominator a refresh may see. A layer whose calibrated
attention values can exceed it computes exp(z - delta) instead of exp(z) (`exp_shift`): the sink's weight
becomes e^-delta and numerators and denominators shrink by e^delta, leaving num / den unchanged. Why 2^13:
the refresh bound sets the hiding (he_aero/ckks/hiding.py: k - 46 - log2 B bits per polynomial at N=8192,
scale 2^32), and 2^13 keeps 54 bits, enough for a full-context session (7,472 refreshed polynomials on the
shipped plan) at 40 bits with a bit to spare; a smaller bound shifts more and costs precision where
denominators are small."""
DECODE_STEPS_IN_COST = 16
"""The ring choice minimises the estimated prefill + this many decode steps."""

OP_LATENCY_MS = {
    # bench.oplatency.measure_op_latency at the top level of default_params(N), median of 3, copied
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


VARIANTS = ("softmax-only", "baseline", "relu", "lnfree-relu")
"""models.decoder.VARIANTS: the encrypted runtime runs all of them (the baseline ones for the cost table)."""


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of the model: sizes and block structure only (a symbolic run's counts do not
    depend on values). `variant` / `pruned_ffns` as in `models.decoder.DecoderConfig`."""

    d_model: int
    n_head: int
    n_layer: int
    t_max: int
    vocab: int = 256
    variant: str = "softmax-only"
    pruned_ffns: int = 0

    def __post_init__(self):
        for name in ("d_model", "n_head", "n_layer", "t_max", "vocab"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise HeAeroError(f"model shape: {name} must be an integer >= 1, got {value!r}")
        if self.d_model % self.n_head:
            raise HeAeroError(
                f"model shape: d_model {self.d_model} is not a multiple of n_head {self.n_head}"
            )
        if self.variant not in VARIANTS:
            raise HeAeroError(f"model shape: variant must be one of {', '.join(VARIANTS)}: {self.variant!r}")
        p = self.pruned_ffns
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= self.n_layer:
            raise HeAeroError(f"model shape: pruned_ffns must be an integer in [0, n_layer], got {p!r}")

    @property
    def layer_norm(self) -> bool:
        return self.variant in ("baseline", "relu")

    @property
    def unfused(self) -> bool:
        return self.variant != "softmax-only"

    def to_dict(self) -> dict:
        """The plan file's form; variant and pruned_ffns only when not the defaults, so the softmax-only
        plans written before they existed keep their SHA-256."""
        out = vars(self).copy()
        if self.variant == "softmax-only":
            del out["variant"]
        if not self.pruned_ffns:
            del out["pruned_ffns"]
        return out

    def view(self):
        """The shape-only stand-in view (`shape_only_view`) of this model, for symbolic runs."""
        return shape_only_view(
            self.d_model, self.n_head, self.n_layer, self.t_max, self.vocab, self.variant, self.pruned_ffns
        )

    @classmethod
    def from_config(cls, cfg: dict) -> ModelShape:
        """From a checkpoint's `config` (models.decoder.DecoderConfig.to_dict())."""
        try:
            return cls(
                int(cfg["d_model"]), int(cfg["n_head"]), int(cfg["n_layer"]), int(cfg["block_size"]),
                int(cfg.get("vocab_size", 256)), str(cfg.get("variant", "softmax-only")),
                int(cfg.get("pruned_ffns", 0)),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise HeAeroError(f"model config: missing or malformed size field ({exc})") from exc


@dataclass(frozen=True)
class PlanConfig:
    """How hard the plan stage fits, how much a refresh hides, which rings it compares.

    Attributes
    ----------
    exp_max_rel_error, recip_max_rel_error : certified relative error bounds of the exp and 1/x plans.
    norm_max_rel_error : the 1/sqrt plans' relative error bound (LayerNorm variants).
    act_max_abs_error : the GELU / ReLU approximations' absolute error bound (unfused-FFN variants).
    mask_bits : k, refresh masks are uniform in [-2^k, 2^k) on every coefficient (he_aero/ckks/hiding.py).
    session_hiding_bits : the statistical hiding a session keeps; caps a session's refreshed polynomials.
    logit_flood_bits : f > 0 floods every logits coefficient with a uniform integer in [-2^f, 2^f) (its
        precision cost: docs/security.md, "Logits"); 0 sends the logits re-randomised but unflooded.
    rings : candidate ring degrees.
    """

    exp_max_rel_error: float = 1e-4
    recip_max_rel_error: float = 1e-4
    norm_max_rel_error: float = 1e-4
    act_max_abs_error: float = 2e-3
    mask_bits: int = MASK_BITS
    session_hiding_bits: int = SESSION_HIDING_BITS
    logit_flood_bits: int = 0
    rings: tuple[int, ...] = RINGS

    def __post_init__(self):
        for name in ("exp_max_rel_error", "recip_max_rel_error", "norm_max_rel_error", "act_max_abs_error"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and 0 < v <= MAX_PLAN_ERROR):
                raise HeAeroError(f"plan {name}: expected a number in (0, {MAX_PLAN_ERROR:g}], got {v!r}")
        for name, lo, hi in (
            ("mask_bits", 1, 127),
            ("session_hiding_bits", 1, 128),
            ("logit_flood_bits", 0, 60),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise HeAeroError(f"plan {name}: expected an integer in [{lo}, {hi}], got {v!r}")
        if not self.rings or any(r not in RINGS for r in self.rings):
            raise HeAeroError(f"plan rings: expected some of {list(RINGS)}, got {list(self.rings)}")


def exp_shift(z_hi: float, den_hi: float, num_max: float) -> float:
    """delta >= 0, the least shift that keeps every attention value of the layer at most ATTENTION_BOUND.

    In the domain, exp weights are at most e^z_hi and denominators at most den_hi (both checked before a
    prompt is encrypted), numerators at most num_max (measured on the calibration windows and widened, like
    every activation outside attention); all scale by e^-delta. The reciprocal's iterates then reach
    2 e^delta (1/x of the shifted denominator, whose floor is the sink's e^-delta). When no delta keeps both
    below ATTENTION_BOUND, delta balances them (peak e^-delta = 2 e^delta) and the bound exceeds it; the
    plan stage then refuses the plan if its session cap no longer covers a full context (`compile_plan`).
    Measured cost (docs/security.md, "The bound B"): a shift of 2.03 took layer 2's decode from 10.0 to 8.4
    bits, so delta is the least that fits."""
    peak = attention_peak(z_hi, den_hi, num_max)
    delta = max(0.0, math.log(peak / ATTENTION_BOUND))
    if 2.0 * math.exp(delta) > ATTENTION_BOUND:
        delta = 0.5 * math.log(peak / 2.0)
    return delta


def attention_peak(z_hi: float, den_hi: float, num_max: float) -> float:
    """The largest unshifted attention value of a layer (see `exp_shift`)."""
    return max(math.exp(z_hi), den_hi, num_max)


def attention_refreshed(z_hi: float, den_hi: float, num_max: float, delta: float) -> float:
    """The largest attention value a refresh sees with shift delta: the shifted peak or the reciprocal's
    iterates (2 e^delta). The planner sizes the refresh bound with it; the plan loader checks the bound
    against it with num_max = 0 (numerators are measured, not stored in the plan)."""
    return max(attention_peak(z_hi, den_hi, num_max) * math.exp(-delta), 2.0 * math.exp(delta))


def shifted(window, denominator, shift: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """The exp window and 1/x domain a layer with `exp_shift` shift runs on: z - delta, den e^-delta."""
    scale = math.exp(-shift)
    return (window[0] - shift, window[1] - shift), (denominator[0] * scale, denominator[1] * scale)


@dataclass(frozen=True)
class Ranges:
    """Calibrated ranges (widened by a margin): z = q.k - c window per layer, per-layer exp shift (delta, see
    `exp_shift`), the bound on every refreshed value (the refresh's message bound)."""

    z_window: tuple[tuple[float, float], ...]
    activation_bound: float = 64.0
    exp_error: float = 1e-4
    exp_error_kind: str = "abs"
    recip_rel_error: float = 1e-4
    denominator: tuple[tuple[float, float], ...] | None = None  # per layer; default `denominator_domain`
    shift: tuple[float, ...] | None = None  # per layer; default 0 (no shift)
    baseline: tuple | None = None  # per layer, a calibrate.LayerCalibration (u / pre domains); None: none
    u_final: tuple[float, float] | None = None  # var + eps before the LM head (final LayerNorm)
    norm_rel_error: float = 1e-4
    act_abs_error: float = 2e-3

    def __post_init__(self):
        for a, b in self.z_window + (self.denominator or ()):
            if not a < b:
                raise HeAeroError(f"ranges: window [{a}, {b}] is empty")
        if self.exp_error_kind not in ("abs", "rel"):
            raise HeAeroError(f"ranges: exp_error_kind must be 'abs' or 'rel', got {self.exp_error_kind!r}")
        if not self.activation_bound > 0:
            raise HeAeroError(f"ranges: activation_bound must be > 0, got {self.activation_bound}")

    @classmethod
    def from_calibration(cls, cal, config: PlanConfig) -> Ranges:
        """The planner's view of a calibration: its windows, the exp shift per layer, the refresh bound (the
        calibration's bound on everything outside attention, the attention values after the shift, the
        reciprocal's iterates) and the plan stage's error targets."""
        grow = 1.0 + cal.config.margin
        shifts, bound = [], cal.activation_bound
        for lay, acts in zip(cal.layers, cal.activations, strict=True):
            z_hi, den_hi, num_max = lay.z_domain[1], lay.denominator_domain[1], acts["num"] * grow
            delta = exp_shift(z_hi, den_hi, num_max)
            bound = max(bound, attention_refreshed(z_hi, den_hi, num_max, delta))
            bound = max(bound, baseline_refreshed((lay.u_attn_domain, lay.u_ffn_domain), lay.pre_domain))
            shifts.append(delta)
        bound = max(bound, baseline_refreshed((cal.u_final_domain,)))
        return cls(
            tuple(tuple(lay.z_domain) for lay in cal.layers),
            bound,
            exp_error=config.exp_max_rel_error,
            exp_error_kind="rel",
            recip_rel_error=config.recip_max_rel_error,
            denominator=tuple(tuple(lay.denominator_domain) for lay in cal.layers),
            shift=tuple(shifts),
            baseline=tuple(cal.layers) if cal.layers[0].pre_domain is not None else None,
            u_final=cal.u_final_domain,
            norm_rel_error=config.norm_max_rel_error,
            act_abs_error=config.act_max_abs_error,
        )


@dataclass
class RingReport:
    """One candidate ring: feasibility, plans, stage levels, counts, latency and byte estimates."""

    params: CkksParams
    feasible: bool
    reason: str = ""
    usable_levels: int = 0
    refresh_min_level: int = 0
    plans: list = field(default_factory=list)  # per layer: (exp Plan, recip Plan, shift[, BaselinePlans])
    final_norm: NormPlan | None = None  # the final LayerNorm's 1/sqrt plan (LayerNorm variants)
    block: int = 0
    decode_rows: bool = False
    prefill: dict = field(default_factory=dict)
    decode: dict = field(default_factory=dict)
    stages: list = field(default_factory=list)  # prefill level assignment: one dict per stage
    key_bytes_base: int = 0  # public + relinearisation keys; add KEY_BYTES[N][0] per rotation step

    @property
    def cost(self) -> float:
        return self.prefill["latency_s"] + DECODE_STEPS_IN_COST * self.decode["latency_s"]

    def row(self, chosen: bool) -> dict:
        """The comparison-table row (what `ExecutionPlan.explain` prints)."""
        out = {
            "poly_modulus_degree": self.params.poly_modulus_degree,
            "levels": self.params.levels,
            "feasible": self.feasible,
            "reason": self.reason,
            "chosen": chosen,
        }
        if self.feasible:
            out.update(
                usable_levels=self.usable_levels,
                prefill_latency_s=self.prefill["latency_s"],
                decode_latency_s=self.decode["latency_s"],
                prefill_refresh_rounds=self.prefill["refresh_rounds"],
                decode_refresh_rounds=self.decode["refresh_rounds"],
                prefill_refresh_mb=self.prefill["refresh_mb"],
                decode_refresh_mb=self.decode["refresh_mb"],
            )
        return out


@dataclass
class RingChoice:
    """The planner's decision: every candidate ring, the chosen one and why."""

    candidates: list[RingReport]
    chosen: RingReport
    why: str


def denominator_domain(z_window, t_max: int) -> tuple[float, float]:
    """[1, 1 + T exp(max z)]: the sink's 1 plus at most T weights, each at most exp of the window's top."""
    return 1.0, 1.0 + t_max * math.exp(max(0.0, float(z_window[1])))


def fit_plans(window, denominator, ranges: Ranges, usable: int) -> tuple[Plan, Plan]:
    """Least-depth exp (on `window`) and 1/x (on `denominator`) plans whose polynomial step fits `usable`
    levels (the affine map of exp is folded into the score mask; the reciprocal's costs a level: folding its
    scale into the lag selection shrinks the weights ~100x against fixed-size noise, measured 2+ bits worse
    and once unstable)."""
    exp = recip = None
    for k in range(0, MAX_REFINE + 1):
        try:
            cand = plan_exp(window, squarings=k, **{f"max_{ranges.exp_error_kind}_error": ranges.exp_error})
        except ApproxError:  # unreachable with k squarings: try more
            continue
        if step_depth(cand.steps[0], mapped=True) <= usable:
            exp = cand
            break
    for n in range(0, MAX_REFINE + 1):
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


def fit_inv_sqrt(domain, rel_error: float, usable: int) -> NormPlan:
    """A LayerNorm's 1/sqrt plan for a calibrated var + eps `domain`: fitted on domain / `u_scale(domain)`
    (he_aero/ckks/norm.py says why), with the fewest Newton steps whose every piece fits `usable` levels."""
    g = u_scale(domain)
    scaled = (domain[0] / g, domain[1] / g)
    for n in range(0, MAX_REFINE + 1):
        try:
            cand = plan_inv_sqrt(scaled, rel_error, newton=n)
        except ApproxError:
            continue
        if max(atomic_depth(st) for st in cand.steps) <= usable:
            return NormPlan(cand, g)
    raise HeAeroError(f"no 1/sqrt plan on [{domain[0]:.4g}, {domain[1]:.4g}] fits {usable} levels")


def fit_activation(act: str, domain, abs_error: float, usable: int) -> Plan | CompositeRelu:
    """GELU: the least-depth minimax polynomial (its input map folded into W_1) if it fits `usable` levels;
    ReLU: the composite sign whose stages each fit them (he_aero/ckks/ffn.py)."""
    try:
        if act == "gelu":
            plan = plan_fit("gelu", tuple(domain), abs_error)
            need = step_depth(plan.steps[0], mapped=True)
            if need > usable:
                raise HeAeroError(
                    f"GELU on [{domain[0]:.3g}, {domain[1]:.3g}] to {abs_error:g} needs {need} levels in one "
                    f"polynomial, the ring leaves {usable}"
                )
            return plan
        return relu_composite(max(abs(domain[0]), abs(domain[1])), abs_error, max_stage_depth=usable)
    except ApproxError as exc:
        raise HeAeroError(f"{act} on [{domain[0]:.3g}, {domain[1]:.3g}]: {exc}") from exc


def approximation_depths(plans: list, final: NormPlan | None) -> list[int]:
    """Per layer, the most levels one unsplittable piece of any of its approximations needs (exp, 1/x, and
    a baseline block's 1/sqrt and activation); the final LayerNorm's 1/sqrt counts with the last layer."""
    out = []
    for i, (e, r, _, *rest) in enumerate(plans):
        need = [atomic_depth(st, mapped=(j == 0)) for j, st in enumerate(e.steps)]
        need += [atomic_depth(st) for st in r.steps]
        extra = [p for p in (rest[0].norm_attn, rest[0].norm_ffn) if p is not None] if rest else []
        if final is not None and i == len(plans) - 1:
            extra.append(final)
        need += [atomic_depth(st) for p in extra for st in p.plan.steps]
        if rest:
            act = rest[0].act
            if isinstance(act, CompositeRelu):
                need.append(act.stage_depth)
            else:  # its first map is folded into W_1
                need += [atomic_depth(st, mapped=(j == 0)) for j, st in enumerate(act.steps)]
        out.append(max(need))
    return out


def decode_rows_for(params: CkksParams, block: int, d_model: int, vocab: int) -> bool:
    """Decode in the "rows" layout when the model's features fit one ciphertext and the token upload is at
    most twice the "features" one's (N=16384, T=64: 4 ciphertexts instead of 2, 6 rotations and 5 products
    instead of 37 and 256 for the embedding, 34 rotations and 8 products instead of 29 and 256 for the LM
    head)."""
    per_ct = params.slots // block
    return d_model <= per_ct and rows_count(vocab, block) <= 2 * -(-vocab // per_ct)


def _op_latency_ms(n: int) -> dict:
    """OP_LATENCY_MS of ring degree n; test-only small rings get the N=8192 costs scaled by N (an estimate;
    nothing is chosen on it)."""
    return OP_LATENCY_MS.get(n) or {k: v * n / 8192 for k, v in OP_LATENCY_MS[8192].items()}


def op_seconds(stats, params, latency_ms: dict | None = None) -> float:
    """Seconds of the operations in `stats` (an OpStats) on one core: counts by level x the measured top-level
    latency (`latency_ms`, default OP_LATENCY_MS of the ring) x (primes at that level / primes at the top),
    plus additions."""
    lat, top = latency_ms or _op_latency_ms(params.poly_modulus_degree), params.levels

    def scaled(counter, name, with_special):
        extra = 1 if with_special else 0
        return sum(n * lat[name] * (lvl + 1 + extra) / (top + 1 + extra) for lvl, n in counter.items())

    ms = scaled(stats.rotations, "rotate", True) + scaled(stats.ctct_mults, "ctct_mult", True)
    ms += scaled(stats.pt_mults, "pt_mult", False) + stats.adds * lat["add"]
    return ms / 1000.0


def client_refresh_seconds(refreshed: int, params) -> float:
    """The client's share of refreshing `refreshed` ciphertexts (a decryption and an encryption each)."""
    lat = _op_latency_ms(params.poly_modulus_degree)
    return refreshed * (lat["decrypt"] + lat["encrypt"]) / 1000.0


def _latency(stats, ref, params) -> float:
    """Seconds: the operations (`op_seconds`) plus the client's side of the refreshes."""
    return op_seconds(stats, params) + client_refresh_seconds(ref.log.ciphertexts, params)


def _phase_summary(ev, ref, params) -> dict:
    s = ev.stats.summary()
    s.pop("seal_seconds")
    s["latency_s"] = round(_latency(ev.stats, ref, params), 2)
    s["refresh_mb"] = round((ref.log.bytes_to_client + ref.log.bytes_to_server) / 1e6, 2)
    return s


def _fit_for_ring(shape: ModelShape, ranges: Ranges, usable: int) -> tuple[list, NormPlan | None]:
    """Per layer (exp plan, reciprocal plan, exp shift[, BaselinePlans]), fitted on the shifted window and
    denominators (and a baseline block's calibrated LayerNorm and FFN ranges); the final LayerNorm's plan."""
    cache: dict = {}
    plans = []
    dens = ranges.denominator or tuple(denominator_domain(w, shape.t_max) for w in ranges.z_window)
    deltas = ranges.shift or (0.0,) * len(ranges.z_window)
    if shape.unfused and ranges.baseline is None:
        raise HeAeroError(f"a {shape.variant} model needs a calibration of its LayerNorm / FFN ranges")
    act = {"baseline": "gelu"}.get(shape.variant, "relu")
    for i, (w, den, delta) in enumerate(zip(ranges.z_window, dens, deltas, strict=True)):
        key = shifted(tuple(w), tuple(den), delta)
        if key not in cache:
            cache[key] = fit_plans(*key, ranges, usable)
        plans.append((*cache[key], delta))
        if shape.unfused:
            lay = ranges.baseline[i]
            norms = [
                None if u is None else fit_inv_sqrt(u, ranges.norm_rel_error, usable)
                for u in (lay.u_attn_domain, lay.u_ffn_domain)
            ]
            approx = fit_activation(act, lay.pre_domain, ranges.act_abs_error, usable)
            plans[-1] = (*plans[-1], BaselinePlans(approx, *norms))
    final = None
    if shape.layer_norm:
        if ranges.u_final is None:
            raise HeAeroError("a LayerNorm model needs the calibrated range before its final LayerNorm")
        final = fit_inv_sqrt(ranges.u_final, ranges.norm_rel_error, usable)
    return plans, final


def evaluate_ring(
    params: CkksParams,
    shape: ModelShape,
    ranges: Ranges,
    mask_bits: int,
    plans: list | None,
    decode_rows: bool | None = None,
) -> RingReport:
    """Plan one ring (see the module docstring); infeasible rings carry the reason. `decode_rows` None
    decides the decode layout by shape (`decode_rows_for`)."""
    report = RingReport(params, False)
    try:
        probe = Refresher(Evaluator(params), None, ranges.activation_bound, mask_bits)
    except HeAeroError as exc:
        report.reason = str(exc)
        return report
    usable, floor = probe.usable_levels(), probe.min_level()
    report.usable_levels, report.refresh_min_level = usable, floor
    final = None
    if plans is None:
        try:
            plans, final = _fit_for_ring(shape, ranges, usable)
        except HeAeroError as exc:
            report.reason = str(exc)
            return report
    deepest = approximation_depths(plans, final)
    if max(deepest) > usable:
        report.reason = (
            f"a plan step needs {max(deepest)} levels between refreshes (per layer: {deepest}), "
            f"the ring leaves {usable}"
        )
        return report
    report.plans, report.final_norm = list(plans), final
    report.block = block_for(shape.t_max)
    if report.block > params.slots:
        report.reason = f"context {shape.t_max} does not fit {params.slots} slots"
        return report
    if decode_rows is None:
        decode_rows = decode_rows_for(params, report.block, shape.d_model, shape.vocab)
    report.decode_rows = decode_rows
    try:  # attention sums a head's d_k feature blocks inside one ciphertext
        head_size(shape.d_model, shape.n_head, params.slots // report.block, "attention")
    except HeAeroError as exc:
        report.reason = str(exc)
        return report
    pipe = Pipeline(shape.view(), plans, params, report.block, report.decode_rows, final)
    bound = ranges.activation_bound
    ev, ref, caches, _ = pipe.symbolic_prefill(shape.t_max, bound, mask_bits)
    report.prefill = _phase_summary(ev, ref, params)
    report.stages = ref.trace
    for c in caches:  # the costliest decode step: the last position
        c.length = shape.t_max - 1
    dev, dref, _ = pipe.symbolic_decode(caches, bound, mask_bits)
    report.decode = _phase_summary(dev, dref, params)
    report.key_bytes_base = KEY_BYTES.get(params.poly_modulus_degree, (0, 0))[1]  # tests: small rings
    report.feasible = True
    return report


def choose_ring(
    shape: ModelShape,
    ranges: Ranges,
    plans: list | None = None,
    mask_bits: int = MASK_BITS,
    rings=RINGS,
) -> RingChoice:
    """Compare the rings; choose the lowest estimated prefill + DECODE_STEPS_IN_COST decode steps."""
    if len(ranges.z_window) != shape.n_layer:
        raise HeAeroError(f"ranges: {len(ranges.z_window)} z windows for {shape.n_layer} layers")
    if plans is not None and len(plans) != shape.n_layer:
        raise HeAeroError(f"plans: {len(plans)} for {shape.n_layer} layers")
    cands = [evaluate_ring(default_params(n), shape, ranges, mask_bits, plans) for n in rings]
    ok = [c for c in cands if c.feasible]
    if not ok:
        raise HeAeroError("no ring can run this model: " + "; ".join(
            f"N={c.params.poly_modulus_degree}: {c.reason}" for c in cands))  # fmt: skip
    best = min(ok, key=lambda c: c.cost)
    if not math.isfinite(best.cost):
        raise HeAeroError("planner: non-finite latency estimate")
    why = (
        f"lowest estimated latency (prefill {best.prefill['latency_s']:.1f} s + {DECODE_STEPS_IN_COST} "
        f"decode steps x {best.decode['latency_s']:.2f} s)"
    )
    for c in cands:
        if c is best:
            continue
        if c.feasible:
            why += (
                f"; N={c.params.poly_modulus_degree} would take {c.cost / best.cost:.1f}x as long with "
                f"{best.prefill['refresh_rounds'] - c.prefill['refresh_rounds']} fewer prefill refresh rounds"
            )
        else:
            why += f"; N={c.params.poly_modulus_degree} is out: {c.reason}"
    return RingChoice(cands, best, why)


SYMBOLIC_LEVELS = 400  # chain of `layer_depths`; symbolic, so its length costs nothing


def layer_depths(shape: ModelShape, plans: list) -> list[int]:
    """Levels each layer consumes with no refresh at all, on a symbolic chain deep enough for any plan the
    loader accepts (a LayerNorm's Newton steps plus a composite ReLU's stages pass 60 levels in one layer)."""
    deep = CkksParams(8192, (60,) + (32,) * SYMBOLIC_LEVELS + (60,), 32, insecure_for_tests=True)
    layout = feature_layout(deep.slots, shape.t_max, shape.d_model)
    view = shape.view()
    out = []
    for i in range(shape.n_layer):
        ev = Evaluator(deep)
        ref = Refresher(ev, None, 1.0, MASK_BITS, allow=False)
        xs = [Ct(None, deep.levels, layout) for _ in range(layout.n_ct)]
        xs, _ = EncryptedLayer(i, view.layers[i], *plans[i]).prefill(ev, ref, xs, layout)
        out.append(deep.levels - ev.lowest(xs))
    return out


def check_depth_budget(shape: ModelShape, plans: list, params: CkksParams, refresh: bool) -> None:
    """Raise before any encryption if the model cannot run on `params`: without refresh each layer's whole
    depth must fit the chain; with refresh, every plan step must fit between two refreshes."""
    if refresh:
        rep = evaluate_ring(params, shape, Ranges(((-1.0, 1.0),) * shape.n_layer), MASK_BITS, plans)
        if not rep.feasible:
            raise HeAeroError(f"depth budget on {params.describe()}: {rep.reason}")
        return
    depths = layer_depths(shape, plans)
    computing = params.levels - params.base_level
    if sum(depths) > computing:
        per = ", ".join(f"layer {i}: {d}" for i, d in enumerate(depths))
        raise HeAeroError(
            f"depth budget exceeded without refresh: {per} (total {sum(depths)}) > {computing} levels "
            f"of {params.describe()}"
        )


# --- the artifact -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerPlan:
    """What runs in one layer's attention: exp on the z window, 1/x on the denominator range, both shifted by
    `exp_shift` (delta: exp runs on z - delta, 1/x on den e^-delta; `exp_shift`). The domains are the
    unshifted ranges the model's values must stay in. A baseline block adds its FFN activation (a GELU plan
    or a composite-sign ReLU) on `pre_domain` and its LayerNorms' 1/sqrt plans on var + eps."""

    exp: Plan
    reciprocal: Plan
    z_domain: tuple[float, float]
    denominator_domain: tuple[float, float]
    exp_shift: float = 0.0
    act: Plan | CompositeRelu | None = None
    pre_domain: tuple[float, float] | None = None
    norm_attn: Plan | None = None
    u_attn_domain: tuple[float, float] | None = None
    norm_ffn: Plan | None = None
    u_ffn_domain: tuple[float, float] | None = None

    @property
    def pipeline_plans(self) -> tuple:
        """(exp, reciprocal, exp shift[, BaselinePlans]): one layer's entry of `Pipeline`'s plans."""
        return (self.exp, self.reciprocal, self.exp_shift) + (
            (self.baseline,) if self.act is not None else ()
        )

    @property
    def baseline(self) -> BaselinePlans | None:
        """What `Pipeline` runs for a baseline block: the 1/sqrt plans with their input scales
        (he_aero/ckks/norm.py: fitted on var + eps over the geometric centre of the calibrated domain)."""
        if self.act is None:
            return None
        norms = [
            None if p is None else NormPlan.for_domain(p, dom)
            for p, dom in ((self.norm_attn, self.u_attn_domain), (self.norm_ffn, self.u_ffn_domain))
        ]
        return BaselinePlans(self.act, *norms)

    def baseline_dict(self) -> dict:
        """The plan file's optional per-layer fields (none for a softmax-only layer)."""
        out: dict = {}
        if self.act is not None:
            out["act"], out["pre_domain"] = self.act.to_dict(), list(self.pre_domain)
        for name, plan, dom in (("norm_attn", self.norm_attn, self.u_attn_domain),
                                ("norm_ffn", self.norm_ffn, self.u_ffn_domain)):  # fmt: skip
            if plan is not None:
                out[name], out[name.replace("norm", "u") + "_domain"] = plan.to_dict(), list(dom)
        return out


@dataclass(frozen=True)
class ExecutionPlan:
    """The compiled plan (module docstring): everything the server runs and the client is offered.

    Build with `compile_plan`, read with `load_plan`; `sha256` identifies it (the offer carries it)."""

    weights_sha256: str
    calibration_sha256: str
    shape: ModelShape
    params: CkksParams
    block: int
    decode_rows: bool
    layers: tuple[LayerPlan, ...]
    activation_bound: float  # bound on |x| of any refreshed value (the refresh's message bound)
    mask_bits: int
    session_hiding_bits: int
    logit_flood_bits: int
    logit_domain: tuple[float, float]  # the client's plausibility check
    rotation_steps: tuple[int, ...]
    usable_levels: int
    refresh_min_level: int
    final_norm: Plan | None = None  # the final LayerNorm's 1/sqrt plan (LayerNorm variants)
    u_final_domain: tuple[float, float] | None = None
    estimates: dict = field(default_factory=dict, compare=False)  # prefill / decode counts and latency
    stages: tuple = field(default=(), compare=False)  # prefill levels: {stage, need, level_in, refreshed}
    comparison: tuple = field(default=(), compare=False)  # one RingReport.row per candidate ring
    why: str = field(default="", compare=False)
    producer: str = field(default=f"he-aero {__version__}", compare=False)

    @property
    def plans(self) -> list[tuple]:
        """Per layer (exp, reciprocal, exp shift[, BaselinePlans]): what `Pipeline` takes."""
        return [lay.pipeline_plans for lay in self.layers]

    @property
    def final_norm_plan(self) -> NormPlan | None:
        """The final LayerNorm's `NormPlan` for `Pipeline` (None without one)."""
        return None if self.final_norm is None else NormPlan.for_domain(self.final_norm, self.u_final_domain)

    @property
    def hiding(self) -> RefreshHiding:
        """What the refresh hides on this ring with this bound (he_aero/ckks/hiding.py)."""
        p = self.params
        return RefreshHiding(p.poly_modulus_degree, self.mask_bits, p.scale_bits, self.activation_bound)

    @property
    def max_refresh_polynomials(self) -> int:
        """The session cap the server enforces: the most refreshed polynomials that keep
        `session_hiding_bits` of hiding."""
        return self.hiding.max_polynomials(self.session_hiding_bits)

    @property
    def key_bytes(self) -> int:
        """Estimated serialised size of the client's keys (public, relinearisation, rotations)."""
        rot, base = KEY_BYTES.get(self.params.poly_modulus_degree, (0, 0))
        return base + rot * len(self.rotation_steps)

    @property
    def sha256(self) -> str:
        """SHA-256 of the canonical JSON of `to_dict()`."""
        return hashlib.sha256(_canonical(self.to_dict())).hexdigest()

    def check_checkpoint(self, header: dict) -> None:
        """Refuse weights this plan was not compiled for."""
        sha = str(header.get("weights_sha256"))
        if sha != self.weights_sha256:
            raise HeAeroError(
                f"the plan was compiled for checkpoint weights {self.weights_sha256[:12]}..., not "
                f"{sha[:12]}...: run `he-aero plan --checkpoint CHECKPOINT --calibration FILE --out PLAN`"
            )

    def to_dict(self) -> dict:
        p = self.params
        return {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "producer": self.producer,
            "checkpoint": {"weights_sha256": self.weights_sha256, "shape": self.shape.to_dict()},
            "calibration_sha256": self.calibration_sha256,
            "ckks": {
                "poly_modulus_degree": p.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(p.coeff_mod_bit_sizes),
                "scale_bits": p.scale_bits,
                "insecure_for_tests": p.insecure_for_tests,
            },
            "layout": {"block": self.block, "decode_rows": self.decode_rows},
            "layers": [
                {
                    "z_domain": list(lay.z_domain),
                    "denominator_domain": list(lay.denominator_domain),
                    "exp_shift": lay.exp_shift,
                    "exp": lay.exp.to_dict(),
                    "reciprocal": lay.reciprocal.to_dict(),
                    **lay.baseline_dict(),
                }
                for lay in self.layers
            ],
            **(
                {}
                if self.final_norm is None
                else {"final_norm": self.final_norm.to_dict(), "u_final_domain": list(self.u_final_domain)}
            ),
            "refresh": {
                "activation_bound": self.activation_bound,
                "mask_bits": self.mask_bits,
                "session_hiding_bits": self.session_hiding_bits,
                "logit_flood_bits": self.logit_flood_bits,
                "max_refresh_polynomials": self.max_refresh_polynomials,
                "per_polynomial_hiding_bits": round(self.hiding.per_polynomial_bits, 3),
                "usable_levels": self.usable_levels,
                "min_level": self.refresh_min_level,
            },
            "logit_domain": list(self.logit_domain),
            "rotation_steps": list(self.rotation_steps),
            "estimates": self.estimates,
            "stages": list(self.stages),
            "comparison": {"rings": list(self.comparison), "why": self.why},
        }

    @classmethod
    def from_dict(cls, data, where: str = "plan") -> ExecutionPlan:
        """Validate a plan dictionary; HeAeroError names the bad field."""
        reader = _Reader(where)
        if not isinstance(data, dict):
            raise HeAeroError(f"{where}: expected a JSON object")
        if reader.need(data, "kind") != KIND:
            raise HeAeroError(f"{where}: field 'kind' is {data['kind']!r}, not {KIND!r} (not a plan file)")
        version = reader.need(data, "format_version")
        if isinstance(version, bool) or version != FORMAT_VERSION:
            raise HeAeroError(
                f"{where}: format_version {version!r}, this he-aero reads {FORMAT_VERSION} "
                "(re-run `he-aero plan`)"
            )
        ckpt = reader.need(data, "checkpoint")
        sha = reader.need(ckpt, "weights_sha256", "checkpoint.")
        cal_sha = reader.need(data, "calibration_sha256")
        for name, value in (("checkpoint.weights_sha256", sha), ("calibration_sha256", cal_sha)):
            if (
                not isinstance(value, str)
                or len(value) != 64
                or any(c not in "0123456789abcdef" for c in value)
            ):
                raise HeAeroError(f"{where}: field {name!r} is not a SHA-256 hex digest")
        try:
            shape = ModelShape(**reader.need(ckpt, "shape", "checkpoint."))
        except TypeError as exc:
            raise HeAeroError(f"{where}: field 'checkpoint.shape': {exc}") from exc
        except HeAeroError as exc:
            raise HeAeroError(f"{where}: field 'checkpoint.shape': {exc}") from exc
        ck = reader.need(data, "ckks")
        try:
            params = CkksParams(
                reader.integer(ck, "poly_modulus_degree", "ckks."),
                tuple(reader.integers(ck, "coeff_mod_bit_sizes", "ckks.")),
                reader.integer(ck, "scale_bits", "ckks."),
                reader.boolean(ck, "insecure_for_tests", "ckks."),
            )
        except (HeAeroError, TypeError, ValueError) as exc:
            raise HeAeroError(f"{where}: field 'ckks': {exc}") from exc
        layout = reader.need(data, "layout")
        raw_layers = reader.need(data, "layers")
        if not isinstance(raw_layers, list) or len(raw_layers) != shape.n_layer:
            raise HeAeroError(f"{where}: field 'layers' must list {shape.n_layer} layers")
        layers = []
        for i, raw in enumerate(raw_layers):
            ctx = f"layers[{i}]."
            try:
                exp = Plan.from_dict(reader.need(raw, "exp", ctx))
                recip = Plan.from_dict(reader.need(raw, "reciprocal", ctx))
                for approx in (exp, recip):
                    _check_claim(approx)
            except ApproxError as exc:
                raise HeAeroError(f"{where}: layers[{i}] plan: {exc}") from exc
            if exp.function != "exp" or recip.function != "reciprocal":
                raise HeAeroError(f"{where}: layers[{i}]: expected an exp and a reciprocal plan")
            z = reader.pair(reader.need(raw, "z_domain", ctx), f"{ctx}z_domain")
            den = reader.pair(reader.need(raw, "denominator_domain", ctx), f"{ctx}denominator_domain")
            delta = reader.need(raw, "exp_shift", ctx)
            if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 <= delta < 64:
                raise HeAeroError(f"{where}: field '{ctx}exp_shift' must be a number in [0, 64)")
            ranges = shifted(z, den, delta)  # what exp and 1/x see
            for plan, dom, name in zip((exp, recip), ranges, ("exp", "reciprocal"), strict=True):
                a, b = plan.steps[0].domain  # what the first polynomial is fitted on must cover the range
                if a > dom[0] or b < dom[1]:
                    raise HeAeroError(
                        f"{where}: layers[{i}].{name}: its polynomial's domain [{a:g}, {b:g}] does not "
                        f"cover the layer's range [{dom[0]:g}, {dom[1]:g}]"
                    )
            extra = _read_baseline(reader, raw, ctx, shape)
            layers.append(LayerPlan(exp, recip, z, den, float(delta), **extra))
        final = {}
        if shape.layer_norm:
            final = _read_norm(reader, data, "final_norm", "u_final_domain", "")
            final = {"final_norm": final["final_norm"], "u_final_domain": final["u_final_domain"]}
        else:
            for key in ("final_norm", "u_final_domain"):
                if key in data:
                    raise HeAeroError(f"{where}: field {key!r} in a plan for a {shape.variant} model")
        refresh = reader.need(data, "refresh")
        bound = reader.need(refresh, "activation_bound", "refresh.")
        if (
            isinstance(bound, bool)
            or not isinstance(bound, (int, float))
            or not (math.isfinite(bound) and bound > 0)
        ):
            raise HeAeroError(f"{where}: field 'refresh.activation_bound' must be a positive number")
        # what the plan's own domains and shifts put through a refresh: weights up to e^(z_hi - delta),
        # denominators up to den_hi e^-delta, the reciprocal's iterates up to 2 e^delta (`exp_shift`)
        for i, lay in enumerate(layers):
            need = attention_refreshed(lay.z_domain[1], lay.denominator_domain[1], 0.0, lay.exp_shift)
            u_domains = [lay.u_attn_domain, lay.u_ffn_domain]
            if i == len(layers) - 1:
                u_domains.append(final.get("u_final_domain"))
            need = max(need, baseline_refreshed(u_domains, lay.pre_domain))
            if bound < need * (1 - 1e-9):
                raise HeAeroError(
                    f"{where}: field 'refresh.activation_bound' is {bound:.6g}, below the {need:.6g} that "
                    f"layers[{i}]'s domains and exp shift put through a refresh"
                )
        steps = reader.integers(data, "rotation_steps")
        if not steps or any(not 0 < s < params.slots for s in steps) or len(set(steps)) != len(steps):
            raise HeAeroError(
                f"{where}: field 'rotation_steps' must list distinct slot steps in [1, {params.slots - 1}]"
            )
        mask_bits = reader.integer(refresh, "mask_bits", "refresh.")
        session_bits = reader.integer(refresh, "session_hiding_bits", "refresh.")
        flood = reader.integer(refresh, "logit_flood_bits", "refresh.")
        try:  # the refresh levels and cap follow from ring, bound and mask: recomputed, never trusted
            PlanConfig(mask_bits=mask_bits, session_hiding_bits=session_bits, logit_flood_bits=flood)
            probe = Refresher(Evaluator(params), None, float(bound), mask_bits)
        except HeAeroError as exc:
            raise HeAeroError(f"{where}: field 'refresh': {exc}") from exc
        cap = probe.hiding.max_polynomials(session_bits)
        for key, want in (
            ("min_level", probe.min_level()),
            ("usable_levels", probe.usable_levels()),
            ("max_refresh_polynomials", cap),
        ):
            if reader.integer(refresh, key, "refresh.") != want:
                raise HeAeroError(
                    f"{where}: field 'refresh.{key}' is {refresh[key]}, the ring and bound give {want}"
                )
        block = reader.integer(layout, "block", "layout.")
        if block < shape.t_max or block & (block - 1) or block > params.slots:
            raise HeAeroError(
                f"{where}: field 'layout.block' {block} must be a power of two holding the context"
            )
        plans = [lay.pipeline_plans for lay in layers]
        final_plan = None if not final else NormPlan.for_domain(final["final_norm"], final["u_final_domain"])
        deepest = approximation_depths(plans, final_plan)
        if max(deepest) > probe.usable_levels():
            raise HeAeroError(
                f"{where}: an approximation step needs {max(deepest)} levels between refreshes (per layer: "
                f"{deepest}), the ring leaves {probe.usable_levels()}"
            )
        informational = _informational(data, where)
        return cls(
            weights_sha256=sha,
            calibration_sha256=cal_sha,
            shape=shape,
            params=params,
            block=block,
            decode_rows=reader.boolean(layout, "decode_rows", "layout."),
            layers=tuple(layers),
            activation_bound=float(bound),
            mask_bits=mask_bits,
            session_hiding_bits=session_bits,
            logit_flood_bits=flood,
            logit_domain=reader.pair(reader.need(data, "logit_domain"), "logit_domain"),
            rotation_steps=tuple(steps),
            usable_levels=probe.usable_levels(),
            refresh_min_level=probe.min_level(),
            **final,
            **informational,
            producer=str(data.get("producer", "")),
        )

    def domain_violations(self, view, tokens) -> list[str]:
        """Where the plaintext model, run on `tokens`, leaves this plan's approximation domains (or its logits
        leave the logit range the client's plausibility check accepts): one line per (layer, head, range) or
        for the logits, with the value and by how much, worst first; [] when every value is inside.

        Why: a polynomial evaluated outside its domain diverges, and encrypted, nobody sees it. A client that
        holds the model (in-process runs, a local checkpoint) checks each step before encrypting it, so such
        an input is reported with its cause instead of producing wrong tokens (or being flagged after the
        work, with a less precise reason). `view`: `models.linear_view.LinearView`; `tokens`: the whole
        sequence so far (<= T_max ints)."""
        from models.linear_view import embed, layer_forward, lm_forward, normalise

        x = embed(view, tokens)
        causal = np.tril(np.ones((len(tokens), len(tokens)), dtype=bool))
        found = []
        for i, (lay, dom) in enumerate(zip(view.layers, self.layers, strict=True)):
            inter = layer_forward(lay, x)
            for h in range(lay.n_head):
                z = inter["z"][h][causal]
                checks = (
                    ("exp input z", float(z.min()), dom.z_domain[0], "below"),
                    ("exp input z", float(z.max()), dom.z_domain[1], "above"),
                    ("softmax denominator", float(inter["den"][h].max()), dom.denominator_domain[1], "above"),
                )
                for what, value, edge, side in checks:
                    if (value < edge) if side == "below" else (value > edge):
                        gap = abs(value - edge)
                        where = f"layer {i} head {h}: {what} {value:.4g}"
                        found.append((gap, f"{where} {side} the domain edge {edge:.4g} by {gap:.3g}"))
            for key, what, span in (
                ("u_attn", "LayerNorm (attention) var + eps", dom.u_attn_domain),
                ("u_ffn", "LayerNorm (FFN) var + eps", dom.u_ffn_domain),
                ("pre", "FFN pre-activation", dom.pre_domain),
            ):
                if span is not None and key in inter:
                    found += _outside(f"layer {i}: {what}", inter[key], span)
            x = inter["x_out"]
        if self.u_final_domain is not None:
            found += _outside("final LayerNorm var + eps", normalise(x, view.layers[-1].norm_eps)[1],
                              self.u_final_domain)  # fmt: skip
        logits = lm_forward(view, x)  # (T, V)
        lo, hi = self.logit_domain
        for value, edge, side in ((float(logits.min()), lo, "below"), (float(logits.max()), hi, "above")):
            if (value < edge) if side == "below" else (value > edge):
                gap = abs(value - edge)
                line = f"logits: {value:.4g} {side} the calibrated range edge {edge:.4g} by {gap:.3g}"
                found.append((gap, line))
        return [line for _, line in sorted(found, reverse=True)]

    def save(self, path: Path | str) -> Path:
        """Write the plan as JSON (atomically: a reader never sees half a file)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
            tmp.replace(path)
        except OSError as exc:
            raise HeAeroError(f"plan {path}: cannot write ({exc.strerror or exc})") from exc
        return path

    def summary(self) -> str:
        """One line: ring, estimated latency, rotation keys."""
        est = self.estimates
        return (
            f"N={self.params.poly_modulus_degree} {list(self.params.coeff_mod_bit_sizes)}: prefill ~"
            f"{est.get('prefill', {}).get('latency_s', float('nan')):.1f} s, decode ~"
            f"{est.get('decode', {}).get('latency_s', float('nan')):.2f} s/token, "
            f"{len(self.rotation_steps)} rotation keys (~{self.key_bytes / 1e6:.0f} MB of keys)"
        )

    def explain(self) -> str:
        """What runs, once: the ring comparison and the choice, the chain, the plans, the stages."""
        s, p = self.shape, self.params
        lines = [
            f"model: d={s.d_model} heads={s.n_head} layers={s.n_layer} T_max={s.t_max} vocab={s.vocab}; "
            f"weights {self.weights_sha256[:12]}..., calibration {self.calibration_sha256[:12]}...",
            "",
            "estimates: op counts x measured op latencies; refresh MB uncompressed (the wire's are smaller)",
            f"{'N':>6} {'levels':>6} {'usable':>6} {'prefill s':>9} {'decode s':>8} {'rounds p/d':>10} "
            f"{'MB p/d':>13}  note",
        ]
        for r in self.comparison:
            if not r["feasible"]:
                lines.append(
                    f"{r['poly_modulus_degree']:>6} {r['levels']:>6} {'-':>6} {'-':>9} {'-':>8} {'-':>10} "
                    f"{'-':>13}  infeasible: {r['reason']}"
                )
                continue
            lines.append(
                f"{r['poly_modulus_degree']:>6} {r['levels']:>6} {r['usable_levels']:>6} "
                f"{r['prefill_latency_s']:>9.1f} {r['decode_latency_s']:>8.2f} "
                f"{r['prefill_refresh_rounds']:>4}/{r['decode_refresh_rounds']:<5} "
                f"{r['prefill_refresh_mb']:>6.1f}/{r['decode_refresh_mb']:<6.1f}  "
                f"{'<- chosen' if r['chosen'] else ''}"
            )
        lines += ["", f"choice: N={p.poly_modulus_degree}. {self.why}", "", p.describe()]
        h = self.hiding
        lines.append(
            f"refresh: masks of 2^{self.mask_bits} on every coefficient, |x| <= {self.activation_bound:.4g}, "
            f"so {h.per_polynomial_bits:.1f} bits of hiding per polynomial; a session may refresh up to "
            f"{self.max_refresh_polynomials} polynomials ({self.session_hiding_bits} bits); refreshes happen "
            f"at level {self.refresh_min_level}, so {self.usable_levels} levels in between"
        )
        lines.append(
            "logits: re-randomised, "
            + (
                f"flooded with 2^{self.logit_flood_bits} per coefficient"
                if self.logit_flood_bits
                else "unflooded"
            )
        )
        lines.append(
            f"slot layout: features, {self.block}-slot token blocks, {p.slots // self.block} features per "
            f"ciphertext; decode in the {'rows' if self.decode_rows else 'features'} layout"
        )
        for i, lay in enumerate(self.layers):
            e, r = lay.exp, lay.reciprocal
            lines.append(
                f"layer {i}: z in [{lay.z_domain[0]:.2f}, {lay.z_domain[1]:.2f}], denominators in "
                f"[1, {lay.denominator_domain[1]:.4g}], exp shifted by {lay.exp_shift:.3g}: "
                f"exp {e.describe()} (rel err {e.max_error:.2g}); "
                f"1/x {r.describe()} (rel err {r.max_error:.2g})"
            )
            if lay.act is not None:
                lines.append(
                    f"  FFN pre-activations in [{lay.pre_domain[0]:.3g}, {lay.pre_domain[1]:.3g}]: "
                    f"{lay.act.describe()} (abs err {lay.act.max_error:.2g})"
                )
            for what, p_, dom in (("attention", lay.norm_attn, lay.u_attn_domain),
                                  ("FFN", lay.norm_ffn, lay.u_ffn_domain)):  # fmt: skip
                if p_ is not None:
                    lines.append(
                        f"  LayerNorm before {what}: var + eps in [{dom[0]:.3g}, {dom[1]:.3g}], 1/sqrt "
                        f"{p_.describe()} (rel err {p_.max_error:.2g})"
                    )
        if self.final_norm is not None:
            dom, fin = self.u_final_domain, self.final_norm
            lines.append(
                f"final LayerNorm: var + eps in [{dom[0]:.3g}, {dom[1]:.3g}], 1/sqrt {fin.describe()} "
                f"(rel err {fin.max_error:.2g})"
            )
        lines.append(f"rotation keys: {len(self.rotation_steps)} steps {list(self.rotation_steps)}")
        for phase in ("prefill", "decode"):
            est = self.estimates.get(phase)
            if est:
                lines.append(
                    f"{phase} (counted): rotations {est['rotations']}, ct*ct {est['ctct_mults']}, ct*pt "
                    f"{est['pt_mults']}, refresh rounds {est['refresh_rounds']} "
                    f"({est['refreshed_ciphertexts']} ciphertexts, {est['refresh_mb']} MB), "
                    f"~{est['latency_s']} s"
                )
        lines.append("prefill stages (level on entry, levels needed, ciphertexts refreshed):")
        for st in self.stages:
            mark = f"  REFRESH x{st['refreshed']}" if st["refreshed"] else ""
            lines.append(f"  {st['stage']:<28} level {st['level_in']:>2}  needs {st['need']}{mark}")
        return "\n".join(lines)


def _outside(what: str, values, dom) -> list[tuple[float, str]]:
    """(gap, line) for values below / above the domain `dom` (`ExecutionPlan.domain_violations`)."""
    out = []
    for value, edge, side in (
        (float(np.min(values)), dom[0], "below"),
        (float(np.max(values)), dom[1], "above"),
    ):
        if (value < edge) if side == "below" else (value > edge):
            gap = abs(value - edge)
            out.append((gap, f"{what} {value:.4g} {side} the domain edge {edge:.4g} by {gap:.3g}"))
    return out


def _read_norm(reader, raw: dict, name: str, dom_name: str, ctx: str) -> dict:
    """A 1/sqrt plan and the var + eps domain its first polynomial must cover."""
    try:
        plan = Plan.from_dict(reader.need(raw, name, ctx))
        if plan.function == "inv_sqrt":
            _check_claim(plan)
    except ApproxError as exc:
        raise HeAeroError(f"{reader.where}: {ctx}{name}: {exc}") from exc
    dom = reader.pair(reader.need(raw, dom_name, ctx), f"{ctx}{dom_name}")
    a, b = plan.steps[0].domain
    try:  # the plan reads (var + eps) / g (he_aero/ckks/norm.py)
        g = u_scale(dom)
    except HeAeroError as exc:
        raise HeAeroError(f"{reader.where}: field '{ctx}{dom_name}': {exc}") from exc
    if (
        plan.function != "inv_sqrt"
        or not 0 < dom[0]
        or a > dom[0] / g * (1 + 1e-12)
        or b < dom[1] / g * (1 - 1e-12)
    ):
        raise HeAeroError(
            f"{reader.where}: {ctx}{name} must be a 1/sqrt plan whose polynomial's domain covers the "
            f"positive {dom_name} {list(dom)}"
        )
    return {name: plan, dom_name: dom}


def _read_baseline(reader, raw: dict, ctx: str, shape: ModelShape) -> dict:
    """A baseline block's activation and LayerNorm plans with their domains (`LayerPlan` fields), required
    exactly when the model shape has them (and refused when it has not). Each approximation must meet its
    claimed error (checked on a grid, `_check_claim`)."""
    keys = {"act": shape.unfused, "pre_domain": shape.unfused}
    keys.update(dict.fromkeys(("norm_attn", "u_attn_domain", "norm_ffn", "u_ffn_domain"), shape.layer_norm))
    extra = [k for k, wanted in keys.items() if k in raw and not wanted]
    if extra:
        raise HeAeroError(f"{reader.where}: field {ctx}{extra[0]!r} in a plan for a {shape.variant} model")
    if not shape.unfused:
        return {}
    out: dict = {}
    pre = reader.pair(reader.need(raw, "pre_domain", ctx), f"{ctx}pre_domain")
    raw_act = reader.need(raw, "act", ctx)
    try:
        if shape.variant == "baseline":
            act = Plan.from_dict(raw_act)
            if act.function != "gelu" or any(st.op != "poly" for st in act.steps):
                raise ApproxError("expected a GELU plan of polynomial steps only")
            covers = act.steps[0].domain[0] <= pre[0] and act.steps[0].domain[1] >= pre[1]
        else:
            act = CompositeRelu.from_dict(raw_act)
            covers = act.bound >= max(abs(pre[0]), abs(pre[1]))
        _check_claim(act)
    except ApproxError as exc:
        raise HeAeroError(f"{reader.where}: {ctx}act: {exc}") from exc
    if not covers:
        raise HeAeroError(f"{reader.where}: {ctx}act's domain does not cover pre_domain {list(pre)}")
    out.update(act=act, pre_domain=pre)
    if shape.layer_norm:
        out.update(_read_norm(reader, raw, "norm_attn", "u_attn_domain", ctx))
        out.update(_read_norm(reader, raw, "norm_ffn", "u_ffn_domain", ctx))
    return out


def _check_claim(approx) -> None:
    """ApproxError unless an approximation (exp, 1/x, GELU, 1/sqrt plan or composite ReLU) meets its own
    claimed error on a grid and the claim is at most MAX_PLAN_ERROR: an edited file would otherwise run
    coefficients that approximate nothing."""
    if isinstance(approx, CompositeRelu):
        approx.check_claim()
    else:
        approx.check_error_claim()
    if not approx.max_error <= MAX_PLAN_ERROR:
        raise ApproxError(f"max_error: {approx.max_error:g} is above the {MAX_PLAN_ERROR:g} a plan may claim")


def _canonical(data: dict) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


ESTIMATE_KEYS = {
    "rotations", "ctct_mults", "pt_mults", "refresh_rounds", "refreshed_ciphertexts", "refresh_mb",
    "latency_s",
}  # fmt: skip
STAGE_KEYS = {"stage", "need", "level_in", "refreshed"}
RING_KEYS = {"poly_modulus_degree", "levels", "feasible", "reason", "chosen"}
FEASIBLE_RING_KEYS = {"usable_levels", "prefill_latency_s", "decode_latency_s", "prefill_refresh_rounds",
                      "decode_refresh_rounds", "prefill_refresh_mb", "decode_refresh_mb"}  # fmt: skip


def _informational(data: dict, where: str) -> dict:
    """The plan file's descriptive parts (estimates, stage levels, ring comparison), shape-checked: they are
    printed by `explain`, never run, so a malformed one is refused here rather than failing there."""
    estimates = data.get("estimates", {})
    stages = data.get("stages", [])
    comparison = data.get("comparison", {"rings": [], "why": ""})
    rings = comparison.get("rings", []) if isinstance(comparison, dict) else None

    def ring_ok(r):
        return (
            isinstance(r, dict)
            and RING_KEYS <= set(r)
            and (not r["feasible"] or FEASIBLE_RING_KEYS <= set(r))
        )

    ok = (
        isinstance(estimates, dict)
        and all(isinstance(v, dict) and ESTIMATE_KEYS <= set(v) for v in estimates.values())
        and isinstance(stages, list)
        and all(isinstance(s, dict) and STAGE_KEYS <= set(s) for s in stages)
        and isinstance(rings, list)
        and all(ring_ok(r) for r in rings)
    )
    if not ok:
        raise HeAeroError(
            f"{where}: fields 'estimates', 'stages' or 'comparison' are malformed (re-run `he-aero plan`)"
        )
    return {"estimates": estimates, "stages": tuple(stages), "comparison": tuple(rings),
            "why": str(comparison.get("why", ""))}  # fmt: skip


class _Reader:
    """Field access for `from_dict` with errors that name the field."""

    def __init__(self, where: str):
        self.where = where

    def need(self, d, key, ctx=""):
        if not isinstance(d, dict) or key not in d:
            raise HeAeroError(f"{self.where}: missing field {ctx}{key!r}")
        return d[key]

    def boolean(self, d, key, ctx="") -> bool:
        value = self.need(d, key, ctx)
        if not isinstance(value, bool):
            raise HeAeroError(f"{self.where}: field {ctx}{key!r} must be true or false, got {value!r}")
        return value

    def integers(self, d, key, ctx="") -> list[int]:
        value = self.need(d, key, ctx)
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise HeAeroError(f"{self.where}: field {ctx}{key!r} must be a list of integers, got {value!r}")
        return value

    def integer(self, d, key, ctx="") -> int:
        value = self.need(d, key, ctx)
        if isinstance(value, bool) or not isinstance(value, int):
            raise HeAeroError(f"{self.where}: field {ctx}{key!r} must be an integer, got {value!r}")
        return value

    def pair(self, value, name) -> tuple[float, float]:
        try:
            return interval(value, name)
        except HeAeroError as exc:
            raise HeAeroError(f"{self.where}: {exc}") from exc


def load_plan(path: Path | str | None = None) -> ExecutionPlan:
    """Read and validate a plan file (default: the shipped one, for the shipped default checkpoint)."""
    path = Path(path) if path is not None else DEFAULT_PLAN
    data = read_json(path, "plan", DEFAULT_PLAN, "plan-default")
    return ExecutionPlan.from_dict(data, where=f"plan {path}")


def compile_plan(
    header: dict,
    calibration,
    config: PlanConfig | None = None,
    params: CkksParams | None = None,
    decode_rows: bool | None = None,
) -> ExecutionPlan:
    """The plan stage: choose the ring (or take `params`: tests pin small rings), fit the plans for it, count
    everything symbolically, collect the rotation steps.

    Parameters
    ----------
    header : the checkpoint header (`models.checkpoint.load_checkpoint`'s second value): its weights'
        SHA-256 and config (the shape).
    calibration : a `he_aero.calibrate.Calibration` made for those weights.
    config : error targets, hiding, candidate rings (default PlanConfig()).
    params : run on exactly this ring instead of comparing `config.rings`.
    decode_rows : force the decode layout (None: by shape, `decode_rows_for`).

    Raises HeAeroError when the calibration belongs to other weights or no ring can run the model."""
    config = config or PlanConfig()
    calibration.check_checkpoint(header)
    shape = ModelShape.from_config(header.get("config", {}))
    if len(calibration.layers) != shape.n_layer:
        raise HeAeroError(
            f"calibration has {len(calibration.layers)} layers, the model {shape.n_layer}: wrong calibration"
        )
    ranges = Ranges.from_calibration(calibration, config)
    if params is None:
        if decode_rows is not None:
            raise HeAeroError("plan: forcing the decode layout needs a given ring (params)")
        choice = choose_ring(shape, ranges, None, config.mask_bits, config.rings)
    else:
        report = evaluate_ring(params, shape, ranges, config.mask_bits, None, decode_rows)
        if not report.feasible:
            raise HeAeroError(f"plan: {params.describe()} cannot run this model: {report.reason}")
        choice = RingChoice([report], report, "the ring was given")
    best = choice.chosen
    pipe = Pipeline(shape.view(), best.plans, best.params, best.block, best.decode_rows, best.final_norm)
    unscaled = lambda n: None if n is None else n.plan  # noqa: E731  (the file keeps the Plan and its domain)
    steps = pipe.rotation_steps(ranges.activation_bound, config.mask_bits)
    layers = []
    for (e, r, delta, *rest), lay in zip(best.plans, calibration.layers, strict=True):
        extra = {}
        if rest:
            b = rest[0]
            extra = dict(
                act=b.act, pre_domain=lay.pre_domain, norm_attn=unscaled(b.norm_attn),
                u_attn_domain=lay.u_attn_domain, norm_ffn=unscaled(b.norm_ffn), u_ffn_domain=lay.u_ffn_domain,
            )  # fmt: skip
        layers.append(LayerPlan(e, r, tuple(lay.z_domain), tuple(lay.denominator_domain), delta, **extra))
    plan = ExecutionPlan(
        weights_sha256=str(header["weights_sha256"]),
        calibration_sha256=calibration.sha256,
        shape=shape,
        params=best.params,
        block=best.block,
        decode_rows=best.decode_rows,
        layers=tuple(layers),
        activation_bound=float(ranges.activation_bound),
        mask_bits=config.mask_bits,
        session_hiding_bits=config.session_hiding_bits,
        logit_flood_bits=config.logit_flood_bits,
        logit_domain=tuple(calibration.logit_domain),
        rotation_steps=steps,
        usable_levels=best.usable_levels,
        refresh_min_level=best.refresh_min_level,
        final_norm=unscaled(best.final_norm),
        u_final_domain=calibration.u_final_domain if best.final_norm is not None else None,
        estimates={"prefill": best.prefill, "decode": best.decode},
        stages=tuple(best.stages),
        comparison=tuple(c.row(c is best) for c in choice.candidates),
        why=choice.why,
    )
    full = best.prefill["refreshed_ciphertexts"] + (shape.t_max - 1) * best.decode["refreshed_ciphertexts"]
    if plan.max_refresh_polynomials < full:
        raise HeAeroError(
            f"plan: the refresh bound {plan.activation_bound:.4g} leaves "
            f"{plan.hiding.per_polynomial_bits:.1f} bits of hiding per polynomial, so a session may "
            f"refresh {plan.max_refresh_polynomials} polynomials at {config.session_hiding_bits} bits; a "
            f"full context (prefill + {shape.t_max - 1} decode steps) refreshes {full}. Calibrate on "
            "narrower ranges (the attention values set the bound) or lower --session-hiding-bits"
        )
    return plan
