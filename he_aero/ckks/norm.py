"""Encrypted LayerNorm, its parameter-free part (models/linear_view.py `normalise`), on the "features" layout.

    normalise(x) = (x - mean(x)) / sqrt(d (var(x) + eps))   per token (row), over its d features

LayerNorm's sqrt(d) gamma and beta are folded into the linear map that reads the result (the view does it),
so only this runs on ciphertexts, for every token at once:

    c = x / sqrt(d) - S(x) * m / (d sqrt(d))    S: the feature sum, m: 1 on real features (one level)
    u = S(c * c) + eps                           = var + eps, in every feature slot of the token (one level)
    r = 1/sqrt(u)                                the `approx` plan fitted on the calibrated range of u
    out = c * r                                  (one level)

S is a sum over the ciphertexts and a `block_sum` over all F blocks (log2 F rotations): every block ends up
holding the row's total, so r needs no spreading. r is computed once per token count and multiplies every
feature ciphertext. Rows t >= n_tokens are 0 in x, hence in c and out; there u would be eps, far below the
plan's domain, so u_pad (inside it) is added there instead (a plaintext addition, no level).
"""

from __future__ import annotations

import math

import numpy as np

from approx.plan import Plan
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.linalg import block_sum
from he_aero.ckks.packing import FeatureLayout
from he_aero.ckks.poly import run_plan_batch
from he_aero.ckks.refresh import Refresher
from he_aero.errors import HeAeroError


def check_inv_sqrt_plan(plan: Plan, name: str) -> None:
    """HeAeroError unless `plan` approximates 1/sqrt(x) on a positive domain (what `normalise` needs)."""
    if plan is None or plan.function != "inv_sqrt" or not plan.domain[0] > 0:
        raise HeAeroError(f"{name}: a LayerNorm needs a 1/sqrt plan on a positive domain of var + eps")


def normalise(
    ev: Evaluator,
    ref: Refresher,
    plan: Plan,
    xs: list[Ct],
    layout: FeatureLayout,
    eps: float,
    name: str,
) -> list[Ct]:
    """normalise(x) of every token of xs (features layout, `layout.n_ct` ciphertexts); same layout out.

    plan : 1/sqrt on a domain [u_lo, u_hi] holding every token's var + eps (calibrated).
    eps : LayerNorm's eps (added to the variance).
    name : stage names for the refresher ("{name} mean", "{name} 1/sqrt ...", "{name} scale").
    Raises HeAeroError for a plan of another function or a wrong ciphertext count.
    """
    check_inv_sqrt_plan(plan, name)
    if len(xs) != layout.n_ct:
        raise HeAeroError(f"{name}: expected {layout.n_ct} ciphertexts, got {len(xs)}")
    d, f, blk = layout.n_features, layout.per_ct, layout.block
    xs = ref.ensure(xs, 2, f"{name} mean")
    total = block_sum(ev, ev.add_many(xs), f, blk)  # each row's feature sum, in every block
    root = math.sqrt(d)
    cs = []
    for a, x in enumerate(xs):
        real = np.zeros(f)  # real features of ciphertext a (the padding features must stay 0)
        real[: max(0, min(f, d - a * f))] = 1.0 / (d * root)
        mean = ev.mul_plain(total, (name, "mean", a), lambda m=real: np.repeat(m, blk))
        cs.append(ev.sub(ev.mul_scalar(x, 1.0 / root), mean, layout))
    u = block_sum(ev, ev.add_many([ev.mul(c, c) for c in cs]), f, blk)
    rows = layout.row_mask()  # 1 on real rows
    u_pad = plan.domain[0]
    u = ev.add_plain(u, (name, "eps", layout.n_tokens), lambda: eps * rows + u_pad * (1.0 - rows))
    (r,) = run_plan_batch(ev, plan, [u], refresher=ref, name=f"{name} 1/sqrt")
    stage = ref.ensure(cs + [r], 1, f"{name} scale")
    r = stage[-1]
    return [ev.mul(c, r, layout) for c in stage[:-1]]
