"""Encrypted sink attention on its own, at a shape the layer test does not reach: two feature ciphertexts
(the second one half padding: 2 real heads of 4), three lag groups (T = 20 > d_k = 8), prefill and a
decode step, against numpy's sink attention; and the spec's refusals with their messages."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from he_aero.ckks.attention import AttentionSpec, KVCache, attention_decode, attention_prefill
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.packing import feature_layout, pack, unpack
from he_aero.ckks.refresh import Refresher
from he_aero.errors import HeAeroError
from he_aero.plan import Ranges, fit_plans
from tests.conftest import assert_close_bits
from tests.he_aero.ckks.kit import SMALL, TEST_MASK_BITS, Kit

T, H, DK, BLOCK = 20, 6, 8, 32  # d = 48: per_ct = 1024 / 32 = 32 features -> 2 ciphertexts (32 + 16)
D = H * DK
SINK = (0.5, 1.0, 1.5, 0.25, 0.75, 2.0)
BOUND = 16.0


def sink_attention(q, k, v, sink):
    """Numpy reference (docs/design.md section 5): a_ij = exp(z_ij) / (1 + sum_j' exp(z_ij')), j <= i."""
    n = q.shape[0]
    out = np.zeros_like(v)
    for h in range(len(sink)):
        s = slice(h * DK, (h + 1) * DK)
        z = q[:, s] @ k[:, s].T - sink[h]
        e = np.where(np.tril(np.ones((n, n))) > 0, np.exp(z), 0.0)
        out[:, s] = (e @ v[:, s]) / (1.0 + e.sum(axis=1, keepdims=True))
    return out


@pytest.fixture(scope="module")
def setup():
    exp_plan, recip_plan = fit_plans((-6.0, 3.0), (1.0, 1.0 + T * np.e), Ranges(((-6.0, 3.0),)), SMALL.levels)
    spec = AttentionSpec("att", H, SINK, exp_plan, recip_plan)
    layout = feature_layout(SMALL.slots, T, D, block=BLOCK)
    assert layout.n_ct == 2 and -(-T // DK) == 3
    steps = set()
    for lay in (layout, layout.with_tokens(1)):  # symbolic runs list the rotation keys
        ev = Evaluator(SMALL)
        ref = Refresher(ev, None, BOUND, TEST_MASK_BITS)
        cts = [Ct(None, SMALL.levels, lay)] * lay.n_ct
        if lay.n_tokens == 1:
            attention_decode(ev, ref, spec, cts, KVCache(list(cts), list(cts), T), lay)
        else:
            attention_prefill(ev, ref, spec, cts, cts, cts, lay)
        steps |= ev.stats.steps_used
    rng = np.random.default_rng(5)
    q, k = rng.normal(0, 0.35, (T, D)), rng.normal(0, 0.35, (T, D))
    v = rng.uniform(-2, 2, (T, D))
    return spec, layout, Kit(SMALL, steps), q, k, v


def test_prefill_matches_numpy_sink_attention(setup):
    spec, layout, kit, q, k, v = setup
    enc = [[kit.enc(p, layout) for p in pack(m, layout)] for m in (q, k, v)]
    ref = Refresher(kit.ev, kit.refresh_client, BOUND, TEST_MASK_BITS)
    out = attention_prefill(kit.ev, ref, spec, *enc, layout)
    assert len(out) == 2 and all(c.layout == layout for c in out)
    got = unpack([kit.dec(c) for c in out], layout)
    want = sink_attention(q, k, v, SINK)
    assert np.abs(want).max() > 0.3  # attention is far from zero, so the comparison means something
    assert_close_bits(got, want, 8, "prefill attention")
    padding = np.concatenate([kit.dec(c) for c in out]).reshape(2 * layout.per_ct, BLOCK)
    assert np.abs(padding[:, T:]).max() < 2**-8  # rows t >= T stay ~0
    assert np.abs(padding[D:, :]).max() < 2**-8  # features past d (padding heads) stay ~0


def test_decode_step_matches_numpy_on_the_last_row(setup):
    """The cache holds tokens 0..T-2 and the new token's k, v are appended as row T-1; the query is row 0."""
    spec, layout, kit, q, k, v = setup
    one = layout.with_tokens(1)
    prefix = layout.with_tokens(T - 1)
    ck = [Ct(c.data, c.level, layout) for c in (kit.enc(p, prefix) for p in pack(k[: T - 1], prefix))]
    cv = [Ct(c.data, c.level, layout) for c in (kit.enc(p, prefix) for p in pack(v[: T - 1], prefix))]
    cache = KVCache(ck, cv, T - 1)
    ev, ref = kit.ev, Refresher(kit.ev, kit.refresh_client, BOUND, TEST_MASK_BITS)
    cache.append(
        ev, [kit.enc(p, one) for p in pack(k[-1:], one)], [kit.enc(p, one) for p in pack(v[-1:], one)]
    )
    assert cache.length == T
    out = attention_decode(ev, ref, spec, [kit.enc(p, one) for p in pack(q[-1:], one)], cache, one)
    got = unpack([kit.dec(c) for c in out], layout)[0]  # row 0 holds the answer
    assert_close_bits(got, sink_attention(q, k, v, SINK)[-1], 8, "decode attention")


def test_decode_refuses_a_cache_longer_than_a_block(setup):
    spec, layout, *_ = setup
    ev = Evaluator(SMALL)
    cts = [Ct(None, SMALL.levels)] * 2
    with pytest.raises(HeAeroError, match=f"^att: the cache holds {BLOCK + 1} tokens, blocks hold {BLOCK}$"):
        attention_decode(
            ev, Refresher(ev, None), spec, cts, KVCache(cts, cts, BLOCK + 1), layout.with_tokens(1)
        )


def test_spec_refusals_name_the_layer(setup):
    spec = setup[0]
    with pytest.raises(HeAeroError, match=r"^att: 5 sink logits for 6 heads$"):
        dataclasses.replace(spec, sink=SINK[:5])
    # approx.plans.Plan itself refuses such a plan; the spec checks again for any plan-like object
    squares = SimpleNamespace(steps=(SimpleNamespace(op="square"),))
    with pytest.raises(HeAeroError, match=r"^att: plans must start with a poly step$"):
        dataclasses.replace(spec, exp_plan=squares)
    with pytest.raises(HeAeroError, match=r"^att: plans must start with a poly step$"):
        dataclasses.replace(spec, recip_plan=squares)


@pytest.mark.parametrize(
    "n_features, block, message",
    [
        (50, BLOCK, r"^att: d=50 is not a multiple of 6 heads$"),
        (36, BLOCK, r"^att: head size 6 must be a power of two dividing the 32 blocks per ciphertext$"),
        (6 * 64, 16, None),  # d_k = 64 = per_ct: one head per ciphertext
        (6 * 128, 16, r"^att: head size 128 must be a power of two dividing the 64 blocks per ciphertext$"),
    ],
)
def test_head_dim_checks_the_layout(setup, n_features, block, message):
    spec = setup[0]
    layout = feature_layout(SMALL.slots, 4, n_features, block=block)
    if message is None:
        assert spec.head_dim(layout) == n_features // H
    else:
        with pytest.raises(HeAeroError, match=message):
            spec.head_dim(layout)
