"""`he-aero serve` as a separate process on loopback: bad frames, timeouts, killed peers, capacity, shutdown.

One server (tiny model, test ring) serves the module; a client's keys are made once and reused by every
hand-made session (a worker does not care whose keys it gets). Each refused frame must reach the peer as an
ERROR frame, close the session, end its worker and leave the server serving.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from he_aero.protocol import Kind, Message, parse_frame, to_frame
from tests.he_aero.client.serving import RawClient, Served, gone, prefill

PROMPT = [100, 101, 102, 32, 102, 40]  # "def f("


@pytest.fixture(scope="module")
def files(tiny, tiny_plan, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    plan_file = tiny_plan.save(folder / "plan.json")
    return tiny[0], plan_file


@pytest.fixture(scope="module")
def served(files, tmp_path_factory):
    srv = Served(
        tmp_path_factory.mktemp("served"),
        *files,
        "--max-sessions",
        "3",
        "--refresh-timeout",
        "4",
        "--idle-timeout",
        "120",
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def keyed(served):
    """(a client with keys for the served offer, its SETUP frame): made once for the module."""
    from he_aero.client.client import Client
    from he_aero.client.policy import ClientPolicy

    with RawClient(served.url) as raw:
        offer = raw.recv_kind(Kind.OFFER)
    client = Client(offer, ClientPolicy(allow_insecure_for_tests=True))
    return client, client.keygen()


def _reframe(data: bytes, expect: Kind, **changes) -> bytes:
    msg = parse_frame(data, expect)
    return to_frame(
        Message(changes.get("kind", msg.kind), changes.get("session", msg.session), msg.meta, msg.parts)
    )


def _refused(served, raw: RawClient, words: str, code: str = "protocol") -> None:
    """The peer got an ERROR frame naming `words`, the session closed (1008) and its worker ended."""
    n = served.sessions_opened()
    err_code, message, close = raw.expect_error()
    assert err_code == code and words in message, message
    assert close == 1008
    assert "\n" not in message
    worker = served.session_worker(n)
    served.wait_log(rf"session {n} closed")
    assert gone(worker)
    assert served.proc.poll() is None


def test_the_service_loads_no_client_code():
    from tests.he_aero.test_imports import SECRET_NAMES, _loaded_after

    loaded = _loaded_after("he_aero.server.service", "he_aero.server.worker")
    assert not [m for m in loaded if m.startswith("he_aero.client")]
    for name in ("he_aero.server.service", "he_aero.server.worker"):
        source = open(loaded[name], encoding="utf-8").read()
        assert not [s for s in SECRET_NAMES if s in source]


def test_readiness(served):
    with urllib.request.urlopen(served.url.replace("ws://", "http://") + "/ready", timeout=10) as r:
        assert r.status == 200 and r.read().startswith(b"ready")


@pytest.mark.parametrize(
    "case",
    [
        "corrupted",
        "tokens before keys",
        pytest.param("truncated", marks=pytest.mark.slow),
        pytest.param("decode before prefill", marks=pytest.mark.slow),
        pytest.param("refresh response first", marks=pytest.mark.slow),
    ],
)
def test_bad_frames_are_refused_and_the_session_closed(served, keyed, case):
    client, setup = keyed
    tokens = client.encrypt_tokens(PROMPT, 0)
    with RawClient(served.url) as raw:
        raw.recv_kind(Kind.OFFER)
        if case == "corrupted":
            bad = bytearray(setup)
            bad[len(bad) // 2] ^= 0x01
            raw.send(bytes(bad))
            _refused(served, raw, "corrupted (SHA-256 digest mismatch)")
        elif case == "truncated":
            raw.send(setup[: len(setup) - 1000])
            _refused(served, raw, "truncated")
        elif case == "tokens before keys":
            raw.send(tokens)
            _refused(served, raw, "expected a SETUP message, got a TOKENS message")
        elif case == "decode before prefill":
            raw.send(setup)
            raw.send(client.encrypt_tokens([65], 3))
            _refused(served, raw, "a prompt starts at position 0")
        else:
            raw.send(setup)
            raw.send(_reframe(tokens, Kind.TOKENS, kind=Kind.REFRESH_RESPONSE))
            _refused(served, raw, "expected a TOKENS message, got a REFRESH_RESPONSE message")


def test_a_frame_from_another_session_is_refused(served, keyed):
    client, setup = keyed
    tokens = _reframe(client.encrypt_tokens(PROMPT, 0), Kind.TOKENS, session=bytes(range(16)))
    with RawClient(served.url) as raw:
        raw.recv_kind(Kind.OFFER)
        raw.send(setup)
        raw.send(tokens)
        _refused(served, raw, "belongs to session 000102030405")


def test_a_refresh_reply_with_the_wrong_count_is_refused(served, keyed):
    client, setup = keyed
    with RawClient(served.url) as raw:
        raw.recv_kind(Kind.OFFER)
        raw.send(setup)
        raw.send(client.encrypt_tokens(PROMPT, 0))
        reply = parse_frame(client.handle_refresh(raw.recv_kind(Kind.REFRESH_REQUEST)), Kind.REFRESH_RESPONSE)
        short = Message(Kind.REFRESH_RESPONSE, reply.session, reply.meta, reply.parts[:-1])
        raw.send(to_frame(short))
        _refused(
            served, raw, f"refresh reply has {len(reply.parts) - 1} ciphertexts, sent {len(reply.parts)}"
        )


def test_an_oversized_message_closes_the_session_with_1009(served, keyed):
    n = served.sessions_opened()
    with RawClient(served.url) as raw:
        raw.recv_kind(Kind.OFFER)
        try:
            raw.send(b"\0" * 65_000_000)  # the server's --max-message-mb is 64
        except Exception:  # the server may close while the message is still being written
            pass
        close = raw.closed_with()
    assert close is not None and close.code == 1009 and "exceeds limit" in close.reason
    served.wait_log(rf"session {n + 1} closed: refused a message over 64.0 MB")
    assert gone(served.session_worker(n + 1))


def test_a_client_that_never_answers_a_refresh_is_timed_out(served, keyed):
    client, setup = keyed
    with RawClient(served.url) as raw:
        raw.recv_kind(Kind.OFFER)
        raw.send(setup)
        raw.send(client.encrypt_tokens(PROMPT, 0))
        raw.recv_kind(Kind.REFRESH_REQUEST)
        t0 = time.monotonic()
        n = served.sessions_opened()
        code, message, close = raw.expect_error(timeout=30)
        assert code == "timeout" and "no refresh reply" in message and "within 4 s" in message
        assert 3.5 < time.monotonic() - t0 < 20
    assert close == 1008
    assert gone(served.session_worker(n))


CLIENT_SCRIPT = """
import sys, time
from websockets.sync.client import connect
ws = connect(sys.argv[1], compression=None, max_size=None, proxy=None).__enter__()
ws.recv()
ws.send(open(sys.argv[2], "rb").read())
ws.send(open(sys.argv[3], "rb").read())
print("sent", flush=True)
time.sleep(120)
"""


def test_a_client_killed_mid_request_frees_its_session(served, keyed, tmp_path):
    client, setup = keyed
    (tmp_path / "setup").write_bytes(setup)
    (tmp_path / "tokens").write_bytes(client.encrypt_tokens(PROMPT, 0))
    n = served.sessions_opened() + 1
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT_SCRIPT, served.url, str(tmp_path / "setup"), str(tmp_path / "tokens")],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout.readline().strip() == b"sent"
        worker = served.session_worker(n)
        served.wait_log(rf"session {n}: keys loaded")
    finally:
        proc.kill()  # mid-request: the worker is in the prefill, or waiting for its first refresh reply
        proc.wait()
    served.wait_log(rf"session {n} closed: client (closed the connection|left)")
    assert gone(worker)


def test_a_fourth_client_past_max_sessions_is_told_busy(served):
    raws = [RawClient(served.url) for _ in range(3)]
    try:
        for raw in raws:
            raw.recv_kind(Kind.OFFER, timeout=120)
        t0 = time.monotonic()
        with RawClient(served.url) as fourth:
            code, message, close = fourth.expect_error(timeout=10)
        assert code == "busy" and "retry later" in message and close == 1013
        assert time.monotonic() - t0 < 5
    finally:
        for raw in raws:
            raw.close()


def test_after_all_that_a_good_client_gets_correct_logits(served, keyed, tiny):
    from models.linear_view import view_forward

    client, setup = keyed
    time.sleep(0.5)
    out = prefill(served.url, client, setup, PROMPT)
    plain = view_forward(tiny[3], PROMPT)
    assert out.flag is None
    assert np.array_equal(out.logits.argmax(axis=1), plain.argmax(axis=1))
    assert np.abs(out.logits - plain).max() < 0.05


def test_sigterm_with_a_session_open_stops_cleanly(files, keyed, tmp_path):
    client, setup = keyed
    srv = Served(tmp_path, *files)
    try:
        with RawClient(srv.url) as raw:
            raw.recv_kind(Kind.OFFER)
            raw.send(setup)
            raw.send(client.encrypt_tokens(PROMPT, 0))
            raw.recv_kind(Kind.REFRESH_REQUEST)  # mid-request
            workers = srv.worker_pids()
            srv.proc.send_signal(signal.SIGTERM)
            code, message, close = raw.expect_error(timeout=30)
        assert code == "shutdown" and close == 1001
        assert srv.proc.wait(30) == 0
    finally:
        srv.stop(signal.SIGKILL)
    assert all(gone(p) for p in workers | srv.worker_pids())
    assert "stopped" in srv.log()
    assert list(srv.tmpdir.iterdir()) == []


@pytest.fixture
def ray_tmp(monkeypatch):
    """Ray's temp folder for a served test: its sockets' paths must stay below 108 bytes (AF_UNIX), so not
    under pytest's tmp_path; removed afterwards."""
    folder = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_service_with_ray_workers_serves_correct_logits(files, keyed, tmp_path, tiny, ray_tmp):
    """`he-aero serve --ray-workers 2`: each session's worker process starts a private local Ray with two
    actors before its client arrives (and says so in the log); a client's prefill matches the plaintext
    model, and the session's worker exits 0 (it stops its actors and its Ray within the grace period)."""
    from models.linear_view import view_forward

    client, setup = keyed  # keys for the same plan (a worker does not care whose keys it gets)
    srv = Served(tmp_path, *files, "--ray-workers", "2", "--warm-workers", "0")
    try:
        out = prefill(srv.url, client, setup, PROMPT)
        plain = view_forward(tiny[3], PROMPT)
        assert out.flag is None and np.abs(out.logits - plain).max() < 0.05
        srv.wait_log(r"2 Ray workers ready")
        srv.wait_log(r"session 1 closed: .*worker exit 0", timeout=30)
    finally:
        assert srv.stop() == 0


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parent = int((proc / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(parent, []).append(int(proc.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_an_actor_killed_mid_prefill_is_an_internal_error_not_the_clients_fault(
    files, keyed, tmp_path, ray_tmp
):
    """Attack on the server's own side: a Ray actor dies (OOM killer, a lost node) during a prefill. The
    client gets one line with code "internal" (not a "protocol" refusal, nor Ray's text with pids and
    addresses), and the service goes on serving."""
    from he_aero.protocol import peek_kind

    client, setup = keyed
    srv = Served(tmp_path, *files, "--ray-workers", "2", "--warm-workers", "0")
    try:
        with RawClient(srv.url) as raw:
            raw.recv_kind(Kind.OFFER)
            raw.send(setup)
            raw.send(client.encrypt_tokens(PROMPT, 0))
            worker, killed = srv.session_worker(1), False
            while True:
                data = raw.recv(timeout=120)
                if peek_kind(data) == Kind.ERROR:
                    meta = parse_frame(data, Kind.ERROR).meta
                    break
                if peek_kind(data) == Kind.REFRESH_REQUEST:
                    if not killed:
                        actor = next(
                            p
                            for p in _descendants(worker)
                            if b"PartWorker" in Path(f"/proc/{p}/cmdline").read_bytes()
                        )
                        os.kill(actor, signal.SIGKILL)
                        killed = True
                    raw.send(client.handle_refresh(data))
        assert meta["code"] == "internal" and "\n" not in meta["message"], meta
        assert "Ray" not in meta["message"] and "pid" not in meta["message"], meta
        srv.wait_log(r"Ray worker failed to run part")  # the operator gets Ray's text
        assert srv.proc.poll() is None
    finally:
        srv.stop()
