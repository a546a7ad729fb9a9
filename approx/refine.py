"""Refinement steps an encrypted evaluator can run after a polynomial, in their exact operation order.

Each function takes an `approx.bsgs.Ops` so the same code runs on numpy arrays, on a depth counter and on
ciphertexts. y is the running value, x the plan input (depth 0).
"""

from __future__ import annotations

from approx.bsgs import Ops


def square(y, times: int, ops: Ops):
    """`square`: y <- y^(2^times) by `times` squarings (one level and one ct-ct mult each)."""
    for _ in range(times):
        y = ops.mul(y, y)
    return y


def newton_recip(y, x, iterations: int, ops: Ops, constants=None):
    """`newton_recip`: repeat y <- c (y (a - x y)), with one (a, c) per iteration (classical Newton: (2, 1)).

    Order: e = x*y; r = a - e (as -e + a); then y*r, times c when c != 1 (c*y is a scalar product on y at
    the level of x*y, so a step costs 2 levels either way: 2 ct-ct mults, plus 1 scalar mult when c != 1).

    With t = x y in [m, M], the step maps t to c t (a - t). a = m + M makes both ends land on c m M and the
    ratio M/m falls to (m + M)^2 / (4 m M): about 4x per step while the initial guess is poor (classical
    Newton only doubles the small end), quadratic near 1. c re-centres the new interval on 1. Constants
    from `scaled_newton_constants`; the scaled ("optimally relaxed") Newton iteration for the inverse, cf.
    Panda, "Polynomial approximation of inverse sqrt function for FHE" (2022) for the same idea on 1/sqrt(x).
    """
    for i in range(iterations):
        a, c = constants[i] if constants is not None else (2.0, 1.0)
        e = ops.mul(x, y)
        r = ops.add_scalar(ops.sub(e, ops.add(e, e)), a)  # -e + a without a scalar multiply
        y = ops.mul(y if c == 1.0 else ops.mul_scalar(y, c), r)
    return y


def _scaled_walk(eps: float, iterations: int) -> tuple[tuple[tuple[float, float], ...], float, float]:
    """The (a, c) of each step and the final interval [m, M] of t = x y, from t in [1 - eps, 1 + eps]."""
    m, big = 1.0 - eps, 1.0 + eps
    out = []
    for _ in range(iterations):
        a = m + big
        c = 2.0 / (m * big + a * a / 4.0)
        out.append((a, c))
        m, big = c * m * big, c * a * a / 4.0
    return tuple(out), m, big


def scaled_newton_constants(eps: float, iterations: int) -> tuple[tuple[float, float], ...]:
    """The (a, c) of each `newton_recip` iteration for an initial guess whose relative error is at most
    eps < 1 (t = x y0 in [1 - eps, 1 + eps]); see `newton_recip`. The final t lies in [1 - e, 1 + e] with e
    from `scaled_newton_error`."""
    return _scaled_walk(eps, iterations)[0]


def scaled_newton_error(eps: float, iterations: int) -> float:
    """Relative-error bound after `iterations` scaled Newton steps from an initial relative error eps."""
    _, m, big = _scaled_walk(eps, iterations)
    return max(1.0 - m, big - 1.0)


def newton_inv_sqrt(y, x, iterations: int, ops: Ops):
    """`newton_inv_sqrt`: repeat y <- y (3 - x y^2) / 2, computed as 1.5 y - (0.5 x y) y^2.

    Order: h = 0.5 * x once (`inv_sqrt_half`); then `newton_inv_sqrt_step` per iteration.
    The halving rides on x (computed once) so a step costs 2 levels, 3 ct-ct and 1 scalar mult.
    With e = 1 - x y^2 the error maps to e' = (3 e^2 + e^3) / 4.
    """
    if iterations == 0:
        return y
    h = inv_sqrt_half(x, ops)
    for _ in range(iterations):
        y = newton_inv_sqrt_step(y, h, ops)
    return y


def inv_sqrt_half(x, ops: Ops):
    """h = 0.5 * x, the operand every `newton_inv_sqrt_step` reads: one scalar product on x, made once.

    Kept apart from the steps so that an encrypted evaluator can refresh h with y between iterations
    (`approx.interpret`) instead of running all of them as one piece."""
    return ops.mul_scalar(x, 0.5)


def newton_inv_sqrt_step(y, h, ops: Ops):
    """One `newton_inv_sqrt` iteration from h = x / 2: s = y*y; u = h*y; v = u*s; y = 1.5*y - v.

    2 levels when y and h start at one level (s and u side by side, then v; 1.5*y beside them)."""
    s = ops.mul(y, y)
    u = ops.mul(h, y)
    v = ops.mul(u, s)
    return ops.sub(ops.mul_scalar(y, 1.5), v)


def goldschmidt_recip(y, x, iterations: int, ops: Ops):
    """Goldschmidt form of the reciprocal refinement: e = 1 - x y; repeat y <- y (1 + e), e <- e^2.

    Same values as Newton in exact arithmetic but 1 level per step instead of 2 (y and e update in
    parallel), after one level for e. Not in the plan step vocabulary yet (docs/design.md section 2), so
    plans do not emit it; the benchmark reports it for comparison.
    """
    if iterations == 0:
        return y
    xy = ops.mul(x, y)
    e = ops.add_scalar(ops.sub(xy, ops.add(xy, xy)), 1.0)  # 1 - x y
    for i in range(iterations):
        y = ops.mul(y, ops.add_scalar(e, 1.0))
        if i + 1 < iterations:
            e = ops.mul(e, e)
    return y


def goldschmidt_inv_sqrt(y, x, iterations: int, ops: Ops):
    """Goldschmidt form of the 1/sqrt(x) refinement from a guess y ~ 1/sqrt(x).

    g = x y (-> sqrt(x)), h = y / 2 (-> 1/(2 sqrt(x))); repeat r = 1/2 - g h; g <- g + g r; h <- h + h r;
    return 2 h (as h + h). With e = 1 - x y^2 = 1 - 4 g h the error maps to (3 e^2 + e^3) / 4 like Newton's,
    at 2 levels and 3 ct-ct mults a step, but g and h update in parallel and sqrt(x) comes for free.
    Not in the plan step vocabulary (docs/design.md section 2); kept for comparison and future use.
    """
    if iterations == 0:
        return y
    g = ops.mul(x, y)
    h = ops.mul_scalar(y, 0.5)
    for _ in range(iterations):
        gh = ops.mul(g, h)
        r = ops.add_scalar(ops.sub(gh, ops.add(gh, gh)), 0.5)  # 1/2 - g h
        g = ops.add(g, ops.mul(g, r))
        h = ops.add(h, ops.mul(h, r))
    return ops.add(h, h)
