"""Encrypted plan evaluation: values against numpy, levels consumed == plan depth, O(sqrt) ct-ct mults."""

import numpy as np
import pytest

from approx import bsgs, interpret
from approx.plans import plan_exp, plan_inv_sqrt, plan_poly, plan_reciprocal
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.params import CkksParams
from he_aero.ckks.poly import atomic_depth, evaluate_chebyshev, plan_depth, run_plan, run_plan_batch
from he_aero.errors import HeAeroError
from tests.conftest import assert_close_bits
from tests.he_aero.ckks.kit import BITS, SMALL, TEST_MASK_BITS, Kit

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("degree", [3, 7, 15])
def test_chebyshev_bsgs_matches_chebval_at_min_depth(kit, degree):
    assert bsgs.bsgs_cost(degree)[0] <= SMALL.levels, "the test chain must hold the polynomial"
    c = RNG.normal(size=degree + 1) / np.arange(1, degree + 2)
    t = RNG.uniform(-1, 1, SMALL.slots)
    y = evaluate_chebyshev(kit.ev, c, kit.enc(t))
    assert SMALL.levels - y.level == bsgs.bsgs_cost(degree)[0] == int(degree).bit_length()
    assert_close_bits(kit.dec(y), np.polynomial.chebyshev.chebval(t, c), BITS - 2, f"degree {degree}")


@pytest.mark.parametrize("degree", [15, 31, 63])
def test_ctct_mults_are_those_approx_counts(degree):
    deep = CkksParams(2048, (60,) + (32,) * 7 + (60,), 32, insecure_for_tests=True)
    ev = Evaluator(deep)  # symbolic: counts only
    dense = 3.0 ** -np.arange(
        degree + 1
    )  # decreasing: no cancellation in the BSGS split (approx's dense count)
    y = evaluate_chebyshev(ev, dense, Ct(None, deep.levels))
    assert deep.levels - y.level == bsgs.bsgs_cost(degree)[0]
    assert ev.stats.n_ctct == bsgs.bsgs_cost(degree)[1]
    assert ev.stats.n_ctct <= 3 * np.sqrt(degree) + 2


def test_exp_plan_levels_equal_its_depth(kit):
    plan = plan_exp((-2.0, 1.0), max_abs_error=1e-3, squarings=0)
    x = RNG.uniform(-2, 1, SMALL.slots)
    y = run_plan(kit.ev, plan, kit.enc(x))
    assert SMALL.levels - y.level == plan.depth == plan_depth(plan)
    assert_close_bits(kit.dec(y), plan.evaluate(x), BITS - 4, "exp plan")


def test_exp_plan_with_squaring_on_a_mapped_input(kit):
    plan = plan_exp((-4.0, 1.0), max_abs_error=1e-3, squarings=1)
    a, b = plan.steps[0].domain
    x = RNG.uniform(a, b, SMALL.slots)
    y = run_plan(kit.ev, plan, None, mapped=kit.enc((2 * x - a - b) / (b - a)))
    assert SMALL.levels - y.level == plan_depth(plan, mapped=True) == plan.depth - 1
    assert_close_bits(kit.dec(y), plan.evaluate(x), BITS - 4, "exp plan, mapped")


def test_reciprocal_with_newton_and_refresh_between_iterations(kit):
    from he_aero.ckks.refresh import Refresher

    plan = plan_reciprocal((1.0, 9.0), max_rel_error=1e-4, newton=2)
    x = RNG.uniform(1, 9, SMALL.slots)
    ref = Refresher(kit.ev, kit.refresh_client, bound=16, mask_bits=TEST_MASK_BITS)
    y = run_plan(kit.ev, plan, kit.enc(x), refresher=ref)
    assert plan.depth > SMALL.levels and ref.log.rounds >= 1  # did not fit one chain
    assert_close_bits(kit.dec(y), 1 / x, 12, "1/x with Newton")


TWO_LEVELS = CkksParams(2048, (60, 32, 32, 60), 32, insecure_for_tests=True)
"""2 levels above the refresh floor (level 0 holds the test mask), as N=8192's production chain leaves."""


@pytest.fixture(scope="module")
def inv_sqrt_plan():
    """1/sqrt(x) on [1, 16]: a degree-1 guess (2 levels with its affine map) and 5 Newton iterations."""
    return plan_inv_sqrt((1.0, 16.0), max_rel_error=1e-6, newton=5)


def test_inv_sqrt_newton_runs_on_two_levels_with_a_refresh_between_iterations(inv_sqrt_plan):
    """The plan's 5 Newton iterations of 2 levels each run on a ring with 2 levels between refreshes, every
    one after a refresh. As one piece (2 n + 1 = 11 levels) the Newton step could not run on this ring.
    Measured 17.4-18.6 bits of relative precision (19.4-20.3 absolute) over 16 runs (SEAL draws fresh
    noise; the plan's own error, 1.4e-11, is far below it); asserted: 16."""
    from he_aero.ckks.refresh import Refresher

    kit = Kit(TWO_LEVELS, ())  # no rotations
    ref = Refresher(kit.ev, kit.refresh_client, bound=16, mask_bits=TEST_MASK_BITS)
    plan = inv_sqrt_plan
    poly, newton = plan.steps
    assert ref.usable_levels() == 2 and atomic_depth(poly) == atomic_depth(newton) == 2
    x = np.random.default_rng(1).uniform(1.0, 16.0, TWO_LEVELS.slots)  # RNG: the other tests' draws stay
    y = run_plan(kit.ev, plan, kit.enc(x), refresher=ref)
    assert_close_bits(kit.dec(y) * np.sqrt(x), 1.0, 16, "x^-1/2 relative, 2 levels between refreshes")
    # one round before each iteration: the first refreshes y and h = x / 2 (made a level below x), the
    # others y only, since the refreshed h is kept for the next iteration
    assert [(t["stage"], t["refreshed"]) for t in ref.trace] == [
        ("plan poly", 0),
        ("plan newton", 2),
        *[("plan newton", 1)] * 4,
    ]
    assert ref.log.rounds == newton.iterations and y.level == TWO_LEVELS.levels - 2


def test_inv_sqrt_halves_the_x_its_poly_refreshed(inv_sqrt_plan):
    """An x at the refresh floor (where a value computed on 2 levels lands) is refreshed for the poly, and
    h = x / 2 is made from that copy: a scalar product on the caller's x would leave the chain."""
    from he_aero.ckks.refresh import Refresher

    ev = Evaluator(TWO_LEVELS)  # symbolic
    ref = Refresher(ev, None, bound=16, mask_bits=TEST_MASK_BITS)
    y = run_plan(ev, inv_sqrt_plan, Ct(None, ref.min_level()), refresher=ref)
    # x for the poly; then y and h (made a level below the refreshed x), then y alone each iteration
    assert [t["refreshed"] for t in ref.trace] == [1, 2, 1, 1, 1, 1]
    assert y.level == TWO_LEVELS.levels - 2


def test_plan_deeper_than_the_chain_is_refused_without_refresh(kit):
    plan = plan_poly("exp", (-4.0, 0.0), 31)  # depth 5 + affine > 4 levels
    with pytest.raises(HeAeroError, match="depth budget"):
        run_plan(kit.ev, plan, kit.enc(np.zeros(4)))


def test_masked_constants_keep_invalid_slots_zero(kit):
    plan = plan_exp((-4.0, 1.0), max_abs_error=1e-3, squarings=1)
    valid = (np.arange(SMALL.slots) % 2).astype(float)
    t = RNG.uniform(-1, 1, SMALL.slots) * valid  # mapped input, 0 on invalid slots
    y = kit.dec(run_plan(kit.ev, plan, None, mapped=kit.enc(t), valid=("odd", valid)))
    assert np.abs(y[valid == 0]).max() < 2**-14
    a, b = plan.steps[0].domain
    x = (t * (b - a) + a + b) / 2
    assert_close_bits(y[valid == 1], plan.evaluate(x[valid == 1]), BITS - 4, "masked exp")


def test_a_width_two_domain_maps_by_a_shift_without_a_level(kit):
    plan = plan_reciprocal((0.5, 2.5), max_rel_error=1e-3, newton=0)
    x = RNG.uniform(0.5, 2.5, SMALL.slots)
    y = run_plan(kit.ev, plan, kit.enc(x))
    assert SMALL.levels - y.level == plan_depth(plan) == plan.depth - 1 == bsgs.bsgs_cost(plan.degree)[0]
    assert_close_bits(kit.dec(y), 1 / x, 9, "1/x on a width-2 domain")


@pytest.mark.parametrize("kind", ["exp", "exp mapped", "recip", "inv_sqrt"])
def test_the_refresher_is_asked_for_each_unsplittable_piece(kind):
    """Stage names and levels as the planner expects them: squarings and Newton iterations one at a time
    (1/x with the running values and the inputs, 1/sqrt(x) with the running values and x / 2), a poly
    whole."""
    deep = CkksParams(2048, (60,) + (32,) * 7 + (60,), 32, insecure_for_tests=True)
    ev = Evaluator(deep)  # symbolic
    calls = []

    class Recorder:
        def ensure(self, cts, need, what):
            calls.append((what, need, len(cts)))
            return [c if c.level >= need else Ct(None, deep.levels) for c in cts]

    if kind.startswith("exp"):
        plan = plan_exp((-8.0, 1.0), max_abs_error=1e-3, squarings=2)
    elif kind == "recip":
        plan = plan_reciprocal((1.0, 9.0), max_rel_error=1e-4, newton=2)
    else:
        plan = plan_inv_sqrt((1.0, 9.0), max_rel_error=1e-4, newton=2)
    d = bsgs.bsgs_cost(plan.degree)[0]
    xs = [Ct(None, deep.levels), Ct(None, deep.levels)]
    if kind == "exp mapped":
        run_plan_batch(ev, plan, None, xs, refresher=Recorder(), name="s")
    else:
        run_plan_batch(ev, plan, xs, refresher=Recorder(), name="s")
    expected = {
        "exp": [("s poly", d + 1, 2), ("s square", 1, 2), ("s square", 1, 2)],
        "exp mapped": [("s poly", d, 2), ("s square", 1, 2), ("s square", 1, 2)],
        "recip": [("s poly", d + 1, 2), ("s newton", 2, 4), ("s newton", 2, 4)],
        # one piece per iteration, like 1/x (a single piece of 2 n + 1 levels before the iterations became
        # refreshable, which no ring with 2 levels between refreshes could run)
        "inv_sqrt": [("s poly", d + 1, 2), ("s newton", 2, 4), ("s newton", 2, 4)],
    }[kind]
    assert calls == expected
    assert [n for _, n, _ in calls] == [
        atomic_depth(s, kind == "exp mapped" and i == 0)
        for i, s in enumerate(plan.steps)
        for _ in range(interpret.pieces(s))
    ]


# --- found by mutation testing (docs/mutation.md) ----------------------------------------------------------
def test_affine_maps_the_first_domain_onto_the_unit_interval():
    from he_aero.ckks.poly import affine

    plan = plan_exp((-4.0, 1.0), max_abs_error=1e-3, squarings=1)
    a, b = plan.steps[0].domain
    alpha, beta = affine(plan.steps[0])
    assert (alpha * a + beta, alpha * b + beta) == pytest.approx((-1.0, 1.0), abs=1e-15)


def test_a_constant_polynomial_has_no_ciphertext_result():
    with pytest.raises(
        HeAeroError, match=r"^evaluate_chebyshev: a constant polynomial has no ciphertext result$"
    ):
        evaluate_chebyshev(Evaluator(SMALL), [2.0, 0.0, 0.0], Ct(None, SMALL.levels))


def test_step_depths_on_ciphertexts_use_the_shift_rule():
    """A poly on (-4, 1) costs its BSGS depth + 1 (the affine map) unless mapped; on a width-2 domain the
    map is a plaintext shift (no level); squarings cost one level each, one at a time."""
    from he_aero.ckks.poly import step_depth

    wide = plan_exp((-4.0, 1.0), max_abs_error=1e-3, squarings=2)
    poly, square = wide.steps[0], wide.steps[1]
    cost = bsgs.bsgs_cost(poly.degree)[0]
    assert (step_depth(poly), step_depth(poly, mapped=True), atomic_depth(poly)) == (cost + 1, cost, cost + 1)
    assert atomic_depth(poly, mapped=True) == cost
    assert (square.op, step_depth(square), atomic_depth(square)) == ("square", square.times, 1)
    narrow = plan_reciprocal((0.5, 2.5), max_rel_error=1e-3, newton=0).steps[0]
    assert step_depth(narrow) == atomic_depth(narrow) == bsgs.bsgs_cost(narrow.degree)[0]


def test_evaluate_chebyshev_adds_constants_on_valid_slots_only(kit):
    valid = (np.arange(SMALL.slots) % 3 == 0).astype(float)
    t = RNG.uniform(-1, 1, SMALL.slots) * valid
    for c in ([0.5, 0.25, -0.125, 0.0625], [1.0, 0.5, 0.0, -0.25]):
        y = kit.dec(evaluate_chebyshev(kit.ev, c, kit.enc(t), valid=("thirds", valid)))
        assert np.abs(y[valid == 0]).max() < 2**-14  # T_0 and the constants never reach invalid slots
        want = np.polynomial.chebyshev.chebval(t[valid == 1], c)
        assert_close_bits(y[valid == 1], want, BITS - 2, "valid")


class Recorder:
    """A refresher that records the stages it is asked about and refreshes nothing (symbolic)."""

    def __init__(self):
        self.calls = []

    def ensure(self, cts, need, what):
        self.calls.append(what)
        return cts


def test_stage_names_default_to_plan_and_follow_the_name_given():
    ev = Evaluator(CkksParams(2048, (60,) + (32,) * 7 + (60,), 32, insecure_for_tests=True))
    plan = plan_exp((-8.0, 1.0), max_abs_error=1e-3, squarings=1)
    x = Ct(None, 7)
    for run, kw, prefix in [
        (lambda **k: run_plan(ev, plan, x, **k), {}, "plan"),
        (lambda **k: run_plan(ev, plan, x, **k), {"name": "l0 exp"}, "l0 exp"),
        (lambda **k: run_plan_batch(ev, plan, [x], **k), {}, "plan"),
    ]:
        rec = Recorder()
        run(refresher=rec, **kw)
        assert rec.calls == [f"{prefix} poly", f"{prefix} square"]


def test_depth_and_missing_input_refusals_are_worded_for_the_caller(kit):
    plan = plan_poly("exp", (-4.0, 0.0), 31)
    need = plan_depth(plan)
    with pytest.raises(
        HeAeroError,
        match=rf"^depth budget: plan '.*' needs {need} levels, the ciphertext has 4 "
        r"\(refresh before this stage\)$",
    ):
        run_plan(kit.ev, plan, kit.enc(np.zeros(4)))
    recip = plan_reciprocal((1.0, 9.0), max_rel_error=1e-4, newton=1)
    with pytest.raises(HeAeroError, match=r"^run_plan: x: a newton_recip step needs the plan input x$"):
        run_plan(Evaluator(SMALL), recip, None, mapped=Ct(None, SMALL.levels), refresher=Recorder())
