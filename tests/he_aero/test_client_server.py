"""Client and server roles: only bytes cross, the server's context is public, and every bad input (truncated,
corrupted, foreign, out of order, mismatched) is refused with a clear HeAeroError."""

import dataclasses

import numpy as np
import pytest
import tenseal.sealapi as seal

from he_aero.ckks.keys import _to_bytes
from he_aero.ckks.packing import pack
from he_aero.client import Client
from he_aero.errors import HeAeroError
from he_aero.protocol import Channel, Kind, Message, decode, encode
from he_aero.server import Server

from .conftest import small_ring_params

SESSION = bytes(range(16))


def _frame(kind=Kind.TOKENS, parts=(b"abc", b"", b"\x00" * 100)):
    return encode(Message(kind, SESSION, {"position": 0, "n_tokens": 3}, parts))


def test_frame_round_trip():
    msg = decode(_frame(), Kind.TOKENS, SESSION)
    assert msg.parts == (b"abc", b"", b"\x00" * 100) and msg.meta == {"position": 0, "n_tokens": 3}


@pytest.mark.parametrize("cut", [0, 10, 33, 40, 60, 100, -33, -1])
def test_truncated_frames_are_refused(cut):
    data = _frame()
    with pytest.raises(HeAeroError, match="truncated|not an he-aero"):
        decode(data[:cut], Kind.TOKENS, SESSION)


@pytest.mark.parametrize("where", [45, 60, 120, -40])
def test_corrupted_frames_are_refused(where):
    data = bytearray(_frame())
    data[where] ^= 0x01
    with pytest.raises(HeAeroError, match="corrupted|not valid JSON|does not add up|truncated"):
        decode(bytes(data), Kind.TOKENS, SESSION)


def test_foreign_stale_and_misrouted_frames():
    data = _frame()
    with pytest.raises(HeAeroError, match="not an he-aero message"):
        decode(b"GIF89a" + data[6:], Kind.TOKENS)
    with pytest.raises(HeAeroError, match="format version 2"):
        decode(data[:6] + b"\x00\x02" + data[8:], Kind.TOKENS)
    with pytest.raises(HeAeroError, match="expected a LOGITS message, got a TOKENS"):
        decode(data, Kind.LOGITS, SESSION)
    with pytest.raises(HeAeroError, match="another run"):
        decode(data, Kind.TOKENS, bytes(16))
    with pytest.raises(HeAeroError, match="extra bytes"):
        decode(data[:-32] + b"x" + data[-32:], Kind.TOKENS)
    with pytest.raises(HeAeroError, match="only bytes"):
        Channel().send_to_server("text", "x")


def test_server_context_is_public_and_cannot_decrypt(tiny_session):
    srv = tiny_session.server
    assert srv.secret_material() == []
    ctx = srv.ev.server
    assert not any(isinstance(v, seal.SecretKey) for v in vars(ctx).values())
    with pytest.raises(HeAeroError, match="cannot decrypt"):
        ctx.decrypt(None)
    with pytest.raises(HeAeroError, match="only be created by the client"):
        ctx.create_rotation_keys([1])
    # SEAL itself refuses: a Decryptor needs a SecretKey, and the server has none to give it
    with pytest.raises(TypeError):
        seal.Decryptor(ctx.seal_context, ctx.public_key)
    # the SETUP bytes a server is built from carry no secret key: no 64-byte run of the client's serialised
    # secret key occurs in them
    client = Client(srv.offer())
    setup = client.keygen()
    secret = _to_bytes(client._keys._secret_key)
    assert all(secret[i : i + 64] not in setup for i in range(64, len(secret) - 64, len(secret) // 16))


def test_stage_order_is_enforced(tiny):
    _, _, header, view, cal = tiny
    srv = Server(view, cal, header, small_ring_params())
    with pytest.raises(HeAeroError, match="receive_setup"):
        srv.prefill(b"")
    client = Client(srv.offer())
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


def test_mismatched_calibration_is_refused(tiny):
    _, _, header, view, cal = tiny
    with pytest.raises(HeAeroError, match="he-aero calibrate"):
        Server(view, cal, {**header, "weights_sha256": "f" * 64}, small_ring_params())
    short = dataclasses.replace(cal, layers=cal.layers[:1])
    with pytest.raises(HeAeroError, match="wrong calibration"):
        Server(view, short, header, small_ring_params())


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
    other = Client(s.server.offer())
    other.keygen()
    with pytest.raises(HeAeroError, match="another run"):
        s.server.prefill(other.encrypt_tokens([65, 66], 0))
    # a well-framed message whose payload is not a SEAL ciphertext: SEAL's loader refuses it, we say so
    msg = decode(good, Kind.TOKENS, s.client.session)
    junk = encode(Message(Kind.TOKENS, s.client.session, msg.meta, (b"\x00" * 64,) * len(msg.parts)))
    with pytest.raises(HeAeroError, match="does not load"):
        s.server.prefill(junk)
    # a prompt must start at position 0
    with pytest.raises(HeAeroError, match="position"):
        s.server.prefill(s.client.encrypt_tokens([65], 3))


def _logits_frame(client, values, n, session, keys=None):
    keys = keys or client._keys
    layout = client.token_layout(n)
    blobs = tuple(_to_bytes(keys.encrypt(v)) for v in pack(values, layout))
    return encode(Message(Kind.LOGITS, session, {"position": 0, "n_tokens": n, "layout": "features"}, blobs))


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
    other = Client(tiny_session.server.offer())
    other.keygen()
    out = client.decrypt_logits(_logits_frame(client, fine, 2, client.session, keys=other._keys))
    assert "foreign key" in out.flag
    with pytest.raises(HeAeroError, match="another run"):
        client.decrypt_logits(_logits_frame(other, fine, 2, other.session))
    assert client.decryptions["logits"] >= 6
