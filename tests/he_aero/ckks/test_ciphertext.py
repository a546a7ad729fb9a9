"""Evaluator arithmetic against numpy, exact scales, level alignment and the early depth-budget error."""

import numpy as np
import pytest

from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.errors import HeAeroError
from tests.conftest import assert_close_bits
from tests.he_aero.ckks.kit import BITS, SMALL

RNG = np.random.default_rng(0)
X = RNG.uniform(-1, 1, SMALL.slots)
Y = RNG.uniform(-1, 1, SMALL.slots)


def test_mul_add_rotate_plain_match_numpy(kit):
    ev = kit.ev
    a, b = kit.enc(X), kit.enc(Y)
    prod = ev.mul(a, b)
    assert prod.level == SMALL.levels - 1
    out = ev.mul_plain(ev.add(ev.rotate(prod, 1), a), "w", lambda: Y)  # a is aligned down automatically
    ref = (np.roll(X * Y, -1) + X) * Y
    assert out.level == SMALL.levels - 2
    assert_close_bits(kit.dec(out), ref, BITS, "mul/add/rotate/mul_plain")


def test_every_ciphertext_sits_on_its_exact_level_scale(kit):
    ev = kit.ev
    a = kit.enc(X)
    cts = [a, ev.mul(a, a), ev.mul_scalar(a, 0.3), ev.align(a, 1), ev.mul(ev.mul(a, a), a)]
    for c in cts:
        assert c.data.scale == ev.scales[c.level]


def test_align_moves_down_exactly(kit):
    ev = kit.ev
    low = ev.align(kit.enc(X), 0)
    assert low.level == 0
    assert_close_bits(kit.dec(low), X, BITS, "align")
    with pytest.raises(HeAeroError, match="cannot raise"):
        ev.align(low, 2)


def test_dot_and_dot_plain_sum_before_one_rescale(kit):
    ev = kit.ev
    a, b = kit.enc(X), kit.enc(Y)
    before = ev.stats.relins
    d = ev.dot([(a, b), (a, a), (b, b)])
    assert ev.stats.relins == before + 1
    assert_close_bits(kit.dec(d), X * Y + X * X + Y * Y, BITS - 1, "dot")
    dp = ev.dot_plain([(a, "p1", lambda: Y), (b, "p2", lambda: X)])
    assert_close_bits(kit.dec(dp), 2 * X * Y, BITS, "dot_plain")


def test_depth_budget_error_fires_before_seal(kit):
    ev = kit.ev
    c = ev.align(kit.enc(X), 0)
    for op in (lambda: ev.mul(c, c), lambda: ev.mul_scalar(c, 2.0), lambda: ev.mul_plain(c, None, lambda: X)):
        with pytest.raises(HeAeroError, match="depth budget exhausted"):
            op()


def test_symbolic_evaluator_tracks_the_same_levels(kit):
    sym = Evaluator(SMALL)
    s = Ct(None, SMALL.levels)
    out = sym.mul(sym.add(sym.rotate(s, 1), s), sym.mul_scalar(s, 0.5))
    real = kit.ev.mul(
        kit.ev.add(kit.ev.rotate(kit.enc(X), 1), kit.enc(X)), kit.ev.mul_scalar(kit.enc(X), 0.5)
    )
    assert out.level == real.level
    assert sym.stats.n_rotations == 1 and sym.stats.n_ctct == 1


def test_product_by_exact_zero_is_refused(kit):
    with pytest.raises(HeAeroError, match="transparent"):
        kit.ev.mul_scalar(kit.enc(X), 0.0)
