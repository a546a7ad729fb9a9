"""One encrypted decoder layer (sink attention, fused FFN, residual) against the numpy reference
`models.linear_view.view_forward`, prefill and decode, with refreshes through the client callback."""

import numpy as np
import pytest

from he_aero.ckks.attention import KVCache
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.layer import EncryptedLayer, skew_outweighs_a_round
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


def test_decode_with_the_skewed_qkv_matches_numpy(setup):
    """The decode step where QKV takes the skewed kernel and its row mask (input 2 levels above the refresh
    floor, cached values at the floor: `test_decode_takes_the_skewed_kernels_...`): the same token."""
    lay, x, layer, layout, kit = setup
    ref = Refresher(kit.ev, kit.refresh_client, BOUND, TEST_MASK_BITS)
    _, cache = layer.prefill(kit.ev, ref, [kit.enc(v, layout) for v in pack(x[:T], layout)], layout)
    cache.k, cache.v = [kit.ev.align(c, 0) for c in cache.k], [kit.ev.align(c, 0) for c in cache.v]
    one = layout.with_tokens(1)
    xs = [kit.ev.align(kit.enc(v, one), 2) for v in pack(x[T : T + 1], one)]
    ref = Refresher(kit.ev, kit.refresh_client, BOUND, TEST_MASK_BITS)
    y = layer.decode(kit.ev, ref, xs, cache, one)
    assert ref.trace[0] == {"stage": "l0 qkv", "need": 2, "level_in": 2, "refreshed": 0}  # skewed
    got = unpack([kit.dec(c) for c in y], one)[0]
    assert_close_bits(got, _reference(lay, x[: T + 1])[-1], 9, "decode step, skewed QKV")
    assert all(c.layout.clean for c in y)
    rows = np.concatenate([kit.dec(c).reshape(-1, BLOCK)[:, 1:] for c in y])
    assert np.abs(rows).max() < 2**-9  # the layer's output is clean for the next layer's skewed QKV


def test_decode_with_the_fused_output_and_a_top_level_skewed_qkv_matches_numpy(setup, monkeypatch):
    """Where the skewed kernels' savings outweigh a round (GPT-2's width; forced here by pricing a round at
    0 products): QKV skewed from a top-level input, w_o fused into w_mix. The token matches numpy, the output
    is clean, and a symbolic decode makes the same counts, rounds and levels."""
    from he_aero.ckks import layer as layer_module

    monkeypatch.setattr(layer_module, "REFRESH_IN_PRODUCTS", 0)
    lay, x, layer, layout, kit = setup
    ref = Refresher(kit.ev, kit.refresh_client, BOUND, TEST_MASK_BITS)
    _, cache = layer.prefill(kit.ev, ref, [kit.enc(v, layout) for v in pack(x[:T], layout)], layout)
    one = layout.with_tokens(1)
    blank = KVCache([Ct(None, c.level) for c in cache.k], [Ct(None, c.level) for c in cache.v], T)
    real, sym = Evaluator(SMALL, kit.server), Evaluator(SMALL)
    rref = Refresher(real, kit.refresh_client, BOUND, TEST_MASK_BITS)
    sref = Refresher(sym, None, BOUND, TEST_MASK_BITS)
    y = layer.decode(real, rref, [kit.enc(v, one) for v in pack(x[T : T + 1], one)], cache, one)
    s_out = layer.decode(sym, sref, [Ct(None, SMALL.levels, one)] * one.n_ct, blank, one)
    stages = {t["stage"]: t for t in rref.trace}
    assert stages["l0 qkv"]["need"] == 2 and "l0 w_o.w_mix" in stages and "l0 w_mix" not in stages
    got = unpack([kit.dec(c) for c in y], one)[0]
    assert_close_bits(got, _reference(lay, x[: T + 1])[-1], 9, "decode step, fused output")
    rows = np.concatenate([kit.dec(c).reshape(-1, BLOCK)[:, 1:] for c in y])
    assert all(c.layout.clean for c in y) and np.abs(rows).max() < 2**-9
    assert [c.level for c in y] == [c.level for c in s_out]
    assert (rref.log.rounds, rref.log.ciphertexts) == (sref.log.rounds, sref.log.ciphertexts)
    for field in ("rotations", "pt_mults", "ctct_mults", "steps_used"):
        assert getattr(real.stats, field) == getattr(sym.stats, field), field


def test_the_skewed_kernels_pay_for_a_round_at_gpt2_width_not_on_the_shipped_model():
    shipped = feature_layout(4096, 1, 128, block=64)  # N=8192
    gpt2 = feature_layout(8192, 1, 768, block=128)  # N=16384, T=128
    for lay, pays in ((shipped, False), (gpt2, True)):
        n = lay.n_ct
        assert skew_outweighs_a_round(lay, n, 3 * n, 3 * n) is pays  # QKV: a round of q, k, v
        assert skew_outweighs_a_round(lay, n, n, n) is pays  # the fused output: a round of the residual


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


def test_symbolic_decode_counts_what_the_real_decode_does(setup):
    """The decode step (skewed QKV and w_o, masks, K/V append) on ciphertexts and symbolically: the same
    output levels, rounds, refreshed ciphertexts, rotations and products by level, rotation steps."""
    lay, x, layer, layout, kit = setup
    one = layout.with_tokens(1)
    ref = Refresher(kit.ev, kit.refresh_client, BOUND, TEST_MASK_BITS)
    _, cache = layer.prefill(kit.ev, ref, [kit.enc(v, layout) for v in pack(x[:T], layout)], layout)
    real = Evaluator(SMALL, kit.server)
    rref = Refresher(real, kit.refresh_client, BOUND, TEST_MASK_BITS)
    sym = Evaluator(SMALL)
    sref = Refresher(sym, None, BOUND, TEST_MASK_BITS)
    blank = KVCache([Ct(None, c.level) for c in cache.k], [Ct(None, c.level) for c in cache.v], T)
    out = layer.decode(real, rref, [kit.enc(v, one) for v in pack(x[T : T + 1], one)], cache, one)
    s_out = layer.decode(sym, sref, [Ct(None, SMALL.levels, one)] * one.n_ct, blank, one)
    assert [c.level for c in out] == [c.level for c in s_out]
    assert (rref.log.rounds, rref.log.ciphertexts) == (sref.log.rounds, sref.log.ciphertexts)
    for field in ("rotations", "pt_mults", "ctct_mults", "steps_used"):
        assert getattr(real.stats, field) == getattr(sym.stats, field), field
    assert all(c.layout.clean for c in out)  # w_mix's block-diagonal kernel cleaned the skewed w_o's rows


@pytest.mark.parametrize("cache_level", [0, SMALL.levels])
@pytest.mark.parametrize("level", range(SMALL.levels + 1))
def test_decode_takes_the_skewed_kernels_where_they_add_no_level_and_no_round(
    setup, monkeypatch, level, cache_level
):
    """SMALL with the test mask: refresh floor 0, 4 levels between refreshes. QKV is skewed (and masked) only
    where the mask's level is lost anyway: the input keeps exactly 2 levels (a refreshed one would hold 4, so
    q and k, one level lower, would reach the scores without a refresh) and the cached values sit at the
    floor (A.V refreshes them either way); w_o always. Refresh rounds, refreshed ciphertexts and output
    levels equal those of the block-diagonal kernels everywhere."""
    from he_aero.ckks import layer as layer_module

    _, _, layer, layout, _ = setup
    one = layout.with_tokens(1)

    def run():
        ev = Evaluator(SMALL)
        ref = Refresher(ev, None, BOUND, TEST_MASK_BITS)
        cache = KVCache([Ct(None, cache_level)] * one.n_ct, [Ct(None, cache_level)] * one.n_ct, T)
        out = layer.decode(ev, ref, [Ct(None, level, one)] * one.n_ct, cache, one)
        return ev, ref, [c.level for c in out]

    ev, ref, levels = run()
    skewed_qkv = level == 2 and cache_level == 0
    assert next(t["need"] for t in ref.trace if t["stage"] == "l0 qkv") == 1 + skewed_qkv
    monkeypatch.setattr(layer_module, "skewable", lambda xs, lay: False)
    old_ev, old_ref, old_levels = run()
    assert (ref.log.rounds, ref.log.ciphertexts) == (old_ref.log.rounds, old_ref.log.ciphertexts)
    assert [t["refreshed"] for t in ref.trace if t["stage"] != "l0 qkv"] == [
        t["refreshed"] for t in old_ref.trace if t["stage"] != "l0 qkv"
    ]
    assert levels == old_levels

    def products(which, skewed):  # the kernel's plaintext products: its nonzero diagonals
        lin = layer._linear(which, one, skewed)
        return int((np.abs(lin.diag).max(axis=(3, 4) if skewed else 3) > 0).sum())

    # saved: w_o's and QKV's products less the QKV masks, and, when the masked k, v arrive at the cache's
    # level, the append's two alignments to it
    saved = products("o", False) - products("o", True)
    saved += skewed_qkv * (products("qkv", False) - products("qkv", True) - 3 * one.n_ct)
    assert old_ev.stats.n_pt - ev.stats.n_pt == saved + 2 * one.n_ct * skewed_qkv
