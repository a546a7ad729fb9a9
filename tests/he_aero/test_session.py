"""Encrypted generation on the tiny model at a small ring: every stage against its plaintext twin, prefill and
decode logits against `view_forward`, greedy agreement, byte/round accounting, bits per byte."""

import numpy as np
import pytest

from he_aero.ckks.ciphertext import Ct
from he_aero.ckks.packing import pack, rows_pack, rows_unpack, unpack
from he_aero.errors import HeAeroError
from he_aero.generation import GenerationConfig, fit_prompt, pick_token
from he_aero.plan import compile_plan
from he_aero.protocol import Kind, Message, parse_frame, to_frame
from models.linear_view import embed, layer_forward, view_forward
from tests.conftest import assert_close_bits
from tests.he_aero.conftest import BPB_GAP_TOL, LOGIT_TOL, insecure_session, small_ring_params

PROMPT = list(b"if x:\n  ")  # 8 bytes = the tiny model's whole context


def _encrypt(session, x, n_features=None):
    srv, keys = session.server, session.client._keys
    layout = srv.pipeline.layout(x.shape[0], n_features)
    return [Ct(keys.encrypt(v), srv.ev.top, layout) for v in pack(x, layout)], layout


def _decrypt(session, cts, layout):
    return unpack([session.client._keys.decrypt(c.data) for c in cts], layout)


def test_each_stage_matches_its_plaintext_twin(tiny_session):
    s, view = tiny_session, tiny_session.view
    srv, ev = s.server, s.server.ev
    ref = srv._refresher(ev, s._refresh_link)
    onehot = np.eye(256)[PROMPT]
    cts, _ = _encrypt(s, onehot, 256)
    x_plain = embed(view, PROMPT)
    assert_close_bits(
        _decrypt(s, srv.pipeline._embed(ev, cts, 0, len(PROMPT)), srv.pipeline.layout(8)),
        x_plain,
        16,
        "embedding",
    )
    for i, (layer, lay) in enumerate(zip(srv.pipeline.layers, view.layers, strict=True)):
        # prefill of the first 7 tokens, then one decode step for the 8th, against the plaintext layer
        want = layer_forward(lay, x_plain)["x_out"]
        xs, layout = _encrypt(s, x_plain[:7])
        out, cache = layer.prefill(ev, ref, xs, layout)
        assert_close_bits(_decrypt(s, out, layout), want[:7], 12, f"layer {i} prefill")
        x1, layout1 = _encrypt(s, x_plain[7:])
        out1 = layer.decode(ev, ref, x1, cache, layout1)
        assert_close_bits(_decrypt(s, out1, layout1), want[7:], 12, f"layer {i} decode")
        x_plain = want


def test_prefill_and_greedy_decode_match_plaintext(tiny, tiny_plan):
    s = insecure_session(tiny[3], tiny[2], tiny_plan)  # its own: the byte counts below start from zero
    res = s.generate(bytes(PROMPT[:5]), GenerationConfig(max_new_tokens=4, verify=True))
    assert res.flag is None and len(res.tokens) == 4
    assert res.top1_agreement == 1.0 and res.continuation == res.plaintext_continuation
    assert res.max_abs_logit_error < LOGIT_TOL
    # the first token came from the prefill's last row: compare that whole row with the reference
    ref = view_forward(s.view, PROMPT[:5] + res.tokens[:3])
    assert [int(np.argmax(r)) for r in ref[4:]] == res.tokens
    assert [r.position for r in res.records] == [4, 5, 6, 7]
    # accounting: 1 prefill + 3 decode rounds (+ refreshes); logits: 2 ciphertexts per exchange
    rounds = res.traffic["rounds_by_purpose"]
    assert rounds["prefill"] == 1 and rounds["decode"] == 3 and rounds["refresh:prefill"] >= 1
    assert rounds["refresh:decode"] >= 3  # every decode step needs at least one refresh at this depth
    assert res.traffic["bytes_client_to_server"] > res.traffic["bytes_by_purpose"]["setup"]["to_server"] > 0
    assert s.client.decryptions["refresh"] > 0 and res.client_decryptions["logits"] >= 8
    assert [r.name for r in res.prefill_stages] == ["embed", "layer 0", "layer 1", "lm_head"]
    assert len(res.decode_stages) == 3


def test_bits_per_byte_under_encryption(tiny_session):
    from models.data import load_split

    out = tiny_session.bits_per_byte(load_split("test")[:200], max_windows=1)
    assert out["bytes"] == 8 and not out["flags"]
    assert abs(out["relative_gap"]) < BPB_GAP_TOL and out["max_abs_logit_error"] < LOGIT_TOL


def test_fit_prompt_and_config():
    assert fit_prompt(b"abc", 8, 4) == (b"abc", 0)
    assert fit_prompt(b"0123456789", 8, 4) == (b"56789", 5)  # 5 + 4 - 1 = 8 positions
    with pytest.raises(HeAeroError, match="empty"):
        fit_prompt(b"", 8, 1)
    with pytest.raises(HeAeroError, match="exceeds the model's context"):
        fit_prompt(b"a", 8, 9)
    for bad in ({"max_new_tokens": 0}, {"temperature": -1.0}, {"top_k": -2}):
        with pytest.raises(HeAeroError):
            GenerationConfig(**bad)


def test_pick_token():
    logits = np.array([0.0, 3.0, 1.0, 2.9])
    rng = np.random.default_rng(0)
    assert pick_token(logits, GenerationConfig(), rng) == 1
    top2 = {pick_token(logits, GenerationConfig(temperature=1.0, top_k=2), rng) for _ in range(50)}
    assert top2 == {1, 3}
    a = [pick_token(logits, GenerationConfig(temperature=2.0), np.random.default_rng(7)) for _ in range(5)]
    b = [pick_token(logits, GenerationConfig(temperature=2.0), np.random.default_rng(7)) for _ in range(5)]
    assert a == b


@pytest.mark.slow
def test_end_to_end_default_model():
    """The shipped model and plan: one committed test-split prompt that fills the context, 8 greedy tokens,
    prefill then decode against the encrypted K/V cache (minutes on 2 cores: `make test-slow`)."""
    from he_aero.plan import load_plan
    from he_aero.session import Session
    from models.checkpoint import load_checkpoint
    from models.linear_view import LinearView

    model, header = load_checkpoint()
    session = Session(LinearView.from_model(model), header, load_plan())
    assert session.server.params.is_secure
    from models.data import load_split

    room = session.context - 8 + 1  # the longest prompt that leaves room for 8 tokens: two lag groups
    prompt = load_split("test")[4096 : 4096 + room]
    res = session.generate(prompt, GenerationConfig(max_new_tokens=8, verify=True))
    assert res.dropped_prompt_bytes == 0 and len(res.prompt) == room
    assert res.flag is None and len(res.tokens) == 8
    assert res.top1_agreement == 1.0 and res.continuation == res.plaintext_continuation
    assert res.max_abs_logit_error <= 0.05


def test_decode_in_the_rows_layout(tiny):
    """Decode steps with the "rows" layout (one-hot and logits chunked over block rows): the same tokens and
    logits as plaintext, and the client checks the layout it receives."""
    v = np.arange(20.0)
    packed = rows_pack(v, 64, 8)  # 3 chunks of 8, each replicated over the 8 blocks
    assert len(packed) == 3 and packed[1][8:16].tolist() == list(range(8, 16))
    assert rows_unpack(packed, 20, 8).tolist() == v.tolist()
    _, _, header, view, cal = tiny
    plan = compile_plan(header, cal, params=small_ring_params(), decode_rows=True)
    session = insecure_session(view, header, plan)
    assert session.server.pipeline.rows and session.client.offer.decode_rows
    res = session.generate(bytes(PROMPT[:5]), GenerationConfig(max_new_tokens=3, verify=True))
    assert res.flag is None and res.top1_agreement == 1.0 and res.max_abs_logit_error < LOGIT_TOL
    stages = {r.name: r.ops for r in res.decode_stages[0]}
    assert stages["embed"]["rotations"] == 3  # log2(block = 8)
    with pytest.raises(HeAeroError, match="layout"):  # a features-layout token where rows are expected
        msg = parse_frame(session.client.encrypt_tokens([65], 5), Kind.TOKENS, session.client.session)
        session.server.decode(
            to_frame(Message(Kind.TOKENS, msg.session, {**msg.meta, "layout": "features"}, msg.parts))
        )


def test_the_session_hiding_is_reported_as_computed(tiny_session):
    """Over every polynomial the client decrypted at refreshes: k + 1 - log2 N - log2 T - log2(n), with
    T = 2^(s + 2) B (he_aero/ckks/hiding.py), N = 2048 and s = 35 on the test ring."""
    res = tiny_session.generate(b"abc", GenerationConfig(max_new_tokens=2))
    n = res.client_decryptions["refresh"]
    plan = tiny_session.server.plan
    assert n > 0 and res.refreshed_polynomials == n
    expected = plan.mask_bits + 1 - 11 - (35 + 2 + np.log2(plan.activation_bound)) - np.log2(n)
    assert res.refresh_hiding_bits_session == pytest.approx(expected, abs=0.01)
    out = res.to_dict()
    assert out["refresh_hiding_bits_session"] == res.refresh_hiding_bits_session
    assert (out["refreshed_polynomials"], out["refresh_mask_bits"]) == (n, plan.mask_bits)


def test_an_input_outside_the_domains_is_stopped_with_its_cause_before_any_encryption(tiny, tiny_plan):
    """The first alternating printable pair ("abab...", not calibrated on) that leaves the tiny plan's
    domains: the client's pre-check names layer, head, range and gap, and no encrypted step runs (nothing
    would be right). Single-byte runs are calibrated on and stay inside."""
    _, _, header, view, _ = tiny
    printable = range(32, 127)
    pairs = (bytes([a, b]) * 4 for a in printable for b in printable if a != b)
    prompt = next(p for p in pairs if tiny_plan.domain_violations(view, list(p)))
    session = insecure_session(view, header, tiny_plan)
    res = session.generate(prompt, GenerationConfig(max_new_tokens=1))
    assert res.tokens == [] and res.flag is not None
    first = tiny_plan.domain_violations(view, list(prompt))[0]
    assert first in res.flag and " head " in first and "the domain edge" in first
    assert "prefill" not in res.traffic["rounds_by_purpose"]  # nothing was encrypted or sent
    assert not tiny_plan.domain_violations(view, list(b"if x:\n  "))
    assert not any(tiny_plan.domain_violations(view, [b] * 8) for b in range(256))


def test_the_decode_steps_weight_plaintexts_are_encoded_at_setup(tiny, tiny_plan):
    """issue 13: no cold first token. After SETUP the session's cache already holds every plaintext a decode
    step asks for except the few that depend on the position (masks for the cache length); without the
    preparation the first decode step encodes all of them."""
    _, _, header, view, _ = tiny
    session = insecure_session(view, header, tiny_plan)
    session.forward(list(b"abc"))  # SETUP (and the preparation), then a prefill
    srv = session.server
    prepared = len(srv._decode_plaintexts)
    assert prepared > 0 and srv.ev.cache_bytes() > 0
    before = srv.ev.stats.encodes
    session.forward([ord("d")], 3)
    warm = srv.ev.stats.encodes - before
    srv.ev.clear_cache()  # the same step with nothing prepared
    session.forward(list(b"abcd"))
    before = srv.ev.stats.encodes
    srv.ev.clear_cache()
    session.forward([ord("e")], 4)
    cold = srv.ev.stats.encodes - before
    assert warm < cold / 4, (warm, cold, prepared)


def test_baseline_variants_generate_the_plaintext_tokens(tiny_variant):
    """LayerNorm + GELU, LayerNorm + ReLU, ReLU alone: prefill and greedy decode match their own plaintext
    model, under the same planner, calibration and refresh as the softmax-only model."""
    model, header, view, _, plan = tiny_variant
    s = insecure_session(view, header, plan)
    res = s.generate(bytes(PROMPT[:5]), GenerationConfig(max_new_tokens=3, verify=True))
    assert res.flag is None and res.top1_agreement == 1.0
    assert res.max_abs_logit_error < LOGIT_TOL
    rounds = res.traffic["rounds_by_purpose"]
    assert rounds["refresh:prefill"] >= 2 * plan.shape.n_layer  # at least a LayerNorm or an FFN each
