"""Evaluator arithmetic against numpy, exact scales, level alignment and the early depth-budget error."""

import numpy as np
import pytest

from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.errors import HeAeroError
from tests.conftest import assert_close_bits
from tests.he_aero.ckks.kit import BITS, SMALL, TEST_MASK_BITS

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


def test_operation_counts_match_an_independent_count_of_seal_calls(monkeypatch):
    """The evaluator's counters against an independent count of the SEAL calls actually made (every
    `SealOps` primitive wrapped), over a whole layer with refreshes: the planner's latency model and the
    benchmarks rely on these counts."""
    from collections import Counter

    from he_aero.ckks.backend import SealOps
    from he_aero.ckks.layer import EncryptedLayer
    from he_aero.ckks.packing import feature_layout, pack
    from he_aero.ckks.refresh import Refresher
    from he_aero.plan import Ranges, fit_plans
    from tests.he_aero.ckks.kit import SMALL, Kit
    from tests.he_aero.ckks.test_layer import BOUND, T, _layer_view

    calls: Counter = Counter()
    for name in ("rotate", "multiply", "multiply_plain", "relinearize_inplace"):
        original = getattr(SealOps, name)

        def counted(self, *args, _name=name, _original=original):
            calls[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(SealOps, name, counted)
    rng = np.random.default_rng(0)
    lay = _layer_view(rng)
    exp_plan, recip_plan = fit_plans((-6.0, 3.0), (1.0, 17.0), Ranges(((-6.0, 3.0),)), SMALL.levels)
    layer = EncryptedLayer(0, lay, exp_plan, recip_plan)
    layout = feature_layout(SMALL.slots, T, lay.w_q.shape[0], block=16)
    symbolic = Evaluator(SMALL)  # the rotation keys this layer needs
    blank = [Ct(None, SMALL.levels, layout)] * layout.n_ct
    layer.prefill(symbolic, Refresher(symbolic, None, BOUND, TEST_MASK_BITS), blank, layout)
    kit = Kit(SMALL, sorted(symbolic.stats.steps_used))
    ref = Refresher(kit.ev, kit.refresh_client, BOUND, TEST_MASK_BITS)
    xs = [kit.enc(v, layout) for v in pack(rng.normal(size=(T, lay.w_q.shape[0])), layout)]
    kit.ev.reset_stats()
    calls.clear()
    layer.prefill(kit.ev, ref, xs, layout)
    stats = kit.ev.stats
    assert calls["rotate"] == stats.n_rotations > 0
    assert calls["multiply"] == stats.n_ctct > 0
    assert calls["relinearize_inplace"] == stats.relins > 0
    # plaintext products: the kernels' own plus the level alignments, all counted as pt_mults
    assert calls["multiply_plain"] == stats.n_pt > 0


@pytest.mark.parametrize(
    "what, want",
    [
        ("x - x", 0.0),
        ("(x + 5) - x", 5.0),
        ("x + (-1 x)", 0.0),
        ("x times zeros", 0.0),
        ("x times 1e-12", 0.0),
        ("a dot product that cancels", 0.0),
        ("x times x - x x", 0.0),
    ],
)
def test_a_result_whose_c1_cancels_keeps_its_value(kit, what, want):
    """SEAL refuses a result with c1 = 0 ("result ciphertext is transparent") after writing it; the evaluator
    adds a fresh encryption of zero, so the value (c0: the 5 of (x + 5) - x) survives at the right level and
    exact scale, and later operations work on it."""
    ev = kit.ev
    x = np.linspace(-1, 1, 16)
    a = kit.enc(x)
    ops = {
        "x - x": lambda: ev.sub(a, a),
        "(x + 5) - x": lambda: ev.sub(ev.add_scalar(a, 5.0), a),
        "x + (-1 x)": lambda: ev.add(a, ev.mul_scalar(a, -1.0)),
        "x times zeros": lambda: ev.mul_plain(a, None, lambda: np.zeros(16)),
        "x times 1e-12": lambda: ev.mul_plain(a, None, lambda: np.full(16, 1e-12)),
        "a dot product that cancels": lambda: ev.dot_plain(
            [(a, None, lambda: np.ones(16)), (a, None, lambda: -np.ones(16))]
        ),
        "x times x - x x": lambda: ev.sub(ev.mul(a, a), ev.mul(a, a)),
    }
    z = ops[what]()
    assert z.data.scale == ev.scales[z.level] and not z.data.is_transparent()
    assert np.abs(kit.dec(z)[:16] - want).max() < 2.0**-BITS
    y = ev.add(z, ev.align(a, z.level))  # usable: z + x
    assert_close_bits(kit.dec(y)[:16], x + want, BITS, what)


def test_a_cache_limit_keeps_the_first_plaintexts_and_encodes_the_rest_at_use(kit):
    ev = Evaluator(SMALL, kit.server, cache_limit=0)
    a = kit.enc(X)
    ev.mul_plain(a, "w", lambda: Y)
    assert ev.cache_bytes() == 0  # nothing fits a zero limit
    one = SMALL.poly_modulus_degree * (SMALL.levels + 1) * 8  # a top-level factor: N words per prime 0..top
    ev = Evaluator(SMALL, kit.server, cache_limit=one)
    products = [ev.mul_plain(a, key, lambda: Y) for key in ("w1", "w2", "w1", "w2")]
    assert ev.cache_bytes() == one and ev.stats.encodes == 3  # w1 cached; w2 encoded at each of its uses
    for out in products:
        assert_close_bits(kit.dec(out), X * Y, BITS, "product past the cache limit")
    before = ev.stats.encodes
    many = {(f"w{i}", SMALL.levels, True): (lambda: X) for i in range(3, 9)}
    assert ev.prepare(many) == 0 and ev.stats.encodes == before  # full: nothing encoded to be thrown away
    ev = Evaluator(SMALL, kit.server, cache_limit=one + 8)  # room for one, and 8 bytes
    assert ev.prepare(many) == 1 and ev.stats.encodes == 1
    ev.clear_cache()
    assert ev.cache_bytes() == 0
    with pytest.raises(HeAeroError, match="cache limit"):
        Evaluator(SMALL, kit.server, cache_limit=-1)
