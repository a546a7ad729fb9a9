"""The server's work on Ray: actors that hold the model and one session's public keys and run a layer's
independent parts (he_aero/ckks/parallel.py) side by side, on one machine or a cluster.

Why Ray: SEAL holds Python's GIL, so a second core needs a second process, and a cluster needs processes on
other machines; Ray gives both with one API (actors keep state between calls, arguments travel through its
object store). Optional: `pip install he-aero[ray]`; without it the server runs every part in its own process.

Lifecycle (each step before the next; a step out of order raises HeAeroError naming the missing one):
    pool = RayPool(view, plan, workers=2, address=None)   # before a client arrives: Ray up, actors hold the
                                                          # weights (the Pipeline), no keys yet
    pool.attach(public_keys)                              # the session's SETUP: each actor builds the public
                                                          # context once (keys travel once, by object ref)
    ev.executor = pool                                    # Server.receive_setup does this
    ...  EncryptedLayer.prefill fans its parts out through `pool.map`
    pool.close()                                          # actors and their keys go away
Ciphertexts travel as SEAL's serialisation (`parallel.WireCt`); the actors never see a secret key: they get
what the server gets (public, relinearisation and rotation keys).
"""

from __future__ import annotations

import itertools
import os
import time

from he_aero.ckks.backend import PublicKeys, public_context
from he_aero.ckks.ciphertext import Evaluator
from he_aero.ckks.parallel import add_counts, from_wire, to_wire
from he_aero.ckks.pipeline import Pipeline
from he_aero.errors import HeAeroError


class PoolFailure(RuntimeError):
    """A Ray actor failed, died or timed out in the middle of a session: the server's fault, not the
    client's, so deliberately not a HeAeroError (whose text a session sends the client as a refusal): the
    session's worker logs it and tells the client "internal error" (he_aero/server/worker.py)."""


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise HeAeroError(
            "Ray is not installed: pip install 'he-aero[ray]' (or run without --ray-address)"
        ) from exc
    return ray


class PartWorker:
    """One actor's state: the model's Pipeline (weights as the server prepares them) and, after `attach`,
    an Evaluator over the session's public keys with its own cache of encoded plaintexts."""

    def __init__(self, view, plan_dict: dict, cache_limit: int | None = None):
        from he_aero.plan import ExecutionPlan

        plan = ExecutionPlan.from_dict(plan_dict)
        self.params = plan.params
        self.pipeline = Pipeline.for_plan(view, plan)
        self.ev: Evaluator | None = None
        self.cache_limit = cache_limit

    def attach(self, keys: PublicKeys) -> bool:
        self.ev = Evaluator(self.params, public_context(keys), cache_limit=self.cache_limit)
        return True

    def run(self, address: int | str, part: str, args: tuple):
        """(the part's result as wire ciphertexts, the operation counts it made); `address`: a layer's index
        or "pipeline" (he_aero/ckks/parallel.py)."""
        if self.ev is None:
            raise HeAeroError("Ray worker: run before attach (the session's keys)")
        owner = self.pipeline if address == "pipeline" else self.pipeline.layers[address]
        self.ev.reset_stats()
        out = owner.run_part(self.ev, part, *from_wire(self.ev, args))
        return to_wire(out), self.ev.reset_stats()


class RayPool:
    """`workers` Ray actors running `PartWorker`; an `Executor` (he_aero/ckks/parallel.py) once attached.

    Parameters
    ----------
    view : the model's LinearView (shipped to the actors once, through the object store).
    plan : the ExecutionPlan the server runs.
    workers : actors to start (>= 1); each asks Ray for one CPU.
    address : a running Ray cluster ("auto", "ray://host:port", "host:port"); None starts a local Ray with
        `workers` CPUs inside this process's lifetime (or joins the one this process already started).
    start_timeout : seconds to wait for the actors to be placed and to load the model.
    part_timeout : seconds a fan-out may take before the session is ended (a hung actor).
    cache_limit : bytes of encoded plaintexts each actor keeps (`Evaluator`'s `cache_limit`; None: all).

    Raises HeAeroError when Ray is missing, cannot start or connect, cannot place the actors in time (too
    few free CPUs), or a private Ray would get more workers than this machine has CPUs. Joining a Ray this
    process already runs ignores `address`. Later failures (an actor that dies, errs or hangs) raise
    PoolFailure."""

    def __init__(
        self,
        view,
        plan,
        workers: int = 2,
        address: str | None = None,
        start_timeout: float = 120.0,
        part_timeout: float = 1800.0,
        cache_limit: int | None = None,
    ):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise HeAeroError(f"Ray pool: workers must be a positive integer, got {workers!r}")
        ray = self._ray = _ray()
        self.workers, self.part_timeout = workers, part_timeout
        self._started, self._actors, self._attached = False, [], False
        if not ray.is_initialized():
            if address is None and workers > (os.cpu_count() or 1):
                raise HeAeroError(
                    f"Ray pool: {workers} workers on a private Ray of this machine's {os.cpu_count()} CPUs "
                    "would only take turns (use a cluster: --ray-address)"
                )
            try:
                if address is None:
                    # Its ports listen on the machine's interfaces; Ray >= 2.60 (the [ray] extra's floor)
                    # requires a token for a local cluster by default, so a process that reaches the ports
                    # cannot join it and run code beside the weights (docs/deploy.md)
                    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError ...
                raise HeAeroError(
                    f"Ray: cannot {'start' if address is None else 'reach ' + address}: {exc}"
                ) from exc
            self._started = True
        try:
            self._start_actors(view, plan, start_timeout, cache_limit)
        except BaseException:
            self.close()
            raise
        self.parts_run = 0  # parts the actors have run (logs, tests)
        self.fan_outs: list[dict] = []  # per `map`: wall seconds and each part's seconds inside SEAL

    def _start_actors(self, view, plan, start_timeout: float, cache_limit: int | None) -> None:
        ray, workers = self._ray, self.workers
        actor = ray.remote(num_cpus=1)(PartWorker)
        view_ref = ray.put(view)
        self._actors = [actor.remote(view_ref, plan.to_dict(), cache_limit) for _ in range(workers)]
        ready, _ = ray.wait(
            [a.__ray_ready__.remote() for a in self._actors], num_returns=workers, timeout=start_timeout
        )
        if len(ready) < workers:
            free = ray.available_resources().get("CPU", 0)
            raise HeAeroError(
                f"Ray: {len(ready)} of {workers} workers started within {start_timeout:g} s; each needs one "
                f"CPU and the cluster has {free:g} free (ask for fewer with --ray-workers)"
            )
        try:
            self._get(ready, "start")
        except PoolFailure as exc:  # a worker that failed to load the model: a set-up error
            raise HeAeroError(str(exc).split("\n")[0]) from exc

    def _get(self, refs, what: str, timeout: float | None = None):
        """ray.get, every failure (an actor's exception, a dead actor, a timeout) as a PoolFailure with
        Ray's full text (for the operator's log; the client is told only "internal error")."""
        try:
            return self._ray.get(refs, timeout=timeout)
        except Exception as exc:  # RayActorError, RayTaskError (even one that wraps a HeAeroError), timeout
            raise PoolFailure(f"Ray worker failed to {what}: {exc}") from exc

    def attach(self, keys: PublicKeys) -> None:
        """Give every actor the session's public keys (sent once through the object store)."""
        ref = self._ray.put(keys)
        self._get([a.attach.remote(ref) for a in self._actors], "load the session's keys", self.part_timeout)
        self._attached = True

    def map(self, ev: Evaluator, owner, part: str, calls: list[tuple]) -> list:
        """Each call on an actor (round robin), results in order; their counts added to ev.stats."""
        if not self._attached:
            raise HeAeroError("Ray pool: map before attach (the session's keys)")
        t0 = time.perf_counter()
        actors = itertools.cycle(self._actors)
        memo: dict = {}  # a ciphertext several parts read is serialised once
        refs = [next(actors).run.remote(owner.address, part, to_wire(args, memo)) for args in calls]
        self.parts_run += len(calls)
        out, seal = [], []
        for wire, stats in self._get(refs, f"run part {part!r} of {owner.address!r}", self.part_timeout):
            add_counts(ev.stats, stats)
            seal.append(round(stats.seal_seconds, 3))
            out.append(from_wire(ev, wire))
        wall = time.perf_counter() - t0
        self.fan_outs.append({"owner": owner.address, "part": part, "wall": round(wall, 3), "seal": seal})
        return out

    def close(self) -> None:
        """Stop the actors (their keys and plaintexts go with them), and Ray if this pool started it."""
        for a in self._actors:
            self._ray.kill(a)
        self._actors = []
        self._attached = False
        if self._started:
            self._ray.shutdown()
            self._started = False
