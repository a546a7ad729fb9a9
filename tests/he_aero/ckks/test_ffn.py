"""Baseline blocks encrypted (LayerNorm before attention and FFN, unfused d -> 4d -> d FFN with GELU or the
composite-sign ReLU) against the numpy reference `models.linear_view.layer_forward`, prefill then decode."""

import dataclasses

import numpy as np
import pytest

from approx.plans import plan_fit
from approx.sign import relu_composite
from he_aero.ckks.ffn import EncryptedFFN
from he_aero.ckks.layer import BaselinePlans, EncryptedLayer
from he_aero.ckks.packing import feature_layout, pack, unpack
from he_aero.ckks.refresh import Refresher
from he_aero.errors import HeAeroError
from he_aero.plan import Ranges, fit_plans
from models.linear_view import LayerView, layer_forward
from tests.conftest import assert_close_bits
from tests.he_aero.ckks.kit import TEST_MASK_BITS, Kit, layer_steps
from tests.he_aero.ckks.test_norm import DEEP, norm_plan

T, D, H, BLOCK, BOUND = 8, 32, 2, 16, 16.0


def _block(rng, act: str, norm: bool) -> LayerView:
    def m(*shape, sc=1.0):
        return rng.normal(size=shape) * sc

    s = 1 / np.sqrt(D)
    g = np.sqrt(D) if norm else 1.0  # normalise() rows have unit length: the folded LayerNorm gain
    return LayerView(
        w_q=m(D, D, sc=0.4 * s * g), b_q=m(D, sc=0.1), w_k=m(D, D, sc=0.4 * s * g), b_k=m(D, sc=0.1),
        w_v=m(D, D, sc=s * g), b_v=m(D, sc=0.1), w_o=m(D, D, sc=s), b_o=m(D, sc=0.1),
        w_mix=None, b_mix=None, sink=np.array([0.5, 1.5]), n_head=H, norm_attn=norm, norm_ffn=norm,
        act=act, w_1=m(D, 4 * D, sc=s * g), b_1=m(4 * D, sc=0.1), w_2=m(4 * D, D, sc=0.5 / np.sqrt(4 * D)),
        b_2=m(D, sc=0.1),
    )  # fmt: skip


def _plans(lay: LayerView, x: np.ndarray) -> BaselinePlans:
    """Domains from the reference run on these inputs (the calibration's role), widened by 25%."""
    inter = layer_forward(lay, x)
    lo, hi = inter["pre"].min(), inter["pre"].max()
    if lay.act == "gelu":
        act = plan_fit("gelu", (1.25 * lo, 1.25 * hi), 2e-3)
    else:
        act = relu_composite(1.25 * max(-lo, hi), 2e-2)
    norms = [
        norm_plan(0.8 * inter[k].min(), 1.25 * inter[k].max()) if lay.norm_attn else None
        for k in ("u_attn", "u_ffn")
    ]
    return BaselinePlans(act, *norms)


@pytest.fixture(scope="module", params=[("gelu", True), ("relu", True), ("relu", False)], ids=str)
def setup(request):
    act, norm = request.param
    rng = np.random.default_rng(5)
    lay = _block(rng, act, norm)
    x = rng.normal(size=(T + 1, D))
    exp_plan, recip_plan = fit_plans((-6.0, 3.0), (1.0, 64.0), Ranges(((-6.0, 3.0),)), 4)
    layer = EncryptedLayer(0, lay, exp_plan, recip_plan, baseline=_plans(lay, x))
    layout = feature_layout(DEEP.slots, T, D, block=BLOCK)
    return lay, x, layer, layout, Kit(DEEP, layer_steps(layer, DEEP, layout, BOUND, T))


def test_baseline_block_prefill_then_decode_match_numpy(setup):
    lay, x, layer, layout, kit = setup
    ref = Refresher(kit.ev, kit.refresh_client, BOUND, TEST_MASK_BITS)
    out, cache = layer.prefill(kit.ev, ref, [kit.enc(v, layout) for v in pack(x[:T], layout)], layout)
    want = layer_forward(lay, x[:T])["x_out"]
    assert_close_bits(unpack([kit.dec(c) for c in out], layout), want, 7, f"{lay.act} block prefill")
    one = layout.with_tokens(1)
    y = layer.decode(kit.ev, ref, [kit.enc(v, one) for v in pack(x[T : T + 1], one)], cache, one)
    got = unpack([kit.dec(c) for c in y], one)[0]
    assert_close_bits(got, layer_forward(lay, x[: T + 1])["x_out"][-1], 7, f"{lay.act} block decode")
    assert ref.log.rounds > 0


def test_a_baseline_block_needs_matching_plans(setup):
    lay, x, layer, _, _ = setup
    exp_plan, recip_plan = layer.spec.exp_plan, layer.spec.recip_plan
    with pytest.raises(HeAeroError, match="needs BaselinePlans"):
        EncryptedLayer(0, lay, exp_plan, recip_plan)
    other = relu_composite(4.0, 5e-2) if lay.act == "gelu" else plan_fit("gelu", (-4.0, 4.0), 1e-2)
    with pytest.raises(HeAeroError, match="GELU needs|ReLU needs"):
        EncryptedFFN("l0", lay, other, None)
    if lay.norm_attn:
        with pytest.raises(HeAeroError, match="1/sqrt plan"):
            EncryptedLayer(0, lay, exp_plan, recip_plan, baseline=BaselinePlans(layer.ffn.approx))
    fused = dataclasses.replace(lay, act=None, w_mix=np.eye(D), b_mix=np.zeros(D))
    with pytest.raises(HeAeroError, match="softmax-only one none"):
        EncryptedLayer(0, fused, exp_plan, recip_plan, baseline=_plans(lay, x))


@pytest.mark.parametrize("setup", [("relu", False)], indirect=True, ids=str)  # the FFN reads X_SA as it is
def test_the_activation_reads_real_parts_so_imaginary_noise_cannot_grow(setup):
    """Found on a trained SM+R model: W_1's rotations leave imaginary noise in the slots, and each sign
    stage multiplies an imaginary part by up to |p'(1)| ~ 3, so a 13-stage composite ReLU turned 6e-5 into
    1e27. Here the inputs carry an imaginary part of 1e-3 (far more) and many stages; the FFN projects W_1's
    products to their real parts first, and matches numpy."""
    lay, x, _, layout, kit = setup
    pre = x[:T] @ lay.w_1 + lay.b_1
    act = relu_composite(1.25 * np.abs(pre).max(), 1e-4, max_stage_depth=2)  # degree-3 stages, as at N=8192
    assert len(act.stages) >= 10
    ffn = EncryptedFFN("t", lay, act, None)
    ref = Refresher(kit.ev, kit.refresh_client, BOUND, TEST_MASK_BITS)
    noise = np.random.default_rng(1).normal(size=(T, D)) * 1e-3
    cts = [kit.enc(v + 1j * w, layout) for v, w in zip(pack(x[:T], layout), pack(noise, layout), strict=True)]
    out = unpack([kit.dec(c) for c in ffn(kit.ev, ref, cts, layout)], layout)
    want = x[:T] + np.maximum(pre, 0.0) @ lay.w_2 + lay.b_2
    assert_close_bits(out, want, 7, "relu FFN with imaginary noise")
