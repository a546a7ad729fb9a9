"""Encrypted evaluation of `approx/` plans: the CKKS adapter of `approx.interpret`, and thin entry points.

Nothing of a plan's evaluation is re-implemented here: `approx.interpret.run_batch` walks the steps (BSGS
polynomials, squarings, Newton steps) over a `CkksOps` adapter per ciphertext and calls the refresher between
unsplittable pieces, and the level costs are `approx.interpret`'s, with its `shift` rule on (a width-2 domain
maps by a plaintext addition, no level). So the levels and ct-ct multiplications on ciphertexts are exactly
those `approx` counts (tests check the ciphertext's level).

Masking (why): attention evaluates exp on slots of which only some are valid (causal mask, padding). With the
input exactly 0 on invalid slots and every plaintext constant added only on valid slots, every intermediate
T_k and the result stay 0 there, so the output needs no separate masking product (one level saved).
"""

from __future__ import annotations

from approx import bsgs, interpret
from approx.chebyshev import affine_coefficients
from approx.errors import ApproxError
from approx.plan import Plan
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.errors import HeAeroError

shift_only = interpret.shift_only


def affine(step) -> tuple[float, float]:
    """(alpha, beta) with t = alpha x + beta for a poly step (use `plan.steps[0]` for a plan's input map)."""
    return affine_coefficients(step.domain)


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

    def constant(self, like, c):
        # a constant polynomial (or one whose non-constant coefficients are all 0) leaves no ciphertext
        raise HeAeroError("evaluate_chebyshev: a constant polynomial has no ciphertext result")


def plan_depth(plan: Plan, mapped: bool = False) -> int:
    """Levels the plan needs on a ciphertext when every piece may start after a refresh (inputs at one level):
    `approx.interpret.count(...).aligned_depth` with shift=True. `mapped`: input already t in [-1, 1].
    Differs from `Plan.depth` (same walk, shift=False, x fresh) in that a first domain of width exactly 2
    costs no level here."""
    return interpret.count(plan.steps, mapped, shift=True).aligned_depth


def step_depth(step, mapped: bool = False) -> int:
    """Levels one plan step consumes on ciphertexts (`approx.interpret.step_depth`, shift=True)."""
    return interpret.step_depth(step, mapped, shift=True)


def atomic_depth(step, mapped: bool = False) -> int:
    """Levels of the largest piece of a step a refresh cannot split (`approx.interpret.atomic_depth`):
    squarings and Newton iterations (1/x and 1/sqrt(x)) one at a time, a poly whole."""
    return interpret.atomic_depth(step, mapped, shift=True)


def evaluate_chebyshev(ev: Evaluator, coefficients, t: Ct, valid: tuple | None = None) -> Ct:
    """sum_j c_j T_j(t) for t already in [-1, 1], minimum depth ceil(log2(deg + 1)).

    HeAeroError for a constant polynomial (no ciphertext result)."""
    return interpret.chebyshev(coefficients, t, CkksOps(ev, valid))


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
    refresher : a `Refresher`; when given, the running value (and x, or x / 2 for 1/sqrt) are refreshed
        between steps (squarings and Newton iterations one at a time) whenever the next one lacks levels.
        Without it the whole plan must fit the ciphertext's level.
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
    """`run_plan` on several ciphertexts in lockstep, so each refresh is one round for all of them.

    Stage names reported to the refresher: f"{name} poly", f"{name} square", f"{name} newton" (the latter
    with the running values and the inputs, or x / 2 for 1/sqrt, together)."""
    n = len(xs) if mapped is None else len(mapped)
    ops = [CkksOps(ev, None if valids is None else valids[i]) for i in range(n)]
    if refresher is None:
        need = plan_depth(plan, mapped is not None)
        start = min(c.level for c in (mapped if mapped is not None else xs))
        if start < need:
            raise HeAeroError(
                f"depth budget: plan '{plan.describe()}' needs {need} levels, the ciphertext has {start} "
                "(refresh before this stage)"
            )
    ensure = None if refresher is None else refresher.ensure
    try:
        return interpret.run_batch(plan.steps, xs, ops, mapped, ensure, name, shift=True)
    except ApproxError as exc:  # a Newton step without x: the caller's mistake, reported as ours
        raise HeAeroError(f"run_plan: {exc}") from exc
