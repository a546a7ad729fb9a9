"""Minimax (Remez exchange) fits in the Chebyshev basis, with errors certified from both sides.

A fit minimises max_x |w(x) (f(x) - p(x))| over polynomials p of degree n on [a, b]: w = 1 (absolute error),
w = 1/|f| (relative error) or any positive weight (plans use weights that anticipate later squarings).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import chebyshev as C
from scipy.linalg import LinAlgWarning, lu_factor, lu_solve

from approx.chebyshev import (
    alternating_extrema,
    certified_max_error,
    check_degree,
    check_domain,
    dense_grid,
    from_unit,
    interpolate,
)
from approx.errors import ApproxError

WORK_POINTS = 8193
"""Grid used inside the exchange iterations (the final error uses the >= 10^5-point certification grid)."""


@dataclass(frozen=True)
class Fit:
    """A polynomial fit on [a, b] and its certified error.

    Attributes
    ----------
    domain : (a, b).
    coefficients : Chebyshev coefficients, low to high, for chebval(t, c) at t = (2x - a - b)/(b - a).
    error_kind : "abs", "rel" or "weighted".
    max_error : max weighted error on the dense grid plus local search around its peaks (upper side).
    lower_bound : de la Vallee Poussin bound min_i |e(x_i)| over n+2 alternating points: no degree-n
        polynomial does better (lower side). 0.0 if no alternating set was found.
    points : the n+2 equioscillation points (x), ascending; empty if none.
    point_errors : the signed weighted errors at `points`.
    method : "remez", or "chebyshev" when the exchange did not beat interpolation (fallback).
    iterations : exchange iterations run.
    """

    domain: tuple[float, float]
    coefficients: np.ndarray
    error_kind: str
    max_error: float
    lower_bound: float
    points: np.ndarray = field(repr=False)
    point_errors: np.ndarray = field(repr=False)
    method: str
    iterations: int

    @property
    def degree(self) -> int:
        return len(self.coefficients) - 1

    def __call__(self, x):
        """p(x) by numpy's Clenshaw recurrence (plans use the BSGS order instead)."""
        a, b = self.domain
        return C.chebval((2.0 * np.asarray(x, dtype=float) - a - b) / (b - a), self.coefficients)


def _weight_fn(f: Callable, error_kind: str, weight: Callable | None) -> Callable:
    if weight is not None:
        return weight
    if error_kind == "abs":
        return lambda x: np.ones_like(np.asarray(x, dtype=float))
    if error_kind == "rel":
        return lambda x: 1.0 / np.abs(f(x))
    raise ApproxError(f"error_kind: expected 'abs' or 'rel', got {error_kind!r}")


def _levelled_solve(tref, g, w, n):
    """Solve sum_j c_j T_j(t_i) + (-1)^i E / w_i = g_i for (c, E)."""
    a = np.empty((n + 2, n + 2))
    a[:, : n + 1] = C.chebvander(tref, n)
    a[:, n + 1] = (-1.0) ** np.arange(n + 2) / w
    # scipy's LU: numpy's threaded solve stalls on a busy machine (100x slower at n ~ 128)
    with warnings.catch_warnings():  # a singular system shows up as non-finite values, handled by the caller
        warnings.simplefilter("ignore", LinAlgWarning)
        sol = lu_solve(lu_factor(a, check_finite=False), g, check_finite=False)
    return sol[: n + 1], sol[n + 1]


def _exchange(f, w_x, dom, n, tref, grid, g_grid, w_grid, max_iter, tol):
    """Remez exchange from reference tref: (best coefficients or None, their error, levelled, iterations)."""
    best_c, best_err, levelled, iters, stalled = None, np.inf, False, 0, 0
    # below this the error is float64 rounding, not approximation: exchanging further only chases noise
    noise = 64 * np.finfo(float).eps * float(np.max(np.abs(w_grid * g_grid)))
    for iters in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        xref = from_unit(tref, dom)
        c, _ = _levelled_solve(tref, f(xref), w_x(xref), n)
        if not np.all(np.isfinite(c)):
            break
        e = w_grid * (g_grid - C.chebval(grid, c))
        emax = float(np.max(np.abs(e)))
        if emax < best_err * (1 - 1e-6):
            best_c, best_err, stalled = c, emax, 0
        else:  # rounding noise (e.g. a narrow domain far from 0) can stop progress before levelling
            stalled += 1
            if stalled >= 4:
                break
        if emax <= noise:
            levelled = True
            break
        idx = alternating_extrema(grid, e, n + 2)
        if idx is None:
            break
        emin = float(np.min(np.abs(e[idx])))
        if emax == 0.0 or (emax - emin) / emax < tol:
            levelled = True
            break
        if np.array_equal(grid[idx], tref):
            break
        tref = grid[idx]
    return best_c, best_err, levelled, iters


def remez(
    f: Callable,
    domain,
    degree: int,
    error_kind: str = "abs",
    weight: Callable | None = None,
    max_iter: int = 40,
    tol: float = 1e-3,
    certify: bool = True,
) -> Fit:
    """Minimax polynomial of `degree` for f on `domain` by the Remez exchange, Chebyshev interpolation start.

    Parameters
    ----------
    f : vectorised function of x.
    domain : [a, b], finite, a < b.
    degree : 0..MAX_DEGREE.
    error_kind : "abs" or "rel" (ignored, reported as "weighted", when `weight` is given).
    weight : optional positive weight w(x); the fit minimises max |w (f - p)|.
    max_iter, tol : stop when (max|e| - min|e_ref|) / max|e| < tol or after max_iter exchanges.
    certify : measure max_error on the >= 10^5-point grid with local search (False: the work grid only,
        for screening inside plan searches).

    Returns
    -------
    Fit. Falls back to the Chebyshev interpolant (method="chebyshev") when the exchange fails (too few
    alternations, singular system) or ends worse than interpolation, e.g. at machine precision.
    """
    dom = check_domain(domain)
    n = check_degree(degree)
    kind = "weighted" if weight is not None else error_kind
    w_x = _weight_fn(f, error_kind, weight)

    def err_t(t, c):
        x = from_unit(t, dom)
        return w_x(x) * (f(x) - C.chebval(t, c))

    grid = dense_grid(WORK_POINTS)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # reported below as one clear line
        g_grid = f(from_unit(grid, dom))
    if not np.all(np.isfinite(g_grid)):
        raise ApproxError(f"domain: the function is not finite on [{dom[0]}, {dom[1]}]")
    w_grid = w_x(from_unit(grid, dom))
    if not np.all(np.isfinite(w_grid)) or np.any(w_grid <= 0):
        raise ApproxError(f"error_kind: the weight is not finite and positive on [{dom[0]}, {dom[1]}]")

    c_interp = interpolate(f, dom, n)
    e_interp = w_grid * (g_grid - C.chebval(grid, c_interp))
    best = (c_interp, float(np.max(np.abs(e_interp))), "chebyshev", 0)
    start = -np.cos(np.pi * np.arange(n + 2) / (n + 1))  # extrema of T_{n+1}
    c, err, _, iters = _exchange(f, w_x, dom, n, start, grid, g_grid, w_grid, max_iter, tol)
    if c is not None and err < best[1]:
        best = (c, err, "remez", iters)
    best_c, _, method, iters = best
    return _finish(f, dom, best_c, kind, err_t, method, iters, certify, grid, w_grid, g_grid)


def _finish(f, dom, c, kind, err_t, method, iters, certify, grid, w_grid, g_grid) -> Fit:
    """Measure the error of coefficients c from both sides and package the Fit."""
    n = len(c) - 1
    e = w_grid * (g_grid - C.chebval(grid, c))
    if certify:
        max_err, _ = certified_max_error(lambda t: err_t(t, c))
    else:
        max_err = float(np.max(np.abs(e)))
    idx = alternating_extrema(grid, e, n + 2)
    if idx is None:
        points, perr, lower = np.empty(0), np.empty(0), 0.0
    else:
        points, perr = from_unit(grid[idx], dom), e[idx]
        lower = float(np.min(np.abs(perr)))
    c = np.array(c, dtype=float)
    c.setflags(write=False)
    return Fit(dom, c, kind, float(max_err), min(lower, float(max_err)), points, perr, method, iters)


def chebyshev_fit(f: Callable, domain, degree: int, error_kind: str = "abs", certify: bool = True) -> Fit:
    """The Chebyshev interpolant as a Fit (the baseline the minimax fit must beat), error measured alike."""
    dom = check_domain(domain)
    n = check_degree(degree)
    w_x = _weight_fn(f, error_kind, None)
    grid = dense_grid(WORK_POINTS)
    x = from_unit(grid, dom)

    def err_t(t, c):
        xx = from_unit(t, dom)
        return w_x(xx) * (f(xx) - C.chebval(t, c))

    return _finish(
        f, dom, interpolate(f, dom, n), error_kind, err_t, "chebyshev", 0, certify, grid, w_x(x), f(x)
    )
