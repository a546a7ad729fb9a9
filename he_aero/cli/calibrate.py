"""`he-aero calibrate`: measure the ranges the encrypted runtime must cover (stage 1 of the lifecycle).

Thin: parse, call `he_aero.calibrate.calibrate`, report. The plan stage (`he-aero plan`) then fits the
approximations on these ranges for a ring.
"""

from __future__ import annotations

import click

from he_aero.cli.options import Outputs, checkpoint_option, force_option, load_model, output_option


@click.command()
@checkpoint_option(positional_alias=True)
@click.option(
    "--samples",
    type=click.IntRange(1, 100_000),
    default=2048,
    show_default=True,
    help="windows (of context length, in bytes) from the TRAINING split",
)
@click.option(
    "--margin",
    type=click.FloatRange(0, 2),
    default=0.1,
    show_default=True,
    help="widen every measured interval by this fraction of its width on both sides",
)
@click.option(
    "--degenerate/--no-degenerate",
    default=True,
    show_default=True,
    help="also measure degenerate prompts: each byte repeated over the context",
)
@output_option("--out", required=True, help="calibration file to write (JSON)")
@force_option
def calibrate(checkpoint, samples, margin, degenerate, out, force) -> None:
    """Measure on the checkpoint, over training text, the value ranges the encrypted runtime must cover; widen
    them by a margin and write a calibration file bound to the weights."""
    from he_aero.calibrate import CalibrationConfig, describe
    from he_aero.calibrate import calibrate as run_calibration

    _, model, header = load_model(checkpoint)
    cal = run_calibration(model, header, CalibrationConfig(samples, margin, degenerate))
    click.echo(describe(cal))
    outputs = Outputs()
    if outputs.write("--out", out, cal.save, ".json"):
        click.echo(f"wrote {out}")
    outputs.finish()
