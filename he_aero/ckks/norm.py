"""Encrypted LayerNorm, its parameter-free part (models/linear_view.py `normalise`), on the "features" layout.

    normalise(x) = (x - mean(x)) / sqrt(d (var(x) + eps))   per token (row), over its d features

LayerNorm's sqrt(d) gamma and beta are folded into the linear map that reads the result (the view does it),
so only this runs on ciphertexts, for every token at once:

    c = a x / sqrt(d) - a S(x) m / (d sqrt(d))   S: the feature sum, m: 1 on real features (one level)
    u = S(c * c) + a^2 eps                       = (var + eps) / g, in every slot of the token (one level)
    r = 1/sqrt(u)                                the `approx` plan fitted on the calibrated range of u
    out = c * r                                  (one level)

with a = 1/sqrt(g), g = `NormPlan.u_scale` (the geometric centre of the calibrated var + eps range). Why the
scale: LayerNorm is scale-invariant, so the result is unchanged, but a model's variances may sit far from 1
(1e-4 after short training, 1e2 in a wide residual stream); scaled, u spans [sqrt(lo/hi), sqrt(hi/lo)]
around 1, and c and u keep the fixed-point precision CKKS gives values near 1 (unscaled, a variance of 1e-3
lost 4 bits at N=8192).

S is a sum over the ciphertexts and a `block_sum` over all F blocks (log2 F rotations): every block ends up
holding the row's total, so r needs no spreading. r is computed once per token count and multiplies every
feature ciphertext. Rows t >= n_tokens are 0 in x, hence in c and out; there u would be eps, far below the
plan's domain, so u_pad (inside it) is added there instead (a plaintext addition, no level).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from approx.plan import Plan
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.linalg import block_sum
from he_aero.ckks.packing import FeatureLayout, check_clean
from he_aero.ckks.poly import run_plan_batch
from he_aero.ckks.refresh import Refresher
from he_aero.errors import HeAeroError


@dataclass(frozen=True)
class NormPlan:
    """A LayerNorm's approximation: `plan` is 1/sqrt on u = (var + eps) / u_scale (module docstring)."""

    plan: Plan
    u_scale: float

    @classmethod
    def for_domain(cls, plan: Plan, u_domain) -> NormPlan:
        """The NormPlan of a calibrated var + eps domain: u_scale = `u_scale(u_domain)`."""
        return cls(plan, u_scale(u_domain))


def u_scale(u_domain) -> float:
    """g = sqrt(lo hi): the geometric centre of a var + eps range (the 1/sqrt plan reads u / g).
    HeAeroError unless 0 < lo < hi give a positive finite g (sqrt of each: lo hi may underflow)."""
    lo, hi = float(u_domain[0]), float(u_domain[1])
    g = math.sqrt(lo) * math.sqrt(hi) if 0 < lo < hi else math.nan
    if not (math.isfinite(g) and g > 0):
        raise HeAeroError(f"var + eps range [{lo:g}, {hi:g}]: no positive finite scale (need 0 < lo < hi)")
    return g


def refreshed_peak(u_domain, rel_error: float = 0.01) -> float:
    """The largest value a LayerNorm on `u_domain` puts through a refresh: u / g up to sqrt(hi / lo) (and the
    Newton step's h = u / 2g below it), the 1/sqrt iterates up to (hi / lo)^(1/4), with `rel_error` of room
    for the iterates' overshoot. The calibration and the plan both size the refresh bound with it."""
    ratio = float(u_domain[1]) / float(u_domain[0])
    return max(math.sqrt(ratio), ratio**0.25) * (1.0 + rel_error)


def check_inv_sqrt_plan(norm, name: str) -> None:
    """HeAeroError unless `norm` is a `NormPlan` of a 1/sqrt plan on a positive domain (what `normalise`
    needs)."""
    ok = isinstance(norm, NormPlan) and norm.plan.function == "inv_sqrt" and norm.plan.steps[0].domain[0] > 0
    if not ok or not (math.isfinite(norm.u_scale) and norm.u_scale > 0):
        raise HeAeroError(
            f"{name}: a LayerNorm needs a 1/sqrt plan (NormPlan) on a positive domain of var + eps"
        )


def normalise(
    ev: Evaluator,
    ref: Refresher,
    norm: NormPlan,
    xs: list[Ct],
    layout: FeatureLayout,
    eps: float,
    name: str,
) -> list[Ct]:
    """normalise(x) of every token of xs (features layout, `layout.n_ct` ciphertexts); same layout out.

    norm : the 1/sqrt plan on (var + eps) / u_scale, whose domain holds every token's (calibrated).
    eps : LayerNorm's eps (added to the variance).
    name : stage names for the refresher ("{name} mean", "{name} 1/sqrt ...", "{name} scale").
    Raises HeAeroError for a plan of another function or a wrong ciphertext count.
    """
    check_inv_sqrt_plan(norm, name)
    plan, alpha = norm.plan, 1.0 / math.sqrt(norm.u_scale)
    if len(xs) != layout.n_ct:
        raise HeAeroError(f"{name}: expected {layout.n_ct} ciphertexts, got {len(xs)}")
    check_clean(xs, name)  # garbage rows would leave the 1/sqrt plan's domain (u_pad stands for zero rows)
    d, f, blk = layout.n_features, layout.per_ct, layout.block
    xs = ref.ensure(xs, 2, f"{name} mean")
    total = block_sum(ev, ev.add_many(xs), f, blk)  # each row's feature sum, in every block
    root = math.sqrt(d) / alpha  # c = alpha (x - mean) / sqrt(d)
    cs = []
    for a, x in enumerate(xs):
        real = np.zeros(f)  # real features of ciphertext a (the padding features must stay 0)
        real[: max(0, min(f, d - a * f))] = 1.0 / (d * root)
        mean = ev.mul_plain(total, (name, "mean", a), lambda m=real: np.repeat(m, blk))
        cs.append(ev.sub(ev.mul_scalar(x, 1.0 / root), mean, layout))
    u = block_sum(ev, ev.add_many([ev.mul(c, c) for c in cs]), f, blk)
    rows = layout.row_mask()  # 1 on real rows
    u_pad = plan.steps[0].domain[0]  # what the first polynomial reads (the plan loader checks it)
    eps_s = eps * alpha * alpha
    u = ev.add_plain(u, (name, "eps", layout.n_tokens), lambda: eps_s * rows + u_pad * (1.0 - rows))
    (r,) = run_plan_batch(ev, plan, [u], refresher=ref, name=f"{name} 1/sqrt")
    stage = ref.ensure(cs + [r], 1, f"{name} scale")
    r = stage[-1]
    return [ev.mul(c, r, layout) for c in stage[:-1]]
