"""The server's refusals and its data-independence: what a client (or a stale frame) cannot make it do, and
that what it does (operations, refreshes, bytes) does not depend on the prompt's content."""

import numpy as np
import pytest

from he_aero.errors import HeAeroError
from he_aero.generation import GenerationConfig
from he_aero.protocol import Kind, Message, decode, encode
from tests.he_aero.conftest import insecure_session


def _counts(records):
    return [(r.name, {k: v for k, v in r.ops.items() if k != "seal_seconds"}, r.level_out) for r in records]


def test_control_flow_does_not_depend_on_the_prompt(tiny, tiny_plan):
    """Two prompts of one length with different bytes: identical operations, refresh rounds, levels, bytes
    and rounds on the wire (the server's behaviour reveals the length only)."""
    _, _, header, view, _ = tiny
    runs = []
    for prompt in (b"abcde", b"\x00\xff((("):
        session = insecure_session(view, header, tiny_plan)
        res = session.generate(prompt, GenerationConfig(max_new_tokens=2))
        assert res.flag is None
        traffic = {k: v for k, v in res.traffic.items() if k != "bytes_by_purpose"}
        runs.append((_counts(res.prefill_stages), [_counts(d) for d in res.decode_stages], traffic["rounds"]))
    assert runs[0] == runs[1]


def test_a_stale_token_ciphertext_is_refused(tiny_session):
    """A token ciphertext below the top level (here: mod-switched down once) is not a fresh encryption: the
    server refuses it before any kernel runs."""
    s = tiny_session
    good = decode(s.client.encrypt_tokens([65, 66], 0), Kind.TOKENS, s.client.session)
    ev = s.server.ev
    low = ev.align(ev.load_fresh(good.parts[0], "test"), ev.top - 1)
    parts = (ev.to_bytes(low),) + good.parts[1:]
    stale = encode(Message(Kind.TOKENS, good.session, good.meta, parts))
    with pytest.raises(HeAeroError, match="token ciphertext 0 is not a fresh top-level encryption"):
        s.server.prefill(stale)


def test_a_refresh_reply_with_the_wrong_count_is_refused(tiny, tiny_plan):
    _, _, header, view, _ = tiny
    session = insecure_session(view, header, tiny_plan)
    srv, client = session.server, session.client

    def short_reply(request: bytes) -> bytes:
        reply = decode(client.handle_refresh(request), Kind.REFRESH_RESPONSE, client.session)
        return encode(Message(Kind.REFRESH_RESPONSE, reply.session, reply.meta, reply.parts[:-1] or (b"",)))

    with pytest.raises(HeAeroError, match="refresh reply has|does not load"):
        srv.prefill(client.encrypt_tokens(list(b"abcdefg"), 0), short_reply)


def test_decode_takes_only_the_next_position(tiny, tiny_plan):
    _, _, header, view, _ = tiny
    session = insecure_session(view, header, tiny_plan)
    srv, client = session.server, session.client
    srv.prefill(client.encrypt_tokens(list(b"abc"), 0), client.handle_refresh)
    with pytest.raises(HeAeroError, match="decode takes the token at position 3, got 1 at 5"):
        srv.decode(client.encrypt_tokens([65], 5), client.handle_refresh)
    assert np.isfinite(
        client.decrypt_logits(srv.decode(client.encrypt_tokens([65], 3), client.handle_refresh)).logits
    ).all()
