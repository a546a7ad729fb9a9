"""The decoder: shapes, causality, variants, the fused FFN, the entropy regulariser and config validation."""

import math

import pytest
import torch

from models.decoder import Decoder, DecoderConfig
from models.errors import ModelError

TINY = dict(n_layer=2, n_head=2, d_model=16, block_size=12)
VARIANT_CONFIGS = [
    dict(variant="baseline", attention="softmax"),
    dict(variant="relu", attention="softmax"),
    dict(variant="lnfree-relu", attention="softmax"),
    dict(variant="softmax-only", attention="softmax", entropy_reg=False),
    dict(variant="softmax-only", attention="sink", pruned_ffns=1),
    dict(variant="softmax-only", attention="sink"),
]


@pytest.mark.parametrize("extra", VARIANT_CONFIGS, ids=lambda e: f"{e['variant']}-{e['attention']}")
def test_shapes_and_causality(extra):
    model = Decoder(DecoderConfig(**TINY, **extra)).eval()
    idx = torch.randint(0, 256, (3, 12))
    logits = model.logits(idx)
    assert logits.shape == (3, 12, 256)
    # Changing tokens after position t never changes the logits at or before t.
    t = 5
    changed = idx.clone()
    changed[:, t + 1 :] = torch.randint(0, 256, (3, 12 - t - 1))
    other = model.logits(changed)
    torch.testing.assert_close(logits[:, : t + 1], other[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(logits[:, t + 1 :], other[:, t + 1 :])


def test_variant_structure():
    base = Decoder(DecoderConfig(**TINY, variant="baseline"))
    so = Decoder(DecoderConfig(**TINY, variant="softmax-only", pruned_ffns=1))
    assert base.ln_f is not None and all(b.ln1 is not None for b in base.blocks)
    assert so.ln_f is None and all(b.ln1 is None and b.ln2 is None for b in so.blocks)
    assert [b.pruned for b in so.blocks] == [False, True]  # the deepest FFN is the pruned one
    assert so.blocks[0].ffn.weight.shape == (16, 16)  # fused: one d x d matrix


def test_fused_ffn_equals_scaled_two_term_formula():
    """X_out = beta X_SA + (1/alpha)(X_SA W + b) is one affine map X_SA (beta I + W^T/alpha) + b/alpha."""
    block = Decoder(DecoderConfig(**TINY)).blocks[0]
    with torch.no_grad():
        block.alpha.fill_(1.7)
        block.beta.fill_(0.6)
    x = torch.randn(2, 5, 16)
    w = block.ffn.weight.detach()
    expected = x @ (0.6 * torch.eye(16) + w.T / 1.7) + block.ffn.bias.detach() / 1.7
    torch.testing.assert_close(block.mix(x), expected, rtol=1e-5, atol=1e-6)


def test_sink_attention_is_the_bounded_softmax():
    """a_ij = exp(z_ij) / (1 + sum_j' exp(z_ij')) on causal pairs, 0 elsewhere; rows sum to < 1."""
    model = Decoder(DecoderConfig(**TINY)).eval()
    with torch.no_grad():
        model.blocks[0].attn.sink.copy_(torch.tensor([0.3, -0.8]))
    idx = torch.randint(0, 256, (1, 12))
    x = model.tok_emb(idx) + model.pos_emb(torch.arange(12))
    _, aux = model.blocks[0].attn(x, record=True)
    z = aux["z"][0]  # (H, T, T)
    e = torch.exp(z) * torch.tril(torch.ones(12, 12))
    expected = e / (1 + e.sum(-1, keepdim=True))
    torch.testing.assert_close(aux["probs"][0][..., 1:], expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.exp(aux["log_denom"][0]), 1 + e.sum(-1), rtol=1e-5, atol=1e-6)


def test_entropy_penalty_matches_hand_computation():
    cfg = DecoderConfig(**TINY, attention="softmax", entropy_theta_init=0.5)
    attn = Decoder(cfg).blocks[0].attn
    T = 4
    # Head 0: one-hot rows (entropy 0). Head 1: uniform over the causal prefix.
    probs = torch.zeros(1, 2, T, T)
    probs[0, 0] = torch.eye(T)
    for i in range(T):
        probs[0, 1, i, : i + 1] = 1.0 / (i + 1)
    e_max = math.log(T)
    ent1 = sum(math.log(i + 1) for i in range(T)) / T
    deltas = [0.0 - 0.5 * e_max, ent1 - 0.5 * e_max]
    expected = sum(d * d for d in deltas if abs(d) > 0.2 * e_max) / 2
    got = attn.entropy_penalty(probs, T).item()
    assert got == pytest.approx(expected, rel=1e-4)
    assert abs(deltas[0]) > 0.2 * e_max  # head 0 is outside the margin: the test exercises the penalty


def test_entropy_penalty_zero_inside_margin():
    attn = Decoder(DecoderConfig(**TINY, attention="softmax")).blocks[0].attn
    T = 8
    probs = torch.zeros(1, 2, T, T)
    probs[..., 0] = 1.0
    ent = float(attn.head_entropy(probs)[0])
    with torch.no_grad():  # put theta * log T exactly at each head's entropy, then just inside the margin
        frac = (ent + 0.1 * math.log(T)) / math.log(T)
        attn.theta_raw.fill_(math.log(frac / (1 - frac)))
    assert attn.entropy_penalty(probs, T).item() == 0.0


def test_fixed_entropy_threshold_is_not_trained_and_still_penalises(tmp_path):
    """entropy_theta_learned=False: theta is a saved buffer the optimiser never sees, so it cannot follow
    the entropy; the penalty then pushes the heads' entropy itself."""
    from models.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    cfg = DecoderConfig(**TINY, entropy_theta_learned=False, entropy_theta_init=0.1, entropy_lambda=1.0)
    model = Decoder(cfg)
    attn = model.blocks[0].attn
    assert "blocks.0.attn.theta_raw" not in dict(model.named_parameters())
    assert "blocks.0.attn.theta_raw" in model.state_dict()
    theta0 = attn.theta_raw.clone()
    idx = torch.randint(0, 256, (4, 12))
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=1e-2)
    first = None
    for _ in range(30):
        loss, parts = model.loss(idx, idx)
        first = parts["entropy_pen"] if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(attn.theta_raw, theta0)
    assert first > 0 and parts["entropy_pen"] < first  # the entropy moved toward the fixed threshold
    save_checkpoint(model, tmp_path)
    loaded, _ = load_checkpoint(tmp_path)
    assert torch.equal(loaded.blocks[0].attn.theta_raw, theta0)


def test_range_penalty_zero_inside_bounds_positive_outside():
    model = Decoder(DecoderConfig(**TINY))
    idx = torch.randint(0, 256, (2, 12))
    _, parts = model.loss(idx, idx)
    assert parts["range_pen"] == 0.0  # at init z ~ 0 and denominators <= 1 + T = 13 < 64
    with torch.no_grad():
        model.blocks[0].attn.sink.fill_(-10.0)  # z ~ +10 > z_max = 4
    _, parts = model.loss(idx, idx)
    assert parts["range_pen"] > 10.0


def test_temperature_is_bounded():
    attn = Decoder(DecoderConfig(**TINY, temperature_max=2.0)).blocks[0].attn
    with torch.no_grad():
        attn.temp_raw.copy_(torch.tensor([100.0, -100.0]))
    torch.testing.assert_close(attn.temperature(), torch.tensor([2.0, 0.5]))


@pytest.mark.parametrize(
    "bad, field",
    [
        (dict(variant="gelu"), "variant"),
        (dict(attention="linear"), "attention"),
        (dict(d_model=10, n_head=4), "d_model"),
        (dict(n_layer=0), "n_layer"),
        (dict(pruned_ffns=3, n_layer=2), "pruned_ffns"),
        (dict(variant="baseline", pruned_ffns=1), "pruned_ffns"),
        (dict(z_min=1.0, z_max=0.0), "z_min"),
        (dict(temperature_max=0.5), "temperature_max"),
        (dict(entropy_theta_init=1.5), "entropy_theta_init"),
    ],
)
def test_config_validation(bad, field):
    with pytest.raises(ModelError, match=field):
        DecoderConfig(**bad)


def test_config_from_dict_rejects_unknown_and_round_trips():
    cfg = DecoderConfig(**TINY)
    assert DecoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ModelError, match="unknown field"):
        DecoderConfig.from_dict({**cfg.to_dict(), "n_layers": 3})


def test_too_long_input_is_refused():
    model = Decoder(DecoderConfig(**TINY))
    with pytest.raises(ModelError, match="context length"):
        model.logits(torch.zeros(1, 13, dtype=torch.long))


def test_no_weight_decay_on_thresholds_temperatures_sinks():
    model = Decoder(DecoderConfig(**TINY))
    decayed = {id(p) for p in model.param_groups(0.1)[0]["params"]}
    for name, p in model.named_parameters():
        if any(s in name for s in ("theta_raw", "temp_raw", "sink", "alpha", "beta", "bias")):
            assert id(p) not in decayed, name
