"""Encrypted evaluation of `approx/` plans: Chebyshev BSGS polynomials, squarings and Newton steps.

The operation order is not re-implemented here: `approx.bsgs.evaluate` and `approx.refine` run on a
`CkksOps` adapter, so the depth and ct-ct multiplication counts on ciphertexts are exactly those
`approx.bsgs.bsgs_cost` / `Plan.depth` report (tests check the ciphertext's level).

Masking (why): attention evaluates exp on slots of which only some are valid (causal mask, padding). With the
input exactly 0 on invalid slots and every plaintext constant added only on valid slots, every intermediate
T_k and the result stay 0 there, so the output needs no separate masking product (one level saved).
"""

from __future__ import annotations

import numpy as np

from approx import bsgs, refine
from approx.plans import Plan
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.errors import HeAeroError


class CkksOps(bsgs.Ops):
    """`approx.bsgs.Ops` on ciphertexts. `valid = (key, vector)` restricts added constants to valid slots."""

    def __init__(self, ev: Evaluator, valid: tuple | None = None):
        self.ev = ev
        self.valid = valid

    def mul(self, a, b):
        return self.ev.mul(a, b)

    def mul_scalar(self, a, c):
        return self.ev.mul_scalar(a, float(c))

    def add(self, a, b):
        return self.ev.add(a, b)

    def sub(self, a, b):
        return self.ev.sub(a, b)

    def add_scalar(self, a, c):
        if self.valid is None or c == 0.0:
            return self.ev.add_scalar(a, float(c))
        key, mask = self.valid
        return self.ev.add_plain(a, ("const", key, float(c)), lambda: float(c) * mask)


def plan_depth(plan: Plan, mapped: bool = False) -> int:
    """Levels the plan consumes on a ciphertext; `mapped`: input already t in [-1, 1] (affine folded).
    Equal to `Plan.depth` except that a first domain of width exactly 2 costs no level here (see
    `shift_only`)."""
    return sum(step_depth(s, mapped and i == 0) for i, s in enumerate(plan.steps))


def shift_only(step) -> bool:
    """A poly domain [a, a + 2] maps to [-1, 1] by t = x - a - 1: a plaintext addition, no level."""
    return step.domain[1] - step.domain[0] == 2.0


def affine(step) -> tuple[float, float]:
    """(alpha, beta) with t = alpha x + beta for a poly step (use `plan.steps[0]` for a plan's input map)."""
    a, b = step.domain
    return 2.0 / (b - a), -(a + b) / (b - a)


def evaluate_chebyshev(ev: Evaluator, coefficients, t: Ct, valid: tuple | None = None) -> Ct:
    """sum_j c_j T_j(t) for t already in [-1, 1], minimum depth ceil(log2(deg + 1))."""
    y = bsgs.evaluate(np.asarray(coefficients, dtype=float), t, CkksOps(ev, valid))
    if isinstance(y, float):
        raise HeAeroError("evaluate_chebyshev: a constant polynomial has no ciphertext result")
    return y


def step_depth(step, mapped: bool = False) -> int:
    """Levels one plan step consumes (a poly's affine map counts unless `mapped` or the domain is [-1, 1])."""
    if step.op == "poly":
        affine_levels = 0 if mapped or shift_only(step) else 1
        return bsgs.bsgs_cost(step.degree)[0] + affine_levels
    if step.op == "square":
        return step.times
    if step.op == "newton_recip":
        return 2 * step.iterations
    return 2 * step.iterations + (1 if step.iterations else 0)


def atomic_depth(step, mapped: bool = False) -> int:
    """Levels of the largest piece of a step that cannot be split by a refresh (`run_plan` refreshes between
    squarings and between Newton-reciprocal iterations)."""
    if step.op == "square":
        return min(step.times, 1)
    if step.op == "newton_recip":
        return min(step.iterations, 1) * 2
    return step_depth(step, mapped)


def run_plan(
    ev: Evaluator,
    plan: Plan,
    x: Ct | None,
    mapped: Ct | None = None,
    valid: tuple | None = None,
    refresher=None,
    name: str = "plan",
) -> Ct:
    """Run an approximation plan (docs/design.md section 2) on ciphertext x, in `Plan.run`'s exact order.

    Parameters
    ----------
    x : the plan input (Newton steps read it); may be None when the plan has only poly/square steps and
        `mapped` is given.
    mapped : the first polynomial's input already mapped to [-1, 1] (the affine map folded into a preceding
        plaintext product); saves a level.
    valid : (key, 0/1 slot vector): add constants only on these slots (see the module docstring).
    refresher : a `Refresher`; when given, the running value (and x) are refreshed between steps (squarings
        and Newton iterations one at a time) whenever the next one lacks levels. Without it the whole plan
        must fit the ciphertext's level.
    name : prefix of the stage names reported to the refresher (the planner's stage list).
    """
    return run_plan_batch(
        ev,
        plan,
        [x],
        None if mapped is None else [mapped],
        None if valid is None else [valid],
        refresher,
        name,
    )[0]


def run_plan_batch(
    ev: Evaluator,
    plan: Plan,
    xs: list,
    mapped: list | None = None,
    valids: list | None = None,
    refresher=None,
    name: str = "plan",
) -> list[Ct]:
    """`run_plan` on several ciphertexts in lockstep, so each refresh is one round for all of them."""
    n = len(xs) if mapped is None else len(mapped)
    xs = list(xs) if xs is not None else [None] * n
    ops = [CkksOps(ev, None if valids is None else valids[i]) for i in range(n)]
    if refresher is None:
        need = plan_depth(plan, mapped is not None)
        start = min(c.level for c in (mapped if mapped is not None else xs))
        if start < need:
            raise HeAeroError(
                f"depth budget: plan '{plan.describe()}' needs {need} levels, the ciphertext has {start} "
                "(refresh before this stage)"
            )
    ys: list = [None] * n
    for i, step in enumerate(plan.steps):
        if step.op == "poly":
            if i == 0 and mapped is not None:
                ts = _ensure(refresher, list(mapped), step_depth(step, True), f"{name} poly")
            else:
                src = _ensure(refresher, xs if i == 0 else ys, step_depth(step), f"{name} poly")
                alpha, beta = affine(step)
                if shift_only(step):  # includes [-1, 1] (beta = 0: nothing added)
                    ts = [o.add_scalar(c, beta) for o, c in zip(ops, src, strict=True)]
                else:
                    ts = [o.add_scalar(o.mul_scalar(c, alpha), beta) for o, c in zip(ops, src, strict=True)]
            ys = [evaluate_chebyshev(ev, step.coefficients, t, o.valid) for o, t in zip(ops, ts, strict=True)]
        elif step.op == "square":
            for _ in range(step.times):
                ys = _ensure(refresher, ys, 1, f"{name} square")
                ys = [refine.square(y, 1, o) for o, y in zip(ops, ys, strict=True)]
        else:
            xs = [_need_x(x, step.op) for x in xs]
            per_round = 2 if step.op == "newton_recip" else step_depth(step)
            rounds = step.iterations if step.op == "newton_recip" else 1
            iters = 1 if step.op == "newton_recip" else step.iterations
            fn = refine.newton_recip if step.op == "newton_recip" else refine.newton_inv_sqrt
            for _ in range(rounds):
                both = _ensure(refresher, ys + xs, per_round, f"{name} newton")
                ys, xs = both[:n], both[n:]
                ys = [fn(y, x, iters, o) for o, y, x in zip(ops, ys, xs, strict=True)]
    return ys


def _ensure(refresher, cts, need, what):
    return cts if refresher is None else refresher.ensure(cts, need, what)


def _need_x(x, op):
    if x is None:
        raise HeAeroError(f"run_plan: a {op} step needs the plan input x")
    return x
