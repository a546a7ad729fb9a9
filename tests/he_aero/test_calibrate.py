"""Calibration: ranges from training text, widened by the margin, plans covering them, a file bound to the
checkpoint's weights (mismatches refused), and the instrumented layer matching the reference forward pass."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from he_aero.calibrate import (
    Calibration,
    CalibrationConfig,
    calibrate,
    embed,
    layer_forward,
    load_calibration,
    widen,
)
from he_aero.cli import cli
from he_aero.errors import HeAeroError


def test_widen_rule():
    assert widen(-10.0, 2.0, 0.1) == pytest.approx((-11.2, 3.2))
    assert widen(3.0, 3.0, 0.5) == pytest.approx((1.5, 4.5))  # a point interval widens by margin x |lo|
    assert widen(1.0, 5.0, 0.0) == (1.0, 5.0)


def test_domains_cover_the_measured_ranges_widened(tiny):
    _, _, header, _, cal = tiny
    m = cal.config.margin
    assert cal.source["split"] == "train" and cal.weights_sha256 == header["weights_sha256"]
    for lay, measured in zip(cal.layers, cal.ranges["layers"], strict=True):
        zmin = min(h["z"]["min"] for h in measured["heads"])
        zmax = max(h["z"]["max"] for h in measured["heads"])
        assert lay.z_domain == pytest.approx(widen(zmin, zmax, m))
        dmax = max(h["denominator"]["max"] for h in measured["heads"])
        assert lay.denominator_domain[0] == 1.0  # the sink's exact floor
        assert lay.denominator_domain[1] == pytest.approx(dmax + m * (dmax - 1.0))
        assert lay.exp_plan.domain == pytest.approx(lay.z_domain)
        assert lay.exp_plan.max_error <= cal.config.exp_max_rel_error
        assert lay.recip_plan.max_error <= cal.config.recip_max_rel_error
        # the plan really is within its bound on points of the domain (numpy evaluator)
        x = np.linspace(*lay.z_domain, 2001)
        assert np.max(np.abs(lay.exp_plan.evaluate(x) / np.exp(x) - 1)) <= lay.exp_plan.max_error * 1.01
    heads = [h for lay in cal.ranges["layers"] for h in lay["heads"]]
    exp_max = np.exp(max(h["z"]["max"] for h in heads))
    den_max = max(h["denominator"]["max"] for h in heads)
    peak = max(
        max(max(a.values()) for a in cal.activations), exp_max, den_max, abs(cal.ranges["logits"]["min"])
    )
    assert cal.activation_bound == pytest.approx(max(peak, cal.ranges["logits"]["max"]) * (1 + m))
    lo, hi = cal.logit_domain
    assert lo < cal.ranges["logits"]["min"] and hi > cal.ranges["logits"]["max"]


def test_layer_forward_composes_to_view_forward(tiny):
    from models.linear_view import view_forward

    _, _, _, view, _ = tiny
    tokens = list(b"import os")[:8]
    x = embed(view, tokens)
    for lay in view.layers:
        x = layer_forward(lay, x)["x_out"]
    np.testing.assert_allclose(x @ view.lm_head + view.lm_bias, view_forward(view, tokens), atol=1e-12)


def test_file_round_trip_and_checkpoint_binding(tiny, tmp_path):
    _, _, header, _, cal = tiny
    path = cal.save(tmp_path / "cal.json")
    back = load_calibration(path)
    assert back.to_dict() == json.loads(path.read_text())
    assert [lay.exp_plan.steps for lay in back.layers] == [lay.exp_plan.steps for lay in cal.layers]
    back.check_checkpoint(header)
    with pytest.raises(HeAeroError, match="he-aero calibrate CHECKPOINT"):
        back.check_checkpoint({**header, "weights_sha256": "0" * 64})


def _edit(d, path, value):
    *head, last = path
    for key in head:
        d = d[key]
    if value is KeyError:
        del d[last]
    else:
        d[last] = value


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("kind",), "something else", "not a calibration file"),
        (("format_version",), 99, "format_version 99"),
        (("checkpoint", "weights_sha256"), KeyError, "'weights_sha256'"),
        (("settings", "margin"), -1, "margin"),
        (("layers", 0, "z_domain"), [3, 1], "lo < hi"),
        (("layers", 0, "exp_plan", "steps", 0, "domain"), [-1.0, -0.5], "does not cover"),
        (("activation_bound",), float("nan"), "activation_bound"),
        (("layers",), [], "must list 2 layers"),
    ],
)
def test_bad_files_name_the_field(tiny, tmp_path, path, value, message):
    _, _, _, _, cal = tiny
    data = cal.to_dict()
    if path[:4] == ("layers", 0, "exp_plan", "steps"):
        data["layers"][0]["exp_plan"]["domain"] = value  # keep the file self-consistent except the domain
    _edit(data, path, value)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(data))
    with pytest.raises(HeAeroError, match=message):
        load_calibration(f)


def test_unreadable_files(tmp_path):
    with pytest.raises(HeAeroError, match="no such file"):
        load_calibration(tmp_path / "missing.json")
    (tmp_path / "x.json").write_bytes(b"\xff{not json")
    with pytest.raises(HeAeroError, match="not valid JSON"):
        load_calibration(tmp_path / "x.json")
    with pytest.raises(HeAeroError, match="expected a JSON object"):
        Calibration.from_dict([1, 2])


def test_config_validation_and_variant_refusal(tmp_path):
    for bad in ({"samples": 0}, {"margin": -0.1}, {"exp_max_rel_error": 0.0}, {"recip_max_rel_error": 2.0}):
        with pytest.raises(HeAeroError):
            CalibrationConfig(**bad)
    from models.decoder import Decoder, DecoderConfig

    model = Decoder(DecoderConfig(attention="softmax", block_size=8, n_layer=1, n_head=2, d_model=16))
    with pytest.raises(HeAeroError, match="sink attention"):
        calibrate(model, {"weights_sha256": "0" * 64}, CalibrationConfig(samples=2), data=b"x" * 100)


def test_cli_calibrate(tiny, tmp_path):
    ckpt = tiny[0]
    out = tmp_path / "c.json"
    res = CliRunner().invoke(cli, ["calibrate", str(ckpt), "--samples", "16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    cal = load_calibration(out)
    assert cal.source == {"split": "train", "windows": 16, "bytes": 128}
    assert "layer 1: z in" in res.output and math.isfinite(cal.activation_bound)
    assert CliRunner().invoke(cli, ["calibrate", str(ckpt)]).exit_code == 2  # --out is required
