"""The minimum-depth BSGS evaluator: values equal numpy's chebval, depth equals ceil(log2(d+1)), counts."""

import numpy as np
import pytest
from numpy.polynomial import chebyshev as C

from approx import bsgs
from approx.chebyshev import MAX_DEGREE
from approx.errors import ApproxError
from tests.conftest import assert_close_bits


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 23, 31, 32, 47, 63, 64, 100, 127])
def test_evaluate_matches_chebval(degree):
    rng = np.random.default_rng(degree)
    c = rng.standard_normal(degree + 1) / (1.0 + np.arange(degree + 1))
    t = np.linspace(-1.0, 1.0, 257)
    got = bsgs.evaluate(c, t)
    got = np.broadcast_to(got, t.shape)
    assert_close_bits(got, C.chebval(t, c), 40, f"degree {degree}")


def test_depth_is_minimal_for_every_degree():
    for degree in range(MAX_DEGREE + 1):
        depth, nonscalar, scalar = bsgs.bsgs_cost(degree)
        assert depth == int(np.ceil(np.log2(degree + 1))), degree
        # O(sqrt(d)) ct-ct products: well under the d - 1 of a naive power ladder
        assert nonscalar <= max(degree - 1, 0)
        if degree >= 15:
            assert nonscalar <= 3 * np.sqrt(degree)
        assert scalar <= degree + 1


def test_cost_of_random_coefficients_equals_dense_cost():
    rng = np.random.default_rng(1)
    for degree in (3, 15, 31, 62, 127):
        cost = bsgs.cost_of(rng.uniform(0.5, 1.5, degree + 1))
        assert (cost.depth, cost.nonscalar_mults, cost.scalar_mults) == bsgs.bsgs_cost(degree)


def test_reference_costs_for_the_ckks_engineer():
    # The contract the encrypted evaluator is tested against (module docstring of approx.bsgs).
    assert bsgs.bsgs_cost(1) == (1, 0, 1)
    assert bsgs.bsgs_cost(3) == (2, 2, 2)
    assert bsgs.bsgs_cost(7) == (3, 5, 4)
    assert bsgs.bsgs_cost(15) == (4, 8, 11)
    assert bsgs.bsgs_cost(31) == (5, 13, 23)
    assert bsgs.bsgs_cost(63) == (6, 18, 54)


class _Tracked(bsgs.Ops):
    """Values with their depth: checks every intermediate stays within the reported depth."""

    def __init__(self):
        self.max_depth = 0

    def _out(self, v, d):
        self.max_depth = max(self.max_depth, d)
        return (v, d)

    def mul(self, a, b):
        return self._out(a[0] * b[0], max(a[1], b[1]) + 1)

    def mul_scalar(self, a, c):
        return self._out(a[0] * c, a[1] + 1)

    def add(self, a, b):
        return (a[0] + b[0], max(a[1], b[1]))

    def sub(self, a, b):
        return (a[0] - b[0], max(a[1], b[1]))

    def add_scalar(self, a, c):
        return (a[0] + c, a[1])


@pytest.mark.parametrize("degree", [2, 6, 13, 31, 45])
def test_generic_ops_give_same_values_and_depth(degree):
    rng = np.random.default_rng(degree)
    c = rng.standard_normal(degree + 1)
    t = np.linspace(-1, 1, 65)
    ops = _Tracked()
    value, depth = bsgs.evaluate(c, (t, 0), ops)
    assert_close_bits(value, C.chebval(t, c), 40)
    assert depth == ops.max_depth == bsgs.min_depth(degree)


def test_zero_coefficients_are_skipped_and_never_deepen():
    c = np.zeros(16)
    c[[1, 3, 5, 15]] = [1.0, -0.5, 0.25, 0.125]  # an odd polynomial
    t = np.linspace(-1, 1, 33)
    assert_close_bits(bsgs.evaluate(c, t), C.chebval(t, c), 45)
    cost = bsgs.cost_of(c)
    dense = bsgs.bsgs_cost(15)
    assert cost.depth <= dense[0] and cost.scalar_mults < dense[2]


def test_split_identity():
    rng = np.random.default_rng(3)
    c = rng.standard_normal(14)
    low, high = bsgs.split(c, 8)
    t = np.linspace(-1, 1, 41)
    t8 = C.chebval(t, [0] * 8 + [1])
    assert_close_bits(C.chebval(t, low) + C.chebval(t, high) * t8, C.chebval(t, c), 45)


@pytest.mark.parametrize("bad", [-1, MAX_DEGREE + 1, 2.5, True])
def test_bad_degree(bad):
    with pytest.raises(ApproxError, match="degree"):
        bsgs.bsgs_cost(bad)
