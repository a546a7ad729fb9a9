"""What the versioned JSON artifacts (calibration, plan) share: reading the file, and the checks of a field.

Each error is a HeAeroError; `read_json` names the file, `interval` the field (callers add the file).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from he_aero.errors import HeAeroError

MAX_PLAN_ERROR = 1e-2
"""Largest error a plan may claim for any approximation: relative for exp, 1/x and 1/sqrt, absolute for GELU
and ReLU (the plan stage fits 1e-4 and 2e-3). `PlanConfig` and `he-aero plan` refuse larger targets, so every
compiled plan loads; a plan file cannot make edited coefficients acceptable by claiming an error that leaves
the output meaningless (a GELU claimed at 0.45 decoded a different token)."""


def read_json(path: Path, noun: str, default: Path, remake: str):
    """The parsed JSON of artifact file `path`; `noun` starts each error ("calibration", "plan") and
    `remake` is the make target that rebuilds the shipped `default`."""
    if not path.is_file():
        hint = f" (the shipped default is made by `make {remake}`)" if path == default else ""
        raise HeAeroError(f"{noun} {path}: no such file{hint}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HeAeroError(f"{noun} {path}: not valid JSON ({exc})") from exc


def interval(value, name: str, floor: float | None = None) -> tuple[float, float]:
    """`value` as a finite (lo, hi) with lo < hi (and lo >= floor); HeAeroError names field `name`."""
    try:
        lo, hi = value
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (lo, hi)):
            raise TypeError("not numbers")
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError) as exc:
        raise HeAeroError(f"field {name!r} must be [lo, hi] (two numbers), got {value!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise HeAeroError(f"field {name!r} must be finite with lo < hi, got {value!r}")
    if floor is not None and lo < floor:
        raise HeAeroError(f"field {name!r} must start at >= {floor:g}, got {value!r}")
    return lo, hi
