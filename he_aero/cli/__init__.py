"""The `he-aero` command line: one click group, thin commands that parse, call one library function, report.

Each concern keeps its commands in its own module (`he_aero/cli/<concern>.py`); this file assembles them
and turns user-facing errors into one clear line and a non-zero exit code (1) instead of a traceback; usage
errors exit 2 and name the option. The conventions every command follows (PROMPT, --checkpoint, --json,
output paths checked before the work) live in `he_aero/cli/options.py`. Modules load torch, scipy and
tenseal inside the commands only, so `he-aero --help` answers at once.
"""

import sys

import click

from he_aero import __version__
from he_aero.cli.calibrate import calibrate
from he_aero.cli.fit import fit
from he_aero.cli.infer import encrypt_infer
from he_aero.cli.model import eval_, generate, info, train
from he_aero.cli.plan import plan
from he_aero.cli.serve import serve
from he_aero.errors import HeAeroError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="he-aero")
def cli() -> None:
    """he-aero: private inference of a Softmax-only decoder under CKKS encryption.

    Lifecycle: calibrate (ranges) -> plan (ring, approximations, keys list) -> encrypt-infer (keys,
    encryption, the encrypted run, decryption), in one process or against `he-aero serve`."""


for _command in (train, eval_, generate, info, fit, calibrate, plan, encrypt_infer, serve):
    cli.add_command(_command)


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
