"""`make bench-he` (bench/infer.py) on the tiny model: every step runs and the report has every section."""

import json

import pytest

from bench import infer


def test_committed_prompts_load():
    prompts = infer.load_prompts()
    assert len(prompts) == 20 and all(len(p) == 24 and p.isascii() for p in prompts)


def test_bench_pipeline_runs_on_the_tiny_model(tiny_session, tmp_path):
    """`make bench-he`'s steps (speed, accept, report) on the tiny model: the report has every section, and
    every measured stage's operation counts equal the pipeline's symbolic count."""
    sp = infer.speed([4], 1, session=tiny_session)
    assert [r["tokens"] for r in sp["prefill"]] == [4] and 0 < sp["prefill"][0]["seal_share"] <= 1
    assert [r["cache_length"] for r in sp["decode"]] == [5]
    assert all(st["counted_match"] for r in sp["prefill"] + sp["decode"] for st in r["stages"])
    for r in sp["prefill"] + sp["decode"]:  # every timed pass is checked against the plaintext model
        assert r["top1_agreement"] == 1.0 and 0 < r["max_abs_dlogit"] < 0.1
    ac = infer.accept(1, 1, 1, new_tokens=2, start=3, session=tiny_session)
    assert ac["prompt_range"] == [3, 4] and ac["teacher_forced"]["top1_agreement"] == 1.0
    (tmp_path / "s.json").write_text(json.dumps(sp))
    (tmp_path / "a.json").write_text(json.dumps(ac))
    infer.main(["report", "--speed", str(tmp_path / "s.json"), "--accept", str(tmp_path / "a.json"),
                "--out", str(tmp_path / "he-bench.md")])  # fmt: skip
    md = (tmp_path / "he-bench.md").read_text()
    sections = ("| prefill | 4 |", "| decode | cache 5 |", "Operations per stage", "top-1 agreement 100.0%",
                "bits per byte on 1", "equal the pipeline's symbolic count", "The plan that ran")  # fmt: skip
    for part in sections:
        assert part in md


def test_a_failed_ray_run_keeps_the_single_process_figures(tiny_session, monkeypatch):
    """Ray's OOM killer ended a GPT-2-size run after 25 minutes of single-process measurements: the result
    now records the failure and keeps them."""

    def dies(*args):
        raise RuntimeError("1 worker(s) were killed due to the node running low on memory.\nmore text")

    monkeypatch.setattr(infer, "_ray_prefills", dies)
    sp = infer.speed([4], 0, session=tiny_session, ray_workers=2)
    assert sp["prefill"][0]["wall_seconds"] > 0 and sp["ray_speedup"] is None
    assert sp["ray"] == {
        "workers": 2,
        "error": "1 worker(s) were killed due to the node running low on memory.",
    }


@pytest.mark.parametrize(
    "args, option",
    [
        (["--lengths", "64", "--decode", "3"], "--decode"),
        (["--lengths", "0"], "--lengths"),
        (["--lengths", "65"], "--lengths"),
        (["--cache-mb", "-1"], "--cache-mb"),
        (["--ray-cache-mb", "-1"], "--ray-cache-mb"),
        (["--cache-mb", "inf"], "--cache-mb"),
        (["--cache-mb", "nan"], "--cache-mb"),
        (["--checkpoint", "no/such/folder"], "--checkpoint"),
    ],
)
def test_speed_past_the_context_is_a_usage_error_before_any_work(args, option, capsys, tmp_path):
    from bench import infer

    with pytest.raises(SystemExit) as exc:
        infer.main(["speed", *args, "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2 and option in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
