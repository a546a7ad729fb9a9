"""The pipeline's decode step on the shipped plan, counted symbolically: where the one-token skewed kernel
runs, and that it costs no refresh round, no refreshed ciphertext and no level over the block-diagonal
kernel (the plan has 2 levels between refreshes; a round costs more than the products it would save)."""

import pytest

from he_aero.ckks import layer as layer_module
from he_aero.ckks import pipeline as pipeline_module
from he_aero.ckks.pipeline import Pipeline
from he_aero.plan import load_plan


@pytest.fixture(scope="module")
def shipped():
    plan = load_plan()
    pipe = Pipeline(plan.shape.view(), plan.plans, plan.params, plan.block, plan.decode_rows)
    return plan, pipe


def _decode(plan, pipe, length: int):
    _, _, caches, _ = pipe.symbolic_prefill(1, plan.activation_bound, plan.mask_bits)
    for c in caches:
        c.length = length
    return pipe.symbolic_decode(caches, plan.activation_bound, plan.mask_bits)


@pytest.mark.parametrize("length", [1, 63])
def test_the_skewed_decode_adds_no_round_no_refresh_and_no_level(shipped, monkeypatch, length):
    plan, pipe = shipped
    assert not plan.decode_rows and plan.usable_levels == 2
    pipe.clear()
    ev, ref, records = _decode(plan, pipe, length)
    # layer 0 reads the embedding one level below the top: its QKV stays block-diagonal (a skewed one
    # would need a round for its row mask); every later QKV, every w_o and the LM head are skewed
    skewed = {(i, which) for i, lay in enumerate(pipe.layers) for which, _, sk in lay._linears if sk}
    assert skewed == {(0, "o"), (1, "qkv"), (1, "o"), (2, "qkv"), (2, "o")}
    assert {which for which, _, sk in pipe._linears if sk} == {"lm"}  # the embedding's input is the client's
    for module in (layer_module, pipeline_module):
        monkeypatch.setattr(module, "skewable", lambda xs, lay: False)
    old_ev, old_ref, old_records = _decode(plan, pipe, length)
    assert (ref.log.rounds, ref.log.ciphertexts) == (old_ref.log.rounds, old_ref.log.ciphertexts)
    # (the logits leave a level lower, the row mask's: nothing follows them)
    assert [r.level_out for r in records[:-1]] == [r.level_out for r in old_records[:-1]]
    assert [r.ops["refresh_rounds"] for r in records] == [r.ops["refresh_rounds"] for r in old_records]
    assert ev.stats.n_pt < 0.5 * old_ev.stats.n_pt  # 2198 against 4962 products at this plan
    assert ev.stats.n_rotations <= old_ev.stats.n_rotations


def test_the_shipped_plan_lists_the_skew_rotation_keys(shipped):
    """2^k (B - 1) for the skew (B = 64 = F: no copies), 1 .. 32 for the row sums (already listed)."""
    plan, _ = shipped
    assert {63 << k for k in range(6)} <= set(plan.rotation_steps)
    assert len(plan.rotation_steps) == 29
