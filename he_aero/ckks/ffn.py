"""The unfused FFN of the baseline variants (models/linear_view.py), encrypted, on the "features" layout.

    X_out = X_SA + act(N W_1 + b_1) W_2 + b_2,   N = normalise(X_SA) (LayerNorm variants) or X_SA

W_1 maps d features to 4d (4d / F ciphertexts), W_2 back; both are the BSGS kernel of he_aero/ckks/linalg.py.
The activation's input map is folded into W_1 and b_1, so it costs no level of its own:

- GELU: the `approx` plan's first polynomial reads t = alpha pre + beta in [-1, 1] (W_1 and b_1 scaled, beta
  added with the bias on real rows only; padding rows read t = 0, inside the domain, and W_2 masks them);
- ReLU: relu(pre) = (B / 2) (t + t s(t)) with t = pre / B and s the composite sign of approx/sign.py
  (`CompositeRelu`, its stages one refreshable piece each); 1 / B rides on W_1, B / 2 on W_2.
"""

from __future__ import annotations

from approx import bsgs, interpret
from approx.plan import Plan
from approx.sign import CompositeRelu
from he_aero.ckks.ciphertext import Ct, Evaluator, real_parts
from he_aero.ckks.linalg import PlainLinear
from he_aero.ckks.norm import NormPlan, check_inv_sqrt_plan, normalise
from he_aero.ckks.packing import FeatureLayout
from he_aero.ckks.poly import CkksOps, affine, run_plan_batch
from he_aero.ckks.refresh import Refresher
from he_aero.errors import HeAeroError


def check_activation(act: str, approx, name: str) -> None:
    """HeAeroError unless `approx` fits the activation: a poly-only GELU plan, or a `CompositeRelu`."""
    if act == "gelu":
        ok = isinstance(approx, Plan) and approx.function == "gelu"
        ok = ok and all(s.op in ("poly", "square") for s in approx.steps) and approx.steps[0].op == "poly"
        if not ok:
            raise HeAeroError(f"{name}: GELU needs a polynomial plan of 'gelu' (approx plan_fit)")
    elif act == "relu":
        if not isinstance(approx, CompositeRelu):
            raise HeAeroError(f"{name}: ReLU needs a composite sign (approx.sign.relu_composite)")
    else:
        raise HeAeroError(f"{name}: unknown activation {act!r}")


def run_relu(ev: Evaluator, ref: Refresher, relu: CompositeRelu, ts: list[Ct], name: str) -> list[Ct]:
    """t + t s(t) for t = x / relu.bound in [-1, 1] (i.e. relu(x) * 2 / bound), all ciphertexts in lockstep;
    a refresh may fall before each sign stage and before the final product."""
    ys = ts
    for i, coeffs in enumerate(relu.stages):
        degree = max(j for j, c in enumerate(coeffs) if c != 0.0)
        ys = ref.ensure(ys, bsgs.bsgs_cost(degree)[0], f"{name} sign {i}")
        ys = [interpret.chebyshev(coeffs, y, CkksOps(ev)) for y in ys]
    n = len(ts)
    stage = ref.ensure(list(ts) + ys, 1, f"{name} relu")
    return [ev.add(t, ev.mul(t, y)) for t, y in zip(stage[:n], stage[n:], strict=True)]


class EncryptedFFN:
    """A baseline block's FFN with its LayerNorm (if any) and residual; linear maps cached per layout.

    Parameters
    ----------
    name : stage and cache-key prefix (e.g. "l0").
    view : the block's `LayerView` (act, w_1, b_1, w_2, b_2, norm_ffn, norm_eps).
    act_approx : a GELU `Plan` or a `CompositeRelu` (`check_activation`), on the calibrated range of
        the pre-activations.
    norm_plan : the `NormPlan` of the FFN's LayerNorm (None without one).
    """

    def __init__(self, name: str, view, act_approx, norm_plan: NormPlan | None):
        check_activation(view.act, act_approx, f"{name} ffn")
        if view.norm_ffn:
            check_inv_sqrt_plan(norm_plan, f"{name} ln2")
        self.name, self.view, self.approx, self.norm_plan = name, view, act_approx, norm_plan
        # W_1 and b_1 carry a factor 1/2: the activation reads 2 Re(pre), the real projection of W_1's
        # pending products (`real_parts`). Why: the rotations of W_1 leave imaginary noise of ~6e-5 in the
        # slots, and iterated sign stages multiply an imaginary part by |p'(1)| (up to 3) per stage: a
        # 13-stage composite ReLU turned it into 1e27 (measured on a 6,000-step SM+R model, layer 2).
        if view.act == "gelu":
            alpha, beta = affine(act_approx.steps[0])
            self.w_1, self.b_1 = alpha * view.w_1 / 2.0, (alpha * view.b_1 + beta) / 2.0
            self.w_2 = view.w_2
        else:
            bound = act_approx.bound
            self.w_1, self.b_1 = view.w_1 / (2.0 * bound), view.b_1 / (2.0 * bound)
            self.w_2 = view.w_2 * (bound / 2.0)
        self._linears: dict = {}

    def _linear(self, which: str, layout: FeatureLayout) -> PlainLinear:
        key = (which, layout)
        if key not in self._linears:
            w, b = (self.w_1, self.b_1) if which == "w_1" else (self.w_2, self.view.b_2)
            self._linears[key] = PlainLinear(f"{self.name}.{which}", w, b, layout)
        return self._linears[key]

    def __call__(self, ev: Evaluator, ref: Refresher, x_sa: list[Ct], layout: FeatureLayout) -> list[Ct]:
        """X_out from X_SA (features layout, d features); same layout out."""
        h = x_sa
        if self.view.norm_ffn:
            h = normalise(ev, ref, self.norm_plan, x_sa, layout, self.view.norm_eps, f"{self.name} ln2")
        h = ref.ensure(h, 1, f"{self.name} w_1")
        first = self._linear("w_1", layout)
        ts = real_parts(ev, first(ev, h, rescale=False))
        if self.view.act == "gelu":
            acts = run_plan_batch(ev, self.approx, None, ts, refresher=ref, name=f"{self.name} gelu")
        else:
            acts = run_relu(ev, ref, self.approx, ts, f"{self.name}")
        wide = first.out_layout
        for c in acts:
            c.layout = wide
        acts = ref.ensure(acts, 1, f"{self.name} w_2")
        y = self._linear("w_2", wide)(ev, acts)
        if len(y) != len(x_sa):
            raise HeAeroError(f"{self.name}: W_2 gives {len(y)} ciphertexts for {len(x_sa)} inputs")
        return [ev.add(x, v, layout) for x, v in zip(x_sa, y, strict=True)]
