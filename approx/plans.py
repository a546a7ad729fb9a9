"""Plans: a polynomial plus refinement steps, chosen for the least depth, then the fewest ct-ct mults.

A plan is a list of steps from the shared vocabulary of docs/design.md section 2 (`poly`, `square`,
`newton_recip`, `newton_inv_sqrt`). `Plan.run(x, ops)` executes them in the exact operation order the CKKS
evaluator uses (`approx.bsgs` for `poly`, `approx.refine` for the rest); `Plan.evaluate` is its numpy float64
twin, and depth / multiplication counts come from the same code run on a depth counter.

Depth counts the affine map to [-1, 1] of the first `poly` step (1 level, 1 scalar mult; reported separately
as `affine_levels` so a caller that folds it into a preceding plaintext multiply can subtract it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from approx import bsgs, refine
from approx.chebyshev import (
    MAX_DEGREE,
    affine_coefficients,
    certified_max_error,
    check_degree,
    check_domain,
    dense_grid,
    from_unit,
)
from approx.errors import ApproxError
from approx.functions import check_function_domain, get_function
from approx.remez import remez

OPS = ("poly", "square", "newton_recip", "newton_inv_sqrt")
MAX_PLAN_DEPTH = 16
"""Plan searches give up beyond this depth (far past what a TenSEAL modulus chain holds)."""
SCREEN_POINTS = 4097


@dataclass(frozen=True)
class Step:
    """One plan step. `poly`: domain + Chebyshev coefficients (low to high); `square`: times;
    `newton_recip` / `newton_inv_sqrt`: iterations."""

    op: str
    domain: tuple[float, float] | None = None
    coefficients: tuple[float, ...] | None = None
    times: int | None = None
    iterations: int | None = None

    def __post_init__(self):
        if self.op not in OPS:
            raise ApproxError(f"steps.op: unknown {self.op!r}; expected one of {', '.join(OPS)}")
        if self.op == "poly":
            object.__setattr__(self, "domain", check_domain(self.domain, "steps.domain"))
            coeffs = self.coefficients
            if coeffs is None or len(coeffs) == 0:
                raise ApproxError("steps.coefficients: a poly step needs at least one coefficient")
            try:
                coeffs = tuple(float(c) for c in coeffs)
            except (TypeError, ValueError) as exc:
                raise ApproxError(f"steps.coefficients: not numbers: {self.coefficients!r}") from exc
            if not all(math.isfinite(c) for c in coeffs):
                raise ApproxError("steps.coefficients: must be finite")
            check_degree(len(coeffs) - 1, "steps.coefficients (degree)")
            object.__setattr__(self, "coefficients", coeffs)
        else:
            name = "times" if self.op == "square" else "iterations"
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 64:
                raise ApproxError(
                    f"steps.{name}: expected an integer in [0, 64] for {self.op}, got {value!r}"
                )

    @property
    def degree(self) -> int | None:
        return None if self.coefficients is None else len(self.coefficients) - 1


@dataclass(frozen=True)
class Plan:
    """A composition of steps approximating `function` on `domain` with a certified error.

    Attributes
    ----------
    function : registered function name (approx.functions.FUNCTIONS).
    domain : (a, b), the plan input's range.
    error_kind : "abs" or "rel".
    max_error : certified max error of `evaluate` against the true function (dense grid + local search).
    steps : the steps; the first is a `poly`.
    lower_bound : de la Vallee Poussin lower bound of the first polynomial's fit (its own weighted error),
        or None when not known.
    """

    function: str
    domain: tuple[float, float]
    error_kind: str
    max_error: float
    steps: tuple[Step, ...]
    lower_bound: float | None = None
    points: tuple[float, ...] = field(default=(), repr=False)

    def __post_init__(self):
        object.__setattr__(self, "domain", check_function_domain(self.function, self.domain, self.error_kind))
        if (
            not isinstance(self.max_error, (int, float))
            or not math.isfinite(self.max_error)
            or self.max_error < 0
        ):
            raise ApproxError(f"max_error: expected a finite number >= 0, got {self.max_error!r}")
        steps = tuple(self.steps)
        if not steps or not all(isinstance(s, Step) for s in steps) or steps[0].op != "poly":
            raise ApproxError("steps: a plan is a non-empty list of steps starting with a poly")
        object.__setattr__(self, "steps", steps)

    # --- running -------------------------------------------------------------------------------------------
    def run(self, x, ops: bsgs.Ops):
        """Apply the steps to x with `ops`, in the exact order the encrypted evaluator uses."""
        y = x
        for step in self.steps:
            if step.op == "poly" and step.degree == 0:  # a constant: no ciphertext work at all
                y = ops.constant(y, step.coefficients[0])
            elif step.op == "poly":
                alpha, beta = affine_coefficients(step.domain)
                t = y
                if step.domain != (-1.0, 1.0):
                    t = ops.mul_scalar(y, alpha)
                    if beta != 0.0:
                        t = ops.add_scalar(t, beta)
                y = bsgs.evaluate(step.coefficients, t, ops)
                if isinstance(y, float):  # zero coefficients left a constant: broadcast it like the input
                    y = ops.constant(t, y)
            elif step.op == "square":
                y = refine.square(y, step.times, ops)
            elif step.op == "newton_recip":
                y = refine.newton_recip(y, x, step.iterations, ops)
            else:
                y = refine.newton_inv_sqrt(y, x, step.iterations, ops)
        return y

    def evaluate(self, x, check: bool = True) -> np.ndarray:
        """The plan in numpy float64; ApproxError if any x lies outside the domain (when `check`)."""
        x = np.asarray(x, dtype=float)
        if check:
            a, b = self.domain
            slack = 1e-12 * (b - a)
            if x.size and (np.nanmin(x) < a - slack or np.nanmax(x) > b + slack or np.isnan(x).any()):
                lo, hi = np.nanmin(x), np.nanmax(x)
                raise ApproxError(
                    f"x: inputs in [{lo:.6g}, {hi:.6g}] leave the plan domain [{a:.6g}, {b:.6g}]"
                )
        return np.asarray(self.run(x, bsgs.Ops()), dtype=float)

    @cached_property
    def _cost(self) -> bsgs.Cost:
        ops = bsgs.CountingOps()
        depth = self.run(0, ops)
        return bsgs.Cost(int(depth), ops.nonscalar, ops.scalar)

    @property
    def depth(self) -> int:
        """Levels consumed, the affine map included (see `affine_levels`)."""
        return self._cost.depth

    @property
    def nonscalar_mults(self) -> int:
        return self._cost.nonscalar_mults

    @property
    def scalar_mults(self) -> int:
        return self._cost.scalar_mults

    @property
    def affine_levels(self) -> int:
        """1 if the first poly maps its domain to [-1, 1] (foldable into a preceding plaintext multiply)."""
        first = self.steps[0]
        return 0 if first.domain == (-1.0, 1.0) or first.degree == 0 else 1

    @property
    def degree(self) -> int:
        """Degree of the first (usually only) polynomial."""
        return self.steps[0].degree

    @property
    def coefficients(self) -> tuple[float, ...]:
        return self.steps[0].coefficients

    def describe(self) -> str:
        """One line: the steps in words."""
        parts = []
        for s in self.steps:
            if s.op == "poly":
                parts.append(f"poly deg {s.degree} on [{s.domain[0]:.10g}, {s.domain[1]:.10g}]")
            elif s.op == "square":
                parts.append(f"square x{s.times}")
            else:
                parts.append(f"{s.op} x{s.iterations}")
        return " -> ".join(parts)

    def to_dict(self) -> dict:
        """The coefficient-file dictionary (see approx.coefficients)."""
        from approx.coefficients import plan_to_dict

        return plan_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        """Validate and build from a coefficient-file dictionary; ApproxError names the bad field."""
        from approx.coefficients import plan_from_dict

        return plan_from_dict(data)


# --- error measurement -------------------------------------------------------------------------------------
def _error_fn(function: str, domain, error_kind: str, steps) -> Callable:
    """Signed error of the plan as a function of t in [-1, 1]."""
    f = get_function(function)
    probe = Plan(function, domain, error_kind, 0.0, tuple(steps))

    def err_t(t):
        x = from_unit(t, probe.domain)
        fx = f(x)
        e = fx - probe.evaluate(x, check=False)
        return e / np.abs(fx) if error_kind == "rel" else e

    return err_t


def measure(function: str, domain, error_kind: str, steps, certify: bool = True) -> float:
    """Max error of the plan made of `steps`: certified (dense grid + local search) or screening grid only."""
    err_t = _error_fn(function, domain, error_kind, steps)
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
    """Plans `poly(d)` followed by a fixed refinement `tail`; `fit(d)` fits the polynomial for it."""

    tail: tuple[Step, ...]
    fit: Callable


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
            steps = (_poly_step(fit), *families[fam_i].tail)
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
    fams = [
        _Family(
            (Step(op, iterations=n),) if n else (),
            lambda d: remez(f, dom, d, "rel", certify=False),
        )
        for n in counts
    ]
    return _search(function, dom, "rel", max_rel_error, fams)


def _check_count(value, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 16:
        raise ApproxError(f"{field_name}: expected an integer in [0, 16], got {value!r}")
    return int(value)


def plan_reciprocal(domain, max_rel_error: float, max_newton: int = 6, newton: int | None = None) -> Plan:
    """1/x on [a, b], 0 < a: relative-minimax initial guess, then n Newton steps (e -> e^2 each).

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
