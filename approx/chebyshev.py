"""Chebyshev-basis helpers: the domain <-> [-1, 1] map, interpolation and certified (dense-grid) max error.

Coefficient order everywhere in `approx/`: low to high, `c[j]` multiplies `T_j(t)`, evaluated with
`numpy.polynomial.chebyshev.chebval(t, c)` at `t = (2x - a - b) / (b - a)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.polynomial import chebyshev as C
from scipy.optimize import minimize_scalar

from approx.errors import ApproxError

MAX_DEGREE = 127
"""Largest degree accepted anywhere (depth 7 on [-1, 1]); beyond it CKKS noise dominates any gain."""

DENSE_POINTS = 131_073
"""Points of the certification grid (>= 10^5): half uniform in t, half Chebyshev-clustered near the ends."""


def check_domain(domain, field: str = "domain") -> tuple[float, float]:
    """Validate a finite interval [a, b] with a < b and return it as two floats."""
    try:
        a, b = (float(v) for v in domain)
    except (TypeError, ValueError) as exc:
        raise ApproxError(f"{field}: expected two numbers [a, b], got {domain!r}") from exc
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ApproxError(f"{field}: bounds must be finite, got [{a}, {b}]")
    if not a < b:
        raise ApproxError(f"{field}: need a < b, got [{a}, {b}]")
    return a, b


def check_degree(degree, field: str = "degree") -> int:
    """Validate an integer degree in [0, MAX_DEGREE]."""
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)):
        raise ApproxError(f"{field}: expected an integer, got {degree!r}")
    if not 0 <= int(degree) <= MAX_DEGREE:
        raise ApproxError(f"{field}: must be in [0, {MAX_DEGREE}], got {degree}")
    return int(degree)


def to_unit(x, domain):
    """Map x in [a, b] to t in [-1, 1]: t = (2x - a - b) / (b - a)."""
    a, b = domain
    return (2.0 * np.asarray(x, dtype=float) - a - b) / (b - a)


def from_unit(t, domain):
    """Map t in [-1, 1] back to x in [a, b]."""
    a, b = domain
    return 0.5 * (b - a) * np.asarray(t, dtype=float) + 0.5 * (a + b)


def affine_coefficients(domain) -> tuple[float, float]:
    """(alpha, beta) with t = alpha * x + beta; the form the encrypted evaluator applies (one scalar mult)."""
    a, b = domain
    return 2.0 / (b - a), -(a + b) / (b - a)


def interpolate(f: Callable, domain, degree: int) -> np.ndarray:
    """Chebyshev interpolant of f on [a, b] at the degree+1 Chebyshev points of the first kind.

    Returns the coefficients, low to high, in the basis T_j(t) on [-1, 1].
    """
    return C.chebinterpolate(lambda t: f(from_unit(t, domain)), degree)


def dense_grid(n: int = DENSE_POINTS) -> np.ndarray:
    """Sorted t-grid on [-1, 1]: uniform plus Chebyshev-clustered points (errors peak near the ends)."""
    half = n // 2
    uniform = np.linspace(-1.0, 1.0, n - half)
    clustered = -np.cos(np.pi * (np.arange(half) + 0.5) / half)
    return np.unique(np.concatenate([uniform, clustered]))


def local_maxima(values: np.ndarray) -> np.ndarray:
    """Indices i where |values| has a local maximum on the grid (ends included)."""
    m = np.abs(values)
    left = np.concatenate([[True], m[1:] >= m[:-1]])
    right = np.concatenate([m[:-1] >= m[1:], [True]])
    return np.flatnonzero(left & right)


def certified_max_error(
    err_t: Callable, n_points: int = DENSE_POINTS, refine: int = 16
) -> tuple[float, float]:
    """Max |err_t(t)| over [-1, 1]: a dense grid, then a bounded local search around the largest peaks.

    Parameters
    ----------
    err_t : vectorised signed error as a function of t in [-1, 1].
    n_points : size of the dense grid (>= 10^5 for certification).
    refine : how many of the largest grid peaks get a local (Brent, bounded) search.

    Returns
    -------
    (max_error, t_at_max)
    """
    t = dense_grid(n_points)
    e = np.abs(err_t(t))
    if not np.all(np.isfinite(e)):
        raise ApproxError("error: the approximation is not finite on its domain")
    peaks = local_maxima(e)
    peaks = peaks[np.argsort(e[peaks])[::-1][:refine]]
    best, where = float(e.max()), float(t[int(np.argmax(e))])
    for i in peaks:
        lo, hi = t[max(i - 1, 0)], t[min(i + 1, len(t) - 1)]
        if hi <= lo:
            continue
        res = minimize_scalar(
            lambda s: -abs(float(err_t(np.array([s]))[0])),
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-13 * max(1.0, abs(lo))},
        )
        if -res.fun > best:
            best, where = float(-res.fun), float(res.x)
    return best, where


def alternating_extrema(t: np.ndarray, e: np.ndarray, count: int) -> np.ndarray | None:
    """Pick `count` grid indices where e alternates in sign, keeping the largest |e| (None if too few).

    One extremum (the largest |e|) is kept per run of equal sign; surplus points are dropped in pairs of
    neighbours with the smallest magnitude (which keeps the alternation), or one end when one is surplus.
    """
    sign = np.sign(e)
    nz = np.flatnonzero(sign != 0)
    if len(nz) == 0:
        return None
    # runs of equal sign among the nonzero points; keep the largest |e| of each run
    s = sign[nz]
    starts = np.concatenate([[0], np.flatnonzero(s[1:] != s[:-1]) + 1])
    mags = np.abs(e[nz])
    run_max = np.maximum.reduceat(mags, starts)
    run_id = np.repeat(np.arange(len(starts)), np.diff(np.concatenate([starts, [len(nz)]])))
    first_hit = np.flatnonzero(mags == run_max[run_id])
    _, keep = np.unique(run_id[first_hit], return_index=True)
    idx: list[int] = [int(i) for i in nz[first_hit[keep]]]
    if len(idx) < count:
        return None
    while len(idx) > count:
        if len(idx) - count == 1:
            idx.pop(0 if abs(e[idx[0]]) < abs(e[idx[-1]]) else -1)
        else:
            mags = np.abs(e[idx])
            pair = int(np.argmin(np.minimum(mags[:-1], mags[1:]) + np.maximum(mags[:-1], mags[1:])))
            del idx[pair : pair + 2]
    return np.asarray(idx)
