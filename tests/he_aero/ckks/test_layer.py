"""One encrypted decoder layer (sink attention, fused FFN, residual) against the numpy reference
`models.linear_view.view_forward`, prefill and decode, with refreshes through the client callback."""

import numpy as np
import pytest

from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.layer import EncryptedLayer
from he_aero.ckks.packing import feature_layout, pack, unpack
from he_aero.ckks.refresh import Refresher
from he_aero.plan import Ranges, fit_plans
from models.linear_view import LayerView, LinearView, view_forward
from tests.conftest import assert_close_bits
from tests.he_aero.ckks.kit import SMALL, TEST_MASK_BITS, Kit, layer_steps

T, D, H, BLOCK = 8, 32, 2, 16
BOUND = 16.0


def _layer_view(rng):
    def m(*shape, sc=1.0):
        return rng.normal(size=shape) * sc

    s = 1 / np.sqrt(D)
    return LayerView(
        w_q=m(D, D, sc=0.4 * s), b_q=m(D, sc=0.1), w_k=m(D, D, sc=0.4 * s), b_k=m(D, sc=0.1),
        w_v=m(D, D, sc=s), b_v=m(D, sc=0.1), w_o=m(D, D, sc=s), b_o=m(D, sc=0.1),
        w_mix=np.eye(D) + m(D, D, sc=0.2 * s), b_mix=m(D, sc=0.1), sink=np.array([0.5, 1.5]), n_head=H,
    )  # fmt: skip


def _reference(lay, x):
    """X_out of one layer: view_forward with the rows of x as the embedding and the identity as LM head."""
    n = x.shape[0]
    view = LinearView(
        tok_emb=x, pos_emb=np.zeros((n, D)), layers=(lay,), lm_head=np.eye(D), lm_bias=np.zeros(D)
    )
    return view_forward(view, np.arange(n))


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    lay = _layer_view(rng)
    x = rng.normal(size=(T + 1, D))
    exp_plan, recip_plan = fit_plans((-6.0, 3.0), (1.0, 1.0 + BLOCK), Ranges(((-6.0, 3.0),)), SMALL.levels)
    layer = EncryptedLayer(0, lay, exp_plan, recip_plan)
    layout = feature_layout(SMALL.slots, T, D, block=BLOCK)
    kit = Kit(SMALL, layer_steps(layer, SMALL, layout, BOUND, T))  # symbolic runs list the rotation keys
    return lay, x, layer, layout, kit


def test_prefill_then_decode_match_numpy(setup):
    lay, x, layer, layout, kit = setup
    ref = Refresher(kit.ev, kit.refresh_client, BOUND, TEST_MASK_BITS)
    xs = [kit.enc(v, layout) for v in pack(x[:T], layout)]
    out, cache = layer.prefill(kit.ev, ref, xs, layout)
    want = _reference(lay, x[:T])
    assert_close_bits(unpack([kit.dec(c) for c in out], layout), want, 9, "prefill layer")
    assert ref.log.rounds > 0 and ref.log.bytes_to_client > 0 and ref.log.bytes_to_server > 0
    one = layout.with_tokens(1)
    y = layer.decode(kit.ev, ref, [kit.enc(v, one) for v in pack(x[T : T + 1], one)], cache, one)
    assert cache.length == T + 1
    got = unpack([kit.dec(c) for c in y], one)[0]
    assert_close_bits(got, _reference(lay, x[: T + 1])[-1], 9, "decode step")


def test_symbolic_run_predicts_levels_and_rounds(setup):
    lay, x, layer, layout, kit = setup
    sym = Evaluator(SMALL)
    sref = Refresher(sym, None, BOUND, TEST_MASK_BITS)
    s_out, _ = layer.prefill(sym, sref, [Ct(None, SMALL.levels, layout)] * layout.n_ct, layout)
    ref = Refresher(kit.ev, kit.refresh_client, BOUND, TEST_MASK_BITS)
    kit.ev.reset_stats()
    out, _ = layer.prefill(kit.ev, ref, [kit.enc(v, layout) for v in pack(x[:T], layout)], layout)
    assert [c.level for c in out] == [c.level for c in s_out]
    assert ref.log.rounds == sref.log.rounds and ref.log.ciphertexts == sref.log.ciphertexts
    assert kit.ev.stats.summary()["rotations"] == sym.stats.summary()["rotations"]
    assert [t["refreshed"] for t in ref.trace] == [t["refreshed"] for t in sref.trace]
