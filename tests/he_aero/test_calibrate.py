"""Calibration: ranges from training text widened by the margin, a ranges-only file (format 3) bound to the
checkpoint's weights (mismatches and format-1 files refused, naming the fix), a content hash a plan file can
bind to, and the shipped file matching the shipped checkpoint."""

import copy
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from he_aero.calibrate import (
    DEFAULT_CALIBRATION,
    FORMAT_VERSION,
    Calibration,
    CalibrationConfig,
    LayerCalibration,
    ModelDims,
    calibrate,
    describe,
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
    heads = [h for lay in cal.ranges["layers"] for h in lay["heads"]]
    exp_max = np.exp(max(h["z"]["max"] for h in heads))
    den_max = max(h["denominator"]["max"] for h in heads)
    peak = max(
        max(max(a.values()) for a in cal.activations), exp_max, den_max, abs(cal.ranges["logits"]["min"])
    )
    assert cal.activation_bound == pytest.approx(max(peak, cal.ranges["logits"]["max"]) * (1 + m))
    lo, hi = cal.logit_domain
    assert lo < cal.ranges["logits"]["min"] and hi > cal.ranges["logits"]["max"]


def test_activation_maxima_are_those_of_the_reference_forward(tiny):
    """The measured maxima come from `models.linear_view.layer_forward` (no second forward in he_aero)."""
    from he_aero.calibrate import _activation_maxima
    from models.linear_view import embed, layer_forward

    _, _, _, view, _ = tiny
    windows = np.array([list(b"import o"), list(b"def f(x)")])
    want = [dict.fromkeys(("x_in", "q", "k", "v", "num", "heads", "x_sa", "x_out"), 0.0) for _ in view.layers]
    for row in windows:
        x = embed(view, row)
        for lay, maxima in zip(view.layers, want, strict=True):
            inter = {**layer_forward(lay, x), "x_in": x}
            for name in maxima:
                maxima[name] = max(maxima[name], float(np.abs(inter[name]).max()))
            x = inter["x_out"]
    assert _activation_maxima(view, windows) == (want, [{}, {}], None)  # softmax-only: no baseline ranges


def test_file_round_trip_and_checkpoint_binding(tiny, tmp_path):
    _, _, header, _, cal = tiny
    path = cal.save(tmp_path / "cal.json")
    back = load_calibration(path)
    assert back.to_dict() == json.loads(path.read_text()) == cal.to_dict()
    assert back.layers == cal.layers and back.sha256 == cal.sha256
    back.check_checkpoint(header)
    with pytest.raises(HeAeroError, match="he-aero calibrate --checkpoint CHECKPOINT"):
        back.check_checkpoint({**header, "weights_sha256": "0" * 64})


def test_file_holds_ranges_only(tiny):
    _, _, _, _, cal = tiny
    data = cal.to_dict()
    assert data["format_version"] == FORMAT_VERSION == 3
    assert set(data["settings"]) == {"samples", "margin", "margin_rule", "degenerate"}
    assert all(set(lay) == {"z_domain", "denominator_domain"} for lay in data["layers"])
    assert "plan" not in json.dumps(data)
    assert not hasattr(cal, "planner_ranges")


def test_model_shape_is_plain_dims(tiny):
    _, model, _, _, cal = tiny
    c = model.cfg
    assert cal.model_shape() == ModelDims(c.d_model, c.n_head, c.n_layer, c.block_size)
    with pytest.raises(HeAeroError, match="n_head"):
        ModelDims(16, 3, 2, 8)
    with pytest.raises(HeAeroError, match="block_size"):
        ModelDims(16, 2, 2, 0)


def _edit(d, path, value):
    *head, last = path
    for key in head:
        d = d[key]
    if value is KeyError:
        del d[last]
    else:
        d[last] = value


def test_format_1_files_are_refused_with_the_command(tiny, tmp_path):
    _, _, _, _, cal = tiny
    data = cal.to_dict()
    data["format_version"] = 1
    data["settings"]["exp_max_rel_error"] = 1e-4
    (tmp_path / "v1.json").write_text(json.dumps(data))
    with pytest.raises(
        HeAeroError, match=r"field 'format_version' is 1, this he-aero reads 3 .*re-run `he-aero calibrate"
    ):
        load_calibration(tmp_path / "v1.json")


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("kind",), "something else", "not a calibration file"),
        (("format_version",), 99, "field 'format_version' is 99"),
        (("checkpoint", "weights_sha256"), KeyError, "'weights_sha256'"),
        (("checkpoint", "weights_sha256"), "xyz", "'checkpoint.weights_sha256' is not a SHA-256"),
        (("settings", "margin"), -1, "margin"),
        (("settings", "exp_max_rel_error"), 1e-4, r"unknown field settings\.'exp_max_rel_error'"),
        (("layers", 0, "z_domain"), [3, 1], r"layers\[0\]: field 'z_domain' must be finite with lo < hi"),
        (("layers", 0, "denominator_domain"), [0.5, 9], "'denominator_domain' must start at >= 1"),
        (("layers", 1, "exp_plan"), {"steps": []}, r"unknown field layers\[1\]\.'exp_plan'"),
        (("logit_domain",), [1, "x"], "'logit_domain' must be"),
        (("activation_bound",), float("nan"), "activation_bound"),
        (("layers",), [], "must list 2 layers"),
    ],
)
def test_bad_files_name_the_field(tiny, tmp_path, path, value, message):
    _, _, _, _, cal = tiny
    data = cal.to_dict()
    _edit(data, path, value)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(data))
    with pytest.raises(HeAeroError, match=message):
        load_calibration(f)


@pytest.mark.parametrize(
    "path",
    [
        ("layers", 0, "z_domain", 0),
        ("layers", 1, "denominator_domain", 1),
        ("logit_domain", 1),
        ("activation_bound",),
        ("settings", "margin"),
        ("activations", 0, "num"),
        ("ranges", "layers", 0, "heads", 0, "z", "max"),
    ],
)
def test_sha256_changes_with_any_number(tiny, path):
    _, _, _, _, cal = tiny
    data = copy.deepcopy(cal.to_dict())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = float(np.nextafter(node[path[-1]], np.inf))  # the smallest possible change
    assert Calibration.from_dict(data).sha256 != cal.sha256


def test_sha256_ignores_serialisation(tiny):
    _, _, _, _, cal = tiny
    text = json.dumps(cal.to_dict(), indent=3)
    shuffled = json.loads(json.dumps(dict(reversed(json.loads(text).items()))))
    assert Calibration.from_dict(json.loads(text)).sha256 == cal.sha256
    assert Calibration.from_dict(shuffled).sha256 == cal.sha256
    assert len(cal.sha256) == 64 and cal.sha256 == cal.sha256


def test_unreadable_files(tmp_path):
    with pytest.raises(HeAeroError, match="no such file"):
        load_calibration(tmp_path / "missing.json")
    (tmp_path / "x.json").write_bytes(b"\xff{not json")
    with pytest.raises(HeAeroError, match="not valid JSON"):
        load_calibration(tmp_path / "x.json")
    with pytest.raises(HeAeroError, match="expected a JSON object"):
        Calibration.from_dict([1, 2])


def test_config_validation_and_variant_refusal(tmp_path):
    for bad in ({"samples": 0}, {"samples": True}, {"margin": -0.1}, {"margin": 3}):
        with pytest.raises(HeAeroError):
            CalibrationConfig(**bad)
    with pytest.raises(TypeError):  # error targets belong to the plan stage now
        CalibrationConfig(exp_max_rel_error=1e-4)
    with pytest.raises(HeAeroError, match="z_domain"):
        LayerCalibration((2.0, 2.0), (1.0, 5.0))
    from models.decoder import Decoder, DecoderConfig

    model = Decoder(DecoderConfig(attention="softmax", block_size=8, n_layer=1, n_head=2, d_model=16))
    with pytest.raises(HeAeroError, match="sink attention"):
        calibrate(model, {"weights_sha256": "0" * 64}, CalibrationConfig(samples=2), data=b"x" * 100)


def test_shipped_file_loads_and_matches_the_default_checkpoint():
    from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint

    cal = load_calibration()
    model, header = load_checkpoint(DEFAULT_CHECKPOINT)
    cal.check_checkpoint(header)
    assert cal.model_config == model.cfg.to_dict()
    c = model.cfg
    assert cal.model_shape() == ModelDims(c.d_model, c.n_head, c.n_layer, c.block_size)
    assert cal.config == CalibrationConfig(samples=2048, margin=0.1, degenerate=True)
    assert cal.source == {
        "split": "train",
        "windows": 2048,
        "bytes": 2048 * c.block_size,
        "degenerate_windows": 256,
    }
    # the file is exactly what `save` writes (no stray fields), so its hash is the object's
    assert DEFAULT_CALIBRATION.read_text() == json.dumps(cal.to_dict(), indent=1) + "\n"
    assert describe(cal).count("  layer ") == c.n_layer


def test_cli_calibrate(tiny, tmp_path):
    ckpt = tiny[0]
    out = tmp_path / "c.json"
    res = CliRunner().invoke(cli, ["calibrate", str(ckpt), "--samples", "16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    cal = load_calibration(out)
    assert cal.source == {"split": "train", "windows": 16, "bytes": 128, "degenerate_windows": 256}
    assert "layer 1: z in" in res.output and math.isfinite(cal.activation_bound)
    assert CliRunner().invoke(cli, ["calibrate", str(ckpt)]).exit_code == 2  # --out is required


def test_degenerate_windows_repeat_every_byte_and_are_measured(tiny):
    """Each byte value repeated over the context; calibrating on them puts every such run (and its prefixes:
    attention is causal) inside the domains, where natural text alone left 22 of 95 printable runs out."""
    from he_aero.calibrate import degenerate_windows

    w = degenerate_windows(8)
    assert w.shape == (256, 8) and (w == np.arange(256)[:, None]).all()
    _, model, header, _, cal = tiny
    assert cal.config.degenerate and cal.source["degenerate_windows"] == 256
    from models.data import load_split

    data = load_split("train")[:200_000]  # the fixture's text
    natural = calibrate(model, header, CalibrationConfig(samples=256, degenerate=False), data=data)
    assert natural.source["degenerate_windows"] == 0
    for with_runs, without in zip(cal.layers, natural.layers, strict=True):
        assert with_runs.z_domain[0] <= without.z_domain[0] and with_runs.z_domain[1] >= without.z_domain[1]
        assert with_runs.denominator_domain[1] >= without.denominator_domain[1]


def test_the_bound_covers_what_is_measured_outside_attention(tiny):
    """Attention's weights, numerators and denominators are left to the plan (it shifts exp to fit them)."""
    from he_aero.calibrate import OUTSIDE_ATTENTION

    cal = tiny[4]
    peak = max(
        max(a[name] for a in cal.activations for name in OUTSIDE_ATTENTION),
        max(abs(v) for v in (cal.ranges["logits"]["min"], cal.ranges["logits"]["max"])),
    )
    assert cal.activation_bound == pytest.approx(peak * (1 + cal.config.margin))


@pytest.mark.parametrize("value", [None, "1", -1.0, float("inf"), True])
def test_activation_fields_must_be_numbers(tiny, value):
    data = tiny[4].to_dict()
    data["activations"][0]["v"] = value
    with pytest.raises(HeAeroError, match=r"field 'activations\[0\]' must hold a number >= 0"):
        Calibration.from_dict(data)


@pytest.mark.parametrize("variant", ["baseline", "lnfree-relu"])
def test_baseline_variants_calibrate_their_layernorm_and_ffn_ranges(variant):
    """LayerNorm variants get var + eps domains (above 0) per LayerNorm and before the LM head, unfused FFNs
    their pre-activation domain; each holds what the reference forward measures, and the file round-trips."""
    import torch

    from he_aero.ckks.norm import refreshed_peak
    from models.decoder import Decoder, DecoderConfig
    from models.linear_view import LinearView, embed, layer_forward

    torch.manual_seed(0)
    cfg = DecoderConfig(variant=variant, block_size=8, n_layer=2, n_head=2, d_model=16)
    model = Decoder(cfg)
    data = bytes(range(32, 127)) * 4
    cal = calibrate(model, {"weights_sha256": "0" * 64}, CalibrationConfig(samples=8), data=data)
    norm = variant == "baseline"
    view = LinearView.from_model(model)
    x = embed(view, np.frombuffer(data[:8], dtype=np.uint8).astype(np.int64))
    for lay, lc in zip(view.layers, cal.layers, strict=True):
        inter = layer_forward(lay, x)
        assert lc.pre_domain[0] <= inter["pre"].min() and inter["pre"].max() <= lc.pre_domain[1]
        assert (lc.u_attn_domain is not None) == (lc.u_ffn_domain is not None) == norm
        if norm:
            assert (
                0
                < lc.u_attn_domain[0]
                <= inter["u_attn"].min()
                <= inter["u_attn"].max()
                <= lc.u_attn_domain[1]
            )
            assert refreshed_peak(lc.u_attn_domain) <= cal.activation_bound  # (var + eps) / g is refreshed
        x = inter["x_out"]
    assert (cal.u_final_domain is not None) == norm
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert (
        again.sha256 == cal.sha256
        and again.layers == cal.layers
        and again.u_final_domain == cal.u_final_domain
    )
    bad = cal.to_dict()
    bad["layers"][0]["pre_domain"] = [1.0, 1.0]
    with pytest.raises(HeAeroError, match="pre_domain"):
        Calibration.from_dict(bad)
    bad = cal.to_dict()
    del bad["layers"][1]["pre_domain"]  # the optional ranges are exactly the variant's, in every layer
    with pytest.raises(HeAeroError, match=r"layers\[1\].pre_domain': a .* model needs it"):
        Calibration.from_dict(bad)
    # GELU and ReLU models share their parameters (and may share weights): the variant must match too
    other = "relu" if norm else "baseline"
    with pytest.raises(HeAeroError, match=f"made for a {variant} model, the checkpoint is {other}"):
        cal.check_checkpoint({"weights_sha256": "0" * 64, "config": {**cal.model_config, "variant": other}})
    if norm:
        bad = cal.to_dict()
        bad["layers"][1]["u_ffn_domain"] = [-1.0, 2.0]
        with pytest.raises(HeAeroError, match="must lie above 0"):
            Calibration.from_dict(bad)
    else:
        bad = cal.to_dict()
        bad["u_final_domain"] = [0.5, 2.0]
        with pytest.raises(HeAeroError, match="u_final_domain': a lnfree-relu model has no"):
            Calibration.from_dict(bad)
