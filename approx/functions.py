"""The functions `approx/` fits, by their CLI names, with the domain rules each one needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from approx.chebyshev import check_domain
from approx.errors import ApproxError


def _gelu(x):
    x = np.asarray(x, dtype=float)
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _relu(x):
    return np.maximum(np.asarray(x, dtype=float), 0.0)


@dataclass(frozen=True)
class Function:
    """A fittable function: its vectorised numpy implementation and what domains make sense for it."""

    name: str
    fn: Callable
    description: str
    positive_domain: bool = False  # 1/x and 1/sqrt(x): the domain must stay away from 0
    nonzero: bool = True  # never 0 on its domain, so a relative error is defined

    def __call__(self, x):
        return self.fn(np.asarray(x, dtype=float))


FUNCTIONS: dict[str, Function] = {
    f.name: f
    for f in (
        Function("exp", np.exp, "exp(x) on any [a, b]; plans add range reduction exp(x/2^k)^(2^k)"),
        Function("reciprocal", np.reciprocal, "1/x on [a, b], 0 < a; plans add Newton steps", True),
        Function(
            "inv_sqrt",
            lambda x: 1.0 / np.sqrt(x),
            "1/sqrt(x) on [a, b], 0 < a (LayerNorm baseline); plans add Newton steps",
            True,
        ),
        Function("gelu", _gelu, "exact GELU x*Phi(x) (baseline FFN)", nonzero=False),
        Function("relu", _relu, "max(x, 0), fitted directly by minimax (relu variants)", nonzero=False),
    )
}


def get_function(name: str) -> Function:
    """The registered function called `name`; ApproxError listing the known names otherwise."""
    try:
        return FUNCTIONS[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name from a malformed file (found by fuzzing)
        raise ApproxError(f"function: unknown {name!r}; choose one of {', '.join(FUNCTIONS)}") from None


def check_function_domain(name: str, domain, error_kind: str = "abs") -> tuple[float, float]:
    """Validate the domain (and the error kind) for this function; return (a, b)."""
    func = get_function(name)
    a, b = check_domain(domain)
    if func.positive_domain and a <= 0.0:
        raise ApproxError(f"domain: {name} needs 0 < a, got [{a}, {b}]")
    if error_kind not in ("abs", "rel"):
        raise ApproxError(f"error_kind: expected 'abs' or 'rel', got {error_kind!r}")
    if error_kind == "rel" and not func.nonzero and a <= 0.0:
        raise ApproxError(f"error_kind: relative error of {name} is undefined on [{a}, {b}] (it reaches 0)")
    return a, b
