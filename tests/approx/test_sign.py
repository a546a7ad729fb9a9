"""Composite minimax sign and relu: odd stages, certified error, depth from the shared evaluator."""

import numpy as np
import pytest
from numpy.polynomial import chebyshev as C

from approx import bsgs
from approx.errors import ApproxError
from approx.sign import relu_composite, sign_stage


@pytest.mark.parametrize("lo, degree", [(0.1, 7), (0.5, 3), (0.01, 15)])
def test_sign_stage_is_odd_and_its_error_is_measured(lo, degree):
    coeffs, delta = sign_stage(lo, degree)
    assert len(coeffs) == degree + 1 and np.all(coeffs[0::2] == 0.0)
    t = np.linspace(lo, 1.0, 20_001)
    p = C.chebval(t, coeffs)
    assert np.max(np.abs(1.0 - p)) <= delta * (1 + 1e-6)
    np.testing.assert_allclose(C.chebval(-t, coeffs), -p, atol=1e-14)
    # equioscillation makes the error reach delta at both ends of [lo, 1]
    assert abs(1.0 - p[0]) >= 0.99 * delta and abs(1.0 - p[-1]) >= 0.99 * delta


def test_composite_relu_meets_its_bound_and_depth_matches_the_counter():
    relu = relu_composite(8.0, 1e-3)
    x = np.concatenate([np.linspace(-8, 8, 40_001), np.random.default_rng(0).uniform(-8, 8, 2000)])
    err = np.max(np.abs(np.maximum(x, 0) - relu.evaluate(x)))
    assert err <= relu.max_error * (1 + 1e-9) and relu.max_error <= 1e-3
    stage_depths = sum(bsgs.cost_of(c).depth for c in relu.stages)
    assert relu.cost.depth == 1 + stage_depths + 1  # 1/bound scaling, stages, h * y


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: sign_stage(0.1, 4), "degree"),
        (lambda: sign_stage(0.0, 3), "eps"),
        (lambda: relu_composite(0.0, 1e-3), "bound"),
        (lambda: relu_composite(1.0, -1.0), "max_error"),
    ],
)
def test_bad_input(call, field):
    with pytest.raises(ApproxError, match=f"^{field}"):
        call()
