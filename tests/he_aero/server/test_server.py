"""The server's refusals and its data-independence: what a client (or a stale frame) cannot make it do, and
that what it does (operations, refreshes, bytes) does not depend on the prompt's content."""

import numpy as np
import pytest

from he_aero.ckks.backend import load_ciphertext, to_bytes
from he_aero.ckks.packing import pack
from he_aero.errors import HeAeroError
from he_aero.generation import GenerationConfig
from he_aero.protocol import Kind, Message, parse_frame, to_frame
from tests.he_aero.conftest import insecure_session


def _counts(records):
    timings = ("seal_seconds", "refresh_seconds")
    return [(r.name, {k: v for k, v in r.ops.items() if k not in timings}, r.level_out) for r in records]


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
    good = parse_frame(s.client.encrypt_tokens([65, 66], 0), Kind.TOKENS, s.client.session)
    ev = s.server.ev
    low = ev.align(ev.load_client(good.parts[0], "test"), ev.top - 1)
    parts = (ev.to_bytes(low),) + good.parts[1:]
    stale = to_frame(Message(Kind.TOKENS, good.session, good.meta, parts))
    with pytest.raises(HeAeroError, match="token ciphertext 0 is not a fresh top-level encryption"):
        s.server.prefill(stale)


def test_a_refresh_reply_with_the_wrong_count_is_refused(tiny, tiny_plan):
    _, _, header, view, _ = tiny
    session = insecure_session(view, header, tiny_plan)
    srv, client = session.server, session.client

    def short_reply(request: bytes) -> bytes:
        reply = parse_frame(client.handle_refresh(request), Kind.REFRESH_RESPONSE, client.session)
        return to_frame(Message(Kind.REFRESH_RESPONSE, reply.session, reply.meta, reply.parts[:-1] or (b"",)))

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


def _probe_tokens(client, tokens, probe):
    """A deviating client's TOKENS: the one-hot rows plus imaginary probes."""
    onehot = np.eye(256)[tokens]
    layout = client.token_layout(len(tokens))
    vectors = [re + 1j * im for re, im in zip(pack(onehot, layout), pack(probe, layout), strict=True)]
    parts = tuple(to_bytes(client._keys.encrypt(v)) for v in vectors)
    meta = {"position": 0, "n_tokens": len(tokens), "layout": "features"}
    return to_frame(Message(Kind.TOKENS, client.session, meta, parts))


def _imaginary_seen(session, probe, tokens):
    """Run a probing prefill; the largest imaginary part the client decrypts at refreshes and in logits."""
    srv, client = session.server, session.client

    def complex_view(blob):
        return client._keys.decrypt(
            load_ciphertext(client._keys.seal_context, blob, "view"), complex_slots=True
        )

    seen = []

    def spy(request: bytes) -> bytes:
        seen.extend(complex_view(b) for b in parse_frame(request, Kind.REFRESH_REQUEST, client.session).parts)
        return client.handle_refresh(request)

    try:
        reply = srv.prefill(_probe_tokens(client, tokens, probe), spy)
    except HeAeroError:  # without the projection the run diverges after the first views: they are what counts
        reply = None
    at_refresh = max(float(np.abs(v.imag).max()) for v in seen)
    if reply is None:
        return len(seen), at_refresh, None
    logits = parse_frame(reply, Kind.LOGITS, client.session)
    in_logits = max(float(np.abs(complex_view(b).imag).max()) for b in logits.parts)
    return len(seen), at_refresh, in_logits


def test_imaginary_probes_come_back_as_noise(tiny, tiny_plan, monkeypatch):
    """The review's attack: imaginary probes in the token ciphertexts, read back from the imaginary parts of
    the next refresh (there: probe x the weights). With the masks switched OFF (so the test sees what the
    circuit carries, not the mask), every imaginary part the client decrypts, at each refresh and in the
    logits, is CKKS noise: the server projects the embedding's and the LM head's outputs to real parts."""
    import he_aero.client.client as client_module
    from he_aero.ckks.ciphertext import Evaluator
    from he_aero.ckks.rns import IntPoly

    # masks off, and the client's "is it flooded?" check with them (it would refuse the unmasked views)
    monkeypatch.setattr(IntPoly, "uniform", classmethod(lambda cls, bits, n: cls.from_ints([0] * n)))
    reply = client_module.refresh_reply
    monkeypatch.setattr(
        client_module, "refresh_reply", lambda keys, blobs, level, _: reply(keys, blobs, level)
    )
    _, _, header, view, _ = tiny
    tokens = list(b"abcdefg")
    probe = np.random.default_rng(0).normal(size=(len(tokens), 256)) * 4.0
    views, at_refresh, in_logits = _imaginary_seen(insecure_session(view, header, tiny_plan), probe, tokens)
    assert views >= 2 and at_refresh < 1e-2 and in_logits < 1e-2, (at_refresh, in_logits)
    # the check can fail: without the projection the same probe comes back at the refreshes
    monkeypatch.setattr(Evaluator, "project_real", lambda self, a: a)
    _, leaked, _ = _imaginary_seen(insecure_session(view, header, tiny_plan), probe, tokens)
    assert leaked > 0.1


@pytest.mark.parametrize("rerandomized", [True, False])
def test_logits_leave_re_randomised(tiny, tiny_plan, monkeypatch, rerandomized):
    """The LM head's output is a function of the client's last refresh reply and the weights: sent as is,
    its c1 would let the client test candidate head weights. The c1 the client receives differs in every
    word from the head's output; with re-randomisation off it is identical (the check can fail)."""
    from he_aero.ckks.backend import ciphertext_words
    from he_aero.ckks.ciphertext import Evaluator

    heads = []
    original = Evaluator.rerandomize

    def spy(self, a):
        heads.append(ciphertext_words(self.rescale(a).data)[1, 0, :256].copy())
        return original(self, a) if rerandomized else self.rescale(a)

    _, _, header, view, _ = tiny
    session = insecure_session(view, header, tiny_plan)
    srv, client = session.server, session.client
    monkeypatch.setattr(Evaluator, "rerandomize", spy)
    reply = srv.prefill(client.encrypt_tokens(list(b"abc"), 0), client.handle_refresh)
    sent = parse_frame(reply, Kind.LOGITS, client.session).parts
    n = len(sent)
    for head, blob in zip(heads[-n:], sent, strict=True):  # the last n re-randomisations: the logits
        c1 = ciphertext_words(load_ciphertext(client._keys.seal_context, blob, "logits"))[1, 0, :256]
        same = int((c1 == head).sum())
        assert (same == 0) if rerandomized else (same == 256)


def test_flooded_logits_cost_the_precision_the_width_says(tiny, tiny_plan):
    """f = 24 on the test ring (scale 2^35, N = 2048): a uniform 2^24 on every coefficient moves slots by
    ~2^24 sqrt(N / 3) / 2^35 ~ 1.3e-2, above the unflooded error (LOGIT_TOL = 3e-3), far below the logits."""
    import dataclasses

    from models.linear_view import view_forward
    from tests.he_aero.conftest import LOGIT_TOL

    _, _, header, view, _ = tiny
    want = view_forward(view, np.frombuffer(b"abcd", dtype=np.uint8))
    errors = {}
    for f in (0, 24):
        plan = dataclasses.replace(tiny_plan, logit_flood_bits=f)
        session = insecure_session(view, header, plan)
        srv, client = session.server, session.client
        got = client.decrypt_logits(
            srv.prefill(client.encrypt_tokens(list(b"abcd"), 0), client.handle_refresh)
        )
        errors[f] = float(np.abs(got.logits - want).max())
    assert errors[0] < LOGIT_TOL < errors[24] < 0.2, errors
