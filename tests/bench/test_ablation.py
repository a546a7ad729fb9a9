"""Ablation bookkeeping: FLOPs and nonlinearity counts, entropy bands."""

from bench.ablation import ROWS, entropy_distribution, flops_and_nonlinearities
from models.decoder import DecoderConfig


def test_flops_and_counts_by_hand():
    d, T, H, V, L = 16, 8, 2, 256, 2
    base = flops_and_nonlinearities(
        DecoderConfig(variant="baseline", n_layer=L, n_head=H, d_model=d, block_size=T)
    )
    attn = 8 * d * d + 4 * T * d
    assert base["flops_per_token"] == L * (attn + 16 * d * d) + 2 * d * V
    assert base["layernorms_per_token"] == 2 * L + 1 and base["gelu_or_relu_per_token"] == L * 4 * d
    so = flops_and_nonlinearities(DecoderConfig(n_layer=L, n_head=H, d_model=d, block_size=T, pruned_ffns=1))
    assert so["flops_per_token"] == L * attn + 1 * 2 * d * d + 2 * d * V  # one fused FFN left
    assert (
        so["exp_per_token"] == L * H * T
        and so["layernorms_per_token"] == 0
        and so["gelu_or_relu_per_token"] == 0
    )


def test_entropy_bands():
    ranges = {"entropy_max": 4.0, "layers": [{"heads": [{"entropy": e} for e in (0.5, 2.0, 3.5, 3.9)]}]}
    dist = entropy_distribution(ranges)
    assert dist["collapsed_fraction"] == 0.25 and dist["overloaded_fraction"] == 0.5


def test_rows_are_the_issue_variants():
    names = [r.name for r in ROWS]
    assert names[:6] == [
        "baseline",
        "relu",
        "lnfree-relu",
        "softmax-only",
        "softmax-only+ER",
        "softmax-only+ER pruned",
    ]
    assert sum(r.pruned for r in ROWS) == 2  # one with plain softmax, one with sink attention
    # every variant also with the shipped model's attention: the encrypted cost table's models
    sink = {(r.variant, r.entropy_reg, r.pruned) for r in ROWS if r.attention == "sink"}
    assert {v for v, _, _ in sink} == {"baseline", "relu", "lnfree-relu", "softmax-only"}
    assert ("softmax-only", True, 1) in sink and ("softmax-only", True, 0) in sink
    assert all(r.range_penalty for r in ROWS if r.attention == "sink")
    fixed = [r for r in ROWS if r.theta_fixed]  # the regulariser with thresholds that cannot follow entropy
    assert fixed and all(r.entropy_reg and r.entropy_lambda > DecoderConfig.entropy_lambda for r in fixed)


def test_smoke_run_writes_json_and_markdown(tmp_path):
    """`make ablation` at the smallest size: one training step of the baseline row."""
    import json

    from bench.ablation import main

    main(["--steps", "1", "--layers", "1", "--d-model", "16", "--heads", "2", "--context", "8",
          "--test-bytes", "1024", "--only", "baseline", "--runs", str(tmp_path / "runs"),
          "--docs", str(tmp_path)])  # fmt: skip
    (row,) = json.loads((tmp_path / "ablation.json").read_text())
    assert row["row"] == "baseline" and row["steps"] == 1 and row["test_bits_per_byte"] > 0
    assert "python -m bench.ablation --steps 1" in (tmp_path / "ablation.md").read_text()


def _row(name: str, attention: str, bpb: float, **extra) -> dict:
    """A result row with just what `markdown` reads."""
    rng = {"min": -1.0, "max": 1.0}
    counts = dict.fromkeys(
        ("exp_per_token", "reciprocals_per_token", "gelu_or_relu_per_token", "layernorms_per_token"), 0
    )
    return {
        "row": name, "attention": attention, "test_bits_per_byte": bpb, "test_perplexity_per_byte": 2**bpb,
        "parameters": 1, "flops_per_token": 1, "collapsed_fraction": 0.5, "overloaded_fraction": 0.0,
        "ranges_summary": {"z": rng, "residual": rng}, "logits": rng, "paper_perplexity": None, "steps": 6000,
        "layers": 3, "d_model": 128, "n_head": 4, "context": 64, "tokens_seen": 1, "test_bytes_evaluated": 1,
        **counts, **extra,
    }  # fmt: skip


def test_markdown_compares_each_family_with_its_own_baseline():
    from bench.ablation import markdown

    fixed = dict(entropy_theta="fixed", entropy_lambda=1e-2)
    rows = [
        _row("baseline", "softmax", 2.0),
        _row("softmax-only", "softmax", 2.5),
        _row("softmax-only+ER", "softmax", 2.4),
        _row("default recipe", "sink", 2.2),
        _row("sink baseline", "sink", 2.0),
        _row("sink softmax-only", "sink", 2.3),
        _row("sink softmax-only+ER fixed-theta 1e-2", "sink", 2.1, **fixed),
    ]
    md = markdown(rows)
    assert "| default recipe | 2.200 | +10.0% |" in md  # against the sink baseline, not the plain one
    assert "| softmax-only+ER | 2.400 | +20.0% |" in md
    assert "changes Softmax-only test bits/byte by -4.0%" in md  # plain: 2.4 / 2.5
    assert "Softmax-only + ER against the GELU baseline: +10.0%" in md  # sink family
    assert "weight 0.01: 2.100 bits/byte, -4.5% against learned thresholds" in md
    assert "+5.0% against the sink baseline" in md
    assert "costs each variant: baseline 2.000 -> 2.000 (+0.0%), softmax-only 2.500 -> 2.300 (-8.0%)" in md
