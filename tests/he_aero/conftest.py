"""Fixtures of the private-inference tests: a tiny sink-attention decoder, its calibration, a small ring.

The tiny model (2 layers, d=16, 2 heads, T=8) has random weights drawn wider than the training initialisation
(embeddings N(0, 1), projections N(0, 0.15^2)) and non-zero sink logits, so its attention is far from uniform
(z spans several units) and the exp / 1/x plans are exercised on real, wide windows.
Ring N=2048 with the default chain shape (9 levels) is insecure and allowed only
because these are tests: the kernels, levels and refreshes are those of N=16384, 8x faster.
"""

from __future__ import annotations

import pytest
import torch

TINY = {"block_size": 8, "n_layer": 2, "n_head": 2, "d_model": 16}
TEST_CHAIN = (50,) + (35,) * 9 + (60,)

LOGIT_TOL = 3e-3
"""max |delta logit| of the tiny model at the test ring: measured 2.0e-4 to 2.7e-4 (about 12 bits); the bound
keeps about 10x (3.3 bits) of margin. A broken causal mask or key shift moves logits by ~0.1 or more."""
BPB_GAP_TOL = 1e-5
"""Relative bits/byte gap of the tiny model, encrypted vs plaintext: measured 5.6e-7 to 5.8e-7; 10x margin."""


def make_tiny_checkpoint(out_dir, seed: int = 0, variant: str = "softmax-only", **shape):
    """Write a tiny random checkpoint with non-trivial attention; returns (model, header). Baseline variants
    (LayerNorm, unfused FFN) keep the FFN's initialisation; `shape` overrides TINY's fields."""
    from models.checkpoint import load_checkpoint, save_checkpoint
    from models.decoder import Decoder, DecoderConfig

    torch.manual_seed(seed)
    model = Decoder(DecoderConfig(variant=variant, **{**TINY, **shape}))
    with torch.no_grad():
        model.tok_emb.weight.normal_(0.0, 1.0)
        model.pos_emb.weight.normal_(0.0, 0.5)
        for block in model.blocks:
            fused = (block.ffn,) if block.fused else ()
            for lin in (block.attn.q, block.attn.k, block.attn.v, block.attn.o, *fused):
                lin.weight.normal_(0.0, 0.15)
            block.attn.sink.uniform_(1.0, 2.0)
    save_checkpoint(model, out_dir)
    return load_checkpoint(out_dir)


def small_ring_params():
    from he_aero.ckks.params import CkksParams

    return CkksParams(2048, TEST_CHAIN, 35, insecure_for_tests=True)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(checkpoint dir, model, header, view, calibration) for the tiny model, calibrated on training text."""
    from he_aero.calibrate import CalibrationConfig, calibrate
    from models.data import load_split
    from models.linear_view import LinearView

    path = tmp_path_factory.mktemp("tiny") / "ckpt"
    model, header = make_tiny_checkpoint(path)
    cal = calibrate(model, header, CalibrationConfig(samples=256), data=load_split("train")[:200_000])
    return path, model, header, LinearView.from_model(model), cal


@pytest.fixture(scope="session", params=["baseline", "relu", "lnfree-relu"])
def tiny_variant(request, tmp_path_factory):
    """(model, header, view, calibration, plan) of a tiny baseline-variant model (LayerNorm and GELU,
    LayerNorm and ReLU, ReLU alone) on the test ring: the encrypted cost comparison's other rows."""
    from he_aero.calibrate import CalibrationConfig, calibrate
    from he_aero.plan import compile_plan
    from models.data import load_split
    from models.linear_view import LinearView

    path = tmp_path_factory.mktemp(request.param) / "ckpt"
    model, header = make_tiny_checkpoint(path, variant=request.param)
    cal = calibrate(model, header, CalibrationConfig(samples=256), data=load_split("train")[:200_000])
    plan = compile_plan(header, cal, params=small_ring_params())
    return model, header, LinearView.from_model(model), cal, plan


@pytest.fixture(scope="session")
def tiny_plan(tiny):
    """The tiny model's execution plan on the test ring."""
    from he_aero.plan import compile_plan

    _, _, header, _, cal = tiny
    return compile_plan(header, cal, params=small_ring_params())


def insecure_session(view, header, plan, **kw):
    """An in-process session that accepts the test-only insecure ring on both sides."""
    from he_aero.client.policy import ClientPolicy
    from he_aero.session import Session

    return Session(
        view,
        header,
        plan,
        policy=ClientPolicy(allow_insecure_for_tests=True),
        allow_insecure_for_tests=True,
        **kw,
    )


@pytest.fixture(scope="session")
def tiny_session(tiny, tiny_plan):
    """One encrypted session (keys made once) on the tiny model at the test ring."""
    _, _, header, view, _ = tiny
    return insecure_session(view, header, tiny_plan)
