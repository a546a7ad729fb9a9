"""Encrypted LayerNorm (normalise: mean, sum of squares, 1/sqrt plan, product) against the numpy reference
`models.linear_view.normalise`, for T tokens and for one decode row, with refreshes through the client."""

import numpy as np
import pytest

from approx.plans import plan_exp, plan_inv_sqrt
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.norm import NormPlan, normalise, u_scale
from he_aero.ckks.packing import feature_layout, pack, unpack
from he_aero.ckks.params import CkksParams
from he_aero.ckks.refresh import Refresher
from he_aero.errors import HeAeroError
from models.linear_view import normalise as reference
from tests.conftest import assert_close_bits
from tests.he_aero.ckks.kit import TEST_MASK_BITS, Kit

DEEP = CkksParams(2048, (60,) + (32,) * 8 + (60,), 32, insecure_for_tests=True)
"""N=2048 with 8 levels: room for the baseline variants' deeper pieces (tests only)."""
T, D, BLOCK, EPS, BOUND = 8, 80, 16, 1e-5, 16.0


def _symbolic_steps(plan, layouts) -> set:
    steps = set()
    for lay in layouts:
        ev = Evaluator(DEEP)
        ref = Refresher(ev, None, BOUND, TEST_MASK_BITS)
        normalise(ev, ref, plan, [Ct(None, DEEP.levels, lay)] * lay.n_ct, lay, EPS, "ln")
        steps |= ev.stats.steps_used
    return steps


def norm_plan(lo: float, hi: float) -> NormPlan:
    """The planner's rule (he_aero/plan.py `fit_inv_sqrt`): 1/sqrt fitted on [lo, hi] / u_scale."""
    g = u_scale((lo, hi))
    return NormPlan(plan_inv_sqrt((lo / g, hi / g), 1e-4), g)


@pytest.fixture(scope="module", params=[1.0, 0.02], ids=["var~1", "var~4e-4"])
def setup(request):
    """Rows with a per-token scale and mean; the second set has variances ~4e-4 (a briefly trained model's),
    which the u_scale keeps at full precision."""
    rng = np.random.default_rng(3)
    x = rng.normal(0.7, 1.0, size=(T, D)) * rng.uniform(0.6, 1.6, size=(T, 1)) * request.param
    _, u = reference(x, EPS)
    plan = norm_plan(0.8 * u.min(), 1.25 * u.max())
    layout = feature_layout(DEEP.slots, T, D, block=BLOCK)  # 80 features: 48 of the 2nd ct are padding
    kit = Kit(DEEP, _symbolic_steps(plan, (layout, layout.with_tokens(1))))
    return x, plan, layout, kit


def test_normalise_matches_numpy_for_tokens_and_a_decode_row(setup):
    x, plan, layout, kit = setup
    ref = Refresher(kit.ev, kit.refresh_client, BOUND, TEST_MASK_BITS)
    for lay, rows, level in ((layout, x, DEEP.levels), (layout.with_tokens(1), x[:1], 2)):
        # the decode row starts 2 levels above the bottom: the 1/sqrt plan must wait for a refresh
        xs = [kit.ev.align(kit.enc(v, lay), level) for v in pack(rows, lay)]
        out = normalise(kit.ev, ref, plan, xs, lay, EPS, "ln")
        slots = [kit.dec(c) for c in out]
        assert_close_bits(
            unpack(slots, lay), reference(rows, EPS)[0], 10, f"normalise, {lay.n_tokens} tokens"
        )
        # padding (rows past the tokens, features past d) decrypts to ~0: later sums must not see it
        padding = np.ones(lay.n_ct * lay.slots, dtype=bool)
        padding[np.flatnonzero(np.concatenate(pack(np.ones_like(rows), lay)))] = False
        assert np.max(np.abs(np.concatenate(slots)[padding])) < 1e-3
    assert ref.log.rounds == 1  # only the second run, started low, needed a refresh


def test_normalise_refuses_a_plan_of_another_function(setup):
    x, _, layout, kit = setup
    xs = [kit.enc(v, layout) for v in pack(x, layout)]
    ref = Refresher(kit.ev, kit.refresh_client, BOUND, TEST_MASK_BITS)
    with pytest.raises(HeAeroError, match="1/sqrt plan"):
        normalise(
            kit.ev, ref, NormPlan(plan_exp((-1.0, 1.0), max_abs_error=1e-3), 1.0), xs, layout, EPS, "ln"
        )
    with pytest.raises(HeAeroError, match="1/sqrt plan"):
        normalise(kit.ev, ref, setup[1].plan, xs, layout, EPS, "ln")  # a bare Plan: its scale is missing
    with pytest.raises(HeAeroError, match="expected 2 ciphertexts"):
        normalise(kit.ev, ref, setup[1], xs[:1], layout, EPS, "ln")
    dirty = [Ct(c.data, c.level, layout.with_clean(False)) for c in xs]  # rows >= n_tokens: garbage
    with pytest.raises(HeAeroError, match=r"^ln: ciphertexts \[0, 1\] hold garbage in rows >= n_tokens"):
        normalise(kit.ev, ref, setup[1], dirty, layout, EPS, "ln")
