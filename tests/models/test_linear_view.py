"""The linear-algebra view reproduces the torch module to 1e-5; its forward is embed + layer intermediates."""

import dataclasses

import numpy as np
import pytest
import torch

from models.decoder import Decoder, DecoderConfig
from models.errors import ModelError
from models.linear_view import (
    LAYER_INTERMEDIATES,
    LinearView,
    embed,
    layer_forward,
    normalise,
    view_forward,
)
from tests.conftest import assert_close_bits


def _perturbed(cfg: DecoderConfig) -> Decoder:
    """A model with scalars away from their init, so every fold (temperature, alpha, beta, sink) matters."""
    model = Decoder(cfg).eval()
    with torch.no_grad():
        for block in model.blocks:
            if block.attn.sink is not None:
                block.attn.sink.uniform_(-1, 1)
            if block.attn.temp_raw is not None:
                block.attn.temp_raw.uniform_(-1, 1)
            if not block.pruned:
                block.alpha.fill_(1.3)
                block.beta.fill_(0.8)
                block.ffn.bias.uniform_(-0.1, 0.1)
            for lin in (block.attn.q, block.attn.k, block.attn.v, block.attn.o):
                lin.bias.uniform_(-0.1, 0.1)
                lin.weight.mul_(5)  # widen the logits so the softmax is far from uniform
        model.lm_bias.uniform_(-0.5, 0.5)
    return model


@pytest.mark.parametrize(
    "extra", [dict(), dict(pruned_ffns=1), dict(attention="softmax"), dict(learn_temperature=False)]
)
def test_view_forward_matches_module(extra):
    cfg = DecoderConfig(n_layer=2, n_head=4, d_model=32, block_size=16, **extra)
    model = _perturbed(cfg)
    view = LinearView.from_model(model)
    tokens = torch.randint(0, 256, (16,))
    expected = model.logits(tokens[None])[0].detach().double().numpy()
    got = view_forward(view, tokens.numpy())
    assert got.shape == (16, 256)
    assert np.max(np.abs(got - expected)) < 1e-5
    assert_close_bits(got, expected, 16.6, "view logits")  # 2^-16.6 ~ 1e-5
    # A prefix is a valid input too (the runtime decodes token by token).
    np.testing.assert_allclose(view_forward(view, tokens[:5].numpy()), got[:5], atol=1e-9)


@pytest.mark.parametrize("attention", ["sink", "softmax"])
def test_layer_intermediates_compose_to_view_forward(attention):
    """`view_forward` is exactly embed -> layer_forward's "x_out" per layer -> LM head, and the named
    intermediates are consistent with each other (den, num, heads from z and v)."""
    cfg = DecoderConfig(n_layer=2, n_head=4, d_model=32, block_size=16, attention=attention)
    view = LinearView.from_model(_perturbed(cfg))
    tokens = np.arange(40, 52)  # T = 12
    T, H, dk = len(tokens), 4, 8
    x = embed(view, tokens)
    assert x.shape == (T, 32)
    for lay in view.layers:
        inter = layer_forward(lay, x)
        assert tuple(inter) == LAYER_INTERMEDIATES
        assert (
            inter["z"].shape == (H, T, T)
            and inter["den"].shape == (H, T)
            and inter["num"].shape == (H, T, dk)
        )
        for name in ("q", "k", "v", "heads", "x_sa", "x_out"):
            assert inter[name].shape == (T, 32), name
        causal = np.tril(np.ones((T, T), dtype=bool))
        z = np.where(causal, inter["z"], -np.inf)
        if attention == "sink":  # what the encrypted runtime computes: exp(z), 1 + sum, no max-shift
            np.testing.assert_allclose(inter["den"], 1 + np.exp(z).sum(-1), rtol=1e-12)
        heads = inter["num"] / inter["den"][..., None]  # (H, T, dk)
        np.testing.assert_allclose(inter["heads"], heads.transpose(1, 0, 2).reshape(T, 32), atol=1e-12)
        x = inter["x_out"]
    np.testing.assert_array_equal(x @ view.lm_head + view.lm_bias, view_forward(view, tokens))


def test_view_arrays_follow_the_contract():
    cfg = DecoderConfig(n_layer=2, n_head=4, d_model=32, block_size=16, pruned_ffns=1)
    view = LinearView.from_model(_perturbed(cfg))
    arrays = view.arrays()
    assert arrays["tok_emb"].shape == (256, 32) and arrays["lm_head"].shape == (32, 256)
    assert arrays["layers.0.w_q"].shape == (32, 32) and arrays["layers.0.sink"].shape == (4,)
    assert all(a.dtype == np.float64 for a in arrays.values())
    np.testing.assert_array_equal(view.layers[1].w_mix, np.eye(32))  # pruned: identity and zero
    np.testing.assert_array_equal(view.layers[1].b_mix, np.zeros(32))


@pytest.mark.parametrize("variant", ["baseline", "relu", "lnfree-relu"])
@pytest.mark.parametrize("attention", ["sink", "softmax"])
def test_baseline_variants_view_matches_module(variant, attention):
    """LayerNorm split into normalise + folded gains, the unfused GELU / ReLU FFN, the final LayerNorm: the
    view's forward matches torch to 1e-5, with gains and biases away from their init so every fold matters."""
    torch.manual_seed(1)
    cfg = DecoderConfig(variant=variant, attention=attention, n_layer=2, n_head=4, d_model=32, block_size=16)
    model = Decoder(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # biases, LayerNorm gains, sinks, temperatures
                p.uniform_(-0.5, 1.5)
    view = LinearView.from_model(model)
    assert view.final_norm == (variant != "lnfree-relu")
    assert all(lay.act == ("gelu" if variant == "baseline" else "relu") for lay in view.layers)
    tokens = torch.randint(0, 256, (16,))
    expected = model.logits(tokens[None])[0].detach().double().numpy()
    assert np.max(np.abs(view_forward(view, tokens.numpy()) - expected)) < 1e-5
    inter = layer_forward(view.layers[0], embed(view, tokens.numpy()))
    assert inter["pre"].shape == inter["act"].shape == (16, 128)
    assert ("u_attn" in inter) == ("u_ffn" in inter) == (variant != "lnfree-relu")
    if "u_attn" in inter:  # u = var + eps of the block's input, per token
        x = embed(view, tokens.numpy())
        np.testing.assert_allclose(inter["u_attn"], x.var(-1) + 1e-5, rtol=1e-12)
        assert np.all(inter["u_ffn"] > 0)


def test_normalise_gives_unit_rows():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(5, 16))
    n, u = normalise(x, 0.0)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(n.sum(1), 0.0, atol=1e-12)
    np.testing.assert_allclose(u, x.var(1), rtol=1e-12)


def test_view_refuses_a_block_without_an_ffn_and_bad_lengths():
    lay = LinearView.from_model(Decoder(DecoderConfig(n_layer=1, n_head=2, d_model=8, block_size=4))).layers[
        0
    ]
    with pytest.raises(ModelError, match="fused FFN"):
        dataclasses.replace(lay, w_mix=None)
    with pytest.raises(ModelError, match="act must be"):
        dataclasses.replace(lay, act="swish", w_1=np.eye(8), w_2=np.eye(8))
    view = LinearView.from_model(Decoder(DecoderConfig(n_layer=1, n_head=2, d_model=8, block_size=4)))
    with pytest.raises(ModelError, match="tokens"):
        view_forward(view, np.zeros(5, dtype=int))
    for bad in (np.zeros(0, dtype=int), np.zeros((1, 2), dtype=int)):
        with pytest.raises(ModelError, match="tokens"):
            embed(view, bad)


def test_view_matches_the_shipped_default_model():
    """Real trained weights (logits up to ~25) match to 1e-5 against the module run in float64.

    In float32 the module itself rounds at ~1e-6 relative, i.e. ~1.5e-5 absolute on these logits.
    """
    from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint

    model, _ = load_checkpoint(DEFAULT_CHECKPOINT)
    view = LinearView.from_model(model)
    model = model.double()
    prompt = b"def read_config(path):\n    with open(path) as f:\n        return json.load(f)\n"
    tokens = np.frombuffer(prompt[: model.cfg.block_size], dtype=np.uint8).astype(np.int64)
    expected = model.logits(torch.from_numpy(tokens)[None])[0].detach().double().numpy()
    assert np.max(np.abs(view_forward(view, tokens) - expected)) < 1e-5
