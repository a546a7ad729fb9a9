"""Encrypted sink attention on its own, at a shape the layer test does not reach: two feature ciphertexts
(the second one half padding: 2 real heads of 4), three lag groups (T = 20 > d_k = 8), prefill and a
decode step, against numpy's sink attention; and the spec's refusals with their messages. Then what
mutation testing asked for: the stages and levels the refresher hears, rotations on pending products,
padding heads that hold values, a full cache, the plaintext cache across runs."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from approx import interpret
from he_aero.ckks.attention import AttentionSpec, KVCache, attention_decode, attention_prefill
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.packing import feature_layout, pack, unpack
from he_aero.ckks.poly import atomic_depth
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
    # rows >= 1: the row sums' partial sums times a reciprocal that is 0 there (its masked input map)
    assert all(c.layout == one and c.layout.clean for c in out)
    rows = np.concatenate([kit.dec(c).reshape(-1, BLOCK)[:, 1:] for c in out])
    assert np.abs(rows).max() < 2**-10


def test_decode_refuses_rows_that_hold_garbage(setup):
    """q's spread sums all rows and a new key's rows >= 1 would land on cached ones: a ciphertext whose
    layout says its rows >= 1 hold garbage is refused, and the cache is left as it was."""
    spec, layout = setup[:2]
    one = layout.with_tokens(1)
    clean, dirty = [Ct(None, SMALL.levels, one)] * 2, [Ct(None, SMALL.levels, one.with_clean(False))] * 2
    blank = [Ct(None, SMALL.levels)] * 2
    cache = KVCache(list(blank), list(blank), T - 1)
    ev = Evaluator(SMALL)
    with pytest.raises(HeAeroError, match=r"^K/V cache append: ciphertexts \[2, 3\] hold garbage in rows"):
        cache.append(ev, clean, dirty)
    assert cache.length == T - 1 and cache.k == blank and cache.v == blank
    with pytest.raises(HeAeroError, match=r"^att decode q: ciphertexts \[0, 1\] hold garbage in rows"):
        attention_decode(ev, Refresher(ev, None, BOUND, TEST_MASK_BITS), spec, dirty, cache, one)


def test_a_shift_map_reciprocal_leaves_the_decode_rows_dirty_and_says_so(setup):
    """A 1/x domain of width 2 maps by a plaintext shift (no level): there is no product to fold the row
    mask into, so the decode output keeps the row sums' garbage in rows >= 1 and its layout says so (w_o
    then takes the block-diagonal kernel, which ignores those rows)."""
    spec, layout = setup[:2]
    _, recip = fit_plans((-6.0, 3.0), (1.0, 3.0), Ranges(((-6.0, 3.0),)), SMALL.levels)
    assert interpret.shift_only(recip.steps[0])
    one = layout.with_tokens(1)
    out, _, _ = _symbolic(dataclasses.replace(spec, recip_plan=recip), one, True)
    assert all(c.layout == one.with_clean(False) for c in out)


@pytest.fixture(scope="module")
def shifted_spec(setup):
    """The same attention with every weight scaled by e^-2 (`AttentionSpec.shift`): exp runs on z - 2, 1/x
    on the denominators times e^-2, whose floor is the sink's e^-2."""
    from he_aero.plan import shifted

    delta = 2.0
    window, den = shifted((-6.0, 3.0), (1.0, 1.0 + T * np.e), delta)
    exp_plan, recip_plan = fit_plans(window, den, Ranges((window,)), SMALL.levels)
    return AttentionSpec("att", H, SINK, exp_plan, recip_plan, delta)


def test_a_shifted_spec_computes_the_same_attention(setup, shifted_spec):
    """num / den is unchanged by the shift, prefill and decode; the refresh sees e^2 smaller weights."""
    _, layout, kit, q, k, v = setup
    assert shifted_spec.sink_weight == pytest.approx(np.exp(-2.0))
    enc = [[kit.enc(p, layout) for p in pack(m, layout)] for m in (q, k, v)]
    ref = Refresher(kit.ev, kit.refresh_client, BOUND, TEST_MASK_BITS)
    got = unpack([kit.dec(c) for c in attention_prefill(kit.ev, ref, shifted_spec, *enc, layout)], layout)
    want = sink_attention(q, k, v, SINK)
    assert_close_bits(got, want, 8, "shifted prefill attention")
    one = layout.with_tokens(1)
    full = [Ct(c.data, c.level, layout) for c in (kit.enc(p, layout) for p in pack(k, layout))]
    vals = [Ct(c.data, c.level, layout) for c in (kit.enc(p, layout) for p in pack(v, layout))]
    out = attention_decode(
        kit.ev, ref, shifted_spec, [kit.enc(p, one) for p in pack(q[-1:], one)], KVCache(full, vals, T), one
    )
    assert_close_bits(unpack([kit.dec(c) for c in out], layout)[0], want[-1], 8, "shifted decode attention")


def test_a_shift_outside_its_range_is_refused(shifted_spec):
    for bad in (-0.5, 64.0, float("nan"), "2"):
        with pytest.raises(HeAeroError, match=r"^att: exp shift must be a number in \[0, 64\)"):
            dataclasses.replace(shifted_spec, shift=bad)


def test_decode_refuses_a_cache_longer_than_a_block(setup):
    spec, layout, *_ = setup
    ev = Evaluator(SMALL)
    cts = [Ct(None, SMALL.levels)] * 2
    with pytest.raises(HeAeroError, match=f"^att: the cache holds {BLOCK + 1} tokens, blocks hold {BLOCK}$"):
        attention_decode(
            ev,
            Refresher(ev, None, BOUND, TEST_MASK_BITS),
            spec,
            cts,
            KVCache(cts, cts, BLOCK + 1),
            layout.with_tokens(1),
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
        (H, BLOCK, None),  # d_k = 1 = 2^0: one feature per head
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


# --- found by mutation testing (docs/mutation.md) ----------------------------------------------------------
def _symbolic(spec, layout, decode: bool):
    """A symbolic run (levels and counts, no SEAL) on unlabelled pending inputs, as the layer's fused q|k|v
    product hands them over before it labels them; returns (outputs, refresher, pending flag per rotation)."""
    ev = Evaluator(SMALL)
    ref = Refresher(ev, None, BOUND, TEST_MASK_BITS)
    rotated, rotate = [], ev.rotate
    ev.rotate = lambda a, step, lay=None: rotated.append(a.pending) or rotate(a, step, lay)

    def cts():
        return [Ct(None, SMALL.levels, None, True) for _ in range(layout.n_ct)]

    if decode:  # the cache holds rescaled ciphertexts (`EncryptedLayer.prefill`, `KVCache.append`)
        cache = KVCache([Ct(None, SMALL.levels)] * layout.n_ct, [Ct(None, SMALL.levels)] * layout.n_ct, T)
        out = attention_decode(ev, ref, spec, cts(), cache, layout)
    else:
        out = attention_prefill(ev, ref, spec, cts(), cts(), cts(), layout)
    return out, ref, rotated


def _plan_stages(plan, name, mapped):
    """(stage, need) the plan's pieces ask the refresher for (`approx.interpret.run_batch`)."""
    return [
        (f"{name} {interpret.STAGES[s.op]}", atomic_depth(s, mapped and i == 0))
        for i, s in enumerate(plan.steps)
        for _ in range(interpret.pieces(s))
    ]


@pytest.mark.parametrize("decode", [False, True])
def test_each_stage_asks_the_refresher_for_the_levels_it_consumes(setup, decode):
    """The refresher (and the planner, which reads its trace) hears every stage by name with the levels
    the stage consumes before the next `ensure`: the scores 2 (q k product, head-sum rescale, the masked
    plaintext product with the exp map folded in), the weighted values 2 in prefill (selection product,
    then weights x values) and 1 in decode (weights x values only), the normalisation 1; the exp input is
    mapped (its affine map folded into the score mask); in decode the 1/x input is mapped by its own stage
    (1 level: the map as a row-0-masked plaintext product, so the output's rows >= 1 are 0)."""
    spec, layout = setup[:2]
    lay = layout.with_tokens(1) if decode else layout
    out, ref, _ = _symbolic(spec, lay, decode)
    assert len(out) == lay.n_ct and all(c.layout == lay for c in out)  # labelled, though inputs were not
    assert all(c.layout.clean for c in out)
    d = "att decode" if decode else "att"
    want = [
        (f"{d} scores", 2),
        *_plan_stages(spec.exp_plan, f"{d} exp", True),
        (f"{d} A.V", 1 if decode else 2),
        *([("att 1/x map", 1)] if decode else []),
        *_plan_stages(spec.recip_plan, "att 1/x", decode),
        ("att normalise", 1),
    ]
    assert [(t["stage"], t["need"]) for t in ref.trace] == want
    # the plans of `setup`: exp is one poly, 1/x a poly and 3 Newton iterations (one piece each)
    recip = ["att 1/x map"] * decode + ["att 1/x poly", *["att 1/x newton"] * 3]
    names = [f"{d} scores", f"{d} exp poly", f"{d} A.V", *recip]
    assert [s for s, _ in want] == [*names, "att normalise"]


def test_prefill_rotates_every_product_before_its_rescale(setup):
    """Rotations add key-switching noise of fixed absolute size, ~2^32 times smaller relative to a pending
    product (scale ~S^2) than to the rescaled value: with q, k, v pending as the layer hands them over,
    every prefill rotation runs on a pending ciphertext. Their number, per feature ciphertext: 7 steps of
    the Q chain, 19 of the K chain and 19 of the V chain (2 group starts, then 7 + 7 + 3 lag steps),
    log2(d_k) per lag for the score sums and as many for the weight spreads, and two Horner schemes of
    min(d_k, T) - 1 steps."""
    spec, layout = setup[:2]
    _, _, rotated = _symbolic(spec, layout, decode=False)
    groups = -(-T // DK)
    chain = groups - 1 + sum(min(DK, T - g * DK) - 1 for g in range(groups))
    assert chain == 19
    per_ct = (min(DK, T) - 1) + 2 * chain + 2 * T * int(np.log2(DK)) + 2 * (min(DK, T) - 1)
    assert len(rotated) == layout.n_ct * per_ct == 358
    assert all(rotated)


def test_decode_rotates_its_products_before_their_rescale(setup):
    """Decode: per feature ciphertext, log2(B) rotations spread the (pending) query over the rows, log2(d_k)
    sum the score product and log2(B) the weights x values product, all pending; the exp weights' spread
    (log2(d_k)) and the denominator's row sum (log2(B)) hold no product and run rescaled."""
    spec, layout = setup[:2]
    _, _, rotated = _symbolic(spec, layout.with_tokens(1), decode=True)
    b, dk = int(np.log2(BLOCK)), int(np.log2(DK))
    assert len(rotated) == layout.n_ct * (b + dk + b + dk + b)
    assert sum(rotated) == layout.n_ct * (b + dk + b)


def test_a_cache_and_a_new_token_hold_one_ciphertext_per_feature_ciphertext(setup):
    """KVCache.append and the decode pair ciphertexts one to one: a new token, or a cache, with a ciphertext
    too few or too many is a clear error that leaves the cache as it was, never a silently shorter (or
    partly ignored) cache (found by mutation testing: append updated the keys before failing on values)."""
    spec, layout = setup[:2]
    one, n = layout.with_tokens(1), layout.n_ct
    ev = Evaluator(SMALL)

    def cts(count):
        return [Ct(None, SMALL.levels) for _ in range(count)]

    cache = KVCache(cts(n), cts(n), 3)
    cache.append(ev, cts(n), cts(n))
    assert cache.length == 4 and len(cache.k) == len(cache.v) == n
    for k_new, v_new in ((cts(n - 1), cts(n)), (cts(n), cts(n - 1))):
        cache = KVCache(cts(n), cts(n), 3)
        keys = list(cache.k)
        with pytest.raises(HeAeroError, match=r"^K/V cache: keys, values, new key, new value hold \("):
            cache.append(ev, k_new, v_new)
        assert cache.k == keys and cache.length == 3  # unchanged
    ref = Refresher(ev, None, BOUND, TEST_MASK_BITS)
    for q, k, v in ((n, n, n + 1), (n, n + 1, n), (n - 1, n, n)):
        with pytest.raises(HeAeroError, match=f"^att: decode takes {n} ciphertexts each of q, cached keys"):
            attention_decode(ev, ref, spec, cts(q), KVCache(cts(k), cts(v), 3), one)


def _padded(rng, n):
    """n tokens of q, k, v over all 64 feature slots of the two ciphertexts: the 48 real features and 16
    of padding (2 padding heads) that hold values too (as a client, or an earlier bug, might leave them)."""
    wide = feature_layout(SMALL.slots, n, 2 * (SMALL.slots // BLOCK), block=BLOCK)
    assert wide.n_ct == 2 and wide.n_features == D + 2 * DK
    q, k = rng.normal(0, 0.35, (n, wide.n_features)), rng.normal(0, 0.35, (n, wide.n_features))
    v = rng.uniform(-2, 2, (n, wide.n_features))
    return wide, q, k, v


def test_prefill_ignores_values_in_the_padding_heads(setup):
    """Only real heads take part: the score mask zeroes the padding heads, so whatever the padding slots of
    q, k and v hold, the real heads are exact and the padding of the output stays ~0."""
    spec, layout, kit = setup[:3]
    wide, q, k, v = _padded(np.random.default_rng(7), T)
    enc = [[kit.enc(p, layout) for p in pack(m, wide)] for m in (q, k, v)]
    ref = Refresher(kit.ev, kit.refresh_client, BOUND, TEST_MASK_BITS)
    got = unpack([kit.dec(c) for c in attention_prefill(kit.ev, ref, spec, *enc, layout)], wide)
    assert_close_bits(got[:, :D], sink_attention(q[:, :D], k[:, :D], v[:, :D], SINK), 8, "real heads")
    assert np.abs(v[:, D:]).max() > 1.0  # the padding holds values...
    assert np.abs(got[:, D:]).max() < 2**-8  # ...that never reach the output


def test_decode_at_a_full_block_ignores_values_in_the_padding_heads(setup):
    """A cache of exactly B tokens (the most a block holds) is accepted and exact; the padding heads are
    masked in decode too, whatever their slots hold."""
    spec, layout, kit = setup[:3]
    wide, q, k, v = _padded(np.random.default_rng(8), BLOCK)
    want = sink_attention(q[:, :D], k[:, :D], v[:, :D], SINK)[-1]
    full, one = layout.with_tokens(BLOCK), layout.with_tokens(1)
    z = [q[-1, h * DK : (h + 1) * DK] @ k[:, h * DK : (h + 1) * DK].T - SINK[h] for h in range(H)]
    assert -6 < np.min(z) and np.max(z) < 3 and 1 + np.exp(z).sum(axis=1).max() < 1 + T * np.e  # the plans
    cache = KVCache(*[[kit.enc(p, full) for p in pack(m, wide.with_tokens(BLOCK))] for m in (k, v)], BLOCK)
    ref = Refresher(kit.ev, kit.refresh_client, BOUND, TEST_MASK_BITS)
    out = attention_decode(
        kit.ev, ref, spec, [kit.enc(p, one) for p in pack(q[-1:], wide.with_tokens(1))], cache, one
    )
    got = unpack([kit.dec(c) for c in out], wide.with_tokens(1))[0]  # row 0 holds the answer
    assert_close_bits(got[:D], want, 8, "decode at a full block")
    assert np.abs(got[D:]).max() < 2**-8


def test_a_repeated_run_encodes_no_plaintext_vector_again(setup):
    """Masks and constants are cached on the evaluator: a second prefill or decode of the same shape (the
    next request) encodes no slot vector at all, and its cached plaintexts still give the right values.
    T = 4 uses a subset of the kit's rotation keys."""
    spec, layout, kit = setup[:3]
    ev = Evaluator(SMALL, kit.server)  # a cold cache
    vectors, encode = [], ev._encode
    ev._encode = lambda values, *a: vectors.append(not np.isscalar(values)) or encode(values, *a)
    n = 4
    four, one = layout.with_tokens(n), layout.with_tokens(1)
    rng = np.random.default_rng(9)
    q, k = rng.normal(0, 0.35, (n, D)), rng.normal(0, 0.35, (n, D))
    v = rng.uniform(-2, 2, (n, D))
    want = sink_attention(q, k, v, SINK)
    for run in range(2):
        vectors.clear()
        ref = Refresher(ev, kit.refresh_client, BOUND, TEST_MASK_BITS)
        enc = [[kit.enc(p, four) for p in pack(m, four)] for m in (q, k, v)]
        got = unpack([kit.dec(c) for c in attention_prefill(ev, ref, spec, *enc, four)], four)
        assert_close_bits(got, want, 8, f"prefill run {run}")
        cache = KVCache(enc[1], enc[2], n)
        out = attention_decode(ev, ref, spec, [kit.enc(p, one) for p in pack(q[-1:], one)], cache, one)
        assert_close_bits(unpack([kit.dec(c) for c in out], one)[0], want[-1], 8, f"decode run {run}")
        assert ref.log.ciphertexts > 0  # refreshes ran (their masks are integer polynomials, never encoded)
        if run:
            assert sum(vectors) == 0
        else:  # the cold run encodes every mask and constant once
            assert sum(vectors) > 0


def test_decode_row_sums_are_marked_dirty_and_the_output_clean(monkeypatch):
    """The decode numerators and denominators hold partial sums in rows >= 1: their layouts say so (review
    of issue 13), and `_normalise` still returns a clean output (its reciprocal map masks the rows)."""
    import he_aero.ckks.attention as attention

    seen = {}
    real = attention._normalise

    def spy(ev, ref, spec, nums, dens, layout, rows=False):
        seen["nums"] = [c.layout.clean for c in nums]
        seen["dens"] = [c.layout.clean for c in dens]
        out = real(ev, ref, spec, nums, dens, layout, rows)
        seen["out"] = [c.layout.clean for c in out]
        return out

    monkeypatch.setattr(attention, "_normalise", spy)
    from he_aero.plan import load_plan
    from he_aero.server.server import Server
    from models.checkpoint import load_checkpoint
    from models.linear_view import LinearView

    plan = load_plan(None)
    model, header = load_checkpoint()
    pipe = Server(LinearView.from_model(model), header, plan).pipeline
    _, _, caches, _ = pipe.symbolic_prefill(4, plan.activation_bound, plan.mask_bits)
    pipe.symbolic_decode(caches, plan.activation_bound, plan.mask_bits)
    assert seen["nums"] and not any(seen["nums"]) and not any(seen["dens"])
    assert all(seen["out"])
