"""The frame format byte by byte, every refusal of `decode` with its message, and the byte accounting.

Frames here are built by hand from the layout in he_aero/protocol.py's docstring (struct + hashlib), an
oracle independent of `encode`."""

import hashlib
import json
import struct

import pytest

from he_aero.errors import HeAeroError
from he_aero.protocol import (
    NO_SESSION,
    Channel,
    Kind,
    Message,
    RuntimeOffer,
    Traffic,
    meta_field,
    parse_frame,
    to_frame,
)

SESSION = bytes(range(16))
HEAD = 6 + 2 + 1 + 1 + 16 + 4 + 4  # magic, version, kind, reserved, session, meta_len, n_parts


def frame(
    meta=b"{}",
    parts=(),
    kind=3,
    version=1,
    magic=b"HEAERO",
    session=SESSION,
    n_parts=None,
    meta_len=None,
    reserved=0,
    tail=b"",
    digest=None,
):
    """A frame from its fields; the digest covers everything before it unless given."""
    body = (
        magic
        + struct.pack(">HBB", version, kind, reserved)
        + session
        + struct.pack(
            ">II", len(meta) if meta_len is None else meta_len, len(parts) if n_parts is None else n_parts
        )
        + meta
        + b"".join(struct.pack(">Q", len(p)) + p for p in parts)
        + tail
    )
    return body + (hashlib.sha256(body).digest() if digest is None else digest)


def test_encode_writes_the_documented_layout():
    msg = Message(Kind.LOGITS, SESSION, {"b": 1, "a": [2, "é"]}, (b"xy", b"", bytearray(b"\x00\x01")))
    meta = json.dumps({"a": [2, "é"], "b": 1}, sort_keys=True, separators=(",", ":")).encode()
    assert meta == b'{"a":[2,"\\u00e9"],"b":1}'
    assert to_frame(msg) == frame(meta, (b"xy", b"", b"\x00\x01"), kind=4)
    assert len(to_frame(Message(Kind.OFFER, NO_SESSION, {}))) == HEAD + 2 + 32


@pytest.mark.parametrize("n", [0, 15, 17])
def test_encode_refuses_a_session_id_that_is_not_16_bytes(n):
    with pytest.raises(HeAeroError, match=f"^protocol: session id must be 16 bytes, got {n}$"):
        to_frame(Message(Kind.TOKENS, bytes(n), {}))


def test_decode_returns_kind_session_meta_and_parts():
    data = frame(b'{"n":3}', (b"abc", b"", b"\x00" * 9, b"z"), kind=6)
    for buf in (data, bytearray(data), memoryview(data)):
        msg = parse_frame(buf, Kind.REFRESH_RESPONSE, SESSION)
        assert msg == Message(Kind.REFRESH_RESPONSE, SESSION, {"n": 3}, (b"abc", b"", b"\x00" * 9, b"z"))
        assert msg.kind is Kind.REFRESH_RESPONSE and all(type(p) is bytes for p in msg.parts)


def test_decode_without_a_session_accepts_any_session():
    other = bytes(range(100, 116))
    assert parse_frame(frame(session=other), Kind.TOKENS).session == other


def test_the_shortest_frame_is_a_header_and_a_digest():
    data = frame(b"")  # metadata of length 0: not JSON, but not truncated either
    assert len(data) == HEAD + 32
    with pytest.raises(HeAeroError, match="^protocol: TOKENS message: metadata is not valid JSON"):
        parse_frame(data, Kind.TOKENS)
    with pytest.raises(
        HeAeroError,
        match=rf"^protocol: TOKENS message truncated \({HEAD + 31} bytes, shorter than a header\)$",
    ):
        parse_frame(data[:-1], Kind.TOKENS)


def test_non_bytes_are_refused():
    with pytest.raises(HeAeroError, match="^protocol: LOGITS message must be bytes, got str$"):
        parse_frame("HEAERO", Kind.LOGITS)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"magic": b"GIF89a"}, r"is not an he-aero message \(bad magic b'GIF89a'\)$"),
        (
            {"version": 2},
            r"has format version 2, this he-aero speaks 1 "
            r"\(client and server must run the same he-aero version\)$",
        ),
        ({"meta_len": 3, "parts": ()}, r"truncated \(metadata runs past the end\)$"),  # 2 bytes of meta
        ({"meta_len": 1000}, r"truncated \(metadata runs past the end\)$"),
        ({"n_parts": 3}, r"truncated \(part 1 of 3 missing\)$"),  # one part present
        (
            {"tail": b"xyz"},
            r"is truncated or corrupted \(3 extra bytes: the frame's lengths do not add up\)$",
        ),
        ({"digest": bytes(32)}, r"is corrupted \(SHA-256 digest mismatch\)$"),
        ({"kind": 9}, r": unknown message kind 9$"),
        ({"kind": 4}, r"^protocol: expected a TOKENS message, got a LOGITS message$"),
        (
            {"session": bytes(16)},
            r"belongs to session 000000000000\.\.\., this side runs 000102030405\.\.\. "
            r"\(keys or ciphertexts from another run\)$",
        ),
        ({"meta": b"[1, 2]"}, r": metadata must be a JSON object$"),
        ({"meta": b"{\xff}"}, r": metadata is not valid JSON \("),
        ({"meta": b"{nope}"}, r": metadata is not valid JSON \("),
    ],
)
def test_each_refusal_names_its_reason(kw, message):
    kw = {"parts": (b"abc",), **kw}
    with pytest.raises(HeAeroError, match=message) as err:
        parse_frame(frame(**kw), Kind.TOKENS, SESSION)
    assert str(err.value).startswith("protocol: ")


def test_a_length_field_that_overshoots_is_too_short():
    good = frame(b"{}", (b"abcdef",))
    cut = bytearray(good)
    cut[HEAD + 2 + 7] = 7  # the part claims 7 bytes, 6 follow (then the digest)
    with pytest.raises(
        HeAeroError, match=r"truncated or corrupted \(too short: the frame's lengths do not add up\)"
    ):
        parse_frame(bytes(cut), Kind.TOKENS)


def test_a_part_length_that_reaches_into_the_digest_is_caught_before_reading_it():
    # 2 parts announced, 1 present: not 8 + 32 bytes left for part 1's length and the digest
    data = frame(b"{}", (b"abc",), n_parts=2)
    with pytest.raises(HeAeroError, match=r"truncated \(part 1 of 2 missing\)"):
        parse_frame(data, Kind.TOKENS)
    exact = frame(b"{}", (b"",))  # part 0: its 8-byte length, then exactly the digest
    assert parse_frame(exact, Kind.TOKENS).parts == (b"",)


def test_the_reserved_byte_is_carried_but_not_interpreted():
    assert parse_frame(frame(reserved=7), Kind.TOKENS).meta == {}


def test_meta_field_returns_typed_values_and_names_missing_ones():
    msg = Message(Kind.TOKENS, SESSION, {"n": 0, "flag": True, "name": "x", "x": 1.5, "none": None})
    assert meta_field(msg, "n") == 0
    assert meta_field(msg, "name", str) == "x"
    assert meta_field(msg, "x", (int, float)) == 1.5
    for key, kind in [("missing", int), ("flag", int), ("name", int), ("none", int), ("x", int)]:
        with pytest.raises(
            HeAeroError, match=rf"^protocol: TOKENS message: field '{key}' missing or of the wrong type$"
        ):
            meta_field(msg, key, kind)


def test_traffic_sums_by_direction_and_purpose():
    t = Traffic()
    t.to_server["setup"] += 100
    t.to_server["tokens"] += 20
    t.to_client["logits"] += 7
    t.to_client["setup"] += 3
    t.rounds["prefill"] += 2
    t.rounds["setup"] += 1
    t.messages["SETUP"] += 1
    assert (t.bytes_client_to_server, t.bytes_server_to_client, t.total_rounds) == (120, 10, 3)
    assert t.summary() == {
        "bytes_client_to_server": 120,
        "bytes_server_to_client": 10,
        "bytes_by_purpose": {
            "logits": {"to_server": 0, "to_client": 7},
            "setup": {"to_server": 100, "to_client": 3},
            "tokens": {"to_server": 20, "to_client": 0},
        },
        "rounds": 3,
        "rounds_by_purpose": {"prefill": 2, "setup": 1},
        "messages": {"SETUP": 1},
    }
    assert list(t.summary()["bytes_by_purpose"]) == ["logits", "setup", "tokens"]


def test_channel_counts_bytes_messages_and_rounds():
    ch = Channel()
    tokens, logits = frame(kind=3), frame(kind=4)
    assert ch.send_to_server(tokens, "prefill") is tokens
    assert ch.send_to_server(tokens, "prefill") is tokens
    assert ch.send_to_client(logits, "prefill") is logits
    ch.send_to_client(b"x" * (HEAD - 1), "noise")  # shorter than a header: bytes counted, no message
    unknown = b"x" * 8 + bytes([99]) + b"x" * (HEAD - 9)  # a header-sized frame of kind 99
    ch.send_to_client(unknown, "noise")
    ch.send_to_client(unknown, "noise")
    ch.round("prefill")
    ch.round("prefill")
    tr = ch.traffic
    assert tr.to_server == {"prefill": 2 * len(tokens)}
    assert tr.to_client == {"prefill": len(logits), "noise": 3 * HEAD - 1}
    assert tr.messages == {"TOKENS": 2, "LOGITS": 1, "unknown": 2}
    assert tr.rounds == {"prefill": 2}


def test_channel_refuses_non_bytes_and_applies_the_tamper_hook():
    ch = Channel(tamper=lambda b: b[::-1])
    assert ch.send_to_server(b"abc", "x") == b"cba" and ch.send_to_client(b"de", "y") == b"ed"
    assert ch.traffic.to_server == {"x": 3} and ch.traffic.to_client == {"y": 2}
    for bad in ("text", bytearray(b"abc"), memoryview(b"abc")):
        with pytest.raises(HeAeroError, match="^protocol: only bytes cross the channel$"):
            Channel().send_to_client(bad, "x")


def test_offer_round_trips_through_a_frame():
    offer = RuntimeOffer(
        poly_modulus_degree=8192,
        coeff_mod_bit_sizes=(37, 36, 36, 32, 32, 37),
        scale_bits=32,
        rotation_steps=(1, -8, 64),
        block=64,
        context=64,
        vocab=256,
        d_model=128,
        logit_domain=(-12.5, 30.0),
        refresh_bound=64.0,
        mask_bits=107,
        max_refresh_polynomials=13589,
        model_sha256="ab" * 32,
        plan_sha256="cd" * 32,
        decode_rows=True,
    )
    msg = offer.to_message()
    assert msg.kind is Kind.OFFER and msg.session == NO_SESSION and msg.parts == ()
    assert msg.meta["coeff_mod_bit_sizes"] == [37, 36, 36, 32, 32, 37] and msg.meta["logit_domain"] == [
        -12.5,
        30.0,
    ]
    assert msg.meta["decode_rows"] is True and len(msg.meta) == 15
    assert RuntimeOffer.from_message(parse_frame(to_frame(msg), Kind.OFFER)) == offer
    bad = Message(Kind.OFFER, NO_SESSION, {k: v for k, v in msg.meta.items() if k != "block"})
    with pytest.raises(
        HeAeroError, match=r"^protocol: OFFER message: missing or malformed field \('block'\)"
    ):
        RuntimeOffer.from_message(bad)


def test_peek_kind_reads_the_header_only():
    from he_aero.protocol import peek_kind

    assert peek_kind(frame(kind=5)) is Kind.REFRESH_REQUEST
    assert peek_kind(frame(kind=8, digest=bytes(32))) is Kind.PROGRESS  # nothing past the header is checked
    header = frame(kind=7)[:HEAD]
    assert peek_kind(header) is Kind.ERROR  # exactly a header is enough
    assert peek_kind(header[:-1]) is None
    assert peek_kind(frame(magic=b"HEAERX")) is None
    assert peek_kind(frame(version=2)) is None
    assert peek_kind(frame(kind=9)) is None
    assert peek_kind(frame(kind=0)) is None


def test_error_frames_carry_a_known_code_and_a_message():
    from he_aero.protocol import ERROR_CODES, error_frame

    assert ERROR_CODES == ("busy", "protocol", "timeout", "shutdown", "internal")
    msg = parse_frame(error_frame("busy", "server at capacity"), Kind.ERROR, NO_SESSION)
    assert msg == Message(Kind.ERROR, NO_SESSION, {"code": "busy", "message": "server at capacity"}, ())
    assert parse_frame(error_frame("timeout", "late", SESSION), Kind.ERROR, SESSION).meta["code"] == "timeout"
    with pytest.raises(
        HeAeroError,
        match=r"^protocol: unknown error code 'nope' \(one of busy, protocol, timeout, shutdown, internal\)$",
    ):
        error_frame("nope", "x")


@pytest.mark.parametrize(
    "field, value", [("mask_bits", 107.5), ("mask_bits", True), ("max_refresh_polynomials", "9")]
)
def test_hiding_settings_must_be_json_integers(field, value):
    """int() would cut 107.5 to 107 or read true as 1 (found by review)."""
    meta = {
        "poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [37, 36, 36, 32, 32, 37], "scale_bits": 32,
        "rotation_steps": [1], "block": 64, "context": 64, "vocab": 256, "d_model": 128,
        "logit_domain": [-1.0, 1.0], "refresh_bound": 64.0, "mask_bits": 107,
        "max_refresh_polynomials": 100, "model_sha256": "ab" * 32, "plan_sha256": "cd" * 32,
        "decode_rows": True,
    }  # fmt: skip
    RuntimeOffer.from_message(Message(Kind.OFFER, NO_SESSION, meta))  # the untouched offer reads
    meta[field] = value
    with pytest.raises(HeAeroError, match=f"OFFER message: missing or malformed field .*{field} must be an"):
        RuntimeOffer.from_message(Message(Kind.OFFER, NO_SESSION, meta))
