"""bench/gpt2.py: the measured GPT-2-size layer's figures, from a real `bench.infer speed` run on a one-layer
model (here the tiny one-layer model on the test ring; `make bench-gpt2` runs it at d=768)."""

import json

import pytest

from bench import gpt2, infer


@pytest.fixture(scope="module")
def one_layer_speed(tmp_path_factory):
    """`bench.infer speed` on a tiny one-layer model: a 4-token prefill, then two decode steps."""
    from he_aero.calibrate import CalibrationConfig, calibrate
    from he_aero.plan import compile_plan
    from models.data import load_split
    from models.linear_view import LinearView
    from tests.he_aero.conftest import insecure_session, make_tiny_checkpoint, small_ring_params

    model, header = make_tiny_checkpoint(tmp_path_factory.mktemp("one") / "ckpt", n_layer=1)
    cal = calibrate(model, header, CalibrationConfig(samples=64), data=load_split("train")[:50_000])
    plan = compile_plan(header, cal, params=small_ring_params())
    return infer.speed([4], 2, session=insecure_session(LinearView.from_model(model), header, plan))


def test_the_layer_figures_come_from_the_measured_passes(one_layer_speed, tmp_path):
    sp = one_layer_speed
    out = gpt2.summarise(sp)
    layer = [s for s in sp["prefill"][0]["stages"] if s["name"] == "layer 0"][0]
    assert out["simulated"] is False and out["prefill_seconds"] == {"1": layer["seconds"]}
    ends = sum(s["seconds"] for s in sp["prefill"][0]["stages"] if s["name"] != "layer 0")
    assert out["projection_12_layers_seconds"]["prefill"]["1"] == round(ends + 12 * layer["seconds"], 1)
    steady = sp["decode"][1]
    steady_layer = [s for s in steady["stages"] if s["name"] == "layer 0"][0]
    assert out["decode_seconds_per_token"] == round(steady_layer["seconds"], 2)  # the one steady step's
    assert out["bytes_per_token"] == steady["bytes_to_server"] + steady["bytes_to_client"] > 0
    assert out["check"]["top1_agreement"] == 1.0 and out["counts_equal_symbolic"]
    assert out["shape"]["n_layer"] == 1 and out["decode_cache_lengths"] == [5, 6]
    # the command: writes gpt2_layer into the bench JSON, refuses a multi-layer run with a usage error
    (tmp_path / "s.json").write_text(json.dumps(sp))
    (tmp_path / "b.json").write_text(json.dumps({"prefill_seconds": {}}))
    gpt2.main(["--speed", str(tmp_path / "s.json"), "--into", str(tmp_path / "b.json")])
    assert json.loads((tmp_path / "b.json").read_text())["gpt2_layer"]["simulated"] is False


def test_a_run_that_is_not_a_one_layer_model_is_a_usage_error(one_layer_speed, tmp_path, capsys):
    two = json.loads(json.dumps(one_layer_speed))
    for run in two["prefill"] + two["decode"]:
        run["stages"].insert(2, {**run["stages"][1], "name": "layer 1"})
    (tmp_path / "s.json").write_text(json.dumps(two))
    (tmp_path / "b.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        gpt2.main(["--speed", str(tmp_path / "s.json"), "--into", str(tmp_path / "b.json")])
    assert exc.value.code == 2 and "one-layer" in capsys.readouterr().err
    assert json.loads((tmp_path / "b.json").read_text()) == {}  # nothing written


@pytest.mark.parametrize(
    "files, option",
    [
        ({"into": "not json"}, "--into"),
        ({"into": "[1, 2]"}, "--into"),
        ({"speed": "[1, 2]"}, "--speed"),
        ({"simulated": "{}"}, "--simulated"),
        ({"simulated": "garbage"}, "--simulated"),
    ],
)
def test_bad_files_are_usage_errors_naming_their_option(one_layer_speed, tmp_path, capsys, files, option):
    paths = {}
    for name, default in (("speed", json.dumps(one_layer_speed)), ("into", "{}"), ("simulated", None)):
        text = files.get(name, default)
        if text is not None:
            paths[name] = tmp_path / f"{name}.json"
            paths[name].write_text(text)
    args = [arg for name, path in paths.items() for arg in (f"--{name}", str(path))]
    before = paths["into"].read_text()
    with pytest.raises(SystemExit) as exc:
        gpt2.main(args)
    assert exc.value.code == 2 and option in capsys.readouterr().err
    assert paths["into"].read_text() == before  # nothing written
