"""Outputs are never overwritten silently: an existing file or non-empty folder needs --force."""

from click.testing import CliRunner

from he_aero.cli import cli


def test_existing_output_file_is_refused_then_overwritten_with_force(tmp_path):
    out = tmp_path / "exp.json"
    out.write_text("keep me")
    args = ["fit", "exp", "--domain", "-1", "0", "--degree", "3", "--out", str(out)]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2
    assert "already exists; pass --force" in refused.output
    assert out.read_text() == "keep me"
    forced = CliRunner().invoke(cli, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert '"function": "exp"' in out.read_text()


def test_non_empty_output_folder_is_refused_and_an_empty_one_is_not(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    refused = CliRunner().invoke(cli, ["train", "--steps", "1", "--out", str(tmp_path)])
    assert refused.exit_code == 2
    assert "already exists" in refused.output
    assert (tmp_path / "config.json").read_text() == "{}"
    empty = tmp_path / "empty"
    empty.mkdir()
    out = empty / "exp.json"
    args = ["fit", "exp", "--domain", "-1", "0", "--degree", "3", "--out", str(out)]
    accepted = CliRunner().invoke(cli, args)
    assert accepted.exit_code == 0, accepted.output
    assert out.is_file()
