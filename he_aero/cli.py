"""The `he-aero` command line: one click group, thin commands that parse, call one library function, report.

Each concern keeps its commands in its own module (`he_aero/commands_*.py`); this file only assembles them
and turns user-facing errors into one clear line and a non-zero exit code instead of a traceback.
"""

import sys

import click

from he_aero import __version__
from he_aero.errors import HeAeroError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="he-aero")
def cli() -> None:
    """he-aero: private inference of a Softmax-only decoder under CKKS encryption."""


def _user_errors() -> tuple[type[Exception], ...]:
    """The exception types that mean bad input (message shown, no traceback)."""
    from approx.errors import ApproxError
    from models.errors import ModelError

    return (HeAeroError, ModelError, ApproxError)


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors: exit code 2
        exc.show()
        sys.exit(exc.exit_code)
    except _user_errors() as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


# Command registration: one line per command module.
from he_aero.commands_model import eval_, generate, info, train  # noqa: E402

cli.add_command(train), cli.add_command(eval_), cli.add_command(generate), cli.add_command(info)
from he_aero.commands_fit import fit  # noqa: E402

cli.add_command(fit)
from he_aero.commands_infer import calibrate, encrypt_infer  # noqa: E402

cli.add_command(calibrate), cli.add_command(encrypt_infer)
from he_aero.commands_plan import plan  # noqa: E402

cli.add_command(plan)
