"""Plans: least depth for a bound, a certified error the plaintext evaluator reproduces, step order."""

import numpy as np
import pytest

from approx import bsgs, refine
from approx.errors import ApproxError
from approx.functions import get_function
from approx.plans import Plan, Step, plan_exp, plan_fit, plan_inv_sqrt, plan_poly, plan_reciprocal


def _observed(plan, n=50_001, seed=0):
    """Max error of plan.evaluate at a uniform grid plus random points (independent of the certification)."""
    a, b = plan.domain
    x = np.concatenate([np.linspace(a, b, n), np.random.default_rng(seed).uniform(a, b, 5000)])
    f = get_function(plan.function)(x)
    e = f - plan.evaluate(x)
    return float(np.max(np.abs(e / f if plan.error_kind == "rel" else e)))


def _agrees(plan) -> bool:
    """The plaintext evaluator's observed error matches the certified one (never above, at most 2% below)."""
    observed = _observed(plan)
    return 0.98 * plan.max_error <= observed <= plan.max_error * (1 + 1e-9) + 1e-14


def test_exp_single_poly_reference_point():
    plan = plan_exp((-16, 0), max_abs_error=4e-7)
    assert plan.max_error <= 4e-7
    assert plan.depth == 5  # degree 15 (4 levels) + the affine map
    assert _agrees(plan)


def test_exp_calibrated_window_relative():
    # a real calibrated window: values up to e^5, so the bound is relative
    plan = plan_exp((-26, 5), max_rel_error=1e-5)
    assert plan.max_error <= 1e-5
    assert _agrees(plan)
    assert plan.depth <= plan_fit("exp", (-26, 5), 1e-2, "rel").depth + 3


def test_exp_range_reduction_saves_depth_on_wide_windows():
    plan = plan_exp((-64, 0), max_abs_error=1e-6)
    single = plan_fit("exp", (-64, 0), 1e-6, "abs")
    assert plan.depth <= single.depth
    assert plan.max_error <= 1e-6 and single.max_error <= 1e-6
    squared = plan_exp((-64, 0), max_abs_error=1e-6, squarings=2)
    assert [s.op for s in squared.steps] == ["poly", "square"] and squared.steps[1].times == 2
    assert _agrees(squared)


def test_reciprocal_with_newton_reference_point():
    plan = plan_reciprocal((1, 100), 1e-6, newton=2)
    assert [s.op for s in plan.steps] == ["poly", "newton_recip"]
    assert plan.max_error <= 1e-6
    assert plan.depth <= 10
    assert _agrees(plan)
    best = plan_reciprocal((1, 100), 1e-6)  # free search: never deeper than the Newton plan
    assert best.depth <= plan.depth and best.max_error <= 1e-6


def test_reciprocal_calibrated_window_and_inv_sqrt():
    plan = plan_reciprocal((1, 130), 1e-4)
    assert plan.max_error <= 1e-4 and _agrees(plan)
    isq = plan_inv_sqrt((0.5, 64), 1e-3, newton=1)
    assert isq.max_error <= 1e-3 and _agrees(isq)


def test_single_poly_cost_is_bsgs_plus_affine():
    plan = plan_poly("gelu", (-8, 8), 15)
    depth, nonscalar, scalar = bsgs.bsgs_cost(15)
    assert (plan.depth, plan.nonscalar_mults, plan.scalar_mults) == (depth + 1, nonscalar, scalar + 1)
    assert plan.affine_levels == 1
    unit = Plan("gelu", (-1, 1), "abs", 0.0, (Step("poly", (-1, 1), (0.0, 0.5, 0.25)),))
    assert unit.affine_levels == 0 and unit.depth == 2


def test_constant_plan_costs_nothing():
    plan = plan_poly("gelu", (-8, 8), 0)
    assert (plan.depth, plan.nonscalar_mults, plan.scalar_mults, plan.affine_levels) == (0, 0, 0, 0)
    x = np.linspace(-8, 8, 9)
    np.testing.assert_array_equal(plan.evaluate(x), np.full(9, plan.coefficients[0]))


def test_refinement_step_orders():
    x = np.linspace(1, 100, 101)
    y0 = 0.9 / x
    ops = bsgs.Ops()
    y = refine.newton_recip(y0, x, 2, ops)
    np.testing.assert_allclose(1 - x * y, (1 - x * y0) ** 4, atol=1e-15)
    g = refine.goldschmidt_recip(y0, x, 2, ops)
    np.testing.assert_allclose(g, y, rtol=1e-14)
    z0 = 0.95 / np.sqrt(x)
    z = refine.newton_inv_sqrt(z0, x, 1, ops)
    e0 = 1 - x * z0**2
    np.testing.assert_allclose(1 - x * z**2, (3 * e0**2 + e0**3) / 4, atol=1e-15)
    np.testing.assert_allclose(refine.goldschmidt_inv_sqrt(z0, x, 1, ops), z, rtol=1e-14)
    np.testing.assert_allclose(refine.goldschmidt_inv_sqrt(z0, x, 3, ops) * np.sqrt(x), 1.0, atol=1e-15)
    # 3 steps from a guess at depth 4 (x at depth 0): Newton 2 levels a step, Goldschmidt 1 + 1 each
    for fn, depth, mults in (
        (refine.newton_recip, 10, 6),
        (refine.newton_inv_sqrt, 10, 9),
        (refine.goldschmidt_recip, 8, 6),
        (refine.goldschmidt_inv_sqrt, 11, 10),
    ):
        counter = bsgs.CountingOps()
        assert (fn(4, 0, 3, counter), counter.nonscalar) == (depth, mults)


def test_evaluate_refuses_inputs_outside_the_domain():
    plan = plan_poly("exp", (-4, 0), 7)
    with pytest.raises(ApproxError, match="^x: .*leave the plan domain"):
        plan.evaluate(np.array([-5.0, 0.0]))


def test_unreachable_bound_and_bad_bounds():
    with pytest.raises(ApproxError, match="^max_error: .*unreachable"):
        plan_exp((-30, 0), max_abs_error=1e-30)
    with pytest.raises(ApproxError, match="^max_error"):
        plan_exp((-30, 0))
    with pytest.raises(ApproxError, match="^max_error"):
        plan_reciprocal((1, 10), -1.0)
    with pytest.raises(ApproxError, match="^domain"):
        plan_reciprocal((0, 10), 1e-3)
    with pytest.raises(ApproxError, match="^newton"):
        plan_reciprocal((1, 10), 1e-3, newton=-1)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(op="cube"), "steps.op"),
        (dict(op="poly", domain=(0, 1), coefficients=()), "steps.coefficients"),
        (dict(op="poly", domain=(0, 1), coefficients=(1.0, float("nan"))), "steps.coefficients"),
        (dict(op="poly", domain=(1, 0), coefficients=(1.0,)), "steps.domain"),
        (dict(op="square", times=-1), "steps.times"),
        (dict(op="newton_recip", iterations=1.5), "steps.iterations"),
    ],
)
def test_bad_steps_name_the_field(kwargs, field):
    with pytest.raises(ApproxError, match=f"^{field}"):
        Step(**kwargs)


# --- scaled Newton for 1/x ---------------------------------------------------------------------------------
def test_scaled_newton_constants_follow_the_interval_recurrence():
    """t = x y in [m, M] -> c t (a - t) with a = m + M (both ends land on c m M) and c re-centring on 1."""
    from approx.refine import scaled_newton_constants, scaled_newton_error

    eps = 0.99
    (a1, c1), (a2, c2) = scaled_newton_constants(eps, 2)
    m, big = 1 - eps, 1 + eps
    assert a1 == pytest.approx(2.0) and c1 == pytest.approx(2 / (m * big + 1.0))
    m, big = c1 * m * big, c1 * (a1 / 2) ** 2
    assert m + big == pytest.approx(2.0)  # centred on 1
    assert a2 == pytest.approx(m + big)
    t = np.linspace(1 - eps, 1 + eps, 20001)
    for a, c in scaled_newton_constants(eps, 6):
        t = c * t * (a - t)
    assert np.abs(t - 1).max() <= scaled_newton_error(eps, 6) * (1 + 1e-9) + 1e-15
    # a 1% guess: 2.3e-4 after 6 steps, 2.5e-8 after 7; a 0.01% guess is still 70% off after 6
    assert (
        scaled_newton_error(eps, 7)
        < 1e-7
        < scaled_newton_error(eps, 6)
        < 1e-3
        < scaled_newton_error(1 - (1 - eps) ** 2, 6)
    )


@pytest.mark.parametrize("ratio, scaled, classical", [(78, 5, 7), (3100, 8, 12), (23000, 9, 15)])
def test_scaled_newton_needs_about_half_the_steps_on_wide_domains(ratio, scaled, classical):
    """With the degree-1 guess the runtime uses, at 1e-4 relative error (docs/approx.md figures)."""
    plan = plan_reciprocal((1.0, float(ratio)), 1e-4, newton=scaled)
    assert plan.steps[0].degree <= 3 and plan.max_error <= 1e-4
    if plan.steps[0].degree == 1:
        assert plan.steps[1].constants is not None and len(plan.steps[1].constants) == scaled
    eps = 1 / (2 * ((ratio + 1) / (ratio - 1)) ** 2 - 1)  # the degree-1 minimax guess's relative error
    assert eps ** (2 ** (classical - 1)) > 1e-4 >= eps ** (2**classical)  # classical Newton: e -> e^2


def test_newton_constants_are_validated_and_round_trip():
    from approx.plan import plan_from_dict, plan_to_dict

    plan = plan_reciprocal((1.0, 300.0), 1e-4, newton=4)
    again = plan_from_dict(plan_to_dict(plan))
    assert again.steps == plan.steps and again.steps[1].constants == plan.steps[1].constants
    with pytest.raises(ApproxError, match="2 pairs for 3 iterations"):
        Step("newton_recip", iterations=3, constants=((2.0, 1.0), (2.0, 1.0)))
    with pytest.raises(ApproxError, match=r"each a and c must lie in \(0, 4\]"):
        Step("newton_recip", iterations=1, constants=((2.0, 0.0),))
    with pytest.raises(ApproxError, match="only newton_recip"):
        Step("newton_inv_sqrt", iterations=1, constants=((2.0, 1.0),))
    bad = plan_to_dict(plan)
    bad["steps"][1]["constants"] = "fast"
    with pytest.raises(ApproxError, match=r"steps\[1\]\.constants: expected a list of \[a, c\] pairs"):
        plan_from_dict(bad)


@pytest.mark.parametrize(
    "pair, message",
    [(["2", "1.0"], "pairs of numbers"), ([True, 1.0], "pairs of numbers"), ([1e6, 1.0], r"\(0, 4\]")],
)
def test_newton_constants_must_be_plausible_numbers(pair, message):
    from approx.plan import plan_from_dict, plan_to_dict

    data = plan_to_dict(plan_reciprocal((1.0, 300.0), 1e-4, newton=4))
    data["steps"][1]["constants"][0] = pair
    with pytest.raises(ApproxError, match=message):
        plan_from_dict(data)


def test_edited_newton_constants_cannot_keep_the_claimed_error():
    """Found by review: changing one c loaded fine and ran 90% off while max_error still said 1e-4-ish."""
    from approx.plan import plan_from_dict, plan_to_dict

    data = plan_to_dict(plan_reciprocal((1.0, 300.0), 1e-4, newton=4))
    data["steps"][1]["constants"][-1][1] = 1.9
    with pytest.raises(ApproxError, match=r"max_error: the steps reach .* the file claims"):
        plan_from_dict(data)
