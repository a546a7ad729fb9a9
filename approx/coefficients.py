"""Coefficient files: versioned, self-describing JSON that anyone can check with numpy alone.

Layout (format_version 1)::

    {
      "format_version": 1,
      "producer": "he-aero approx 0.1.0",
      "function": "exp",                 # approx.functions.FUNCTIONS
      "domain": [a, b],                  # the plan input's range
      "basis": "chebyshev",
      "coefficients": [c0, c1, ...],     # first poly step, LOW to HIGH:
                                         #   numpy.polynomial.chebyshev.chebval((2x - a - b)/(b - a), c)
      "degree": n,                       # len(coefficients) - 1
      "error_kind": "abs" | "rel",
      "max_error": e,                    # certified error of the WHOLE plan against the function
      "lower_bound": l | null,           # de la Vallee Poussin bound of the first poly's own fit
      "depth": D,                        # levels, the affine map included (affine_levels says if it is)
      "affine_levels": 0 | 1,
      "nonscalar_mults": M, "scalar_mults": S,
      "steps": [{"op": "poly", "domain": [a, b], "basis": "chebyshev", "coefficients": [...], "degree": n},
                {"op": "square", "times": k}, {"op": "newton_recip", "iterations": n}, ...]
    }

For a single-polynomial fit `steps` holds that one poly and `coefficients` is the whole approximation.
`depth`, `nonscalar_mults`, `scalar_mults` and `degree` are recomputed on load and must match.
"""

from __future__ import annotations

import json
import math
from importlib import metadata
from pathlib import Path

from approx.errors import ApproxError

FORMAT_VERSION = 1


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


def _step_to_dict(step) -> dict:
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
    return {"op": step.op, "iterations": step.iterations}


def plan_to_dict(plan) -> dict:
    """The file dictionary of a Plan (see the module docstring)."""
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


def _step_from_dict(i: int, raw) -> object:
    from approx.plans import Step

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
        return Step(op, iterations=_need(raw, "iterations", where))
    raise ApproxError(f"{where}op: unknown {op!r}")


def plan_from_dict(data) -> object:
    """Validate a file dictionary and build the Plan; ApproxError names the first bad field."""
    from approx.plans import Plan

    if not isinstance(data, dict):
        raise ApproxError(f"file: expected a JSON object, got {type(data).__name__}")
    for key in REQUIRED:
        _need(data, key)
    if data["format_version"] != FORMAT_VERSION:
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
    return plan


def _as_list(value) -> list:
    if not isinstance(value, list):
        raise ApproxError("coefficients: expected a list of numbers")
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise ApproxError(f"coefficients: not numbers: {value!r}") from exc


def save_plan(plan, path) -> Path:
    """Write the plan's coefficient file (JSON, floats written with full round-trip precision)."""
    path = Path(path)
    path.write_text(json.dumps(plan_to_dict(plan), indent=2) + "\n")
    return path


def load_plan(path):
    """Read and validate a coefficient file; ApproxError names the file and the bad field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ApproxError(f"file: cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ApproxError(f"file: {path} is not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    try:
        return plan_from_dict(data)
    except ApproxError as exc:
        raise ApproxError(f"{path}: {exc}") from exc
