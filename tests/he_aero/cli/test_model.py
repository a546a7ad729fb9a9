"""`he-aero train / eval / generate / info`: end to end on a tiny checkpoint, and usage errors exit 2."""

import json
import sys

import pytest
from click.testing import CliRunner

from he_aero.cli import cli
from he_aero.cli.model import ATTENTIONS, VARIANTS
from models.checkpoint import save_checkpoint
from models.decoder import Decoder, DecoderConfig


@pytest.fixture
def tiny_ckpt(tmp_path):
    save_checkpoint(Decoder(DecoderConfig(n_layer=1, n_head=2, d_model=16, block_size=8)), tmp_path / "ck")
    (tmp_path / "prompt.py").write_bytes(b"def f(x):\n    return")
    return tmp_path


def test_choices_match_the_model():
    """The CLI spells the choices out (no torch for --help); they must be the model's."""
    import models.decoder

    assert VARIANTS == models.decoder.VARIANTS and ATTENTIONS == models.decoder.ATTENTIONS


def test_eval_json_generate_info(tiny_ckpt):
    runner = CliRunner()
    ck, text = str(tiny_ckpt / "ck"), str(tiny_ckpt / "prompt.py")
    res = runner.invoke(cli, ["eval", "--checkpoint", ck, "--text-file", text, "--json", "-"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)  # stdout is the JSON alone; the report and the progress go to stderr
    assert row["bytes_evaluated"] == 19 and row["checkpoint"] == ck and 7 < row["bits_per_byte"] < 9
    assert "bits/byte" in res.stderr and "window" in res.stderr
    res = runner.invoke(cli, ["generate", text, "--checkpoint", ck, "--max-new-tokens", "5"])
    assert res.exit_code == 0 and res.output.startswith("def f(x):")
    res = runner.invoke(cli, ["info", "--checkpoint", ck])
    assert res.exit_code == 0 and '"d_model": 16' in res.output


def test_eval_json_file(tiny_ckpt):
    """`--json FILE` writes the file (it used to be a flag, and FILE was taken for the checkpoint)."""
    out = tiny_ckpt / "out.json"
    args = ["eval", "--checkpoint", str(tiny_ckpt / "ck"), "--text-file", str(tiny_ckpt / "prompt.py")]
    res = CliRunner().invoke(cli, [*args, "--json", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["bytes_evaluated"] == 19
    assert "bits/byte" in res.stdout and f"wrote {out}" in res.stdout and "window" not in res.stderr
    again = CliRunner().invoke(cli, [*args, "--json", str(out)])
    assert again.exit_code == 2 and "'--json'" in again.output and "--force" in again.output


def test_older_spellings_still_work(tiny_ckpt):
    """`eval CHECKPOINT`, `info CHECKPOINT` and `generate --prompt-file FILE` keep working."""
    ck, text = str(tiny_ckpt / "ck"), str(tiny_ckpt / "prompt.py")
    assert CliRunner().invoke(cli, ["info", ck]).exit_code == 0
    res = CliRunner().invoke(
        cli, ["generate", "--checkpoint", ck, "--prompt-file", text, "--max-new-tokens", "1"]
    )
    assert res.exit_code == 0 and res.output.startswith("def f(x):")
    both = CliRunner().invoke(cli, ["info", ck, "--checkpoint", ck])
    assert both.exit_code == 2 and "'--checkpoint'" in both.output


def test_generate_prompt_from_stdin(tiny_ckpt):
    ck = str(tiny_ckpt / "ck")
    res = CliRunner().invoke(
        cli, ["generate", "-", "--checkpoint", ck, "--max-new-tokens", "3"], input=b"import os\n"
    )
    assert res.exit_code == 0, res.output
    assert res.output.startswith("import os\n") and len(res.output.encode()) >= len("import os\n") + 3


def test_eval_progress_callback(tiny_ckpt):
    """`bits_per_byte` reports windows done out of the total, from 0 to the end."""
    from models.checkpoint import load_checkpoint
    from models.evaluate import bits_per_byte

    model, _ = load_checkpoint(tiny_ckpt / "ck")
    calls = []
    bits_per_byte(model, bytes(range(200)), batch_size=10, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, 25) and calls[-1] == (25, 25) and len(calls) == 4


def test_eval_results_survive_a_failed_write(tiny_ckpt, monkeypatch):
    """The folder of --json vanishes during the run: the result lands in a temporary file, exit 1."""
    import shutil

    import models.evaluate

    gone = tiny_ckpt / "gone"
    gone.mkdir()
    real = models.evaluate.bits_per_byte

    def vanish(*a, **kw):
        shutil.rmtree(gone)
        return real(*a, **kw)

    monkeypatch.setattr(models.evaluate, "bits_per_byte", vanish)
    args = ["eval", "--checkpoint", str(tiny_ckpt / "ck"), "--text-file", str(tiny_ckpt / "prompt.py")]
    res = CliRunner().invoke(cli, [*args, "--json", str(gone / "out.json"), "--no-progress"])
    assert res.exit_code == 1, res.output
    line = res.stderr.strip()
    assert "\n" not in line and "--json" in line and "Traceback" not in res.output
    rescued = line.split("the result is in ")[1].split(" instead")[0]
    assert json.loads(open(rescued).read())["bytes_evaluated"] == 19


@pytest.mark.parametrize(
    "args, option",
    [
        (["train", "--variant", "gelu", "--out", "x"], "'--variant'"),
        (["train", "--steps", "0", "--out", "x"], "'--steps'"),
        (["train", "--out", "/dev/null/run"], "'--out'"),  # a file where a folder must go
        (["eval", "--max-bytes", "-3"], "'--max-bytes'"),
        (["eval", "--json"], "'--json'"),  # --json takes FILE (`-`: stdout)
        (["eval", "--json", "no/such/dir/out.json"], "'--json'"),
        (["eval", "--frobnicate"], "--frobnicate"),
        (["generate", "/no/such/file"], "PROMPT"),
        (["generate"], "PROMPT"),
        (["generate", "--prompt-file", "/no/such/file"], "'--prompt-file'"),
        (["generate", "-", "--temperature", "nan"], "'--temperature'"),
        (["generate", "-", "--temperature", "1e-320"], "'--temperature'"),
        (["generate", "-", "--temperature", "inf"], "'--temperature'"),
        (["generate", "-", "--top-k", "-1"], "'--top-k'"),
        (["calibrate", "--out", "no/such/dir/cal.json"], "'--out'"),
        (["plan", "--out", "no/such/dir/plan.json"], "'--out'"),
    ],
)
def test_usage_errors_exit_2_and_name_the_option(args, option):
    res = CliRunner().invoke(cli, args, input=b"x = 1\n")
    assert res.exit_code == 2, res.output
    assert option in res.output


def test_train_refuses_missing_out_before_training():
    res = CliRunner().invoke(cli, ["train"])
    assert res.exit_code == 2 and "'--out'" in res.output


def test_bad_checkpoint_is_a_usage_error_naming_the_option(tmp_path, capsys, monkeypatch):
    from he_aero.cli import main

    monkeypatch.setattr(sys, "argv", ["he-aero", "info", "--checkpoint", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "'--checkpoint'" in err and "no such directory" in err and "Traceback" not in err


def test_train_with_fixed_entropy_thresholds(tmp_path):
    """`--entropy-thresholds fixed` reaches the checkpoint's config (thresholds the optimiser cannot move)."""
    out = tmp_path / "run"
    args = ["train", "--steps", "1", "--layers", "1", "--d-model", "16", "--heads", "2", "--context", "8",
            "--test-bytes", "256", "--entropy-thresholds", "fixed", "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["entropy_theta_learned"] is False and config["entropy_reg"] is True
    bad = CliRunner().invoke(cli, [*args[:-3], "--entropy-thresholds", "frozen", "--out", str(out)])
    assert bad.exit_code == 2 and "'--entropy-thresholds'" in bad.output
