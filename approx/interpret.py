"""The one interpreter of approximation plans: steps, their level costs, and where a refresh may fall.

`run_batch` walks a plan's steps (docs/design.md section 2: `poly`, `square`, `newton_recip`,
`newton_inv_sqrt`) over `approx.bsgs.Ops`, on a batch of values in lockstep. Every evaluator runs it:
`Plan.run` / `Plan.evaluate` (numpy float64: fitting, error certification), `count` (a depth counter:
`Plan.depth`, the CKKS `plan_depth`) and `he_aero.ckks.poly` (ciphertexts, with a refresher as `ensure`),
so all of them perform the same operations in the same order.

Level costs (one rule, here only)
---------------------------------
A step runs as `pieces(step)` unsplittable pieces of `atomic_depth(step)` levels each (the levels a piece
consumes when all its inputs start at one level); `step_depth = pieces * atomic_depth`:

    poly, degree d         1 piece      ceil(log2(d + 1)) (`bsgs.bsgs_cost`) + `affine_levels` (0 or 1);
                                        a constant (d = 0) costs 0
    square, times k        k pieces     1 (one squaring)
    newton_recip, n        n pieces     2 (one iteration: e = x y, then c y (a - e); c y beside e)
    newton_inv_sqrt, n     n pieces     2 (one iteration: s = y y and u = h y, then u s; 1.5 y beside)

newton_inv_sqrt reads h = x / 2, made once before its first piece by a scalar product on x (a level below
x, outside every piece) and then handed to `ensure` with the running value, so a refresh may fall between
any two iterations (rings with 2 levels between refreshes, N=8192, can run it). x is fresher than the
running value after the plan's first poly, so h adds no level to `Count.depth` nor to the pieces' sum.

The affine map t = alpha x + beta of a poly's input to [-1, 1] costs 1 level (a scalar product) unless
`mapped` (the caller folded it into a preceding plaintext product) or it is a pure shift (alpha = 1, no
product): always for the domain [-1, 1] (beta = 0), and, when `shift` is True, for any domain of width
exactly 2 (t = x - a - 1, a plaintext addition). The CKKS evaluator passes shift=True; `Plan.depth`,
`Plan.scalar_mults` and the plan search keep shift=False (a scaling by 1.0), the count coefficient files
record (format_version 1) and that the tests pin (a width-2 plan runs one level under its `Plan.depth`).

Exactly-zero Chebyshev coefficients are skipped by `bsgs.evaluate`, so a piece may consume fewer levels than
its `atomic_depth` (never more); the table describes the dense structure (tests/approx/test_interpret.py
checks it against a depth counter).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from approx import bsgs, refine
from approx.chebyshev import affine_coefficients
from approx.errors import ApproxError

Ensure = Callable[[list, int, str], list]
"""`ensure(values, need_levels, stage_name) -> values`: the refresh hook called before every piece."""

STAGES = {"poly": "poly", "square": "square", "newton_recip": "newton", "newton_inv_sqrt": "newton"}
"""Stage name suffix per step op, as reported to `ensure` (f"{name} {suffix}")."""


# --- level costs -------------------------------------------------------------------------------------------
def shift_only(step) -> bool:
    """A poly domain [a, a + 2] maps to [-1, 1] by t = x - a - 1: a plaintext addition, no level."""
    return step.domain[1] - step.domain[0] == 2.0


def _is_shift(step, shift: bool) -> bool:
    # [-1, 1] needs no scaling under either rule (alpha = 1, beta = 0)
    return shift_only(step) if shift else step.domain == (-1.0, 1.0)


def affine_levels(step, mapped: bool = False, shift: bool = False) -> int:
    """Levels of a poly step's input map to [-1, 1]: 1, or 0 if `mapped`, a shift (module docstring) or a
    constant (degree 0: the input is not read)."""
    return 0 if mapped or step.degree == 0 or _is_shift(step, shift) else 1


def pieces(step) -> int:
    """How many unsplittable pieces a step runs as (`ensure` is called before each)."""
    if step.op == "square":
        return step.times
    if step.op in ("newton_recip", "newton_inv_sqrt"):
        return step.iterations
    return 1


def atomic_depth(step, mapped: bool = False, shift: bool = False) -> int:
    """Levels of one unsplittable piece of a step (the table of the module docstring; 0 for an empty step).

    `mapped`: the step is the first poly and its input is already in [-1, 1]."""
    if step.op == "poly":
        return bsgs.bsgs_cost(step.degree)[0] + affine_levels(step, mapped, shift)
    if step.op == "square":
        return min(step.times, 1)
    return 2 * min(step.iterations, 1)  # a Newton iteration


def step_depth(step, mapped: bool = False, shift: bool = False) -> int:
    """Levels a whole step consumes when its inputs start at one level: pieces x atomic_depth."""
    return pieces(step) * atomic_depth(step, mapped, shift)


# --- the interpreter ---------------------------------------------------------------------------------------
def chebyshev(coefficients, t, ops: bsgs.Ops):
    """sum_j c_j T_j(t) for t in [-1, 1] (`bsgs.evaluate`); a constant result is broadcast by `ops.constant`
    (a ciphertext adapter may refuse it: there is no ciphertext to return)."""
    y = bsgs.evaluate(coefficients, t, ops)
    return ops.constant(t, y) if isinstance(y, float) else y


def _to_unit(step, x, ops: bsgs.Ops, shift: bool):
    """t = alpha x + beta in the operation order of every evaluator (beta is added even when 0: the CKKS
    adapter rescales a pending product there)."""
    alpha, beta = affine_coefficients(step.domain)
    if not _is_shift(step, shift):
        x = ops.mul_scalar(x, alpha)
    return ops.add_scalar(x, beta)


def _keep(values, need, stage):
    return values


def run_batch(
    steps: Sequence,
    xs: list | None,
    ops: Sequence[bsgs.Ops],
    mapped: list | None = None,
    ensure: Ensure | None = None,
    name: str = "plan",
    shift: bool = False,
) -> list:
    """Run the plan `steps` on a batch of inputs in lockstep; returns the outputs, one per item.

    Parameters
    ----------
    steps : the plan's steps (`approx.plan.Step`); the first is a poly.
    xs : the plan inputs, one per item (Newton steps read them); may be None (or hold None) when the plan has
        only poly / square steps and `mapped` is given.
    ops : one `Ops` per item (a ciphertext adapter per item carries that item's valid-slot mask).
    mapped : the first poly's inputs already in [-1, 1] (its affine map folded elsewhere); saves its level.
    ensure : refresh hook, called before every unsplittable piece with the values the piece reads, the
        levels it needs (`atomic_depth`) and f"{name} {STAGES[op]}"; returns them (refreshed or not). For
        newton_recip it receives ys + xs (the running values, then the inputs), for newton_inv_sqrt ys + hs
        (h = x / 2) and returns both; what it returns is what the next piece reads.
    shift : width-2 domains map by a plaintext shift (module docstring).

    Raises
    ------
    ApproxError : a Newton step without its input x.
    """
    n = len(ops)
    ensure = ensure or _keep
    xs = list(xs) if xs is not None else [None] * n
    # x as an `ensure` last handed it back, for newton_inv_sqrt's h = x / 2 (`_newton_inv_sqrt`); xs itself
    # keeps the first poly's x unrefreshed, as newton_recip has always read it
    fresh_xs = xs
    ys: list = []
    for i, step in enumerate(steps):
        first_mapped = i == 0 and mapped is not None
        need = atomic_depth(step, first_mapped, shift)
        stage = f"{name} {STAGES[step.op]}"
        if step.op == "poly":
            src = ensure(list(mapped) if first_mapped else (xs if i == 0 else ys), need, stage)
            if i == 0 and not first_mapped:
                fresh_xs = src
            if step.degree == 0:  # a constant: no ciphertext work at all
                ys = [o.constant(v, step.coefficients[0]) for o, v in zip(ops, src, strict=True)]
            else:  # all inputs mapped, then all polynomials: the op order the CKKS tests pin
                ts = src
                if not first_mapped:
                    ts = [_to_unit(step, v, o, shift) for o, v in zip(ops, src, strict=True)]
                ys = [chebyshev(step.coefficients, t, o) for o, t in zip(ops, ts, strict=True)]
        elif step.op == "square":
            for _ in range(pieces(step)):
                ys = ensure(ys, need, stage)
                ys = [refine.square(y, 1, o) for o, y in zip(ops, ys, strict=True)]
        else:
            if any(x is None for x in xs):
                raise ApproxError(f"x: a {step.op} step needs the plan input x")
            if step.op == "newton_recip":
                for piece in range(pieces(step)):
                    both = ensure(ys + xs, need, stage)
                    ys, xs = both[:n], both[n:]
                    fresh_xs = xs
                    k = step.constants[piece : piece + 1] if step.constants else None  # its own constants
                    ys = [refine.newton_recip(y, x, 1, o, k) for o, y, x in zip(ops, ys, xs, strict=True)]
            else:
                ys = _newton_inv_sqrt(step, ys, fresh_xs, ops, ensure, need, stage)
    return ys


def _newton_inv_sqrt(step, ys: list, xs: list, ops: Sequence[bsgs.Ops], ensure: Ensure, need, stage):
    """`refine.newton_inv_sqrt` split into pieces: h = x / 2 once, then one `ensure` and one iteration per
    piece; the h that `ensure` hands back (refreshed or not) is the one the next piece reads.

    h is made outside every piece, so x must hold a level of its own: `xs` is x as an `ensure` last handed
    it back (the first poly's asks for >= 1 level), not the caller's, which may sit at the refresh floor.
    A plan whose first poly reads a `mapped` input never ensures x: the caller's x then needs that level."""
    if not pieces(step):  # no iteration: no h either (`refine.newton_inv_sqrt` with 0 iterations)
        return ys
    n = len(ops)
    hs = [refine.inv_sqrt_half(x, o) for o, x in zip(ops, xs, strict=True)]
    for _ in range(pieces(step)):
        both = ensure(ys + hs, need, stage)
        ys, hs = both[:n], both[n:]
        ys = [refine.newton_inv_sqrt_step(y, h, o) for o, y, h in zip(ops, ys, hs, strict=True)]
    return ys


# --- counting ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Count:
    """What a plan costs, from one walk of `run_batch` on a depth counter (`bsgs.CountingOps`).

    depth : levels consumed from an input at depth 0 without refreshes (x may be fresher than the running
        value: newton_inv_sqrt's x / 2 then costs no level of its own). `Plan.depth`.
    aligned_depth : levels when every piece starts with all its inputs at one level, i.e. the sum of the
        levels the walk asks `ensure` for (= sum of `step_depth`). The CKKS evaluator checks this before
        running without a refresher (`he_aero.ckks.poly.plan_depth`). >= depth, except after a constant
        first poly (no ciphertext result, refused on ciphertexts): newton_inv_sqrt's h = x / 2, made
        outside the pieces, is then a level staler than the running value.
    nonscalar_mults, scalar_mults : products by a ciphertext / by a plaintext scalar.
    """

    depth: int
    aligned_depth: int
    nonscalar_mults: int
    scalar_mults: int


def count(steps: Sequence, mapped: bool = False, shift: bool = False) -> Count:
    """Walk `steps` on a depth counter (see `Count`); `mapped` / `shift` as in `run_batch`."""
    ops = bsgs.CountingOps()
    needs: list[int] = []

    def record(values, need, stage):
        needs.append(need)
        return values

    (y,) = run_batch(steps, [0], [ops], [0] if mapped else None, record, shift=shift)
    return Count(int(y), sum(needs), ops.nonscalar, ops.scalar)
