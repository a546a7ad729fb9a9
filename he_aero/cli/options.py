"""What every command shares: the prompt, the checkpoint, --json, checked output paths, safe writes.

The convention (one shape for every command):
- the prompt is the argument PROMPT: a file path, or `-` for standard input (bytes, any encoding);
- the checkpoint is `--checkpoint DIR` (default: the shipped model);
- `--json FILE` writes the result as JSON to FILE, `-` for standard output (the human report then goes to
  standard error, so standard output is the JSON alone);
- output paths (`--out`, `--json`, `--plot`) are checked while parsing, before any work: a missing parent
  folder, an unwritable path or an existing output without `--force` is a usage error (exit 2) naming the
  option; a write that still fails at the end keeps the results in a temporary file and exits 1 saying where;
- values that pass click's type but cannot work (a nan temperature, more tokens than the context) are usage
  errors naming the option, found before any work.

Nothing here imports torch, scipy or tenseal: `he-aero --help` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import click

SHIPPED_MODEL = "the shipped model"


# --- output paths ------------------------------------------------------------------------------------------
def _check_output(ctx: click.Context, param: click.Parameter, value, directory: bool = False):
    """Refuse an output that cannot be written, before the work: exit 2 naming the option.

    A file needs an existing, writable parent folder; a folder output (`train --out`) is created with its
    parents, so its nearest existing ancestor must be a writable folder. An existing output (a file, or a
    non-empty folder) needs --force: nothing is overwritten silently."""
    if value is None or value == "-":
        return value
    path = Path(value)

    def refuse(message: str):
        raise click.BadParameter(message, ctx=ctx, param=param)

    if directory:
        if path.exists() and not path.is_dir():
            refuse(f"{value} is a file; expected a folder")
        ancestor = next((p for p in (path, *path.parents) if p.exists()), Path("."))
        if not ancestor.is_dir():
            refuse(f"{ancestor} is not a folder, so {value} cannot be created")
        folder = ancestor
    else:
        if path.is_dir():
            refuse(f"{value} is a folder; expected a file path")
        folder = path.parent
        if folder.exists() and not folder.is_dir():
            refuse(f"{folder} is not a folder")
        if not folder.is_dir():
            refuse(f"folder {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        refuse(f"{value} is not writable")
    taken = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if taken and not ctx.params.get("force"):
        refuse(f"{value} already exists; pass --force to overwrite it")
    return value


force_option = click.option(
    "--force",
    is_flag=True,
    is_eager=True,
    show_default=True,
    help="overwrite output files that already exist",
)


def output_option(*decls: str, directory: bool = False, dash: bool = False, **kwargs):
    """An output path option (`--out`, `--plot`), checked while parsing (add `force_option`).

    `dash`: `-` means standard output."""
    kind = click.Path(file_okay=not directory, dir_okay=directory, allow_dash=dash)
    callback = functools.partial(_check_output, directory=directory)
    if not kwargs.get("required"):
        kwargs.setdefault("show_default", "not written")
    return click.option(*decls, type=kind, callback=callback, **kwargs)


json_option = output_option(
    "--json",
    "json_out",
    dash=True,
    default=None,
    metavar="FILE",
    help="write the result as JSON to FILE (`-`: standard output, the report then goes to standard error)",
)


def report(json_out: str | None) -> Callable[[str], None]:
    """Where the human-readable lines go: standard error when the JSON goes to standard output."""
    return functools.partial(click.echo, err=json_out == "-")


class Outputs:
    """Write a command's outputs at the end; a write that fails does not lose the results.

    Paths were checked while parsing, but a folder can vanish or a disk fill during a long run: then the
    result is written to a temporary file instead, the other outputs are still written, and the command exits
    1 with one line naming the option, the reason and where the results are."""

    def __init__(self):
        self.failures: list[str] = []

    def write(self, option: str, path: str | None, save: Callable[[Path], object], suffix: str) -> bool:
        """`save(path)`; on failure save to a temporary file and remember the failure. True if written."""
        if path is None:
            return False
        from he_aero.errors import HeAeroError

        try:
            save(Path(path))
            return True
        except (OSError, HeAeroError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            fd, rescue = tempfile.mkstemp(prefix="he-aero-", suffix=suffix)
            os.close(fd)
            try:
                save(Path(rescue))
                where = f"the result is in {rescue} instead"
            except (OSError, HeAeroError):
                where = "the result could not be saved anywhere (see the report above)"
            self.failures.append(f"{option} {path}: cannot write ({reason}); {where}")
            return False

    def write_json(self, option: str, path: str | None, data: dict) -> bool:
        """JSON to `path`, or to standard output for `-`."""
        text = json.dumps(data, indent=2) + "\n"
        if path == "-":
            click.echo(text, nl=False)
            return True
        return self.write(option, path, lambda p: p.write_text(text), ".json")

    def finish(self) -> None:
        """Exit 1 with one line if a write failed."""
        if self.failures:
            raise click.ClickException("; ".join(self.failures))


# --- library errors that concern one option ----------------------------------------------------------------
@contextlib.contextmanager
def blame(option: str, shipped_default: bool = False):
    """Library errors raised inside this block concern `option`: a usage error (exit 2) naming it.

    shipped_default : the option was not given and the shipped model's file stood in for it; the message
        says so (otherwise it blames a file the user never named)."""
    from approx.errors import ApproxError
    from he_aero.errors import HeAeroError
    from models.errors import ModelError

    try:
        yield
    except (HeAeroError, ModelError, ApproxError) as exc:
        why = f"not given, so the shipped model's file was used: {exc}" if shipped_default else str(exc)
        raise click.BadParameter(why, param_hint=f"'{option}'") from exc


# --- the prompt --------------------------------------------------------------------------------------------
def read_prompt(ctx: click.Context, param: click.Parameter, value):
    """The prompt's bytes (a file, or standard input for `-`); empty is a usage error."""
    if value is None:
        return None
    if value == "-":
        data = sys.stdin.buffer.read()
    else:
        path = Path(value)
        if not path.is_file():
            raise click.BadParameter(f"{value}: no such file", ctx=ctx, param=param)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise click.BadParameter(f"{value}: {exc.strerror or exc}", ctx=ctx, param=param) from exc
    if not data:
        raise click.BadParameter("the prompt is empty: there is nothing to continue", ctx=ctx, param=param)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        click.echo(
            "note: the prompt is not valid UTF-8; its raw bytes are used as they are (the model is "
            "byte-level) and shown with U+FFFD",
            err=True,
        )
    return data


def prompt_argument(required: bool = True):
    """PROMPT: a file path, or `-` for standard input; the command receives its bytes."""
    return click.argument(
        "prompt",
        required=required,
        type=click.Path(dir_okay=False, allow_dash=True),
        callback=read_prompt,
    )


# --- the checkpoint ----------------------------------------------------------------------------------------
plan_option = click.option(
    "--plan",
    "plan_file",
    type=click.Path(dir_okay=False),
    default=None,
    show_default="the shipped model's",
    help="plan file for the checkpoint (`he-aero plan --out`)",
)


def checkpoint_option(positional_alias: bool = False):
    """`--checkpoint DIR`; with `positional_alias`, the older `[CHECKPOINT]` argument is still accepted."""

    def decorate(f):
        if positional_alias:
            inner = f

            @functools.wraps(inner)
            def f(*args, checkpoint_arg=None, **kwargs):
                if checkpoint_arg is not None:
                    if kwargs.get("checkpoint") is not None:
                        raise click.BadParameter(
                            "give the checkpoint once (CHECKPOINT is the older spelling of --checkpoint)",
                            param_hint="'--checkpoint'",
                        )
                    kwargs["checkpoint"] = checkpoint_arg
                return inner(*args, **kwargs)

            f = click.argument(
                "checkpoint_arg", metavar="[CHECKPOINT]", required=False, type=click.Path(file_okay=False)
            )(f)
        return click.option(
            "--checkpoint",
            type=click.Path(file_okay=False),
            default=None,
            show_default=SHIPPED_MODEL,
            help="checkpoint folder (config.json + safetensors)",
        )(f)

    return decorate


def load_model(checkpoint: str | None):
    """(path, model, header) of --checkpoint (default: the shipped model); errors name --checkpoint."""
    from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint

    path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    with blame("--checkpoint"):
        model, header = load_checkpoint(path)
    return path, model, header


# --- sampling ----------------------------------------------------------------------------------------------
TEMPERATURE_MIN, TEMPERATURE_MAX = 1e-6, 100.0


class Temperature(click.ParamType):
    """0 (greedy) or a finite float in [1e-6, 100]: a tiny or non-finite temperature overflows the softmax."""

    name = "float"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            t = value
        else:
            try:
                t = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if t == 0:
            return 0.0
        if not math.isfinite(t) or not TEMPERATURE_MIN <= t <= TEMPERATURE_MAX:
            self.fail(
                f"{value!r}: expected 0 (greedy) or a finite number in [{TEMPERATURE_MIN:g}, "
                f"{TEMPERATURE_MAX:g}] (a smaller one overflows the softmax)",
                param,
                ctx,
            )
        return t


def finite(ctx, param, value):
    """click callback: a usage error naming the option when a float (or each of a tuple's) is NaN or
    infinite, which click's FLOAT and FloatRange let through."""
    if value is None:
        return value
    values = value if isinstance(value, tuple) else (value,)
    if not all(math.isfinite(v) for v in values):
        raise click.BadParameter(f"must be finite, got {' '.join(str(v) for v in values)}")
    return value


def sampling_options(f):
    """--temperature, --top-k, --seed: the same meaning for plaintext and encrypted generation."""
    for decorator in reversed(
        (
            click.option(
                "--temperature",
                type=Temperature(),
                default=0.0,
                show_default=True,
                help=f"softmax temperature (0: greedy; else {TEMPERATURE_MIN:g} to {TEMPERATURE_MAX:g})",
            ),
            click.option(
                "--top-k",
                type=click.IntRange(0),
                default=0,
                show_default=True,
                help="sample among the k most likely bytes (0: all); ignored when greedy",
            ),
            click.option(
                "--seed", type=int, default=0, show_default=True, help="seed of the sampler (integer)"
            ),
        )
    ):
        f = decorator(f)
    return f


def progress_option(f):
    return click.option(
        "--no-progress", is_flag=True, show_default=True, help="no progress bars on standard error"
    )(f)
