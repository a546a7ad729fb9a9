"""`he-aero plan`: choose the ring, chain, levels, refresh points and rotation keys for a model, before any
key is made. Thin: parse, call `he_aero.plan.make_plan`, report."""

from __future__ import annotations

from pathlib import Path

import click

from he_aero.cli_options import force_option, output_option


@click.command("plan")
@click.option(
    "--calibration", type=click.Path(dir_okay=False), help="calibration file (shapes, windows, bound)"
)
@click.option("--calibrated-plans", is_flag=True, help="use the calibration's plans as they are (no refit)")
@click.option("--d-model", type=click.IntRange(1), default=128, show_default=True)
@click.option("--heads", type=click.IntRange(1), default=4, show_default=True)
@click.option("--layers", type=click.IntRange(1), default=2, show_default=True)
@click.option("--context", type=click.IntRange(1), default=64, show_default=True, help="T_max")
@click.option("--z-window", type=(float, float), default=(-12.0, 1.0), show_default=True, help="exp window")
@click.option("--bound", type=click.FloatRange(min=0, min_open=True), default=64.0, show_default=True,
              help="bound on |activations| (refresh mask scale)")  # fmt: skip
@click.option("--hiding-bits", type=click.IntRange(1, 40), default=20, show_default=True)
@click.option("--ring", "rings", type=click.Choice(["8192", "16384", "32768"]), multiple=True,
              help="candidate ring degrees (default: all three)")  # fmt: skip
@click.option("--explain", is_flag=True, help="print the comparison, the choice and every stage's level")
@output_option("--json", "json_out", help="write the plan as JSON")
@force_option
def plan(calibration, calibrated_plans, d_model, heads, layers, context, z_window, bound, **out):
    """Plan the encrypted runtime for a model (shape options, or a calibration file)."""
    from he_aero.errors import HeAeroError
    from he_aero.plan import RINGS, ModelShape, Ranges, make_plan

    plans = None
    if calibration:
        from he_aero.calibrate import load_calibration

        cal = load_calibration(calibration)
        shape, ranges = cal.model_shape(), cal.planner_ranges()
        if calibrated_plans:
            plans = [(lay.exp_plan, lay.recip_plan) for lay in cal.layers]
    else:
        if calibrated_plans:
            raise click.UsageError("--calibrated-plans needs --calibration")
        shape = ModelShape(d_model, heads, layers, context)
        ranges = Ranges((tuple(z_window),) * layers, bound)
    hiding_bits, rings, explain, json_out = out["hiding_bits"], out["rings"], out["explain"], out["json_out"]
    result = make_plan(shape, ranges, plans, hiding_bits, tuple(int(r) for r in rings) or RINGS)
    if json_out:
        try:
            Path(json_out).write_text(result.to_json() + "\n")
        except OSError as exc:
            raise HeAeroError(f"--json {json_out}: {exc}") from exc
    if explain:
        click.echo(result.explain())
    else:
        ch = result.chosen
        click.echo(
            f"N={ch.params.poly_modulus_degree} {list(ch.params.coeff_mod_bit_sizes)}: prefill ~"
            f"{ch.prefill['latency_s']:.1f} s, decode ~{ch.decode['latency_s']:.2f} s/token, "
            f"{len(ch.rotation_steps)} rotation keys ({ch.key_bytes / 1e6:.0f} MB)"
        )
