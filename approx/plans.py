"""Choosing plans: a polynomial plus refinement steps, for the least depth, then the fewest ct-ct mults.

A plan (`approx.plan.Plan`, re-exported here with `Step`) is fitted here: `plan_poly` / `plan_fit` (one
minimax polynomial), `plan_exp` (range reduction + squarings), `plan_reciprocal` / `plan_inv_sqrt` (initial
guess + Newton steps), `plan_for` (any registered function). Candidates are compared by the depth and
multiplication counts of `approx.interpret.count` and certified with `Plan.evaluate` (the same interpreter
in numpy float64).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from approx.chebyshev import MAX_DEGREE, certified_max_error, dense_grid
from approx.errors import ApproxError
from approx.functions import check_function_domain, get_function
from approx.plan import OPS, Plan, Step
from approx.refine import scaled_newton_constants
from approx.remez import remez

__all__ = [
    "OPS",
    "MAX_PLAN_DEPTH",
    "Plan",
    "Step",
    "measure",
    "plan_exp",
    "plan_fit",
    "plan_for",
    "plan_inv_sqrt",
    "plan_poly",
    "plan_reciprocal",
]

MAX_PLAN_DEPTH = 32
"""Plan searches give up beyond this depth (refreshes split a plan into pieces: a deep plan is a slow one,
not an impossible one; a 1/x over a ratio of 10^4 needs ~20 levels)."""
SCREEN_POINTS = 4097


# --- error measurement -------------------------------------------------------------------------------------
def measure(function: str, domain, error_kind: str, steps, certify: bool = True) -> float:
    """Max error of the plan made of `steps`: certified (dense grid + local search) or screening grid only."""
    err_t = Plan(function, domain, error_kind, 0.0, tuple(steps)).signed_error
    if certify:
        return certified_max_error(err_t)[0]
    e = err_t(dense_grid(SCREEN_POINTS))
    return float(np.max(np.abs(e))) if np.all(np.isfinite(e)) else math.inf


def _poly_step(fit) -> Step:
    return Step("poly", fit.domain, tuple(float(c) for c in fit.coefficients))


def plan_poly(function: str, domain, degree: int, error_kind: str = "abs") -> Plan:
    """One minimax polynomial of the given degree (no refinement), certified."""
    dom = check_function_domain(function, domain, error_kind)
    fit = remez(get_function(function), dom, degree, error_kind)
    steps = (_poly_step(fit),)
    err = measure(function, dom, error_kind, steps)
    return Plan(function, dom, error_kind, err, steps, fit.lower_bound, tuple(float(p) for p in fit.points))


# --- search ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Family:
    """Plans `poly(d)` followed by a refinement `tail`; `fit(d)` fits the polynomial for it. When
    `tail_for` is given, the tail run after a fit is `tail_for(fit)` (constants that depend on the fit's
    error) and `tail` is its shape for costing only."""

    tail: tuple[Step, ...]
    fit: Callable
    tail_for: Callable | None = None

    def steps(self, fit) -> tuple[Step, ...]:
        return (_poly_step(fit), *(self.tail_for(fit) if self.tail_for else self.tail))


def _depth_of(function, dom, error_kind, degree, tail) -> tuple[int, int, int]:
    # strictly decreasing coefficients never cancel in `bsgs.split`, so this counts the dense structure
    dummy = Step("poly", dom, tuple(3.0 ** -np.arange(degree + 1)))
    plan = Plan(function, dom, error_kind, 0.0, (dummy, *tail))
    return plan.depth, plan.nonscalar_mults, plan.scalar_mults


def _search(function: str, dom, error_kind: str, bound: float, families: list[_Family]) -> Plan:
    """Least depth, then fewest ct-ct mults (then scalar mults, then error) over families x degrees."""
    if not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0):
        raise ApproxError(f"max_error: expected a finite number > 0, got {bound!r}")
    fits: dict = {}
    best_seen = (math.inf, None)

    def screen(fam_i, d):
        key = (fam_i, d)
        if key not in fits:
            fit = families[fam_i].fit(d)
            steps = families[fam_i].steps(fit)
            fits[key] = (fit, steps, measure(function, dom, error_kind, steps, certify=False))
        return fits[key]

    degrees = range(1, MAX_DEGREE + 1)
    costs = {
        (i, d): _depth_of(function, dom, error_kind, d, fam.tail)
        for i, fam in enumerate(families)
        for d in degrees
    }
    for level in range(1, MAX_PLAN_DEPTH + 1):
        candidates = []
        for i in range(len(families)):
            ok = [d for d in degrees if costs[(i, d)][0] <= level]
            if not ok:
                continue
            top = max(ok)
            err_top = screen(i, top)[2]
            if err_top < best_seen[0]:
                best_seen = (err_top, level)
            if err_top > bound:
                continue
            lo, hi = min(ok), top  # smallest degree meeting the bound (minimax error falls with degree)
            while lo < hi:
                mid = (lo + hi) // 2
                if screen(i, mid)[2] <= bound:
                    hi = mid
                else:
                    lo = mid + 1
            for d in ok:
                if d >= lo:
                    candidates.append((costs[(i, d)][1], costs[(i, d)][2], i, d))
        for _, _, i, d in sorted(candidates):
            fit, steps, _ = screen(i, d)
            err = measure(function, dom, error_kind, steps)
            if err <= bound:
                return Plan(
                    function,
                    dom,
                    error_kind,
                    err,
                    steps,
                    fit.lower_bound,
                    tuple(float(p) for p in fit.points),
                )
    raise ApproxError(
        f"max_error: {bound:g} ({error_kind}) is unreachable for {function} on [{dom[0]:g}, {dom[1]:g}] "
        f"within depth {MAX_PLAN_DEPTH}; best screened error {best_seen[0]:.3g}"
    )


def _bound(max_abs_error, max_rel_error) -> tuple[float, str]:
    if (max_abs_error is None) == (max_rel_error is None):
        raise ApproxError("max_error: give exactly one of max_abs_error / max_rel_error")
    return (max_abs_error, "abs") if max_abs_error is not None else (max_rel_error, "rel")


def plan_fit(function: str, domain, max_error: float, error_kind: str = "abs") -> Plan:
    """The single minimax polynomial of least depth (then fewest mults) meeting the bound."""
    dom = check_function_domain(function, domain, error_kind)
    f = get_function(function)
    fam = _Family((), lambda d: remez(f, dom, d, error_kind, certify=False))
    return _search(function, dom, error_kind, max_error, [fam])


def plan_exp(
    domain,
    max_abs_error: float | None = None,
    max_rel_error: float | None = None,
    max_squarings: int = 8,
    squarings: int | None = None,
) -> Plan:
    """exp on [a, b]: p(x) ~ exp(x / 2^k) (the 1/2^k folds into the affine map), then k squarings.

    The polynomial is fitted with the weight that the squarings apply to its error: after k squarings an
    error delta of p becomes ~2^k exp(x (1 - 2^-k)) delta (absolute) or 2^k delta / exp(x/2^k) (relative).
    `squarings` fixes k (otherwise 0..max_squarings are searched). For windows reaching above 0 (e.g.
    [-26, 5], values up to e^5 = 148) an absolute bound is set by the top of the window and says little
    about small values; a relative bound constrains all of it (and doubles per squaring, which the weight
    accounts for). Softmax after a calibrated shift needs accuracy where its weights are large.
    """
    bound, kind = _bound(max_abs_error, max_rel_error)
    dom = check_function_domain("exp", domain, kind)
    counts = range(_check_count(max_squarings, "max_squarings") + 1)
    if squarings is not None:
        counts = [_check_count(squarings, "squarings")]

    def family(k):
        s = 2.0**k

        def target(x):
            return np.exp(x / s)

        if kind == "abs":
            weight = (lambda x: s * np.exp(x * (1.0 - 1.0 / s))) if k else None
        else:
            weight = lambda x: s / np.exp(x / s)  # noqa: E731
        return _Family(
            (Step("square", times=k),) if k else (),
            lambda d: remez(target, dom, d, kind, weight=weight, certify=False),
        )

    return _search("exp", dom, kind, bound, [family(k) for k in counts])


def _newton_plan(function: str, op: str, domain, max_rel_error: float, max_newton: int, newton) -> Plan:
    dom = check_function_domain(function, domain, "rel")
    f = get_function(function)
    counts = (
        range(_check_count(max_newton, "max_newton") + 1)
        if newton is None
        else [_check_count(newton, "newton")]
    )

    def family(n):
        fit = lambda d: remez(f, dom, d, "rel", certify=False)  # noqa: E731
        if not n:
            return _Family((), fit)
        if op != "newton_recip":
            return _Family((Step(op, iterations=n),), fit)
        # scaled Newton: constants from the initial guess's relative error (x p(x) in [1 - eps, 1 + eps])
        shape = (Step(op, iterations=n, constants=((2.0, 0.5),) * n),)
        return _Family(shape, fit, lambda ft: (Step(op, iterations=n, constants=_scaled(ft.max_error, n)),))

    return _search(function, dom, "rel", max_rel_error, [family(n) for n in counts])


def _scaled(eps: float, iterations: int) -> tuple[tuple[float, float], ...]:
    # a guess no better than 100% leaves t = x p(x) touching 0: classical constants, and the search's
    # measured error rejects the candidate
    if not 0 <= eps < 1:
        return ((2.0, 1.0),) * iterations
    return scaled_newton_constants(eps, iterations)


def _check_count(value, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 16:
        raise ApproxError(f"{field_name}: expected an integer in [0, 16], got {value!r}")
    return int(value)


def plan_reciprocal(domain, max_rel_error: float, max_newton: int = 6, newton: int | None = None) -> Plan:
    """1/x on [a, b], 0 < a: relative-minimax initial guess, then n scaled Newton steps
    (`approx.refine.newton_recip`: the interval ratio of x y falls ~4x per step while the guess is poor,
    then the error squares; classical Newton only doubles the small end: wide domains need ~half the steps).

    `newton` fixes n (otherwise 0..max_newton are searched: on narrow domains one polynomial often has
    the least depth, since each Newton step costs 2 levels).
    """
    return _newton_plan("reciprocal", "newton_recip", domain, max_rel_error, max_newton, newton)


def plan_inv_sqrt(domain, max_rel_error: float, max_newton: int = 6, newton: int | None = None) -> Plan:
    """1/sqrt(x) on [a, b], 0 < a: relative-minimax initial guess, then n Newton steps (`newton` fixes n)."""
    return _newton_plan("inv_sqrt", "newton_inv_sqrt", domain, max_rel_error, max_newton, newton)


def plan_for(function: str, domain, max_error: float, error_kind: str = "abs") -> Plan:
    """The best plan for any registered function (refinements where the function has them)."""
    get_function(function)
    if function == "exp":
        if error_kind == "rel":
            return plan_exp(domain, max_rel_error=max_error)
        return plan_exp(domain, max_abs_error=max_error)
    if function == "reciprocal":
        return plan_reciprocal(domain, _rel_only(function, error_kind, max_error))
    if function == "inv_sqrt":
        return plan_inv_sqrt(domain, _rel_only(function, error_kind, max_error))
    return plan_fit(function, domain, max_error, error_kind)


def _rel_only(function: str, error_kind: str, bound: float) -> float:
    if error_kind != "rel":
        raise ApproxError(f"error_kind: {function} plans bound the relative error; use --relative / 'rel'")
    return bound
