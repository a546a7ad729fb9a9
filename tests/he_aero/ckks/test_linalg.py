"""Plaintext matmul (BSGS block diagonals) and block sums against numpy."""

import numpy as np
import pytest

from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.linalg import PlainLinear, block_spread, block_sum, horner, rotate_binary
from he_aero.ckks.packing import feature_layout, pack, unpack
from he_aero.errors import HeAeroError
from tests.conftest import assert_close_bits
from tests.he_aero.ckks.kit import BITS, SMALL

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
