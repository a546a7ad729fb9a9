"""The plan interpreter: level costs agree with a depth counter, the refresh hook sees the pieces the CKKS
runtime has always refreshed between, and a batch runs in lockstep exactly like single runs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.polynomial import chebyshev as C

from approx import bsgs, interpret
from approx.chebyshev import to_unit
from approx.errors import ApproxError
from approx.plans import Step, plan_exp, plan_inv_sqrt, plan_reciprocal


# --- random plans ------------------------------------------------------------------------------------------
@st.composite
def poly_steps(draw):
    lo = draw(st.floats(-20, 20, allow_nan=False, allow_infinity=False))
    width = draw(st.sampled_from([2.0, 0.5, 3.0, 17.0]))
    domain = draw(st.sampled_from([(-1.0, 1.0), (lo, lo + width)]))
    degree = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**16))
    # nonzero, generic coefficients: no exact zero, no cancellation in the BSGS split (the dense structure)
    rng = np.random.default_rng(seed)
    coeffs = rng.uniform(0.5, 1.5, degree + 1) * rng.choice([-1.0, 1.0], degree + 1)
    return Step("poly", domain, tuple(coeffs))


refinements = st.one_of(
    st.builds(lambda k: Step("square", times=k), st.integers(0, 3)),
    st.builds(lambda n: Step("newton_recip", iterations=n), st.integers(0, 3)),
    st.builds(lambda n: Step("newton_inv_sqrt", iterations=n), st.integers(0, 3)),
    poly_steps(),
)
plans = st.builds(lambda first, tail: (first, *tail), poly_steps(), st.lists(refinements, max_size=4))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(steps=plans, mapped=st.booleans(), shift=st.booleans())
def test_every_piece_consumes_exactly_its_atomic_depth(steps, mapped, shift):
    ops = bsgs.CountingOps()
    calls = []  # (depth of the running value on entry, need, aligned depth handed back)

    def align(values, need, stage):  # a refresh hands back every input at one level
        top = max(values)
        calls.append((values[0], need, top))
        return [top] * len(values)

    (final,) = interpret.run_batch(steps, [0], [ops], [0] if mapped else None, align, shift=shift)
    ends = [c[0] for c in calls[1:]] + [final]
    assert [end - top for (_, _, top), end in zip(calls, ends, strict=True)] == [c[1] for c in calls]
    per_step = [interpret.step_depth(s, mapped and i == 0, shift) for i, s in enumerate(steps)]
    count = interpret.count(steps, mapped, shift)
    assert final == count.aligned_depth == sum(per_step) == sum(c[1] for c in calls)
    # without refreshes x may be fresher than the running value, never staler
    assert interpret.count(steps, mapped, shift).depth <= count.aligned_depth


@settings(max_examples=60, deadline=None, derandomize=True)
@given(first=poly_steps(), shift=st.booleans())
def test_a_single_poly_costs_bsgs_plus_its_map(first, shift):
    cost = interpret.count((first,), shift=shift)
    is_shift = first.domain == (-1.0, 1.0) or (shift and first.domain[1] - first.domain[0] == 2.0)
    assert cost.depth == cost.aligned_depth == bsgs.bsgs_cost(first.degree)[0] + (0 if is_shift else 1)
    assert cost.nonscalar_mults == bsgs.bsgs_cost(first.degree)[1]


def test_plan_depth_is_the_unshifted_fresh_count():
    plan = plan_reciprocal((0.5, 2.5), max_rel_error=1e-3, newton=0)  # width 2
    shifted = interpret.count(plan.steps, shift=True)
    assert plan.depth == interpret.count(plan.steps).depth == shifted.depth + 1
    # x / 2 rides beside the poly when x is fresh, and since newton_inv_sqrt runs one iteration per piece it
    # is made outside the pieces (not charged to them): both counts agree (they differed by 1 when the whole
    # step was one piece of 2 n + 1 levels)
    isq = plan_inv_sqrt((1.0, 9.0), 1e-4, newton=1)
    assert isq.depth == interpret.count(isq.steps).aligned_depth


def test_a_constant_poly_costs_nothing_and_is_broadcast():
    steps = (Step("poly", (-3.0, 5.0), (0.25,)),)
    assert interpret.step_depth(steps[0]) == interpret.affine_levels(steps[0]) == 0
    assert interpret.count(steps) == interpret.Count(0, 0, 0, 0)
    assert np.array_equal(interpret.run_batch(steps, [np.ones(3)], [bsgs.Ops()])[0], np.full(3, 0.25))


# --- values ------------------------------------------------------------------------------------------------
def _reference(steps, x):
    """The plan's mathematics written directly (chebval, powers, the Newton formulas), not its op order."""
    y = x
    for s in steps:
        if s.op == "poly":
            y = C.chebval(to_unit(y, s.domain), s.coefficients)
        elif s.op == "square":
            y = y ** (2**s.times)
        elif s.op == "newton_recip":  # y <- c y (a - x y); classical Newton without constants
            for a, c in s.constants or ((2.0, 1.0),) * s.iterations:
                y = c * y * (a - x * y)
        else:
            for _ in range(s.iterations):
                y = y * (3 - x * y * y) / 2
    return y


@pytest.fixture(scope="module")
def fitted():
    return {
        "exp": plan_exp((-8.0, 1.0), max_abs_error=1e-3, squarings=2),
        "recip": plan_reciprocal((1.0, 9.0), max_rel_error=1e-4, newton=2),
        "inv_sqrt": plan_inv_sqrt((0.1, 10.0), max_rel_error=1e-4, newton=2),
    }


@pytest.mark.parametrize("kind", ["exp", "recip", "inv_sqrt"])
def test_numpy_interpreter_computes_the_plan(fitted, kind):
    plan = fitted[kind]
    x = np.linspace(*plan.domain, 1001)
    assert np.allclose(plan.evaluate(x), _reference(plan.steps, x), rtol=1e-12, atol=1e-12)


class MaskedOps(bsgs.Ops):
    """numpy Ops adding constants only on valid slots (the CKKS adapter's `valid`)."""

    def __init__(self, valid):
        self.valid = valid

    def add_scalar(self, a, c):
        return a + c * self.valid


@pytest.mark.parametrize("kind", ["exp", "recip", "inv_sqrt"])
@pytest.mark.parametrize("mapped", [False, True])
def test_a_batch_of_two_equals_two_single_runs(fitted, kind, mapped):
    plan = fitted[kind]
    rng = np.random.default_rng(1)
    valids = [np.ones(64), (np.arange(64) % 2).astype(float)]
    xs = [rng.uniform(*plan.domain, 64) * v for v in valids]  # 0 on invalid slots
    ts = [to_unit(x, plan.domain) * v for x, v in zip(xs, valids, strict=True)] if mapped else None
    ops = [MaskedOps(v) for v in valids]  # one Ops per item: its own mask
    batch = interpret.run_batch(plan.steps, xs, ops, ts)
    for i in range(2):
        single = interpret.run_batch(plan.steps, [xs[i]], [ops[i]], None if ts is None else [ts[i]])
        assert np.array_equal(batch[i], single[0])
    if not mapped:
        assert np.array_equal(batch[0], plan.evaluate(xs[0]))
    if kind == "exp":  # masked constants keep invalid slots at 0 (what saves the CKKS masking product)
        assert np.all(batch[1][valids[1] == 0] == 0.0)


# --- the refresh hook --------------------------------------------------------------------------------------
def _recorded(plan, n=1, mapped=False, shift=True):
    calls = []

    def record(values, need, stage):
        calls.append((stage, need, len(values)))
        return values

    x = np.linspace(*plan.domain, 8)
    ts = [to_unit(x, plan.domain)] * n if mapped else None
    interpret.run_batch(plan.steps, [x] * n, [bsgs.Ops()] * n, ts, record, "s", shift)
    return calls


def test_hook_calls_exp_with_squarings(fitted):
    plan = fitted["exp"]
    d = bsgs.bsgs_cost(plan.degree)[0]
    square = [("s square", 1, 2)] * 2
    assert _recorded(plan, 2) == [("s poly", d + 1, 2), *square]
    assert _recorded(plan, 2, mapped=True) == [("s poly", d, 2), *square]


def test_hook_calls_reciprocal_per_newton_iteration(fitted):
    plan = fitted["recip"]
    d = bsgs.bsgs_cost(plan.degree)[0]
    # each iteration alone (2 levels); the hook gets the running values then the inputs
    assert _recorded(plan, 2) == [("s poly", d + 1, 2), ("s newton", 2, 4), ("s newton", 2, 4)]


def test_hook_calls_inv_sqrt_per_newton_iteration(fitted):
    """Like 1/x: each iteration alone (2 levels), so a ring with 2 levels between refreshes runs it; the
    hook gets the running values then h = x / 2 (made once, before the first piece). It was one piece of
    2 n + 1 levels before the iterations became refreshable."""
    plan = fitted["inv_sqrt"]
    d = bsgs.bsgs_cost(plan.degree)[0]
    assert plan.steps[1].iterations == 2
    assert _recorded(plan, 2) == [("s poly", d + 1, 2), ("s newton", 2, 4), ("s newton", 2, 4)]


class Expr(bsgs.Ops):
    """Builds the expression a walk computes, as a string (the operation tree, nothing else)."""

    def mul(self, a, b):
        return f"({a}*{b})"

    def mul_scalar(self, a, c):
        return f"({a}*{c})"

    def sub(self, a, b):
        return f"({a}-{b})"

    def add_scalar(self, a, c):
        return f"({a}+{c})"


def test_inv_sqrt_pieces_keep_the_half_the_hook_hands_back():
    """h = x / 2 is made once, before the first piece; every piece reads the y and h `ensure` handed back
    (refreshed ones on ciphertexts) and the next `ensure` gets that h again, never a new x / 2."""
    steps = (Step("poly", (-1.0, 1.0), (0.0, 1.0)), Step("newton_inv_sqrt", iterations=2))
    seen = []

    def rename(values, need, stage):  # stands for a refresh: hands back new names for y and h
        seen.append(list(values))
        return values if stage.endswith("poly") else [f"y{len(seen)}", f"h{len(seen)}"]

    (y,) = interpret.run_batch(steps, ["x"], [Expr()], ensure=rename)
    assert [v[1] for v in seen[1:]] == ["(x*0.5)", "h2"]
    assert seen[2][0] == "((y2*1.5)-((h2*y2)*(y2*y2)))"
    assert y == "((y3*1.5)-((h3*y3)*(y3*y3)))"


def test_hook_sees_no_level_for_a_width_two_shift():
    plan = plan_reciprocal((0.5, 2.5), max_rel_error=1e-3, newton=0)
    d = bsgs.bsgs_cost(plan.degree)[0]
    assert _recorded(plan, shift=True) == [("s poly", d, 1)]
    assert _recorded(plan, shift=False) == [("s poly", d + 1, 1)]


def test_newton_without_x_is_refused():
    steps = (Step("poly", (1, 9), (0.5, 0.1)), Step("newton_recip", iterations=1))
    with pytest.raises(ApproxError, match="newton_recip step needs the plan input x"):
        interpret.run_batch(steps, None, [bsgs.Ops()], [np.zeros(2)])


# --- found by mutation testing (docs/mutation.md) ----------------------------------------------------------
def test_level_costs_default_to_an_unmapped_input_and_a_scaling_map():
    """Without `mapped` / `shift`, a poly's input map costs a level, on a width-2 domain too (shift=False is
    the rule `Plan.depth` and the coefficient files use)."""
    wide = plan_exp((-4.0, 1.0), max_abs_error=1e-3, squarings=0).steps[0]
    narrow = plan_reciprocal((0.5, 2.5), max_rel_error=1e-3, newton=0).steps[0]
    for step in (wide, narrow):
        cost = bsgs.bsgs_cost(step.degree)[0]
        assert interpret.affine_levels(step) == 1
        assert interpret.atomic_depth(step) == interpret.step_depth(step) == cost + 1
    assert interpret.affine_levels(narrow, shift=True) == 0 and interpret.affine_levels(wide, shift=True) == 1


def test_a_constant_result_is_broadcast_like_the_input():
    t = np.array([0.1, -0.2, 0.3])
    y = interpret.chebyshev([2.5, 0.0, 0.0], t, bsgs.Ops())
    assert isinstance(y, np.ndarray) and y.shape == (3,) and y.tolist() == [2.5, 2.5, 2.5]


@pytest.mark.parametrize(
    "plan, drop_at",
    [
        (plan_exp((-4.0, 1.0), max_abs_error=1e-3, squarings=1), "poly"),
        (plan_exp((-4.0, 1.0), max_abs_error=1e-3, squarings=1), "square"),
        (plan_reciprocal((1.0, 9.0), max_rel_error=1e-3, newton=1), "newton"),
        (plan_inv_sqrt((1.0, 9.0), max_rel_error=1e-3, newton=1), "newton"),  # ys + hs
    ],
)
def test_a_refresh_hook_that_loses_a_value_is_caught(plan, drop_at):
    """`ensure` must return one value per value it was given: a hook that drops one is a ValueError, never
    a silently shorter batch."""

    def lossy(values, need, stage):
        return values[:-1] if stage.endswith(drop_at) else values

    x = np.array([2.0, 3.0])
    with pytest.raises(ValueError, match="zip"):
        interpret.run_batch(plan.steps, [x, x], [bsgs.Ops(), bsgs.Ops()], ensure=lossy)


def test_the_hook_hears_the_default_name_and_the_scaling_rule():
    plan = plan_reciprocal((0.5, 2.5), max_rel_error=1e-3, newton=0)  # a width-2 domain
    calls = []
    interpret.run_batch(
        plan.steps, [np.array([1.0])], [bsgs.Ops()], ensure=lambda v, n, s: calls.append((s, n)) or v
    )
    assert calls == [
        ("plan poly", bsgs.bsgs_cost(plan.steps[0].degree)[0] + 1)
    ]  # shift=False: the map costs 1


@pytest.mark.parametrize(
    "steps, mapped, change",
    [
        ((Step("poly", (-3.0, 5.0), (0.25,)),), False, "drop"),  # a constant poly reads its input too
        ((Step("poly", (-3.0, 5.0), (0.25,)),), False, "add"),
        (plan_exp((-4.0, 1.0), max_abs_error=1e-3, squarings=0).steps, False, "add"),  # the input map
        (plan_exp((-4.0, 1.0), max_abs_error=1e-3, squarings=0).steps, True, "drop"),  # mapped: no map
        (plan_exp((-4.0, 1.0), max_abs_error=1e-3, squarings=0).steps, True, "add"),
    ],
)
def test_a_hook_that_changes_the_batch_size_of_the_first_poly_is_caught(steps, mapped, change):
    """One value per Ops item at every step: a hook that drops a value, or hands back one more, before the
    first poly (constant or not, its input mapped by the caller or not) is a ValueError, never a silently
    shorter batch or an extra value quietly ignored."""

    def resize(values, need, stage):
        return values[:-1] if change == "drop" else [*values, values[-1]]

    x = np.array([-1.0, 0.5])
    ts = [to_unit(x, steps[0].domain)] * 2 if mapped else None
    ops = [bsgs.Ops(), bsgs.Ops()]
    assert len(interpret.run_batch(steps, [x, x], ops, ts)) == 2  # the same call with the identity hook
    with pytest.raises(ValueError, match="zip"):
        interpret.run_batch(steps, [x, x], ops, ts, ensure=resize)
