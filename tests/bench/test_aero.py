"""The encrypted cost table's bookkeeping: rows, checkpoints, WAN time, savings ratios, the markdown, usage
errors. (The encrypted runs themselves are `make bench-aero`; the session tests cover each variant.)"""

import json

import pytest

from bench import aero
from bench.ablation import ROWS as ABLATION_ROWS


def _row(name, variant, n_bytes, seconds, rounds, **extra):
    wan = aero.wan_seconds(seconds, n_bytes, rounds)
    return dict(
        variant=name,
        model_variant=variant,
        bytes_per_token=n_bytes,
        decode_seconds_per_token=seconds,
        wan_seconds_per_token=wan,
        bytes_prefill=10 * n_bytes,
        prefill_seconds=10 * seconds,
        refresh_rounds_per_token=rounds,
        **extra,
    )


def test_every_row_runs_an_ablation_checkpoint_with_sink_attention():
    sink_rows = {r.name: r for r in ABLATION_ROWS if r.attention == "sink"}
    for row in aero.ROWS:
        assert row.ablation_row in sink_rows, row.name
        trained = sink_rows[row.ablation_row]
        assert (trained.variant, trained.entropy_reg, trained.pruned) == (
            row.variant, row.entropy_reg, row.pruned_ffns
        )  # fmt: skip
    assert [r.variant for r in aero.ROWS].count("baseline") == 1


def test_wan_time_is_compute_plus_transfer_plus_round_trips():
    # 12.5 MB at 100 Mbit/s is 1 s; 4 refresh rounds + the exchange are 5 round trips of 80 ms
    assert aero.wan_seconds(2.0, 12_500_000, 4) == pytest.approx(2.0 + 1.0 + 0.4)


def test_savings_are_baseline_over_row_and_carry_aeros_figures():
    rows = [
        _row("baseline (SM+LN+G)", "baseline", 40e6, 8.0, 40),
        _row("softmax-only+ER", "softmax-only", 10e6, 2.0, 10),
    ]
    sav = aero.savings(rows)
    assert sav["baseline (SM+LN+G)"]["comm"] == 1.0
    s = sav["softmax-only+ER"]
    assert s["comm"] == 4.0 and s["latency"] == 4.0 and s["refresh_rounds"] == 4.0
    assert s["aero_2pc"]["comm"] == 3.94
    assert aero.savings(rows[1:]) == {}  # no baseline measured: no ratios


def test_checkpoint_lookup_and_usage_errors(tmp_path, capsys):
    ckpt = tmp_path / "a" / "sink_relu"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"")
    assert aero.checkpoint_dir([tmp_path / "b", tmp_path / "a"], "sink relu") == ckpt
    assert aero.checkpoint_dir([tmp_path / "a"], "sink baseline") is None
    (ckpt / "config.json").write_text(json.dumps({"config": {"block_size": 16}}))  # the checkpoint's layout
    short = ["--runs", str(tmp_path / "a"), "--only", "SM+LN+R", "--out", str(tmp_path), "--prefill", "32"]
    for argv, where in (
        (short, "must fit"),
        (["--prompts", "0"], "--prompts"),
        (["--session-hiding-bits", "0"], "--session-hiding-bits"),
        (["--out", str(tmp_path / "missing")], "--out"),
        (["--runs", str(tmp_path / "a"), "--out", str(tmp_path)], "--runs: no checkpoint"),
    ):
        with pytest.raises(SystemExit) as exc:
            aero.main(argv)
        assert exc.value.code == 2 and where in capsys.readouterr().err


def test_from_json_rewrites_the_table(tmp_path):
    nl = {
        "exp_per_token": 768,
        "reciprocals_per_token": 12,
        "gelu_or_relu_per_token": 0,
        "layernorms_per_token": 0,
    }
    common = dict(
        test_bits_per_byte=2.5, encrypted_bits_per_byte=2.5, plaintext_bits_per_byte_same_windows=2.5
    )
    common.update(encrypted_top1=1.0, top1_tokens=32, max_abs_logit_error=1e-2, ring_degree=8192)
    common.update(depth_per_layer=[30] * 3, refresh_rounds_prefill=52, layers=3, d_model=128, context=64)
    common.update(train_steps=6000, prefill_tokens=64, decode_steps=2, decode_after=16, nonlinearities=nl)
    rows = [_row("baseline (SM+LN+G)", "baseline", 4e7, 8.0, 40, **common)]
    rows.append(_row("softmax-only", "softmax-only", 1e7, 2.0, 10, session_hiding_bits=39, **common))
    saved = tmp_path / "rows.json"
    saved.write_text(json.dumps({"rows": rows}))
    aero.main(["--from-json", str(saved), "--out", str(tmp_path)])
    result = json.loads((tmp_path / "he-costs.json").read_text())
    assert [r["variant"] for r in result["rows"]] == ["baseline (SM+LN+G)", "softmax-only"]
    assert result["savings_vs_baseline"]["softmax-only"]["comm"] == 4.0
    text = (tmp_path / "he-costs.md").read_text()
    assert "| softmax-only | 2.500 |" in text and "| softmax-only | 4.0x | 4.0x |" in text
    # a row planned below the default session hiding says so (the baseline row has no field: the default)
    assert "softmax-only was planned (and its client configured) for 39 bits of session hiding" in text
    assert "baseline (SM+LN+G) was planned" not in text


def test_committed_checkpoints_are_the_rows_models():
    """models/checkpoints/ablation-sink holds the rows' models as `make ablation-sink` trains them: each
    present one has its row's variant, entropy regulariser, pruning and sink attention, at one shape."""
    present = [(r, aero.checkpoint_dir([aero.CHECKPOINTS], r.ablation_row)) for r in aero.ROWS]
    present = [(r, d) for r, d in present if d is not None]
    assert present, "no committed cost-table checkpoint"
    shapes = set()
    for row, ckpt in present:
        cfg = json.loads((ckpt / "config.json").read_text())["config"]
        assert (cfg["variant"], cfg["entropy_reg"], cfg["pruned_ffns"]) == (
            row.variant,
            row.entropy_reg,
            row.pruned_ffns,
        )
        assert cfg["attention"] == "sink" and cfg["range_weight"] > 0
        shapes.add((cfg["n_layer"], cfg["d_model"], cfg["n_head"], cfg["block_size"]))
    assert len(shapes) == 1
