"""`he-aero plan`: compile checkpoint + calibration into the execution plan the server runs (stage 2).

Thin: parse, call `he_aero.plan.compile_plan`, report. With no options it compiles (and describes) the
shipped model with its shipped calibration; `make plan-default` writes the shipped plan file this way.
"""

from __future__ import annotations

from pathlib import Path

import click

from he_aero.artifacts import MAX_PLAN_ERROR
from he_aero.ckks.hiding import SESSION_HIDING_BITS
from he_aero.cli.options import Outputs, blame, checkpoint_option, force_option, output_option


@click.command("plan")
@checkpoint_option()
@click.option(
    "--calibration",
    type=click.Path(dir_okay=False),
    default=None,
    show_default="the shipped model's",
    help="calibration file of the checkpoint (`he-aero calibrate --out`)",
)
@click.option(
    "--exp-error",
    type=click.FloatRange(0, MAX_PLAN_ERROR, min_open=True),
    default=1e-4,
    show_default=True,
    help="certified relative error of the exp plans",
)
@click.option(
    "--recip-error",
    type=click.FloatRange(0, MAX_PLAN_ERROR, min_open=True),
    default=1e-4,
    show_default=True,
    help="certified relative error of the 1/x plans",
)
@click.option(
    "--session-hiding-bits",
    type=click.IntRange(1, 128),
    default=SESSION_HIDING_BITS,
    show_default=True,
    help="statistical hiding a session keeps, in bits: caps the polynomials a session may refresh",
)
@click.option(
    "--logit-flood-bits",
    type=click.IntRange(0, 60),
    default=0,
    show_default=True,
    help="flood every logits coefficient with a uniform integer in [-2^F, 2^F) (0: off; docs/security.md)",
)
@click.option(
    "--ring",
    "rings",
    type=click.Choice(["8192", "16384", "32768"]),
    multiple=True,
    show_default="all three",
    help="candidate ring degree N, in coefficients (repeatable)",
)
@click.option(
    "--explain",
    is_flag=True,
    show_default=True,
    help="print the comparison, the choice, the plans and every stage",
)
@output_option("--out", help="write the plan file (what `encrypt-infer --plan` and the server load)")
@force_option
def plan(
    checkpoint,
    calibration,
    exp_error,
    recip_error,
    session_hiding_bits,
    logit_flood_bits,
    rings,
    explain,
    out,
    force,
) -> None:
    """Choose the ring, chain, approximation plans, refresh points and rotation keys for a checkpoint, before
    any key is made."""
    from he_aero.calibrate import load_calibration
    from he_aero.plan import RINGS, PlanConfig, compile_plan
    from models.checkpoint import DEFAULT_CHECKPOINT, read_header

    with blame("--checkpoint"):
        header = read_header(Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT)
    with blame("--calibration"):
        cal = load_calibration(calibration)
    with blame("--calibration", shipped_default=calibration is None):
        cal.check_checkpoint(header)  # before any fitting, naming the option
    config = PlanConfig(
        exp_max_rel_error=exp_error,
        recip_max_rel_error=recip_error,
        session_hiding_bits=session_hiding_bits,
        logit_flood_bits=logit_flood_bits,
        rings=tuple(int(r) for r in rings) or RINGS,
    )
    result = compile_plan(header, cal, config)
    click.echo(result.explain() if explain else result.summary())
    outputs = Outputs()
    if outputs.write("--out", out, result.save, ".json"):
        click.echo(f"wrote {out} (sha256 {result.sha256[:12]}...)")
    outputs.finish()
