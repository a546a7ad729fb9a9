"""`he-aero train / eval / generate / info`: end to end on a tiny checkpoint, and usage errors exit 2."""

import json

import pytest
from click.testing import CliRunner

from he_aero.cli import cli
from models.checkpoint import save_checkpoint
from models.decoder import Decoder, DecoderConfig


@pytest.fixture
def tiny_ckpt(tmp_path):
    save_checkpoint(Decoder(DecoderConfig(n_layer=1, n_head=2, d_model=16, block_size=8)), tmp_path / "ck")
    (tmp_path / "prompt.py").write_bytes(b"def f(x):\n    return")
    return tmp_path


def test_eval_json_generate_info(tiny_ckpt):
    runner = CliRunner()
    ck = str(tiny_ckpt / "ck")
    res = runner.invoke(cli, ["eval", ck, "--text-file", str(tiny_ckpt / "prompt.py"), "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.output)
    assert row["bytes_evaluated"] == 19 and row["checkpoint"] == ck and 7 < row["bits_per_byte"] < 9
    res = runner.invoke(
        cli, ["generate", ck, "--prompt-file", str(tiny_ckpt / "prompt.py"), "--max-new-tokens", "5"]
    )
    assert res.exit_code == 0 and res.output.startswith("def f(x):")
    res = runner.invoke(cli, ["info", ck])
    assert res.exit_code == 0 and '"d_model": 16' in res.output


@pytest.mark.parametrize(
    "args",
    [
        ["train"],  # --out is required
        ["train", "--variant", "gelu", "--out", "x"],
        ["train", "--steps", "0", "--out", "x"],
        ["eval", "--max-bytes", "-3"],
        ["generate", "--prompt-file", "/no/such/file"],
        ["generate"],
    ],
)
def test_usage_errors_exit_2(args):
    assert CliRunner().invoke(cli, args).exit_code == 2


def test_bad_checkpoint_is_one_line_error(tmp_path, capsys, monkeypatch):
    import sys

    from he_aero.cli import main

    monkeypatch.setattr(sys, "argv", ["he-aero", "info", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    assert "no such directory" in capsys.readouterr().err
