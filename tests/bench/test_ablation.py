"""Ablation bookkeeping: FLOPs and nonlinearity counts, entropy bands."""

from models.ablation import ROWS, entropy_distribution, flops_and_nonlinearities

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
    assert sum(r.pruned for r in ROWS) == 1
