"""Composite minimax sign and relu: odd stages, certified error, depth from the shared evaluator."""

import json

import numpy as np
import pytest
from numpy.polynomial import chebyshev as C

from approx import bsgs
from approx.errors import ApproxError
from approx.sign import CompositeRelu, relu_composite, sign_stage


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


def test_stage_depth_limit_and_dictionary_round_trip():
    """A limit on the levels one stage may use (an encrypted run refreshes between stages only) picks
    shallower stages; the plan file's dictionary form reads back equal, and a malformed one is refused."""
    free = relu_composite(4.0, 1e-2)
    tight = relu_composite(4.0, 1e-2, max_stage_depth=2)
    assert tight.stage_depth <= 2 < free.stage_depth or free.stage_depth <= 2
    assert tight.max_error <= 1e-2
    again = CompositeRelu.from_dict(json.loads(json.dumps(tight.to_dict())))
    assert again == tight
    x = np.linspace(-4, 4, 101)
    np.testing.assert_array_equal(again.evaluate(x), tight.evaluate(x))
    for bad in ({"bound": -1.0}, {"stages": []}, {"stages": [[0.0, 0.0]]}, {"kind": "poly"}, {"eps": True}):
        with pytest.raises(ApproxError):
            CompositeRelu.from_dict({**tight.to_dict(), **bad})
