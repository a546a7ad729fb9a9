"""Independent parts of a layer's prefill, run in place or on worker processes.

Why: SEAL calls hold Python's GIL, so one process uses one core whatever its threads do; only processes use
the others. A layer's prefill splits into parts that share no ciphertext (`EncryptedLayer.run_part`,
he_aero/ckks/layer.py):
    "linear"  output ciphertexts of a plaintext-weight product (`linalg.PlainLinear`, `outputs=`): they
              share only the baby-step rotations of the input, which each part recomputes;
    "scores"  per feature ciphertext (a group of heads), attention's score loop over the lags;
    "values"  per feature ciphertext, attention's weighted-value loop (he_aero/ckks/attention.py).
Refreshes (a round trip to the client) and the lockstep polynomial stages between them stay with the caller.

The embedding and the LM head split their products the same way (`Pipeline.run_part`). A part is addressed
by its owner's `address` (a layer's index, or "pipeline") and a part name, with ciphertexts and small
picklable values as arguments, so any process holding the same `Pipeline` and the session's public keys can
run it. An `Executor` returns
what the parts return, in order, and adds the parts' operation counts to the caller's evaluator, so a
parallel run counts exactly what the symbolic one does (the planner's figures). The in-process default is no
executor at all; he_aero/server/ray_pool.py runs parts on Ray actors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from he_aero.ckks.backend import load_ciphertext, to_bytes
from he_aero.ckks.ciphertext import Ct, Evaluator, OpStats


class Executor(Protocol):
    """Runs `owner.run_part(ev, part, *args)` for each args of `calls` (`owner`: an `EncryptedLayer` or the
    `Pipeline`, known to other processes by `owner.address`), results in order, their operation counts
    added to ev.stats."""

    workers: int

    def map(self, ev: Evaluator, owner, part: str, calls: list[tuple]) -> list: ...


def run_parts(ev: Evaluator, owner, part: str, calls: list[tuple]) -> list:
    """[owner.run_part(ev, part, *args) for args in calls], on `ev.executor` when there is one: same results,
    same operation counts."""
    if ev.executor is None:
        return [owner.run_part(ev, part, *args) for args in calls]
    return ev.executor.map(ev, owner, part, calls)


@dataclass(frozen=True)
class InPlace:
    """An executor that runs every part in this process, in order, split as `workers` processes would split
    them: what a symbolic run uses to count a parallel run (each "linear" part recomputes the baby-step
    rotations of its input, so a product split k ways makes (k - 1) x its baby steps more rotations)."""

    workers: int = 1

    def map(self, ev: Evaluator, owner, part: str, calls: list[tuple]) -> list:
        return [owner.run_part(ev, part, *args) for args in calls]


def split(n: int, parts: int) -> list[range]:
    """range(n) in at most `parts` contiguous chunks whose sizes differ by at most one."""
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return [range(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False)]


def product(ev: Evaluator, owner, lin, key: tuple, xs: list[Ct], rescale: bool) -> list[Ct]:
    """`lin(ev, xs, rescale=rescale)` (a `linalg.PlainLinear`) with, at prefill, its output ciphertexts split
    over the executor's workers: "linear" parts whose arguments are `(*key, xs, outputs, rescale)`, `key`
    being what `owner.run_part` needs to find `lin` again. One token's product is small: it stays here."""
    if lin.layout.n_tokens == 1:
        return lin(ev, xs, rescale=rescale)
    chunks = split(lin.out_layout.n_ct, workers(ev))
    parts = run_parts(ev, owner, "linear", [(*key, xs, tuple(c), rescale) for c in chunks])
    return [c for part in parts for c in part]


def workers(ev: Evaluator) -> int:
    """How many processes `run_parts` may use (1 without an executor)."""
    return 1 if ev.executor is None else ev.executor.workers


# --- ciphertexts between processes of one server ---------------------------------------------------------
@dataclass(frozen=True)
class WireCt:
    """A `Ct` between the server's own processes: SEAL's serialisation plus what `Ct` tracks beside it."""

    blob: bytes
    level: int
    layout: object
    pending: bool


def to_wire(obj, memo: dict | None = None):
    """`obj` with every `Ct` in it (nested lists and tuples) replaced by a `WireCt`; `memo` (id -> WireCt)
    serialises a ciphertext shared by several calls once."""
    memo = {} if memo is None else memo
    if isinstance(obj, Ct):
        if id(obj) not in memo:
            memo[id(obj)] = (obj, WireCt(to_bytes(obj.data), obj.level, obj.layout, obj.pending))
        return memo[id(obj)][1]  # (the Ct is kept with its id: ids are unique only among live objects)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_wire(o, memo) for o in obj)
    return obj


def from_wire(ev: Evaluator, obj):
    """Inverse of `to_wire` under ev's context. Only for bytes from the server's own workers: a client's
    ciphertexts go through `Evaluator.load_client`, which checks them."""
    if isinstance(obj, WireCt):
        data = load_ciphertext(ev.server.seal_context, obj.blob, "a worker's ciphertext")
        return Ct(data, obj.level, obj.layout, obj.pending)
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_wire(ev, o) for o in obj)
    return obj


def add_counts(stats: OpStats, other: OpStats) -> None:
    """Add another evaluator's operation counts and rotation steps to `stats` (not its seconds: they overlap
    in time)."""
    stats.add(other)
    stats.steps_used |= other.steps_used
