"""The refinement steps of approx/refine.py: the exact operation tree each one builds (the order its docstring
states, which every evaluator then runs), its values against the textbook recurrences, and its cost."""

import numpy as np
import pytest

from approx import refine
from approx.bsgs import CountingOps, Ops


class Expr(Ops):
    """Builds the expression a step computes, as a string: the operation tree, nothing else."""

    def mul(self, a, b):
        return f"({a}*{b})"

    def mul_scalar(self, a, c):
        return f"({a}*{c})"

    def add(self, a, b):
        return f"({a}+{b})"

    def sub(self, a, b):
        return f"({a}-{b})"

    def add_scalar(self, a, c):
        return f"({a}+{c})"


E = Expr()
X = np.linspace(0.5, 2.0, 7)


def test_square_multiplies_by_itself_times_times():
    assert refine.square("y", 0, E) == "y"
    assert refine.square("y", 2, E) == "((y*y)*(y*y))"
    assert refine.square(np.array([1.5, -2.0]), 3, Ops()).tolist() == [1.5**8, 256.0]


def test_newton_recip_order():
    """e = x*y; r = -e + 2 as e - (e + e) + 2; y = y*r."""
    assert refine.newton_recip("y", "x", 0, E) == "y"
    assert refine.newton_recip("y", "x", 1, E) == "(y*(((x*y)-((x*y)+(x*y)))+2.0))"


def test_newton_inv_sqrt_order():
    """h = 0.5 * x once; s = y*y; u = h*y; v = u*s; y = 1.5*y - v."""
    assert refine.newton_inv_sqrt("y", "x", 0, E) == "y"
    assert refine.newton_inv_sqrt("y", "x", 1, E) == "((y*1.5)-(((x*0.5)*y)*(y*y)))"
    two = refine.newton_inv_sqrt("y", "x", 2, E)
    assert two.startswith("((((y*1.5)-(((x*0.5)*y)*(y*y)))*1.5)-")


def test_newton_inv_sqrt_is_the_half_then_its_steps():
    """The pieces the interpreter refreshes between: h = x*0.5 once, then one step per iteration reading
    h, in the order of the whole function (so numpy results are the same bit for bit)."""
    assert refine.inv_sqrt_half("x", E) == "(x*0.5)"
    assert refine.newton_inv_sqrt_step("y", "h", E) == "((y*1.5)-((h*y)*(y*y)))"
    h = refine.inv_sqrt_half("x", E)
    two = refine.newton_inv_sqrt_step(refine.newton_inv_sqrt_step("y", h, E), h, E)
    assert refine.newton_inv_sqrt("y", "x", 2, E) == two


def test_goldschmidt_recip_order():
    """e = 1 - x y (as xy - (xy + xy) + 1); y <- y (1 + e); e <- e^2 except after the last step."""
    assert refine.goldschmidt_recip("y", "x", 0, E) == "y"
    e = "(((x*y)-((x*y)+(x*y)))+1.0)"
    assert refine.goldschmidt_recip("y", "x", 1, E) == f"(y*({e}+1.0))"
    assert refine.goldschmidt_recip("y", "x", 2, E) == f"((y*({e}+1.0))*(({e}*{e})+1.0))"


def test_goldschmidt_inv_sqrt_order():
    """g = x y, h = y / 2; r = 1/2 - g h (as gh - (gh + gh) + 0.5); g += g r; h += h r; return h + h."""
    assert refine.goldschmidt_inv_sqrt("y", "x", 0, E) == "y"
    g, h = "(x*y)", "(y*0.5)"
    r = f"((({g}*{h})-(({g}*{h})+({g}*{h})))+0.5)"
    h1 = f"({h}+({h}*{r}))"
    assert refine.goldschmidt_inv_sqrt("y", "x", 1, E) == f"({h1}+{h1})"


@pytest.mark.parametrize("n", [1, 2, 3])
def test_values_follow_the_textbook_recurrences(n):
    ops = Ops()
    y0 = np.full_like(X, 0.6)
    y = y0.copy()
    for _ in range(n):
        y = y * (2 - X * y)
    np.testing.assert_allclose(refine.newton_recip(y0, X, n, ops), y, rtol=1e-14)
    np.testing.assert_allclose(refine.goldschmidt_recip(y0, X, n, ops), y, rtol=1e-13)
    z0 = np.full_like(X, 0.8)
    z = z0.copy()
    for _ in range(n):
        z = z * (3 - X * z * z) / 2
    np.testing.assert_allclose(refine.newton_inv_sqrt(z0, X, n, ops), z, rtol=1e-14)
    np.testing.assert_allclose(refine.goldschmidt_inv_sqrt(z0, X, n, ops), z, rtol=1e-13)


@pytest.mark.parametrize(
    "fn, n, depth, nonscalar, scalar",
    [
        (refine.square, 3, 3, 3, 0),
        (refine.newton_recip, 3, 6, 6, 0),  # 2 levels, 2 ct-ct mults a step
        (refine.newton_inv_sqrt, 3, 7, 9, 4),  # h (1 level, once) then 2 levels, 3 ct-ct + 1 scalar a step
        (refine.goldschmidt_recip, 3, 4, 6, 0),  # 1 level for e, then 1 a step
        (refine.goldschmidt_inv_sqrt, 3, 7, 10, 1),  # g, h once; 2 levels and 3 ct-ct a step
        (refine.newton_inv_sqrt, 0, 0, 0, 0),
        (refine.goldschmidt_recip, 0, 0, 0, 0),
        (refine.goldschmidt_inv_sqrt, 0, 0, 0, 0),
    ],
)
def test_costs_from_a_fresh_input(fn, n, depth, nonscalar, scalar):
    ops = CountingOps()
    got = fn(0, n, ops) if fn is refine.square else fn(0, 0, n, ops)
    assert (got, ops.nonscalar, ops.scalar) == (depth, nonscalar, scalar)
