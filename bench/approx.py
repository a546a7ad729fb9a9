"""`make bench-approx`: max error vs depth of our plans against the methods NEXUS / MOAI / CrypTen use.

Prints Markdown tables and, with --write FILE, replaces the block between the bench markers in FILE
(docs/approx.md). Figures are measured here; nothing is copied from papers.

    python -m bench.approx [--write docs/approx.md] [--smoke]

Uses `approx/` only (numpy/scipy). `--smoke` runs one depth and bound per table (seconds; checks the script).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from approx import bsgs, refine
from approx.chebyshev import MAX_DEGREE, dense_grid, from_unit
from approx.errors import ApproxError
from approx.plans import Plan, Step, measure, plan_exp, plan_fit, plan_reciprocal
from approx.remez import remez
from approx.sign import relu_composite

START, END = "<!-- bench-approx:start -->", "<!-- bench-approx:end -->"
EXP_BOUNDS = (8, 16, 32, 64, 128)
EXP_DEPTHS = (4, 5, 6, 7, 8, 9)
RECIP_RANGES = (10, 65, 100, 1000)
RECIP_DEPTHS = (5, 6, 7, 8, 9, 10, 11, 12)


def _max_degree(levels: int) -> int:
    """Largest degree evaluable in `levels` levels on [-1, 1] (bsgs depth ceil(log2(d + 1)))."""
    return min(2**levels - 1, MAX_DEGREE) if levels >= 1 else 0


def _fmt(e: float) -> str:
    return "-" if not np.isfinite(e) else f"{e:.1e}"


def _grid_x(domain, n=20_001):
    return from_unit(dense_grid(n), domain)


def exp_ours(bound: float, depth: int) -> tuple[float, str]:
    """Best certified abs. error of exp on [-bound, 0] at this total depth (affine map included)."""
    dom = (-float(bound), 0.0)
    best = (np.inf, None)
    for k in range(0, depth - 1):
        d = _max_degree(depth - 1 - k)
        if d < 1:
            continue
        s = 2.0**k
        weight = (lambda x, s=s: s * np.exp(x * (1.0 - 1.0 / s))) if k else None
        fit = remez(lambda x, s=s: np.exp(x / s), dom, d, "abs", weight=weight, certify=False)
        steps = (Step("poly", dom, tuple(fit.coefficients)),) + ((Step("square", times=k),) if k else ())
        err = measure("exp", dom, "abs", steps, certify=False)
        if err < best[0]:
            best = (err, steps)
    if best[1] is None:
        return np.inf, "-"
    if Plan("exp", dom, "abs", 0.0, best[1]).depth > depth:
        raise AssertionError(f"depth accounting: plan deeper than {depth}")
    err = measure("exp", dom, "abs", best[1])  # certify the winner
    k = best[1][1].times if len(best[1]) > 1 else 0
    return err, f"d{best[1][0].degree},k{k}"


def exp_baseline(bound: float, depth: int) -> float:
    """Max abs. error of (1 + x/2^k)^(2^k) on [-bound, 0] with k = depth - 1 (1 level for the affine step)."""
    k = depth - 1
    x = _grid_x((-float(bound), 0.0))
    y = refine.square(1.0 + x / 2.0**k, k, bsgs.Ops())
    return float(np.max(np.abs(y - np.exp(x))))


def recip_ours(r: float, depth: int) -> tuple[float, str]:
    """Best rel. error of 1/x on [1, r] at this depth: poly (+ Newton steps), all in the plan vocabulary."""
    dom = (1.0, float(r))
    best = (np.inf, "-")
    for n in range(0, depth):
        d = _max_degree(depth - 1 - 2 * n)
        if d < 1:
            continue
        fit = remez(np.reciprocal, dom, d, "rel", certify=False)
        steps = (Step("poly", dom, tuple(fit.coefficients)),) + (
            (Step("newton_recip", iterations=n),) if n else ()
        )
        err = measure("reciprocal", dom, "rel", steps, certify=False)
        if err < best[0]:
            best = (measure("reciprocal", dom, "rel", steps), f"d{d},n{n}")
    return best


def recip_goldschmidt(r: float, depth: int) -> tuple[float, str]:
    """Our poly guess + Goldschmidt steps (1 level each, after 1 for e): not a plan step yet, compared."""
    dom = (1.0, float(r))
    x = _grid_x(dom)
    best = (np.inf, "-")
    for n in range(1, depth):
        d = _max_degree(depth - 2 - n)
        if d < 1:
            continue
        fit = remez(np.reciprocal, dom, d, "rel", certify=False)
        y = refine.goldschmidt_recip(fit(x), x, n, bsgs.Ops())
        err = float(np.max(np.abs(1.0 - x * y)))
        if err < best[0]:
            best = (err, f"d{d},n{n}")
    return best


def recip_baseline(r: float, depth: int) -> float:
    """Goldschmidt from the best constant guess 2/(1 + r) (NEXUS-style product), depth = iterations + 1."""
    x = _grid_x((1.0, float(r)))
    c = 2.0 / (1.0 + r)
    e = 1.0 - c * x
    y = np.full_like(x, c)
    for i in range(depth - 1):
        y = y * (1.0 + e)
        if i + 1 < depth - 1:
            e = e * e
    return float(np.max(np.abs(1.0 - x * y)))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def run(smoke: bool = False) -> str:
    """All tables as Markdown (`smoke`: the first depth and bound of each sweep only)."""
    lines: list[str] = []
    t0 = time.time()
    exp_depths, exp_bounds = (EXP_DEPTHS[:1], EXP_BOUNDS[:1]) if smoke else (EXP_DEPTHS, EXP_BOUNDS)
    recip_depths, recip_ranges = (
        (RECIP_DEPTHS[:1], RECIP_RANGES[:1]) if smoke else (RECIP_DEPTHS, RECIP_RANGES)
    )
    lines.append("### BSGS cost in the Chebyshev basis (approx.bsgs.bsgs_cost; affine map not included)")
    degs = [1, 2, 3, 4, 7, 8, 11, 15, 16, 23, 31, 32, 47, 63, 64, 95, 127]
    lines += _table(
        ["degree", *map(str, degs)],
        [
            ["depth", *(str(bsgs.bsgs_cost(d)[0]) for d in degs)],
            ["ct-ct mults", *(str(bsgs.bsgs_cost(d)[1]) for d in degs)],
            ["scalar mults", *(str(bsgs.bsgs_cost(d)[2]) for d in degs)],
        ],
    )
    lines += [
        "",
        "### exp on [-B, 0]: max abs. error vs depth (depth includes the affine map)",
        "ours: certified error of the best minimax p(x/2^k)^(2^k) at that depth (dD,kK: degree, squarings);",
        "(1+x/2^k)^(2^k): the NEXUS / MOAI / CrypTen method at the same depth (k = depth - 1).",
        "",
    ]
    rows = []
    for depth in exp_depths:
        for b in exp_bounds:
            ours, how = exp_ours(b, depth)
            base = exp_baseline(b, depth)
            rows.append([str(depth), str(b), _fmt(ours), how, _fmt(base), f"{base / ours:.1e}x"])
    lines += _table(["depth", "B", "ours", "plan", "(1+x/2^k)^(2^k)", "ratio"], rows)
    lines += [
        "",
        "### 1/x on [1, R]: max rel. error vs depth",
        "ours: certified, minimax relative guess + Newton steps (plan vocabulary; dD,nN: degree, steps);",
        "poly+Goldschmidt: same guess, Goldschmidt steps (1 level each; not a plan step yet);",
        "constant+Goldschmidt: the NEXUS-style product from the best constant guess 2/(1+R).",
        "",
    ]
    rows = []
    for depth in recip_depths:
        for r in recip_ranges:
            ours, how = recip_ours(r, depth)
            gold, ghow = recip_goldschmidt(r, depth)
            base = recip_baseline(r, depth)
            ratio = f"{base / ours:.1e}x" if np.isfinite(ours) and ours > 0 else "-"
            rows.append([str(depth), str(r), _fmt(ours), how, _fmt(gold), ghow, _fmt(base), ratio])
    lines += _table(
        ["depth", "R", "ours", "plan", "poly+Goldschmidt", "plan", "constant+Goldschmidt", "ratio"], rows
    )
    lines.append("")
    lines.append("### Calibrated windows: least-depth plans (approx.plans)")
    rows = []
    targets = (
        ("exp [-26, 5], rel 1e-4", lambda: plan_exp((-26, 5), max_rel_error=1e-4)),
        ("exp [-26, 5], abs 1e-3", lambda: plan_exp((-26, 5), max_abs_error=1e-3)),
        ("exp [-16, 0], abs 2^-20", lambda: plan_exp((-16, 0), max_abs_error=2.0**-20)),
        ("1/x [1, 130], rel 1e-4", lambda: plan_reciprocal((1, 130), 1e-4)),
        ("1/x [1, 130], rel 1e-4, 1 Newton", lambda: plan_reciprocal((1, 130), 1e-4, newton=1)),
        ("1/x [1, 100], rel 1e-6, 2 Newton", lambda: plan_reciprocal((1, 100), 1e-6, newton=2)),
    )
    for label, make in targets[1:2] if smoke else targets:
        p = make()
        rows.append(
            [
                label,
                p.describe(),
                str(p.depth),
                str(p.nonscalar_mults),
                str(p.scalar_mults),
                _fmt(p.max_error),
            ]
        )
    lines += _table(["target", "plan", "depth", "ct-ct", "scalar", "certified error"], rows)
    lines += ["", "### relu on [-B, B]: direct minimax vs composite minimax sign (approx.sign)", ""]
    rows = []
    for b, bound in ((1.0, 1e-2),) if smoke else ((1.0, 1e-2), (8.0, 1e-2), (8.0, 1e-3)):
        try:
            direct = plan_fit("relu", (-b, b), bound)
            d_txt = [
                f"deg {direct.degree}",
                str(direct.depth),
                str(direct.nonscalar_mults),
                _fmt(direct.max_error),
            ]
        except ApproxError:
            d_txt = ["unreachable", "-", "-", "-"]
        comp = relu_composite(b, bound)
        c_txt = [f"{len(comp.stages)} x deg {len(comp.stages[0]) - 1}", str(comp.cost.depth)]
        rows.append(
            [f"{b:g}", f"{bound:g}", *d_txt, *c_txt, str(comp.cost.nonscalar_mults), _fmt(comp.max_error)]
        )
    lines += _table(
        ["B", "abs bound", "direct", "depth", "ct-ct", "error", "composite", "depth", "ct-ct", "error"], rows
    )
    lines.append("")
    lines.append(f"_Generated by `make bench-approx` in {time.time() - t0:.0f} s._")
    return "\n".join(lines)


def write(path: Path, block: str) -> None:
    """Replace the marked block of `path` (appended with markers if absent)."""
    text = path.read_text() if path.exists() else ""
    new = f"{START}\n{block}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + new + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + new + "\n"
    path.write_text(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="Markdown file whose bench block is replaced")
    parser.add_argument(
        "--smoke", action="store_true", help="one depth and bound per table (checks the script)"
    )
    args = parser.parse_args(argv)
    block = run(args.smoke)
    print(block)
    if args.write:
        write(args.write, block)
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
