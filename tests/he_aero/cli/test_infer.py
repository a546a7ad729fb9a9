"""`he-aero encrypt-infer` on the tiny model at the insecure test ring: JSON to a file and to stdout, the
prompt from stdin, bad input refused before any key is made (exit 2 naming the option), a flagged token, and
progress bars that count a stage when it finishes."""

import json
import sys

import pytest
from click.testing import CliRunner

from he_aero.cli import cli
from he_aero.cli.infer import _Bars
from tests.he_aero.conftest import LOGIT_TOL


@pytest.fixture(scope="module")
def cli_files(tiny, tiny_plan, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    tiny_plan.save(d / "plan.json")
    (d / "prompt.txt").write_bytes(b"for i in range(3):")
    (d / "latin1.txt").write_bytes(b"caf\xe9 = ")
    (d / "empty.txt").write_bytes(b"")
    return str(tiny[0]), str(d / "plan.json"), d


def _infer(ckpt, plan, prompt, *extra, input=None):
    args = ["encrypt-infer", str(prompt), "--checkpoint", ckpt, "--plan", plan, "--allow-insecure-for-tests"]
    return CliRunner().invoke(cli, [*args, "--no-progress", *extra], input=input)


def test_cli_encrypt_infer_json(cli_files):
    ckpt, plan, d = cli_files
    res = _infer(ckpt, plan, d / "prompt.txt", "--max-new-tokens", "3", "--verify", "--explain", "--json",
                 str(d / "out.json"))  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads((d / "out.json").read_text())
    required = "continuation tokens top1_agreement max_abs_logit_error seconds rounds bytes_client_to_server"
    for key in (*required.split(), "bytes_server_to_client", "ring_degree", "client_decryptions"):
        assert key in out
    assert out["top1_agreement"] == 1.0 and out["ring_degree"] == 2048 and len(out["tokens"]) == 3
    assert out["max_abs_logit_error"] < LOGIT_TOL  # top-1 alone passed a broken causal mask
    assert out["dropped_prompt_bytes"] == 12 and out["prompt_bytes"] == 6  # 6 + 3 - 1 = 8 positions
    assert (
        set(out["client_decryptions"]) == {"logits", "refresh"} and out["client_decryptions"]["refresh"] > 0
    )
    assert {"prefill", "decode", "keygen"} <= set(out["seconds"])
    assert "top-1 agreement 100%" in res.output and "rotations" in res.output and "dropped" in res.output
    assert f"wrote {d / 'out.json'}" in res.stdout
    assert "WARNING: insecure test ring N=2048" in res.output  # the documented warning


def test_cli_prompt_from_stdin_and_json_to_stdout(cli_files):
    """`-` reads the prompt from stdin; `--json -` makes stdout the JSON alone (the report goes to stderr)."""
    ckpt, plan, _ = cli_files
    res = _infer(ckpt, plan, "-", "--max-new-tokens", "2", "--json", "-", input=b"x = 1")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["prompt_bytes"] == 5 and len(out["tokens"]) == 2
    assert "continuation:" in res.stderr and "ring N=2048" in res.stderr


def test_cli_non_utf8_prompt_runs(cli_files):
    ckpt, plan, d = cli_files
    res = _infer(ckpt, plan, d / "latin1.txt", "--max-new-tokens", "1")
    assert res.exit_code == 0, res.output
    assert "not valid UTF-8" in res.output and "caf\ufffd = " in res.output


@pytest.mark.parametrize(
    "extra, option",
    [
        (["--json", "missing/dir/out.json"], "'--json'"),
        (["--temperature", "nan"], "'--temperature'"),
        (["--temperature", "1e-320"], "'--temperature'"),
        (["--temperature", "inf"], "'--temperature'"),
        (["--temperature", "-1"], "'--temperature'"),
        (["--max-new-tokens", "100000"], "'--max-new-tokens'"),
        (["--max-new-tokens", "9"], "'--max-new-tokens'"),  # 8 positions: one token past the context
        (["--max-new-tokens", "0"], "'--max-new-tokens'"),
        (["--top-k", "-2"], "'--top-k'"),
        (["--frobnicate"], "--frobnicate"),
    ],
)
def test_cli_refuses_bad_values_before_any_work(cli_files, extra, option):
    ckpt, plan, d = cli_files
    res = _infer(ckpt, plan, d / "prompt.txt", *extra)
    assert res.exit_code == 2, res.output
    assert option in res.output and "setting up" not in res.output and "Traceback" not in res.output


def test_cli_bad_input(cli_files, tmp_path, monkeypatch, capsys):
    ckpt, plan, d = cli_files
    for prompt, message in ((d / "empty.txt", "empty"), (tmp_path / "missing.txt", "no such file")):
        res = _infer(ckpt, plan, prompt)
        assert res.exit_code == 2 and "PROMPT" in res.output and message in res.output
    assert _infer(ckpt, plan, "-", input=b"").exit_code == 2
    from he_aero.cli import main
    from tests.he_aero.conftest import make_tiny_checkpoint

    other = tmp_path / "other"
    make_tiny_checkpoint(other, seed=1)
    for argv, code, message in (
        (
            ["--checkpoint", str(other), "--plan", plan, "--allow-insecure-for-tests"],
            2,
            "compiled for checkpoint",
        ),
        (["--checkpoint", ckpt, "--plan", str(d / "prompt.txt")], 2, "'--plan'"),
        # found by review: without --plan the shipped one stands in, and the message must say so
        (["--checkpoint", ckpt], 2, "'--plan': not given, so the shipped model's file was used"),
        (["--checkpoint", str(tmp_path / "none"), "--plan", plan], 2, "'--checkpoint'"),
        (["--checkpoint", ckpt, "--plan", plan], 2, "below 128-bit security"),
    ):
        monkeypatch.setattr(sys, "argv", ["he-aero", "encrypt-infer", str(d / "prompt.txt"), *argv])
        with pytest.raises(SystemExit) as exc:
            main()
        err = capsys.readouterr().err
        assert exc.value.code == code and message in err and "Traceback" not in err
        assert "setting up" not in err and "WARNING" not in err  # refused before any key or warning


def test_cli_flagged_first_token_with_verify_and_a_failed_write(cli_files, tmp_path, monkeypatch):
    """The client flags the first token: the report says so (no formatting crash on the missing figures), the
    JSON still records it, and the command exits 1 with one line. The --json folder vanishes during the run:
    the JSON lands in a temporary file named on that line."""
    from he_aero.generation import TokenRecord
    from he_aero.session import Session

    real = Session.generate
    gone = tmp_path / "gone"
    gone.mkdir()

    def flag_first(self, prompt, config, progress=None):
        res = real(self, prompt, config, progress)
        flag = "logits outside the range the client accepts"
        res.tokens, res.decode_stages, res.flag = [], [], flag
        res.records = [TokenRecord(-1, res.records[0].position, res.records[0].seconds, flag=flag)]
        gone.rmdir()
        return res

    monkeypatch.setattr(Session, "generate", flag_first)
    res = _infer(ckpt := cli_files[0], cli_files[1], cli_files[2] / "prompt.txt", "--max-new-tokens", "1",
                 "--verify", "--json", str(gone / "out.json"))  # fmt: skip
    assert ckpt and res.exit_code == 1, res.output
    assert "TypeError" not in res.output and "Traceback" not in res.output
    assert "no generated token to compare" in res.stdout and "token 1: flagged by the client" in res.stdout
    (line,) = res.stderr.strip().splitlines()[-1:]
    assert "token 1 flagged by the client, generation stopped: logits outside" in line and "--json" in line
    rescued = line.split("the result is in ")[1].split(" instead")[0]
    assert json.loads(open(rescued).read())["flag"].startswith("logits outside")


def test_progress_counts_a_stage_when_it_finishes(monkeypatch):
    """The pipeline calls progress(name) after stage `name`: the bar counts it then and names the next."""
    stages = ["embed", "layer 0", "lm_head"]
    with _Bars(stages, new_tokens=3, enabled=True) as bars:
        assert bars.bar.n == 0 and bars.bar.postfix == "running embed"
        bars("embed")
        assert bars.bar.n == 1 and bars.bar.postfix == "embed done, running layer 0"
        bars("layer 0")
        bars("lm_head")  # the prefill is done: the decode bar starts on token 2
        assert bars.phase == "decode" and bars.bar.n == 0 and bars.bar.total == 6
        assert bars.bar.postfix == "token 2: running embed"
        bars("embed")
        assert bars.bar.postfix == "token 2: embed done, running layer 0"
        bars("layer 0")
        bars("lm_head")
        assert bars.bar.n == 3 and bars.bar.postfix == "token 2 done; token 3: running embed"
        for name in stages:
            bars(name)
        assert bars.bar.n == 6 and bars.bar.postfix == "token 3 done"
    with _Bars(stages, new_tokens=3, enabled=False) as quiet:
        quiet("embed")
        assert quiet.bar is None
