"""`he-aero fit`: output, files, and exit code 2 with one clear line for bad input."""

import json

import pytest
from click.testing import CliRunner

from he_aero.cli import cli
from he_aero.cli.fit import FUNCTION_NAMES


def _run(*args):
    return CliRunner().invoke(cli, ["fit", *args])


def test_names_match_the_library():
    """The CLI spells the names out (no scipy for --help); they must be approx's."""
    from approx.functions import FUNCTIONS

    assert FUNCTION_NAMES == tuple(FUNCTIONS)


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
    "args, option, message",
    [
        (["exp", "--domain", "1", "0", "--degree", "3"], "'--domain'", "need a < b"),
        (["reciprocal", "--domain", "0", "4", "--degree", "3"], "'--domain'", "needs 0 < a"),
        (["inv_sqrt", "--domain", "-1", "4", "--degree", "3"], "'--domain'", "needs 0 < a"),
        (["exp", "--domain", "0", "nan", "--degree", "3"], "'--domain'", "must be finite"),
        (["exp", "--domain", "0", "1", "--max-error", "inf"], "'--max-error'", "must be finite"),
        (["exp", "--domain", "0", "1", "--degree", "-1"], "'--degree'", "degree"),
        (["exp", "--domain", "0", "1", "--degree", "100000"], "'--degree'", "degree"),
        (["sin", "--domain", "0", "1", "--degree", "3"], "FUNCTION", "unknown 'sin'"),
        (["exp", "--domain", "-30", "0", "--max-error", "1e-30"], "'--max-error'", "unreachable"),
        (["exp", "--domain", "0", "1"], "--degree", "exactly one of"),
        (
            ["exp", "--domain", "0", "1", "--degree", "3", "--max-error", "1e-3"],
            "--max-error",
            "exactly one of",
        ),
        (["exp", "--degree", "3"], "--domain", "--domain"),
        (["gelu", "--domain", "-1", "1", "--degree", "3", "--relative"], "'--relative'", "undefined"),
        (["exp", "--domain", "0", "1", "--degree", "3", "--plot", "x.jpg"], "'--plot'", ".png"),
        (
            ["exp", "--domain", "0", "1", "--degree", "3", "--out", "no/dir/e.json"],
            "'--out'",
            "does not exist",
        ),
        (
            ["exp", "--domain", "0", "1", "--degree", "3", "--plot", "no/dir/e.png"],
            "'--plot'",
            "does not exist",
        ),
        (["exp", "--domain", "0", "1", "--degree", "3", "--out", "."], "'--out'", "is a directory"),
        (["exp", "--domain", "0", "1", "--degree", "3", "--bogus"], "--bogus", "No such option"),
    ],
)
def test_bad_input_exits_2_naming_the_option(args, option, message):
    result = _run(*args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0] and option in errors[0]


def test_a_failed_write_keeps_the_results(tmp_path, monkeypatch):
    """The folder of --out vanishes during the fit: the file lands in a temporary file, the plot is still
    written, and the command exits 1 with one line naming --out and where the results are."""
    import approx.plans

    gone = tmp_path / "gone"
    gone.mkdir()
    real = approx.plans.plan_poly

    def vanish(*a, **kw):
        gone.rmdir()
        return real(*a, **kw)

    monkeypatch.setattr(approx.plans, "plan_poly", vanish)
    png = tmp_path / "exp.png"
    result = _run(
        "exp", "--domain", "-1", "0", "--degree", "3", "--out", str(gone / "e.json"), "--plot", str(png)
    )
    assert result.exit_code == 1, result.output
    assert "certified error" in result.stdout and png.is_file()
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: --out") and "Traceback" not in result.output
    rescued = line.split("the result is in ")[1].split(" instead")[0]
    assert json.loads(open(rescued).read())["degree"] == 3
