"""A plan as data: the step vocabulary (`Step`), `Plan`, and their dictionary form (the coefficient file).

A plan is a list of steps from the shared vocabulary of docs/design.md section 2 (`poly`, `square`,
`newton_recip`, `newton_inv_sqrt`). Running and costing a plan is `approx.interpret` (one interpreter for
numpy, the depth counter and ciphertexts); choosing one is `approx.plans`; files are `approx.coefficients`,
which imports this module (never the reverse).

Depth counts the affine map to [-1, 1] of the first `poly` step (1 level, 1 scalar mult; reported separately
as `affine_levels` so a caller that folds it into a preceding plaintext multiply can subtract it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata

import numpy as np

from approx import bsgs, interpret
from approx.chebyshev import check_degree, check_domain, dense_grid, from_unit
from approx.errors import ApproxError
from approx.functions import check_function_domain, get_function

OPS = ("poly", "square", "newton_recip", "newton_inv_sqrt")


@dataclass(frozen=True)
class Step:
    """One plan step. `poly`: domain + Chebyshev coefficients (low to high); `square`: times;
    `newton_recip` / `newton_inv_sqrt`: iterations. `newton_recip` may carry `constants`, one (a, c) per
    iteration (y <- c y (a - x y), `approx.refine.newton_recip`); None means classical Newton, (2, 1)."""

    op: str
    domain: tuple[float, float] | None = None
    coefficients: tuple[float, ...] | None = None
    times: int | None = None
    iterations: int | None = None
    constants: tuple[tuple[float, float], ...] | None = None

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
        if self.constants is not None:
            object.__setattr__(self, "constants", self._checked_constants())

    def _checked_constants(self) -> tuple[tuple[float, float], ...]:
        if self.op != "newton_recip":
            raise ApproxError(f"steps.constants: only newton_recip steps carry constants, not {self.op}")

        def number(v) -> bool:
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

        try:
            raw = [tuple(p) for p in self.constants]
        except TypeError as exc:
            raise ApproxError(f"steps.constants: expected [a, c] pairs, got {self.constants!r}") from exc
        if not all(len(p) == 2 and number(p[0]) and number(p[1]) for p in raw):
            raise ApproxError(f"steps.constants: expected [a, c] pairs of numbers, got {self.constants!r}")
        pairs = tuple((float(a), float(c)) for a, c in raw)
        if len(pairs) != self.iterations:
            raise ApproxError(f"steps.constants: {len(pairs)} pairs for {self.iterations} iterations")
        # t = x y stays in (0, a): a step maps it into (0, c a^2 / 4]; both are 2-ish for a centred interval
        if not all(0 < a <= 4 and 0 < c <= 4 for a, c in pairs):
            raise ApproxError("steps.constants: each a and c must lie in (0, 4]")
        return pairs

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
    def signed_error(self, t) -> np.ndarray:
        """f(x) - plan(x) at x mapped from t in [-1, 1] (divided by |f(x)| for a relative plan): what the
        certificate (`approx.plans.measure`) and the load-time screen (`plan_from_dict`) maximise."""
        x = from_unit(t, self.domain)
        fx = get_function(self.function)(x)
        e = fx - self.evaluate(x, check=False)
        return e / np.abs(fx) if self.error_kind == "rel" else e

    def run(self, x, ops: bsgs.Ops):
        """Apply the steps to x with `ops` (`approx.interpret.run_batch` on a batch of one)."""
        return interpret.run_batch(self.steps, [x], [ops])[0]

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
    def _cost(self) -> interpret.Count:
        return interpret.count(self.steps)

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
        return interpret.affine_levels(self.steps[0])

    @property
    def degree(self) -> int:
        """Degree of the first (usually only) polynomial."""
        return self.steps[0].degree

    @property
    def coefficients(self) -> tuple[float, ...]:
        return self.steps[0].coefficients

    def check_error_claim(self) -> None:
        """ApproxError unless the steps meet `max_error` on a 4097-point grid (`_check_error_claim`)."""
        _check_error_claim(self)

    def describe(self) -> str:
        """One line: the steps in words."""
        parts = []
        for s in self.steps:
            if s.op == "poly":
                parts.append(f"poly deg {s.degree} on [{s.domain[0]:.10g}, {s.domain[1]:.10g}]")
            elif s.op == "square":
                parts.append(f"square x{s.times}")
            else:
                parts.append(f"{s.op}{' (scaled)' if s.constants else ''} x{s.iterations}")
        return " -> ".join(parts)

    def to_dict(self) -> dict:
        """The coefficient-file dictionary (see approx.coefficients)."""
        return plan_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        """Validate and build from a coefficient-file dictionary; ApproxError names the bad field."""
        return plan_from_dict(data)


# --- dictionary form (layout and field meanings: approx.coefficients) ---------------------------------
FORMAT_VERSION = 2
"""2: `newton_recip` steps may carry `constants` (scaled Newton); format 1 files (classical Newton only) are
still read."""


def _producer() -> str:
    """'he-aero approx <installed package version>' (the distribution name, not an import of he_aero)."""
    try:
        return f"he-aero approx {metadata.version('he-aero')}"
    except metadata.PackageNotFoundError:  # running from a bare source tree
        return "he-aero approx (uninstalled)"


PRODUCER = _producer()
REQUIRED = (
    "format_version",
    "function",
    "domain",
    "basis",
    "coefficients",
    "degree",
    "error_kind",
    "max_error",
    "depth",
    "nonscalar_mults",
    "producer",
    "steps",
)


def _step_to_dict(step: Step) -> dict:
    if step.op == "poly":
        return {
            "op": "poly",
            "domain": list(step.domain),
            "basis": "chebyshev",
            "coefficients": list(step.coefficients),
            "degree": step.degree,
        }
    if step.op == "square":
        return {"op": "square", "times": step.times}
    if step.constants is not None:
        return {"op": step.op, "iterations": step.iterations, "constants": [list(p) for p in step.constants]}
    return {"op": step.op, "iterations": step.iterations}


def plan_to_dict(plan: Plan) -> dict:
    """The file dictionary of a Plan (layout: approx.coefficients)."""
    return {
        "format_version": FORMAT_VERSION,
        "producer": PRODUCER,
        "function": plan.function,
        "domain": list(plan.domain),
        "basis": "chebyshev",
        "coefficients": list(plan.coefficients),
        "degree": plan.degree,
        "error_kind": plan.error_kind,
        "max_error": plan.max_error,
        "lower_bound": plan.lower_bound,
        "depth": plan.depth,
        "affine_levels": plan.affine_levels,
        "nonscalar_mults": plan.nonscalar_mults,
        "scalar_mults": plan.scalar_mults,
        "steps": [_step_to_dict(s) for s in plan.steps],
    }


def _need(data: dict, key: str, where: str = ""):
    if key not in data:
        raise ApproxError(f"{where}{key}: missing field")
    return data[key]


def _step_from_dict(i: int, raw) -> Step:
    where = f"steps[{i}]."
    if not isinstance(raw, dict):
        raise ApproxError(f"steps[{i}]: expected an object, got {type(raw).__name__}")
    op = _need(raw, "op", where)
    if op == "poly":
        if raw.get("basis", "chebyshev") != "chebyshev":
            raise ApproxError(f"{where}basis: only 'chebyshev' is supported, got {raw['basis']!r}")
        coeffs = _need(raw, "coefficients", where)
        if not isinstance(coeffs, list):
            raise ApproxError(f"{where}coefficients: expected a list of numbers")
        step = Step("poly", domain=_need(raw, "domain", where), coefficients=tuple(coeffs))
        if "degree" in raw and raw["degree"] != step.degree:
            raise ApproxError(f"{where}degree: {raw['degree']!r} but {len(coeffs)} coefficients")
        return step
    if op == "square":
        return Step("square", times=_need(raw, "times", where))
    if op in ("newton_recip", "newton_inv_sqrt"):
        constants = raw.get("constants")
        if constants is not None and (
            not isinstance(constants, list) or not all(isinstance(p, list) and len(p) == 2 for p in constants)
        ):
            raise ApproxError(f"{where}constants: expected a list of [a, c] pairs")
        return Step(op, iterations=_need(raw, "iterations", where), constants=constants)
    raise ApproxError(f"{where}op: unknown {op!r}")


def plan_from_dict(data) -> Plan:
    """Validate a file dictionary and build the Plan; ApproxError names the first bad field."""
    if not isinstance(data, dict):
        raise ApproxError(f"file: expected a JSON object, got {type(data).__name__}")
    for key in REQUIRED:
        _need(data, key)
    if data["format_version"] not in (1, FORMAT_VERSION) or isinstance(data["format_version"], bool):
        raise ApproxError(
            f"format_version: {data['format_version']!r} is not supported (expected {FORMAT_VERSION})"
        )
    if data["basis"] != "chebyshev":
        raise ApproxError(f"basis: only 'chebyshev' is supported, got {data['basis']!r}")
    if not isinstance(data["producer"], str):
        raise ApproxError("producer: expected a string")
    steps = data["steps"]
    if not isinstance(steps, list) or not steps:
        raise ApproxError("steps: expected a non-empty list")
    parsed = tuple(_step_from_dict(i, s) for i, s in enumerate(steps))
    max_error = data["max_error"]
    if isinstance(max_error, bool) or not isinstance(max_error, (int, float)):
        raise ApproxError(f"max_error: expected a number, got {max_error!r}")
    lower = data.get("lower_bound")
    if lower is not None and (
        isinstance(lower, bool) or not isinstance(lower, (int, float)) or not math.isfinite(lower)
    ):
        raise ApproxError(f"lower_bound: expected a finite number or null, got {lower!r}")
    plan = Plan(data["function"], data["domain"], data["error_kind"], float(max_error), parsed, lower)
    if parsed[0].coefficients != tuple(float(c) for c in _as_list(data["coefficients"])):
        raise ApproxError("coefficients: differ from the first poly step's coefficients")
    for key in ("degree", "depth", "nonscalar_mults", "scalar_mults", "affine_levels"):
        if key in data and data[key] != getattr(plan, key):
            raise ApproxError(f"{key}: file says {data[key]!r}, the steps give {getattr(plan, key)}")
    if any(s.constants for s in parsed):
        _check_error_claim(plan)
    return plan


def _check_error_claim(plan: Plan) -> None:
    """Refuse a plan whose steps do worse than its `max_error` on a 4097-point grid (the certificate is
    taken on a denser grid, so an honest plan never fails): edited Newton constants would otherwise run
    with a claimed error they do not have."""
    worst = float(np.max(np.abs(plan.signed_error(dense_grid(4097)))))
    if not worst <= plan.max_error * (1 + 1e-6) + 1e-15:
        raise ApproxError(
            f"max_error: the steps reach {worst:.3g} on a grid, the file claims {plan.max_error:.3g}"
        )


def _as_list(value) -> list:
    if not isinstance(value, list):
        raise ApproxError("coefficients: expected a list of numbers")
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise ApproxError(f"coefficients: not numbers: {value!r}") from exc
