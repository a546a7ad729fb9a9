"""Client and server roles: only bytes cross, the server's context is public, and every bad input (truncated,
corrupted, foreign, out of order, mismatched) is refused with a clear HeAeroError."""

import gc
import sys

import numpy as np
import pytest
import tenseal.sealapi as seal

from he_aero.ckks.backend import from_bytes, to_bytes
from he_aero.ckks.packing import pack
from he_aero.client.client import Client
from he_aero.client.keys import ClientKeys
from he_aero.client.policy import ClientPolicy
from he_aero.errors import HeAeroError
from he_aero.generation import GenerationConfig
from he_aero.protocol import Channel, Kind, Message, parse_frame, to_frame
from he_aero.server.server import Server
from tests.he_aero.conftest import insecure_session

TEST_POLICY = ClientPolicy(allow_insecure_for_tests=True)

SESSION = bytes(range(16))


def _frame(kind=Kind.TOKENS, parts=(b"abc", b"", b"\x00" * 100)):
    return to_frame(Message(kind, SESSION, {"position": 0, "n_tokens": 3}, parts))


def test_frame_round_trip():
    msg = parse_frame(_frame(), Kind.TOKENS, SESSION)
    assert msg.parts == (b"abc", b"", b"\x00" * 100) and msg.meta == {"position": 0, "n_tokens": 3}


@pytest.mark.parametrize("cut", [0, 10, 33, 40, 60, 100, -33, -1])
def test_truncated_frames_are_refused(cut):
    data = _frame()
    with pytest.raises(HeAeroError, match="truncated|not an he-aero"):
        parse_frame(data[:cut], Kind.TOKENS, SESSION)


@pytest.mark.parametrize("where", [45, 60, 120, -40])
def test_corrupted_frames_are_refused(where):
    data = bytearray(_frame())
    data[where] ^= 0x01
    with pytest.raises(HeAeroError, match="corrupted|not valid JSON|does not add up|truncated"):
        parse_frame(bytes(data), Kind.TOKENS, SESSION)


def test_foreign_stale_and_misrouted_frames():
    data = _frame()
    with pytest.raises(HeAeroError, match="not an he-aero message"):
        parse_frame(b"GIF89a" + data[6:], Kind.TOKENS)
    with pytest.raises(HeAeroError, match="format version 2"):
        parse_frame(data[:6] + b"\x00\x02" + data[8:], Kind.TOKENS)
    with pytest.raises(HeAeroError, match="expected a LOGITS message, got a TOKENS"):
        parse_frame(data, Kind.LOGITS, SESSION)
    with pytest.raises(HeAeroError, match="another run"):
        parse_frame(data, Kind.TOKENS, bytes(16))
    with pytest.raises(HeAeroError, match="extra bytes"):
        parse_frame(data[:-32] + b"x" + data[-32:], Kind.TOKENS)
    with pytest.raises(HeAeroError, match="only bytes"):
        Channel().send_to_server("text", "x")


def _reachable(root, limit: int = 200_000) -> list:
    """Every object reachable from `root` through references (gc.get_referents), depth first, not entering
    classes, modules or module namespaces.

    Why not those: any function reaches its module's globals, and from there the whole interpreter, pytest's
    fixture cache included (which holds the in-process test client). A CI run found that path, through
    hypothesis' gc callback, in a run where the scan order reached it before the limit; it says nothing about
    what the server holds (module state is shared by both roles in this in-process harness)."""
    modules = [m for m in list(sys.modules.values()) if m is not None]
    skip = {id(m) for m in modules} | {id(vars(m)) for m in modules if hasattr(m, "__dict__")}
    seen, queue, out = {id(root)} | skip, [root], []
    while queue and len(out) < limit:
        obj = queue.pop()
        out.append(obj)
        for ref in gc.get_referents(obj):
            if id(ref) not in seen and not isinstance(ref, type):
                seen.add(id(ref))
                queue.append(ref)
    return out


SECRET_TYPES = (seal.SecretKey, seal.Decryptor, seal.KeyGenerator, ClientKeys, Client)


def test_no_object_reachable_from_the_server_can_decrypt(tiny, tiny_plan):
    """A deep scan of the server's object graph after a whole session: no secret key, decryptor, key
    generator or client object is reachable (the in-process harness holds both roles; the server must not)."""
    _, _, header, view, _ = tiny
    session = insecure_session(view, header, tiny_plan)
    session.generate(b"abc", GenerationConfig(max_new_tokens=2))
    objs = _reachable(session.server)
    assert len(objs) < 200_000  # the whole graph was scanned, not a truncated part of it
    assert len(objs) > 1000  # the scan reaches the evaluator, caches, plaintexts
    found = [type(o).__name__ for o in objs if isinstance(o, SECRET_TYPES)]
    assert found == []
    # the same scan finds the client's secret key from the client: the check can fail
    assert any(isinstance(o, seal.SecretKey) for o in _reachable(session.client))


def test_setup_parts_load_as_exactly_the_three_public_key_types(tiny_session):
    srv = tiny_session.server
    client = Client(srv.offer(), TEST_POLICY)
    msg = parse_frame(client.keygen(), Kind.SETUP)
    ctx = client._keys.seal_context
    types = (seal.PublicKey, seal.RelinKeys, seal.GaloisKeys)
    loaded = [from_bytes(t, ctx, b) for t, b in zip(types, msg.parts, strict=True)]
    assert [type(x) for x in loaded] == [seal.PublicKey, seal.RelinKeys, seal.GaloisKeys]
    assert len(msg.parts) == 3


def test_no_setup_part_contains_the_secret_key_once_decompressed(tiny_session):
    """SEAL compresses what it saves, so the key's bytes are searched for after decompression: no 64-byte
    window of the secret key's words (NTT form: pseudo-random) occurs in any decompressed SETUP part; the
    same search finds it in a SETUP with the key appended (the check can fail)."""
    from he_aero.ckks.backend import to_bytes, uncompressed

    client = Client(tiny_session.server.offer(), TEST_POLICY)
    parts = parse_frame(client.keygen(), Kind.SETUP).parts
    key = uncompressed(to_bytes(client._keys._secret_key))
    windows = [key[i : i + 64] for i in range(len(key) // 4, len(key) - 64, len(key) // 8)]
    assert len(windows) >= 4 and all(len(set(w)) > 16 for w in windows)  # varied bytes, not runs of 0
    plain = [uncompressed(p) for p in parts]
    assert sum(map(len, plain)) > 10 * sum(map(len, parts)) / 11  # decompressed: at least as large
    assert not any(w in p for w in windows for p in plain)
    leaky = [*plain, uncompressed(to_bytes(client._keys._secret_key))]
    assert all(any(w in p for p in leaky) for w in windows)


def test_stage_order_is_enforced(tiny, tiny_plan):
    _, _, header, view, _ = tiny
    srv = Server(view, header, tiny_plan, allow_insecure_for_tests=True)
    with pytest.raises(HeAeroError, match="receive_setup"):
        srv.prefill(b"")
    client = Client(srv.offer(), TEST_POLICY)
    with pytest.raises(HeAeroError, match="run keygen"):
        client.encrypt_tokens([1, 2], 0)
    srv.receive_setup(client.keygen())
    with pytest.raises(HeAeroError, match="prefill\\(\\) has not run"):
        srv.decode(client.encrypt_tokens([1], 0))
    with pytest.raises(HeAeroError, match="context window"):
        client.encrypt_tokens([1] * 9, 0)
    with pytest.raises(HeAeroError, match="tokens must lie"):
        client.encrypt_tokens([256], 0)
    with pytest.raises(HeAeroError, match="empty"):
        client.encrypt_tokens([], 0)


def test_a_plan_for_other_weights_or_an_insecure_ring_is_refused(tiny, tiny_plan):
    _, _, header, view, _ = tiny
    with pytest.raises(HeAeroError, match="he-aero plan"):
        Server(view, {**header, "weights_sha256": "f" * 64}, tiny_plan, allow_insecure_for_tests=True)
    with pytest.raises(HeAeroError, match="below 128-bit security"):
        Server(view, header, tiny_plan)


def test_the_client_refuses_an_insecure_offer_before_making_keys(tiny_session):
    offer = tiny_session.server.offer()  # N=2048, a 400-bit chain: far below 128-bit security
    with pytest.raises(HeAeroError, match="refusing the server's offer.*128-bit"):
        Client(offer)


def test_the_client_refuses_weak_hiding_and_other_weights(tiny_session):
    offer = tiny_session.server.offer()
    with pytest.raises(HeAeroError, match=r"bits over a session .*, this client requires >= 90$"):
        Client(offer, ClientPolicy(min_session_hiding_bits=90, allow_insecure_for_tests=True))
    with pytest.raises(HeAeroError, match="this client expects 000000000000"):
        Client(offer, ClientPolicy(expect_model_sha256="0" * 64, allow_insecure_for_tests=True))


def test_tampered_and_foreign_messages_reach_no_kernel(tiny_session):
    s = tiny_session
    good = s.client.encrypt_tokens([65, 66], 0)
    corrupted = bytearray(good)
    corrupted[len(good) // 2] ^= 0xFF
    with pytest.raises(HeAeroError, match="corrupted"):
        s.server.prefill(bytes(corrupted))
    with pytest.raises(HeAeroError, match="truncated"):
        s.server.prefill(good[: len(good) // 2])
    # a client from another run (its own keys and session) is refused by session id
    other = Client(s.server.offer(), TEST_POLICY)
    other.keygen()
    with pytest.raises(HeAeroError, match="another run"):
        s.server.prefill(other.encrypt_tokens([65, 66], 0))
    # a well-framed message whose payload is not a SEAL ciphertext: SEAL's loader refuses it, we say so
    msg = parse_frame(good, Kind.TOKENS, s.client.session)
    junk = to_frame(Message(Kind.TOKENS, s.client.session, msg.meta, (b"\x00" * 64,) * len(msg.parts)))
    with pytest.raises(HeAeroError, match="does not load"):
        s.server.prefill(junk)
    # a prompt must start at position 0
    with pytest.raises(HeAeroError, match="position"):
        s.server.prefill(s.client.encrypt_tokens([65], 3))


def _logits_frame(client, values, n, session, keys=None):
    keys = keys or client._keys
    layout = client.token_layout(n)
    blobs = tuple(to_bytes(keys.encrypt(v)) for v in pack(values, layout))
    return to_frame(
        Message(Kind.LOGITS, session, {"position": 0, "n_tokens": n, "layout": "features"}, blobs)
    )


def test_client_flags_implausible_logits(tiny_session):
    client = tiny_session.client
    lo, hi = client.offer.logit_domain
    rng = np.random.default_rng(0)
    fine = rng.uniform(lo / 2, hi / 2, (2, 256))
    out = client.decrypt_logits(_logits_frame(client, fine, 2, client.session))
    assert out.flag is None
    np.testing.assert_allclose(out.logits, fine, atol=1e-4)
    wild = fine.copy()
    wild[1, 7] = hi * 10  # what a polynomial evaluated outside its domain produces
    out = client.decrypt_logits(_logits_frame(client, wild, 2, client.session))
    assert "leave the calibrated range" in out.flag
    # ciphertexts made under another key but framed with this session: decrypt to noise, flagged
    other = Client(tiny_session.server.offer(), TEST_POLICY)
    other.keygen()
    out = client.decrypt_logits(_logits_frame(client, fine, 2, client.session, keys=other._keys))
    assert "foreign key" in out.flag
    with pytest.raises(HeAeroError, match="another run"):
        client.decrypt_logits(_logits_frame(other, fine, 2, other.session))
    assert client.decryptions["logits"] >= 6


def test_the_client_holds_the_server_to_its_offered_cap(tiny, tiny_plan):
    """A server that asks for more refreshes than its offer's cap (which the client's hiding check assumed)
    is refused before anything is decrypted (found by review: the client did not count)."""
    import dataclasses
    import math

    from he_aero.server.server import Server

    _, _, header, view, _ = tiny
    bits = math.floor(tiny_plan.hiding.per_polynomial_bits) - 1
    plan = dataclasses.replace(tiny_plan, session_hiding_bits=bits)
    cap = plan.max_refresh_polynomials
    assert 2 <= cap <= 3
    srv = Server(view, header, plan, allow_insecure_for_tests=True)
    client = Client(srv.offer(), ClientPolicy(min_session_hiding_bits=bits, allow_insecure_for_tests=True))
    client.keygen()
    with pytest.raises(
        HeAeroError, match=f"^client: the server asks to refresh {cap + 1} more polynomials after 0"
    ):
        client.refresh_values([b"x"] * (cap + 1))
    assert client.decryptions["refresh"] == 0
