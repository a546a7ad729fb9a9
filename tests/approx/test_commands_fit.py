"""`he-aero fit`: output, files, and exit code 2 with one clear line for bad input."""

import json

import pytest
from click.testing import CliRunner

from he_aero.cli import cli


def _run(*args):
    return CliRunner().invoke(cli, ["fit", *args])


def test_list_names_every_function():
    result = _run("--list")
    assert result.exit_code == 0
    for name in ("exp", "reciprocal", "inv_sqrt", "gelu", "relu"):
        assert name in result.output


def test_fit_degree_writes_file_and_plot(tmp_path):
    out, png = tmp_path / "exp.json", tmp_path / "exp.png"
    result = _run("exp", "--domain", "-16", "0", "--degree", "15", "--out", str(out), "--plot", str(png))
    assert result.exit_code == 0, result.output
    assert "depth           5" in result.output and "certified error 3.6" in result.output
    data = json.loads(out.read_text())
    assert data["degree"] == 15 and data["max_error"] <= 4e-7
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_max_error_relative_plan():
    result = _run("reciprocal", "--domain", "1", "130", "--max-error", "1e-3", "--relative")
    assert result.exit_code == 0, result.output
    assert "rel" in result.output and "mults" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["exp", "--domain", "1", "0", "--degree", "3"], "need a < b"),
        (["reciprocal", "--domain", "0", "4", "--degree", "3"], "needs 0 < a"),
        (["inv_sqrt", "--domain", "-1", "4", "--degree", "3"], "needs 0 < a"),
        (["exp", "--domain", "0", "nan", "--degree", "3"], "must be finite"),
        (["exp", "--domain", "0", "1", "--max-error", "inf"], "must be finite"),
        (["exp", "--domain", "0", "1", "--degree", "-1"], "degree"),
        (["exp", "--domain", "0", "1", "--degree", "100000"], "degree"),
        (["sin", "--domain", "0", "1", "--degree", "3"], "unknown 'sin'"),
        (["exp", "--domain", "-30", "0", "--max-error", "1e-30"], "unreachable"),
        (["exp", "--domain", "0", "1"], "exactly one of"),
        (["exp", "--domain", "0", "1", "--degree", "3", "--max-error", "1e-3"], "exactly one of"),
        (["exp", "--degree", "3"], "--domain"),
        (["gelu", "--domain", "-1", "1", "--degree", "3", "--relative"], "undefined"),
        (["exp", "--domain", "0", "1", "--degree", "3", "--plot", "x.jpg"], ".png"),
    ],
)
def test_bad_input_exits_2(args, message):
    result = _run(*args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0]
