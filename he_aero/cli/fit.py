"""`he-aero fit`: fit a minimax polynomial (or the best plan for an error bound) and report its cost.

scipy and matplotlib load inside the command only: `he-aero --help` stays fast.
"""

from __future__ import annotations

import math

import click

from he_aero.cli.options import Outputs, finite, force_option, output_option

# The names of `approx.functions.FUNCTIONS`, spelled out so that `--help` needs no scipy;
# tests/he_aero/cli/test_fit.py checks they stay equal.
FUNCTION_NAMES = ("exp", "reciprocal", "inv_sqrt", "gelu", "relu")

# ApproxError messages start with the field they concern: the option that set it.
_FIELD_OPTIONS = {
    "domain": "--domain",
    "degree": "--degree",
    "max_error": "--max-error",
    "error_kind": "--relative",
    "function": "FUNCTION",
}


def _plot(plan, path) -> None:
    """PNG: function and approximation (top); |error| on a log scale with the equioscillation points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from approx.functions import get_function

    a, b = plan.domain
    x = np.linspace(a, b, 4001)
    f = get_function(plan.function)(x)
    y = plan.evaluate(x)
    err = np.abs(f - y) / (np.abs(f) if plan.error_kind == "rel" else 1.0)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(x, f, label=plan.function)
    top.plot(x, y, "--", label=f"approximation ({plan.describe()})")
    top.legend(loc="best", fontsize=8)
    bottom.semilogy(x, np.maximum(err, 1e-18), label=f"{plan.error_kind} error")
    if plan.points and len(plan.steps) == 1:
        px = np.asarray(plan.points)
        fp = get_function(plan.function)(px)
        pe = np.abs(fp - plan.evaluate(px)) / (np.abs(fp) if plan.error_kind == "rel" else 1.0)
        bottom.semilogy(px, np.maximum(pe, 1e-18), "o", ms=4, label="equioscillation points")
    bottom.axhline(plan.max_error, color="gray", lw=0.8, ls=":", label=f"certified max {plan.max_error:.3g}")
    bottom.set_xlabel("x")
    bottom.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _blame(exc) -> click.UsageError:
    """An ApproxError as a usage error naming the option its field came from."""
    option = _FIELD_OPTIONS.get(str(exc).split(":", 1)[0])
    if option is None:
        return click.UsageError(str(exc))
    return click.BadParameter(str(exc), param_hint=f"'{option}'")


@click.command("fit")
@click.argument("function", required=False)
@click.option(
    "--domain",
    nargs=2,
    type=float,
    callback=finite,
    default=None,
    show_default="required",
    help="the interval A B of x (A < B)",
)
@click.option(
    "--degree",
    type=int,
    default=None,
    show_default="none",
    help="fit one minimax polynomial of this degree (exclusive with --max-error)",
)
@click.option(
    "--max-error",
    type=float,
    callback=finite,
    default=None,
    show_default="none",
    help="find the least-depth plan whose certified error is at most this (exclusive with --degree)",
)
@click.option(
    "--relative", is_flag=True, show_default=True, help="bound the relative error instead of the absolute"
)
@output_option("--out", help="write the coefficient file (JSON)")
@output_option("--plot", help="write a PNG of the fit and its error")
@force_option
@click.option(
    "--list", "list_", is_flag=True, show_default=True, help="name the supported functions and exit"
)
def fit(function, domain, degree, max_error, relative, out, plot, list_, force):
    """Fit FUNCTION on [A, B] and print degree, depth, multiplications and certified error."""
    if list_:
        from approx.functions import FUNCTIONS

        for f in FUNCTIONS.values():
            click.echo(f"{f.name:<11} {f.description}")
        return
    if function is None:
        raise click.UsageError("missing FUNCTION (see --list)")
    if function not in FUNCTION_NAMES:
        raise click.BadParameter(
            f"unknown {function!r}; choose one of {', '.join(FUNCTION_NAMES)}", param_hint="'FUNCTION'"
        )
    if domain is None:
        raise click.UsageError("missing --domain A B")
    if (degree is None) == (max_error is None):
        raise click.UsageError("give exactly one of --degree or --max-error")
    if plot is not None and not plot.lower().endswith(".png"):
        raise click.BadParameter(f"expected a .png path, got {plot!r}", param_hint="'--plot'")

    from approx.coefficients import save_plan
    from approx.errors import ApproxError
    from approx.plans import plan_for, plan_poly

    kind = "rel" if relative else "abs"
    try:
        if degree is not None:
            plan = plan_poly(function, domain, degree, kind)
        else:
            plan = plan_for(function, domain, max_error, kind)
    except ApproxError as exc:  # bad input (domain, degree, unreachable bound): a usage error, exit code 2
        raise _blame(exc) from exc

    click.echo(f"function        {function} on [{plan.domain[0]:.10g}, {plan.domain[1]:.10g}]")
    click.echo(f"plan            {plan.describe()}")
    click.echo(f"degree          {plan.degree}")
    click.echo(f"depth           {plan.depth} (of which the affine map to [-1, 1]: {plan.affine_levels})")
    click.echo(f"mults           {plan.nonscalar_mults} ct-ct, {plan.scalar_mults} scalar")
    bits = -math.log2(plan.max_error) if plan.max_error > 0 else math.inf
    click.echo(f"certified error {plan.max_error:.3e} ({kind}, {bits:.1f} bits)")
    if plan.lower_bound is not None and len(plan.steps) == 1:
        why = f"de la Vallee Poussin: no degree-{plan.degree} polynomial does better"
        click.echo(f"lower bound     {plan.lower_bound:.3e} ({why})")
    outputs = Outputs()
    if outputs.write("--out", out, lambda p: save_plan(plan, p), ".json"):
        click.echo(f"wrote           {out}")
    if outputs.write("--plot", plot, lambda p: _plot(plan, p), ".png"):
        click.echo(f"plot            {plot}")
    outputs.finish()
