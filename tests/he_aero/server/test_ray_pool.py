"""The server's parts on Ray actors (he_aero/server/ray_pool.py): a local Ray with two worker processes."""

import sys

import numpy as np
import pytest

from he_aero.errors import HeAeroError
from he_aero.server.ray_pool import PoolFailure, RayPool
from models.linear_view import view_forward
from tests.he_aero.conftest import LOGIT_TOL, insecure_session

PROMPT = list(b"if x:\n  ")
COUNTS = ("rotations", "ctct_mults", "pt_mults", "key_switches", "refresh_rounds")


@pytest.fixture(scope="module")
def pool(tiny, tiny_plan):
    """Two workers on a local Ray of 4 logical CPUs (a resource count, not cores: the tests below start a
    few more actors beside these two); Ray stops with the module."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    _, _, _, view, _ = tiny
    pool = RayPool(view, tiny_plan, workers=2)
    yield pool
    pool.close()
    ray.shutdown()


def test_a_prefill_on_two_ray_workers_matches_plaintext_and_counts_what_was_planned(tiny, tiny_plan, pool):
    """Prefill and two decode steps with the products and attention parts on the actors: logits within the
    suite's tolerance of the plaintext model, every stage's counts equal to the symbolic prefill split two
    ways, and the actors did the parts (the pool counts them)."""
    _, _, header, view, _ = tiny
    session = insecure_session(view, header, tiny_plan, pool=pool)
    before = pool.parts_run
    out, _ = session.forward(PROMPT[:6])
    assert pool.parts_run > before
    srv = session.server
    _, _, _, planned = srv.pipeline.symbolic_prefill(6, tiny_plan.activation_bound, tiny_plan.mask_bits, 2)
    for real, sym in zip(srv.records, planned, strict=True):
        assert {k: real.ops[k] for k in COUNTS} == {k: sym.ops[k] for k in COUNTS}, real.name
    rows = [np.asarray(out.logits)]
    for pos in (6, 7):
        step, _ = session.forward([PROMPT[pos]], pos)
        rows.append(np.asarray(step.logits))
    got = np.concatenate(rows)
    want = view_forward(view, np.array(PROMPT))
    assert np.abs(got - want).max() < LOGIT_TOL
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_parts_before_the_session_keys_are_refused(tiny, tiny_plan, pool):
    _, _, _, view, _ = tiny
    fresh = RayPool(view, tiny_plan, workers=1)  # joins the module's Ray
    try:
        with pytest.raises(HeAeroError, match="before attach"):
            fresh.map(None, None, "linear", [()])
    finally:
        fresh.close()


def test_a_dead_worker_is_the_servers_failure_not_a_refusal_and_not_a_hang(tiny, tiny_plan, pool):
    """An actor that dies mid-session (OOM killer, a lost node) raises PoolFailure naming the part: not a
    HeAeroError, whose text a served session would send the client as a refusal of its input."""
    import ray

    _, _, header, view, _ = tiny
    doomed = RayPool(view, tiny_plan, workers=1)
    try:
        session = insecure_session(view, header, tiny_plan, pool=doomed)
        session.forward(PROMPT[:2])
        ray.kill(doomed._actors[0])
        with pytest.raises(PoolFailure, match="Ray worker failed to run part") as caught:
            session.forward(PROMPT[:6])
        assert not isinstance(caught.value, HeAeroError)
    finally:
        doomed.close()


def test_an_error_inside_an_actor_and_a_hung_actor_are_pool_failures(tiny, tiny_plan, pool):
    """Ray wraps an actor's HeAeroError in a RayTaskError that is also a HeAeroError; the pool must not let
    it pass as one. A fan-out slower than part_timeout ends the same way instead of blocking the session."""
    _, _, header, view, _ = tiny
    session = insecure_session(view, header, tiny_plan, pool=pool)
    session.forward(PROMPT[:2])  # attached
    layer = session.server.pipeline.layers[0]
    with pytest.raises(PoolFailure, match="no part 'bogus'") as caught:
        pool.map(session.server.ev, layer, "bogus", [(), ()])
    assert not isinstance(caught.value, HeAeroError)
    from he_aero.client.keys import ClientKeys

    keys = ClientKeys(tiny_plan.params, rotation_steps=tiny_plan.rotation_steps).public_keys()
    slow = RayPool(view, tiny_plan, workers=1, part_timeout=1e-4)  # no actor answers within 0.1 ms
    try:
        with pytest.raises(PoolFailure, match="failed to load the session's keys"):
            slow.attach(keys)
    finally:
        slow.close()


def test_a_private_ray_with_more_workers_than_cpus_is_refused(tiny, tiny_plan, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with pytest.raises(HeAeroError, match="3 workers on a private Ray of this machine's 2 CPUs"):
        RayPool(tiny[3], tiny_plan, workers=3)


def test_more_workers_than_free_cpus_is_a_clear_error_not_a_hang(tiny, tiny_plan, pool):
    with pytest.raises(HeAeroError, match=r"of 3 workers started within 3 s; each needs one CPU"):
        RayPool(tiny[3], tiny_plan, workers=3, start_timeout=3)


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_bad_worker_counts_are_refused(tiny, tiny_plan, workers):
    with pytest.raises(HeAeroError, match="workers must be a positive integer"):
        RayPool(tiny[3], tiny_plan, workers=workers)


def test_without_ray_installed_the_error_says_how_to_get_it(tiny, tiny_plan, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(HeAeroError, match=r"he-aero\[ray\]"):
        RayPool(tiny[3], tiny_plan, workers=2)
