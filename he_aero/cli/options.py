"""Click options shared by several commands: output paths that are never overwritten silently."""

from pathlib import Path

import click


def _refuse_existing(ctx: click.Context, param: click.Parameter, value):
    """An existing output (a file, or a non-empty folder) needs --force: nothing is lost silently."""
    if value is None:
        return value
    path = Path(value)
    taken = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if taken and not ctx.params.get("force"):
        message = f"{value} already exists; pass --force to overwrite it"
        raise click.BadParameter(message, ctx=ctx, param=param)
    return value


force_option = click.option(
    "--force", is_flag=True, is_eager=True, help="overwrite output files that already exist"
)


def output_option(*decls: str, directory: bool = False, **kwargs):
    """A `--out`-style option whose path must not exist yet unless --force is given (add `force_option`)."""
    kind = click.Path(file_okay=not directory, dir_okay=directory)
    return click.option(*decls, type=kind, callback=_refuse_existing, **kwargs)
