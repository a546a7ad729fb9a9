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
from pathlib import Path

from approx.errors import ApproxError
from approx.plan import FORMAT_VERSION, PRODUCER, REQUIRED, Plan, plan_from_dict, plan_to_dict

# the dictionary form lives with the dataclasses (approx.plan); re-exported for callers of the file API
__all__ = [
    "FORMAT_VERSION",
    "PRODUCER",
    "REQUIRED",
    "load_plan",
    "plan_from_dict",
    "plan_to_dict",
    "save_plan",
]


def save_plan(plan: Plan, path) -> Path:
    """Write the plan's coefficient file (JSON, floats written with full round-trip precision)."""
    path = Path(path)
    path.write_text(json.dumps(plan_to_dict(plan), indent=2) + "\n")
    return path


def load_plan(path) -> Plan:
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
