"""Minimax fits: error certified from both sides, equioscillation, reference points, exactness."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.polynomial import chebyshev as C

from approx.chebyshev import to_unit
from approx.errors import ApproxError
from approx.functions import check_function_domain, get_function
from approx.remez import chebyshev_fit, remez

# Committed upper bounds on the certified error (measured values rounded up by <= 10%).
BOUNDS = [
    ("exp", (-8, 0), "abs", 7, 4.0e-4),
    ("exp", (-8, 0), "abs", 15, 1.6e-10),
    ("exp", (-16, 0), "abs", 7, 7.0e-3),
    ("exp", (-32, 0), "abs", 15, 1.2e-4),
    ("reciprocal", (1, 10), "rel", 7, 1.1e-2),
    ("reciprocal", (1, 130), "rel", 15, 0.125),
    ("reciprocal", (1, 130), "rel", 31, 7.5e-3),
    ("inv_sqrt", (0.5, 64), "rel", 7, 0.16),
    ("inv_sqrt", (0.5, 64), "rel", 15, 2.9e-2),
    ("gelu", (-8, 8), "abs", 7, 0.16),
    ("gelu", (-8, 8), "abs", 15, 2.0e-2),
    ("relu", (-1, 1), "abs", 7, 2.4e-2),
    ("relu", (-1, 1), "abs", 15, 1.05e-2),
]


ROUNDING = 1e-14  # float64 evaluation noise: two grids may see errors that differ by ~1e-16


def _independent_error(name, fit, kind, n=200_001):
    """Max error on a uniform x-grid, evaluated with numpy's chebval (not the fit's own code path)."""
    x = np.linspace(*fit.domain, n)
    f = get_function(name)(x)
    e = f - C.chebval(to_unit(x, fit.domain), fit.coefficients)
    return float(np.max(np.abs(e / f if kind == "rel" else e)))


@pytest.mark.parametrize("name, domain, kind, degree, bound", BOUNDS)
def test_certified_error_within_committed_bound(name, domain, kind, degree, bound):
    fit = remez(get_function(name), domain, degree, kind)
    assert fit.degree == degree
    assert _independent_error(name, fit, kind) <= fit.max_error * (1 + 1e-9) + ROUNDING
    assert fit.max_error <= bound
    assert 0.0 < fit.lower_bound <= fit.max_error


@pytest.mark.parametrize("name, domain, kind, degree, bound", BOUNDS)
def test_equioscillation_and_beats_interpolation(name, domain, kind, degree, bound):
    fit = remez(get_function(name), domain, degree, kind)
    e = fit.point_errors
    assert len(fit.points) == degree + 2
    assert np.all(np.diff(fit.points) > 0)
    assert np.all(np.sign(e[1:]) == -np.sign(e[:-1])), "errors must alternate in sign"
    assert np.abs(e).max() <= 1.01 * np.abs(e).min(), "extrema must be level within 1%"
    assert fit.lower_bound >= 0.99 * fit.max_error
    interp = chebyshev_fit(get_function(name), domain, degree, kind)
    assert fit.max_error <= interp.max_error * (1 + 1e-9)


@pytest.mark.parametrize(
    "domain, degree, kind, bound, func",
    [
        ((-16, 0), 15, "abs", 4e-7, "exp"),
        ((-32, 0), 15, "abs", 1.2e-4, "exp"),
        ((-32, 0), 31, "abs", 1e-12, "exp"),
        ((1, 10), 15, "rel", 6e-5, "reciprocal"),
    ],
)
def test_reference_points_of_the_issue(domain, degree, kind, bound, func):
    fit = remez(get_function(func), domain, degree, kind)
    assert fit.max_error <= bound
    assert _independent_error(func, fit, kind) <= fit.max_error * (1 + 1e-9) + ROUNDING


def test_machine_precision_falls_back_without_losing_accuracy():
    fit = remez(np.exp, (-8, 0), 40)
    assert fit.max_error < 1e-14
    assert fit.method in ("remez", "chebyshev")


@settings(max_examples=20, deadline=None)
@given(
    a=st.floats(-50, 50),
    width=st.floats(0.1, 100),
    degree=st.integers(0, 10),
    data=st.data(),
)
def test_reproduces_polynomials_of_lower_degree(a, width, degree, data):
    k = data.draw(st.integers(0, degree))
    coeffs = np.array(data.draw(st.lists(st.floats(-2, 2), min_size=k + 1, max_size=k + 1)))
    dom = (a, a + width)

    def poly(x):
        return C.chebval(to_unit(x, dom), coeffs)

    fit = remez(poly, dom, degree, certify=False)
    padded = np.zeros(degree + 1)
    padded[: k + 1] = coeffs
    scale = 1.0 + np.abs(coeffs).sum()
    assert np.max(np.abs(fit.coefficients - padded)) <= 1e-10 * scale
    assert fit.max_error <= 1e-10 * scale


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: remez(np.exp, (1, 0), 3), "domain"),
        (lambda: remez(np.exp, (0, 0), 3), "domain"),
        (lambda: remez(np.exp, (0, float("nan")), 3), "domain"),
        (lambda: remez(np.exp, (0, float("inf")), 3), "domain"),
        (lambda: remez(np.exp, (0, 1), -1), "degree"),
        (lambda: remez(np.exp, (0, 1), 1000), "degree"),
        (lambda: remez(np.exp, (0, 1), 3, "max"), "error_kind"),
        (lambda: check_function_domain("reciprocal", (0, 1)), "domain"),
        (lambda: check_function_domain("inv_sqrt", (-1, 1)), "domain"),
        (lambda: check_function_domain("gelu", (-1, 1), "rel"), "error_kind"),
        (lambda: get_function("tanh"), "function"),
    ],
)
def test_bad_input_names_the_field(call, field):
    with pytest.raises(ApproxError, match=f"^{field}"):
        call()


@settings(max_examples=10, deadline=None, derandomize=True)
@given(a=st.floats(-40, 2), width=st.floats(0.5, 40), degree=st.integers(3, 15))
def test_exp_fits_are_certified_from_both_sides_on_random_domains(a, width, degree):
    fit = remez(np.exp, (a, a + width), degree, "rel")
    interp = chebyshev_fit(np.exp, (a, a + width), degree, "rel")
    # two float64 evaluations of one Chebyshev series differ by up to ~eps sum|c_k| (absolute), i.e. by that
    # over min f relatively: 2.7e-12 at a = 0.51, width 13.1, degree 14, where sum|c_k| ~ 6e5 (found by
    # hypothesis when the test still used a fixed 1e-14)
    rounding = 8 * np.finfo(float).eps * np.abs(fit.coefficients).sum() / np.exp(a)
    assert _independent_error("exp", fit, "rel", n=20_001) <= fit.max_error * (1 + 1e-9) + rounding
    assert fit.lower_bound <= fit.max_error <= interp.max_error * (1 + 1e-9)
    # the lower bound holds for every degree-n polynomial, the interpolant included
    assert fit.lower_bound <= interp.max_error


@pytest.mark.parametrize("ratio", [16.0, 100.0])
@pytest.mark.parametrize("degree", [3, 5, 9])
def test_reciprocal_minimax_error_matches_the_closed_form(ratio, degree):
    """An independent oracle: the minimax relative error of 1/x on [1, R] by a degree-n polynomial is
    2 rho^(n+1) / (1 + rho^(2n+2)), rho = (sqrt(R) - 1) / (sqrt(R) + 1) (the shifted Chebyshev extremal
    polynomial). The fit's certified error must equal it to 1e-9 relative."""
    from approx.plans import plan_poly

    rho = (math.sqrt(ratio) - 1) / (math.sqrt(ratio) + 1)
    closed = 2 * rho ** (degree + 1) / (1 + rho ** (2 * degree + 2))
    plan = plan_poly("reciprocal", (1.0, ratio), degree, "rel")
    assert plan.max_error == pytest.approx(closed, rel=1e-9)


@pytest.mark.parametrize("name", ["nope", ["exp"], None])
def test_an_unknown_or_malformed_function_name_is_a_clean_error(name):
    """A name read from a malformed file (a list, null) gets the same error as an unknown one (fuzzing)."""
    from approx.errors import ApproxError
    from approx.functions import get_function

    with pytest.raises(ApproxError, match=r"^function: unknown .*; choose one of exp"):
        get_function(name)
