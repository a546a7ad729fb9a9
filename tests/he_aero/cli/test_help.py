"""The command line's shape: `--help` loads no heavy library, and every option says its unit and default."""

import subprocess
import sys

import click
import pytest

from he_aero.cli import cli

HEAVY = ("torch", "tenseal", "scipy")


def test_help_loads_no_heavy_library():
    """`he-aero --help` (and each command's --help) in a fresh interpreter: torch, tenseal and scipy stay
    unloaded, so the answer is fast (measured by hand: docs/README, not timed here: machines are noisy)."""
    code = (
        "import sys\n"
        "import he_aero.cli\n"
        f"heavy = {HEAVY!r}\n"
        "print('import', [m for m in heavy if m in sys.modules])\n"
        "for args in [['--help'], *[[name, '--help'] for name in he_aero.cli.cli.commands]]:\n"
        "    try:\n"
        "        he_aero.cli.cli.main(args, prog_name='he-aero', standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('help', [m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "import []" in out and "help []" in out, out
    assert "encrypt-infer" in out and "--max-new-tokens" in out


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_option_has_help_and_shows_its_default(name):
    for param in cli.commands[name].params:
        if not isinstance(param, click.Option) or param.hidden or param.name == "help":
            continue
        assert param.help, f"{name} {param.opts[0]}: no help text"
        assert param.show_default or param.required, f"{name} {param.opts[0]}: show_default not set"


def test_the_checkpoint_and_the_prompt_have_one_shape():
    """--checkpoint everywhere a checkpoint is read; PROMPT (file or -) wherever a prompt is."""
    for name in ("eval", "generate", "info", "calibrate", "plan", "encrypt-infer"):
        assert "checkpoint" in {p.name for p in cli.commands[name].params if isinstance(p, click.Option)}
    for name in ("generate", "encrypt-infer"):
        assert "prompt" in {p.name for p in cli.commands[name].params if isinstance(p, click.Argument)}
    for name in ("eval", "encrypt-infer"):
        (json_opt,) = [p for p in cli.commands[name].params if p.name == "json_out"]
        assert json_opt.opts == ["--json"] and not json_opt.is_flag
