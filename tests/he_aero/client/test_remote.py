"""The remote client against `he-aero serve` in another process on loopback (tiny model, test ring), and
against a fake server that offers what a client must refuse."""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import replace

import pytest

from he_aero.client.policy import ClientPolicy
from he_aero.client.remote import run_remote, server_url
from he_aero.errors import HeAeroError
from he_aero.generation import GenerationConfig
from he_aero.protocol import RuntimeOffer, to_frame
from he_aero.wan import AERO_WAN, Link, estimate, wan_seconds
from tests.he_aero.client.serving import Served, gone

PROMPT = b"def f("
TEST_POLICY = ClientPolicy(allow_insecure_for_tests=True)


@pytest.fixture(scope="module")
def files(tiny, tiny_plan, tmp_path_factory):
    return tiny[0], tiny_plan.save(tmp_path_factory.mktemp("remote") / "plan.json")


@pytest.fixture(scope="module")
def served(files, tmp_path_factory):
    srv = Served(tmp_path_factory.mktemp("served"), *files, "--max-sessions", "3", "--warm-workers", "2")
    yield srv
    srv.stop()


def test_server_addresses():
    assert server_url("example.org:9000") == "ws://example.org:9000"
    assert server_url("example.org") == "ws://example.org:8765"
    assert server_url("wss://example.org:443/x") == "wss://example.org:443/x"
    assert server_url("[::1]:9000") == "ws://[::1]:9000"
    for bad in ("", "http://x:1", "x:0", "x:port"):
        with pytest.raises(HeAeroError, match="server address|empty"):
            server_url(bad)


def test_the_wan_estimate_is_its_formula():
    # 10 MB up, 2 MB down, 5 rounds, 3 s measured: 3 + 5 * 0.08 + 8 * 12e6 / 100e6 = 4.36 s
    assert wan_seconds(3.0, 10_000_000, 2_000_000, 5) == pytest.approx(4.36)
    assert wan_seconds(1.0, 0, 0, 2, Link(1e9, 0.01), handshake=1) == pytest.approx(1.03)
    traffic = {
        "bytes_by_purpose": {
            "setup": {"to_server": 40_000_000, "to_client": 600},
            "prefill": {"to_server": 1_000_000, "to_client": 500_000},
            "refresh:prefill": {"to_server": 1_000_000, "to_client": 1_000_000},
        },
        "rounds_by_purpose": {"setup": 1, "prefill": 1, "refresh:prefill": 4},
    }
    est = estimate(traffic, {"setup": 2.0, "prefill": 5.0}, AERO_WAN)
    assert est["phases"]["prefill"]["rounds"] == 5
    assert est["phases"]["prefill"]["wan_s"] == pytest.approx(5.0 + 5 * 0.08 + 8 * 3.5e6 / 1e8, abs=1e-3)
    assert est["phases"]["setup"]["wan_s"] == pytest.approx(2.0 + 2 * 0.08 + 8 * 40_000_600 / 1e8, abs=1e-3)
    assert est["total"]["rounds"] == 6


# --- a fake server: the client refuses before making keys ---------------------------------------------------
def _offer(**changes) -> RuntimeOffer:
    from he_aero.ckks.hiding import MASK_BITS
    from he_aero.plan import load_plan

    p = load_plan().params  # the shipped ring: 128-bit secure
    base = RuntimeOffer(
        poly_modulus_degree=p.poly_modulus_degree,
        coeff_mod_bit_sizes=p.coeff_mod_bit_sizes,
        scale_bits=p.scale_bits,
        rotation_steps=(1, 2),
        block=64,
        context=64,
        vocab=256,
        d_model=128,
        logit_domain=(-30.0, 30.0),
        refresh_bound=154.0,
        mask_bits=MASK_BITS,
        max_refresh_polynomials=8192,
        model_sha256="ab" * 32,
        plan_sha256="cd" * 32,
        decode_rows=True,
    )
    return replace(base, **changes)


@pytest.mark.parametrize(
    "changes, policy, words",
    [
        ({"poly_modulus_degree": 1024, "coeff_mod_bit_sizes": (30, 40, 40)}, ClientPolicy(), "refusing"),
        ({"mask_bits": 80}, ClientPolicy(), "its refresh hides"),
        ({}, ClientPolicy(expect_model_sha256="ef" * 32), "it serves weights abababababab"),
        ({"block": 48}, ClientPolicy(), "block 48 is not a valid layout"),
    ],
)
def test_a_crafted_offer_is_refused_before_keys(monkeypatch, changes, policy, words):
    from websockets.sync.server import serve

    import he_aero.client.client as client_module

    def no_keys(*args, **kwargs):
        raise AssertionError("keys were made for an offer the policy should refuse")

    monkeypatch.setattr(client_module, "ClientKeys", no_keys)
    received = []

    def handler(ws):
        ws.send(to_frame(_offer(**changes).to_message()))
        try:
            for message in ws:
                received.append(message)
        except Exception:
            pass

    with serve(handler, "127.0.0.1", 0, compression=None) as fake:
        thread = threading.Thread(target=fake.serve_forever, daemon=True)
        thread.start()
        port = fake.socket.getsockname()[1]
        with pytest.raises(HeAeroError, match=words):
            run_remote(f"127.0.0.1:{port}", PROMPT, GenerationConfig(max_new_tokens=1), policy)
        fake.shutdown()
    assert received == []  # not even a SETUP left the client


def test_no_server_is_one_clear_line():
    with pytest.raises(HeAeroError, match=r"server ws://127\.0\.0\.1:9: cannot connect"):
        run_remote("127.0.0.1:9", PROMPT, GenerationConfig(max_new_tokens=1), TEST_POLICY)


# --- against `he-aero serve` --------------------------------------------------------------------------------
def test_a_remote_run_gives_the_in_process_tokens(served, files, tiny_session):
    config = GenerationConfig(max_new_tokens=3, verify=True)
    streamed, stages = [], []
    res = run_remote(
        served.url,
        PROMPT,
        config,
        TEST_POLICY,
        progress=stages.append,
        on_token=streamed.append,
        checkpoint=files[0],
    )
    local = tiny_session.generate(PROMPT, config)
    assert res.tokens == local.tokens == streamed
    assert res.top1_agreement == 1.0 and res.flag is None
    assert res.continuation == res.plaintext_continuation
    assert stages[:4] == ["embed", "layer 0", "layer 1", "lm_head"] and len(stages) == 12
    assert [r.name for r in res.prefill_stages] == stages[:4]
    # the wire: the same frames as in process, counted at the socket, plus the server's PROGRESS frames
    t = res.traffic
    assert t["rounds_by_purpose"] == local.traffic["rounds_by_purpose"]
    assert t["messages"]["PROGRESS"] == 12 and t["messages"]["REFRESH_REQUEST"] == t["rounds"] - 3 - 1
    setup = local.traffic["bytes_by_purpose"]["setup"]["to_server"]
    assert abs(t["bytes_by_purpose"]["setup"]["to_server"] - setup) < 0.01 * setup
    wire = res.to_dict()["wire"]
    assert wire["total"]["bytes_up"] == t["bytes_client_to_server"]
    assert wire["total"]["wan_s"] > wire["total"]["measured_s"]
    assert "over a WAN (100 Mbit/s, 80 ms round trip)" in res.summary()


def test_verify_refuses_a_server_with_other_weights(served):
    with pytest.raises(HeAeroError, match="verify needs the served weights"):
        run_remote(served.url, PROMPT, GenerationConfig(max_new_tokens=1, verify=True), TEST_POLICY)


@pytest.mark.slow
def test_three_clients_at_once_and_a_fourth_is_busy(served, tiny_session):
    config = GenerationConfig(max_new_tokens=2)
    prompts = [b"def f(", b"import", b"class "]
    results, errors = {}, []

    def run(prompt):
        try:
            results[prompt] = run_remote(served.url, prompt, config, TEST_POLICY)
        except Exception as exc:  # reported below
            errors.append(exc)

    before = served.sessions_opened()
    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for th in threads:
        th.start()
    served.wait_log(rf"session {before + 3} opened", 120)
    with pytest.raises(HeAeroError, match="busy.*retry later"):
        run_remote(served.url, PROMPT, config, TEST_POLICY)
    for th in threads:
        th.join(600)
    assert not errors, errors
    for prompt in prompts:
        assert results[prompt].tokens == tiny_session.generate(prompt, config).tokens


def test_the_server_killed_mid_request_is_one_line_naming_it(files, tmp_path):
    srv = Served(tmp_path, *files)
    caught = []

    def run():
        try:
            run_remote(srv.url, PROMPT, GenerationConfig(max_new_tokens=2), TEST_POLICY)
        except HeAeroError as exc:
            caught.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        srv.wait_log(r"session 1: keys loaded", 120)
        time.sleep(0.5)  # inside the prefill
        workers = srv.worker_pids()
        srv.stop(signal.SIGKILL)
    finally:
        thread.join(120)
        srv.stop(signal.SIGKILL)
    assert len(caught) == 1
    message = str(caught[0])
    assert message.startswith(f"server {srv.url}: ") and "connection lost" in message and "\n" not in message
    assert all(gone(p) for p in workers)  # the workers die with the front end (PR_SET_PDEATHSIG)


def test_the_cli_runs_remotely_with_the_in_process_tokens(served, files, tiny_session, tmp_path):
    """`he-aero encrypt-infer PROMPT --server URL`: same tokens, JSON and exit code as in process; tokens
    stream as they are decrypted; --plan is refused with --server (the server holds it)."""
    from click.testing import CliRunner

    from he_aero.cli import cli

    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(PROMPT)
    out = tmp_path / "out.json"
    args = ["encrypt-infer", str(prompt), "--server", served.url, "--checkpoint", str(files[0]), "--verify"]
    args += ["--allow-insecure-for-tests", "--max-new-tokens", "2", "--no-progress", "--json", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    local = tiny_session.generate(PROMPT, GenerationConfig(max_new_tokens=2))
    assert data["tokens"] == local.tokens and data["top1_agreement"] == 1.0
    assert "token 1: " in res.output and "token 2: " in res.output  # streamed
    bad = CliRunner().invoke(cli, [*args[:4], "--plan", str(files[1])])
    assert bad.exit_code == 2 and "--plan" in bad.output and "server holds the plan" in bad.output
