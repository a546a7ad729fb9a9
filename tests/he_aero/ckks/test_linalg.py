"""Plaintext matmul (BSGS block diagonals), the one-token skewed kernel and block sums against numpy."""

import math

import numpy as np
import pytest

from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.linalg import (
    PlainLinear,
    SkewedLinear,
    block_spread,
    block_sum,
    horner,
    mask_rows,
    rotate_binary,
)
from he_aero.ckks.packing import check_clean, feature_layout, is_clean, pack, unpack
from he_aero.errors import HeAeroError
from tests.conftest import assert_close_bits
from tests.he_aero.ckks.kit import BITS, SMALL, Kit

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("t, d_in, d_out", [(8, 32, 32), (5, 160, 96), (1, 32, 64)])
def test_matmul_matches_numpy(kit, t, d_in, d_out):
    layout = feature_layout(SMALL.slots, t, d_in, block=8)
    x = RNG.normal(size=(t, d_in))
    w = RNG.normal(size=(d_in, d_out)) / np.sqrt(d_in)
    b = RNG.normal(size=d_out)
    lin = PlainLinear(f"w{t}-{d_in}-{d_out}", w, b, layout)
    xs = [kit.enc(v, layout) for v in pack(x, layout)]
    ys = lin(kit.ev, xs)
    assert all(y.level == SMALL.levels - 1 for y in ys)  # one level
    slots = [kit.dec(y) for y in ys]
    assert_close_bits(unpack(slots, lin.out_layout), x @ w + b, BITS - 3, "X W + b")
    rows = np.concatenate([s.reshape(-1, 8)[:, t:] for s in slots])
    assert rows.size == 0 or np.abs(rows).max() < 2**-14  # padding rows stay 0


def test_matmul_uses_two_rotation_keys_and_sqrt_rotations():
    layout = feature_layout(SMALL.slots, 8, 128, block=8)  # F = 128 blocks: g = 16 baby, 8 giant steps
    ev = Evaluator(SMALL)
    lin = PlainLinear("sym", np.ones((128, 128)), None, layout)
    lin(ev, [Ct(None, SMALL.levels, layout)])
    assert ev.stats.steps_used == {8, 16 * 8}
    assert ev.stats.n_rotations == 15 + 7
    assert ev.stats.n_pt == 128


def test_matmul_validates_shapes():
    layout = feature_layout(SMALL.slots, 8, 32, block=8)
    with pytest.raises(HeAeroError, match="weight shape"):
        PlainLinear("bad", np.ones((16, 8)), None, layout)
    with pytest.raises(HeAeroError, match="bias shape"):
        PlainLinear("bad", np.ones((32, 8)), np.ones(9), layout)


def test_block_sum_spread_horner_binary(kit):
    ev = kit.ev
    x = RNG.uniform(-1, 1, SMALL.slots)
    blocks = x.reshape(-1, 8)  # 128 blocks of 8
    got = kit.dec(block_sum(ev, kit.enc(x), 16, 8)).reshape(-1, 8)
    assert_close_bits(got[::16], blocks.reshape(-1, 16, 8).sum(1), BITS - 2, "block_sum")
    lone = np.zeros_like(blocks)
    lone[::16] = blocks[::16]
    spread = kit.dec(block_spread(ev, kit.enc(lone.ravel()), 16, 8)).reshape(-1, 16, 8)
    assert_close_bits(spread, np.repeat(blocks[::16][:, None], 16, axis=1), BITS - 3, "block_spread")
    parts = [kit.enc(x), None, kit.enc(2 * x)]
    ref = x + np.roll(2 * x, -16)
    assert_close_bits(kit.dec(horner(ev, parts, 8)), ref, BITS - 1, "horner")
    assert_close_bits(kit.dec(rotate_binary(ev, kit.enc(x), -9)), np.roll(x, 9), BITS - 1, "binary")


def test_a_diagonal_below_the_plaintext_resolution_is_skipped_not_refused(kit):
    """identity + 1e-12 off-diagonal: those diagonals round to the zero plaintext, which SEAL refuses as a
    factor ("transparent"); they are skipped and the product is right to the plaintext resolution."""
    from he_aero.ckks.linalg import PlainLinear
    from he_aero.ckks.packing import feature_layout, pack, unpack

    d = 16
    w = np.eye(d) + 1e-12 * np.ones((d, d))
    layout = feature_layout(kit.params.slots, 4, d)
    x = np.random.default_rng(0).normal(size=(4, d))
    lin = PlainLinear("tiny-offdiag", w, None, layout)
    out = lin(kit.ev, [kit.enc(v, layout) for v in pack(x, layout)])
    assert np.abs(unpack([kit.dec(c) for c in out], layout) - x @ w).max() < 2.0**-12


# --- found by mutation testing (docs/mutation.md) ----------------------------------------------------------
def test_baby_steps_table():
    """g: the power of two at or above sqrt(F) (F = 1: no baby steps beyond the input itself)."""
    from he_aero.ckks.linalg import baby_steps

    assert [baby_steps(f) for f in (1, 2, 4, 8, 16, 32, 64, 128)] == [1, 2, 2, 4, 4, 8, 8, 16]


def test_bias_vectors_split_over_output_ciphertexts():
    """d_out = 96 over F = 64 features per ciphertext: bias 0..63 in the first, 64..95 then zeros in the
    second, each value repeated over its block's valid rows (t < n_tokens)."""
    layout = feature_layout(SMALL.slots, 3, 32, block=16)  # F = 64
    b = np.arange(96.0) + 1
    lin = PlainLinear("bias", np.ones((32, 96)), b, layout)
    rows = (np.arange(16) < 3).astype(float)
    assert np.array_equal(lin._bias_vector(0), np.kron(b[:64], rows))
    assert np.array_equal(lin._bias_vector(1), np.kron(np.r_[b[64:], np.zeros(32)], rows))


def test_matmul_refuses_the_wrong_ciphertext_count():
    layout = feature_layout(SMALL.slots, 8, 160, block=8)  # F = 128: 2 ciphertexts
    lin = PlainLinear("w", np.ones((160, 8)), None, layout)
    with pytest.raises(HeAeroError, match=r"^w: expected 2 ciphertexts, got 1$"):
        lin(Evaluator(SMALL), [Ct(None, SMALL.levels, layout)])


def test_diagonals_are_encoded_once_per_token_count(kit):
    """One name, two token counts on one evaluator: each count gets its own row-masked diagonals and bias
    (padding rows stay 0), and a repeated call encodes nothing new."""
    ev = Evaluator(SMALL, kit.server)
    w = RNG.normal(size=(32, 32)) / np.sqrt(32)
    b = RNG.normal(size=32)
    for t in (4, 2):
        layout = feature_layout(SMALL.slots, t, 32, block=8)
        x = RNG.normal(size=(t, 32))
        lin = PlainLinear("same", w, b, layout)
        xs = [kit.enc(v, layout) for v in pack(x, layout)]
        (y,) = lin(ev, xs)
        slots = kit.dec(y)
        assert_close_bits(unpack([slots], lin.out_layout), x @ w + b, BITS - 3, f"T={t}")
        assert np.abs(slots.reshape(-1, 8)[:, t:]).max() < 2**-14  # padding rows stay 0
        encodes = ev.stats.encodes
        lin(ev, xs)
        assert ev.stats.encodes == encodes  # all diagonals and the bias came from the cache


def test_rotate_binary_positive_steps(kit):
    x = RNG.uniform(-1, 1, SMALL.slots)
    assert_close_bits(kit.dec(rotate_binary(kit.ev, kit.enc(x), 3)), np.roll(x, -3), BITS - 1, "rot 1 + 2")
    assert_close_bits(kit.dec(rotate_binary(kit.ev, kit.enc(x), 0)), x, BITS, "rot 0")


@pytest.mark.parametrize("group", [0, 3, 6, -4])
def test_group_sizes_must_be_powers_of_two(group):
    ct = Ct(None, SMALL.levels)
    for fn in (block_sum, block_spread):
        with pytest.raises(HeAeroError, match=rf"^group size must be a power of two, got {group}$"):
            fn(Evaluator(SMALL), ct, group, 8)


def test_a_group_of_one_is_the_identity():
    ev = Evaluator(SMALL)
    ct = Ct(None, SMALL.levels)
    assert block_sum(ev, ct, 1, 8) is ct and block_spread(ev, ct, 1, 8) is ct
    assert ev.stats.n_rotations == 0


def test_small_but_representable_diagonals_are_kept(kit):
    """Off-diagonals of 4e-3 are far above the plaintext resolution (2^-32): skipping them would cost
    4e-3 * sum(x) here, ~2^-6."""
    d = 16
    w = np.eye(d) + 4e-3 * (np.ones((d, d)) - np.eye(d))
    layout = feature_layout(SMALL.slots, 4, d, block=8)
    x = RNG.uniform(0.5, 1.0, (4, d))
    lin = PlainLinear("small-offdiag", w, None, layout)
    out = lin(kit.ev, [kit.enc(v, layout) for v in pack(x, layout)])
    assert_close_bits(unpack([kit.dec(c) for c in out], layout), x @ w, BITS - 3, "X W")


def test_unrescaled_outputs_stay_pending_one_level_up():
    layout = feature_layout(SMALL.slots, 8, 32, block=8)
    lin = PlainLinear("p", RNG.normal(size=(32, 32)), None, layout)
    (y,) = lin(Evaluator(SMALL), [Ct(None, SMALL.levels, layout)], rescale=False)
    assert y.pending and y.level == SMALL.levels and y.layout == lin.out_layout
    (z,) = lin(Evaluator(SMALL), [Ct(None, SMALL.levels, layout)])
    assert not z.pending and z.level == SMALL.levels - 1


def test_an_all_zero_output_block_is_refused_by_name():
    layout = feature_layout(SMALL.slots, 8, 32, block=8)  # F = 128
    w = np.zeros((32, 160))
    w[:, :128] = 1.0  # output ciphertext 0 has weights, ciphertext 1 (columns 128..159) none
    lin = PlainLinear("w_o", w, None, layout)
    with pytest.raises(HeAeroError, match=r"^w_o: output ciphertext 1 has an all-zero weight block$"):
        lin(Evaluator(SMALL), [Ct(None, SMALL.levels, layout)])


def test_a_bias_of_the_wrong_shape_names_both_shapes():
    layout = feature_layout(SMALL.slots, 8, 32, block=8)
    with pytest.raises(HeAeroError, match=r"^bad: bias shape \(9,\) != \(8,\)$"):
        PlainLinear("bad", np.ones((32, 8)), np.ones(9), layout)


# --- the one-token (decode) kernel: skewed rows ------------------------------------------------------------
SKEW_CASES = [(16, 100, 70), (32, 64, 96), (64, 40, 20)]
"""(block, d_in, d_out) at 1024 slots: F = 64 > B (R = 16 rows, 4 skewed copies), F = B = 32, F = 16 < B."""


def _skewed_case(block, d_in, d_out, zero_block=True):
    """A one-token layout and a SkewedLinear on random weights whose block (input ciphertext 0, output
    ciphertext 0) is all zero (its products are skipped), with a bias."""
    rng = np.random.default_rng(block)
    layout = feature_layout(SMALL.slots, 1, d_in, block=block)
    w = rng.normal(size=(d_in, d_out)) / np.sqrt(d_in)
    if zero_block:
        w[: layout.per_ct, : layout.per_ct] = 0.0
    b = rng.normal(size=d_out)
    return layout, SkewedLinear(f"skew{block}", w, b, layout), w, b


@pytest.fixture(scope="module")
def skew_kit():
    """A Kit with the rotation keys of every case, listed by symbolic runs."""
    steps = set()
    for case in SKEW_CASES:
        layout, lin, _, _ = _skewed_case(*case)
        ev = Evaluator(SMALL)
        lin(ev, [Ct(None, SMALL.levels, layout)] * layout.n_ct)
        steps |= ev.stats.steps_used
    return Kit(SMALL, steps)


@pytest.mark.parametrize("case", SKEW_CASES)
def test_skewed_product_matches_numpy_in_row_0_and_the_mask_clears_the_rest(skew_kit, case):
    layout, lin, w, b = _skewed_case(*case)
    x = np.random.default_rng(1).normal(size=(1, w.shape[0]))
    ys = lin(skew_kit.ev, [skew_kit.enc(v, layout) for v in pack(x, layout)])
    assert all(y.level == SMALL.levels - 1 and not y.layout.clean for y in ys)  # one level; says: garbage
    slots = [skew_kit.dec(y) for y in ys]
    assert_close_bits(unpack(slots, lin.out_layout), x @ w + b, BITS - 3, "row 0 of the skewed X W + b")
    garbage = np.concatenate([s.reshape(-1, layout.block)[:, 1:] for s in slots])
    assert np.abs(garbage).max() > 0.1  # the row sum's partial sums: why consumers must mask them
    clean = mask_rows(skew_kit.ev, ys, lin.out_layout)
    assert all(c.level == SMALL.levels - 2 and c.layout.clean for c in clean)
    slots = [skew_kit.dec(c) for c in clean]
    assert_close_bits(unpack(slots, lin.out_layout), x @ w + b, BITS - 3, "masked X W + b")
    rows = np.concatenate([s.reshape(-1, layout.block)[:, 1:] for s in slots])
    assert np.abs(rows).max() < 2**-14  # rows >= 1 back to 0


@pytest.mark.parametrize("case", SKEW_CASES)
def test_skewed_symbolic_run_counts_what_the_real_run_does(skew_kit, case):
    """Rotations and products by level and rotation steps: the planner's count is the run's. (Additions
    inside `dot_plain` are counted on real runs only, as for every kernel.)"""
    layout, lin, w, _ = _skewed_case(*case)
    real = Evaluator(SMALL, skew_kit.server)
    x = np.random.default_rng(2).normal(size=(1, w.shape[0]))
    mask_rows(real, lin(real, [skew_kit.enc(v, layout) for v in pack(x, layout)]), lin.out_layout)
    sym = Evaluator(SMALL)
    mask_rows(sym, lin(sym, [Ct(None, SMALL.levels, layout)] * layout.n_ct), lin.out_layout)
    for field in ("rotations", "pt_mults", "ctct_mults", "steps_used"):
        assert getattr(real.stats, field) == getattr(sym.stats, field), field


@pytest.mark.parametrize(
    "block, d_in, d_out, steps",
    [
        (32, 64, 96, {31, 62, 124, 248, 496, 1, 2, 4, 8, 16}),  # F = B: no copies
        (16, 100, 70, {15, 30, 60, 120, 256, 1, 2, 4, 8}),  # F = 4 B: copies by R B = 256
        (64, 40, 20, {63, 126, 252, 504, 1, 2, 4, 8}),  # F = B / 4: 16 rows skewed and summed
    ],
)
def test_skewed_costs_and_keys(block, d_in, d_out, steps):
    """log2(R) + G - 1 rotations per input ciphertext, log2(R) per output one, n_in n_out G products, the
    keys 2^k (B - 1), R B (F > B) and 1 .. R / 2 (R = min(F, B), G = F / R)."""
    layout, lin, _, _ = _skewed_case(block, d_in, d_out, zero_block=False)
    ev = Evaluator(SMALL)
    lin(ev, [Ct(None, SMALL.levels, layout)] * layout.n_ct)
    n_in, n_out, log_r = layout.n_ct, lin.out_layout.n_ct, int(math.log2(lin.rows))
    assert ev.stats.steps_used == steps
    assert ev.stats.n_rotations == n_in * (log_r + lin.copies - 1) + n_out * log_r
    assert ev.stats.n_pt == n_in * n_out * lin.copies


def test_skewed_skips_an_all_zero_input_and_refuses_an_all_zero_output():
    layout = feature_layout(SMALL.slots, 1, 64, block=32)  # F = 32: two input ciphertexts
    w = np.ones((64, 40))
    w[:32] = 0.0  # input ciphertext 0 meets only zero weights: not even skewed
    ev = Evaluator(SMALL)
    SkewedLinear("half", w, None, layout)(ev, [Ct(None, SMALL.levels, layout)] * 2)
    assert ev.stats.n_pt == 2 and ev.stats.n_rotations == 5 + 2 * 5
    w = np.zeros((64, 40))
    w[:, :32] = 1.0  # output ciphertext 1 (features 32..39) has no weights
    with pytest.raises(HeAeroError, match=r"^w_o: output ciphertext 1 has an all-zero weight block$"):
        SkewedLinear("w_o", w, None, layout)(Evaluator(SMALL), [Ct(None, SMALL.levels, layout)] * 2)


def test_skewed_refuses_what_it_cannot_compute():
    """Rows >= 1 that may hold garbage (the layout says so, or no layout says anything), a layout of other
    blocks, more than one token: refused by name, not computed into garbage."""
    layout = feature_layout(SMALL.slots, 1, 32, block=32)
    lin = SkewedLinear("w_q", np.ones((32, 32)), None, layout)
    for bad in (layout.with_clean(False), None, feature_layout(SMALL.slots, 1, 32, block=16), "rows"):
        with pytest.raises(HeAeroError, match=r"^w_q: the skewed kernel needs one token with rows >= 1"):
            lin(Evaluator(SMALL), [Ct(None, SMALL.levels, bad)])
    with pytest.raises(HeAeroError, match=r"^w_q: expected 1 ciphertexts, got 2$"):
        lin(Evaluator(SMALL), [Ct(None, SMALL.levels, layout)] * 2)
    with pytest.raises(HeAeroError, match=r"^w_q: the skewed kernel takes one token, the layout has 2$"):
        SkewedLinear("w_q", np.ones((32, 32)), None, layout.with_tokens(2))


def test_skewed_precondition_rows_above_0_must_be_0(skew_kit):
    """Why the kernel refuses an unclean input: a value in row 1 (here labelled clean, which no kernel
    does) collides with the skewed rows and changes row 0 of the result."""
    layout, lin, w, b = _skewed_case(32, 64, 96)
    x = np.random.default_rng(3).normal(size=(1, 64))
    vecs = pack(x, layout)
    vecs[0][1] = 1.0  # block 0, row 1
    ys = lin(skew_kit.ev, [skew_kit.enc(v, layout) for v in vecs])
    assert np.abs(unpack([skew_kit.dec(y) for y in ys], lin.out_layout) - (x @ w + b)).max() > 0.1


def test_the_block_diagonal_kernel_cleans_what_it_reads(kit):
    """Its diagonals are 0 on rows >= n_tokens: a dirty input (garbage in row 1) gives a clean output,
    and its layout says so (what lets w_mix read the skewed w_o's X_SA)."""
    layout = feature_layout(SMALL.slots, 1, 32, block=8)
    w = RNG.normal(size=(32, 32)) / np.sqrt(32)
    x = RNG.normal(size=(1, 32))
    (v,) = pack(x, layout)
    v.reshape(-1, 8)[:, 1:] = RNG.normal(size=(v.size // 8, 7))  # garbage in rows >= 1
    lin = PlainLinear("cleaning", w, None, layout)
    (y,) = lin(kit.ev, [kit.enc(v, layout.with_clean(False))])
    assert y.layout.clean and y.layout == lin.out_layout
    slots = kit.dec(y)
    assert_close_bits(unpack([slots], layout), x @ w, BITS - 3, "X W")
    assert np.abs(slots.reshape(-1, 8)[:, 1:]).max() < 2**-14


def test_layouts_carry_cleanliness_and_stages_that_need_it_refuse_garbage():
    layout = feature_layout(SMALL.slots, 1, 32, block=8)
    dirty = layout.with_clean(False)
    assert layout.clean and not dirty.clean and dirty != layout
    assert not dirty.with_tokens(2).clean and not dirty.with_features(8).clean  # kept through changes
    assert is_clean([Ct(None, 1, layout), Ct(None, 1), Ct(None, 1, "rows")])  # nothing said against
    assert not is_clean([Ct(None, 1, layout), Ct(None, 1, dirty)])
    with pytest.raises(HeAeroError, match=r"^stage: ciphertexts \[1\] hold garbage in rows >= n_tokens"):
        check_clean([Ct(None, 1, layout), Ct(None, 1, dirty)], "stage")
