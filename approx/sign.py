"""Composite minimax sign and relu(x) = x (1 + sign(x)) / 2 for the relu model variants.

A single polynomial approximates |x| (hence relu) only to ~B/degree, because of the kink at 0. Composing
low-degree odd minimax approximations of sign(t) on [-1, -eps] U [eps, 1] sharpens the step geometrically:
each stage maps the region |t| >= lo onto [1 - delta, 1 + delta]; dividing by (1 + delta) (folded into the
coefficients, no level) hands the next stage the narrower gap lo' = (1 - delta) / (1 + delta).

Not expressible in the plan step vocabulary (the final x * (1 + s) / 2 multiplies by the input), so this
module has its own result object with the same `run(x, ops)` / `evaluate` / cost / certified-error interface.
Measured (`make bench-approx`): at bounds a direct minimax fit reaches (~1e-2 on [-8, 8]) it has far less
depth; the composite reaches tighter bounds, which the direct fit cannot within degree 127, at depth ~20.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.polynomial import Polynomial
from numpy.polynomial import chebyshev as C

from approx import bsgs
from approx.chebyshev import certified_max_error, check_domain
from approx.errors import ApproxError
from approx.remez import remez

STAGE_DEGREES = (3, 5, 7, 15)
MAX_STAGES = 24


def sign_stage(lo: float, degree: int) -> tuple[np.ndarray, float]:
    """Odd minimax polynomial p of odd `degree` for sign on [-1, -lo] U [lo, 1].

    Written p(t) = t q(t^2), the problem is the weighted minimax max_{s in [lo^2, 1]} sqrt(s) |s^-1/2 - q(s)|
    with q of degree (degree - 1) / 2, which `remez` solves on one interval.

    Returns
    -------
    (coefficients, delta): Chebyshev coefficients of p on [-1, 1] (low to high; even ones are 0) and
    delta = max |1 - p(t)| over [lo, 1].
    """
    if degree % 2 == 0 or degree < 1:
        raise ApproxError(f"degree: a sign stage needs an odd degree >= 1, got {degree}")
    if not 0.0 < lo < 1.0:
        raise ApproxError(f"eps: the gap must lie in (0, 1), got {lo}")
    dom = (lo * lo, 1.0)
    fit = remez(lambda s: 1.0 / np.sqrt(s), dom, (degree - 1) // 2, weight=np.sqrt, certify=False)
    q = C.Chebyshev(fit.coefficients, domain=dom).convert(kind=Polynomial).coef
    power = np.zeros(degree + 1)
    power[1::2] = q  # p(t) = t q(t^2)
    cheb = C.poly2cheb(power)
    cheb[0::2] = 0.0  # exactly odd: the zeros are skipped by the evaluator
    return cheb, float(fit.max_error)


@dataclass(frozen=True)
class CompositeRelu:
    """relu on [-bound, bound] as x (1 + s(x / bound)) / 2 with s a composition of odd sign stages.

    Order (`run`): t = (1/bound) * x; y = t; for each stage y = p_i(y) by `bsgs.evaluate` (input already in
    [-1, 1]: no affine map); h = 0.5 * x; relu = h + h * y.
    """

    bound: float
    eps: float
    stages: tuple[tuple[float, ...], ...]
    max_error: float = math.nan

    def run(self, x, ops: bsgs.Ops):
        t = ops.mul_scalar(x, 1.0 / self.bound)
        y = t
        for coeffs in self.stages:
            y = bsgs.evaluate(coeffs, y, ops)
        h = ops.mul_scalar(x, 0.5)
        return ops.add(h, ops.mul(h, y))

    def evaluate(self, x) -> np.ndarray:
        return np.asarray(self.run(np.asarray(x, dtype=float), bsgs.Ops()), dtype=float)

    @property
    def cost(self) -> bsgs.Cost:
        ops = bsgs.CountingOps()
        depth = self.run(0, ops)
        return bsgs.Cost(depth, ops.nonscalar, ops.scalar)

    def check_claim(self) -> None:
        """ApproxError unless eps lies in (0, 1), the bound is at most 1e6 and the stages meet `max_error` on
        a 4097-point grid of [-bound, bound] (the certificate took a denser one): a plan file's stages are
        otherwise trusted as written."""
        if not (0 < self.eps < 1 and self.bound <= 1e6):
            raise ApproxError(
                f"composite relu: eps {self.eps:g} must lie in (0, 1), bound {self.bound:g} <= 1e6"
            )
        x = np.linspace(-self.bound, self.bound, 4097)
        with np.errstate(over="ignore", invalid="ignore"):  # edited stages may overflow: inf fails below
            worst = float(np.max(np.abs(np.maximum(x, 0.0) - self.evaluate(x))))
        if not worst <= self.max_error * (1 + 1e-6) + 1e-12:
            raise ApproxError(
                f"max_error: the stages reach {worst:.3g} on a grid, the file claims {self.max_error:.3g}"
            )

    @property
    def stage_depth(self) -> int:
        """Levels of the deepest sign stage (an unsplittable polynomial): what must fit between refreshes."""
        return max(stage_depth(c) for c in self.stages)

    def describe(self) -> str:
        degrees = [max(j for j, c in enumerate(s) if c != 0.0) for s in self.stages]
        return f"relu x (1 + s(x / {self.bound:.4g})) / 2, sign stages of degree {degrees}"

    def to_dict(self) -> dict:
        """The dictionary form a plan file stores (`from_dict` reads it back and re-certifies nothing: the
        plan stage certified `max_error`; a loader checks the domain and the stage depths)."""
        return {
            "function": "relu",
            "kind": "composite_sign",
            "bound": self.bound,
            "eps": self.eps,
            "max_error": self.max_error,
            "stages": [list(s) for s in self.stages],
        }

    @classmethod
    def from_dict(cls, data) -> CompositeRelu:
        """Validate a `to_dict` dictionary; ApproxError names the bad field."""
        if (
            not isinstance(data, dict)
            or data.get("kind") != "composite_sign"
            or data.get("function") != "relu"
        ):
            raise ApproxError(
                "composite relu: expected an object with function 'relu', kind 'composite_sign'"
            )
        nums = {k: data.get(k) for k in ("bound", "eps", "max_error")}
        for k, v in nums.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ApproxError(f"composite relu: field {k!r} must be a positive number, got {v!r}")
        stages = data.get("stages")
        ok = isinstance(stages, list) and 0 < len(stages) <= MAX_STAGES
        ok = ok and all(
            isinstance(s, list)
            and 1 < len(s) <= max(STAGE_DEGREES) + 1
            and all(_finite(c) for c in s)
            and any(c != 0 for c in s[1:])
            for s in stages
        )
        if not ok:
            raise ApproxError(f"composite relu: field 'stages' must list 1 to {MAX_STAGES} coefficient lists")
        coefficients = tuple(tuple(float(c) for c in s) for s in stages)
        return cls(float(nums["bound"]), float(nums["eps"]), coefficients, float(nums["max_error"]))


def _finite(c) -> bool:
    return not isinstance(c, bool) and isinstance(c, (int, float)) and math.isfinite(c)


def stage_depth(coefficients) -> int:
    """Levels of one sign stage on an input already in [-1, 1] (`bsgs.bsgs_cost` of its degree)."""
    return bsgs.bsgs_cost(max(j for j, c in enumerate(coefficients) if c != 0.0))[0]


def _build(bound: float, eps: float, degree: int, count: int) -> CompositeRelu:
    stages, lo = [], eps
    for i in range(count):
        coeffs, delta = sign_stage(lo, degree)
        if i + 1 < count:  # normalise into [-1, 1] for the next stage (folded into the coefficients)
            coeffs = coeffs / (1.0 + delta)
            lo = (1.0 - delta) / (1.0 + delta)
        stages.append(tuple(float(c) for c in coeffs))
    return CompositeRelu(bound, eps, tuple(stages))


def relu_composite(bound: float, max_abs_error: float, max_stage_depth: int | None = None) -> CompositeRelu:
    """Least-depth (then fewest ct-ct mults) composite relu on [-bound, bound] meeting an absolute bound.

    The gap eps is set to max_abs_error / bound (inside it relu is approximated by ~0, error <= eps * bound);
    stage degree and count are searched; the winner's error is certified on the dense grid.
    `max_stage_depth`: only stage degrees whose polynomial fits that many levels (an encrypted run refreshes
    between stages, not inside one).
    """
    b = check_domain((-bound, bound), "bound")[1]
    if not (math.isfinite(max_abs_error) and max_abs_error > 0):
        raise ApproxError(f"max_error: expected a finite number > 0, got {max_abs_error}")
    eps = min(0.5, 0.5 * max_abs_error / b)
    found = []
    degrees = [d for d in STAGE_DEGREES if max_stage_depth is None or bsgs.bsgs_cost(d)[0] <= max_stage_depth]
    for degree in degrees:
        for count in range(1, MAX_STAGES + 1):
            plan = _build(b, eps, degree, count)

            def err_t(t, plan=plan):
                x = t * b
                return np.maximum(x, 0.0) - plan.evaluate(x)

            if float(np.max(np.abs(err_t(np.linspace(-1, 1, 4097))))) <= max_abs_error:
                err, _ = certified_max_error(err_t)
                if err <= max_abs_error:
                    c = plan.cost
                    found.append((c.depth, c.nonscalar_mults, c.scalar_mults, err, degree, count))
                    break
    if not found:
        raise ApproxError(
            f"max_error: {max_abs_error:g} unreachable for relu on [-{b:g}, {b:g}] by {MAX_STAGES} stages"
        )
    _, _, _, err, degree, count = min(found)
    plan = _build(b, eps, degree, count)
    return CompositeRelu(plan.bound, plan.eps, plan.stages, err)
