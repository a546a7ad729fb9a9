"""The refresh round trip: values survive, the client sees only masked values, masks are fresh each round."""

import numpy as np
import pytest

from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.refresh import Refresher
from he_aero.client.client import refresh_reply
from he_aero.errors import HeAeroError
from tests.conftest import assert_close_bits
from tests.he_aero.ckks.kit import BITS, SMALL

X = np.random.default_rng(0).uniform(-8, 8, SMALL.slots)


class SpyClient:
    """The real client handler, recording what the client decrypts."""

    def __init__(self, keys):
        self.keys, self.seen = keys, []

    def __call__(self, blobs):
        self.seen += [self.keys.decrypt_bytes(b) for b in blobs]
        return refresh_reply(self.keys, blobs)


def test_round_trip_preserves_values_and_masks_change(kit):
    spy = SpyClient(kit.keys)
    ref = Refresher(kit.ev, spy, bound=8.0, hiding_bits=16)
    low = kit.ev.align(kit.enc(X), 0)
    a = ref.refresh([low])[0]
    b = ref.refresh([low])[0]
    for c in (a, b):
        assert c.level == SMALL.levels and c.data.scale == kit.ev.scales[SMALL.levels]
        assert_close_bits(kit.dec(c), X, BITS - 2, "refreshed")
    assert ref.log.rounds == 2 and ref.log.ciphertexts == 2
    assert ref.log.bytes_to_client > 0 and ref.log.bytes_to_server > ref.log.bytes_to_client  # level 0 vs top
    m1, m2 = spy.seen[0] - X, spy.seen[1] - X  # what the client saw, minus the secret
    assert np.abs(m1 - m2).min() > 0  # a fresh mask every round, every slot
    assert np.abs(m1).max() <= ref.width * 1.001 and np.abs(m1).max() > ref.width / 2
    assert np.abs(np.corrcoef(spy.seen[0], X)[0, 1]) < 0.1  # the client's view is ~uncorrelated with x


def test_ensure_refreshes_only_what_lacks_levels(kit):
    ref = Refresher(kit.ev, kit.refresh_client, bound=8.0, hiding_bits=16, seed=3)
    high, low = kit.enc(X), kit.ev.align(kit.enc(X), 0)
    out = ref.ensure([high, low], 2, "test")
    assert out[0] is high and out[1].level == SMALL.levels and ref.log.ciphertexts == 1
    assert ref.trace[-1] == {"stage": "test", "need": 2, "level_in": 0, "refreshed": 1}


def test_refresh_limits_are_clear_errors(kit):
    wide = Refresher(kit.ev, kit.refresh_client, bound=2.0**20, hiding_bits=40)
    assert wide.min_level() == 2  # a 2^60 mask needs two primes above q0
    with pytest.raises(HeAeroError, match="fell below level 2"):
        wide.ensure([kit.ev.align(kit.enc(X), 0)], 1, "stage")
    off = Refresher(kit.ev, kit.refresh_client, bound=8.0, hiding_bits=16, allow=False)
    with pytest.raises(HeAeroError, match="refresh is disabled"):
        off.ensure([kit.ev.align(kit.enc(X), 0)], 1, "stage")
    with pytest.raises(HeAeroError, match="needs 9 levels between refreshes"):
        off.ensure([kit.enc(X)], 9, "stage")


def test_symbolic_refresh_estimates_bytes():
    ref = Refresher(Evaluator(SMALL), None, bound=8.0, hiding_bits=16)
    from he_aero.ckks.ciphertext import Ct

    out = ref.refresh([Ct(None, 0)])
    assert out[0].level == SMALL.levels
    assert ref.log.bytes_to_client == 16 * SMALL.poly_modulus_degree


def test_one_round_masks_every_ciphertext_with_its_own_mask(kit):
    """Three ciphertexts in one round: the client's views minus the secrets are three different masks (a mask
    reused across a round would reveal x1 - x2 exactly)."""
    spy = SpyClient(kit.keys)
    ref = Refresher(kit.ev, spy, bound=8.0, hiding_bits=16)
    xs = [X, -X, X[::-1].copy()]
    ref.refresh([kit.ev.align(kit.enc(x), 0) for x in xs])
    masks = [seen - x for seen, x in zip(spy.seen, xs, strict=True)]
    assert ref.log.rounds == 1 and len(masks) == 3
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.abs(masks[i] - masks[j]).min() > 1.0  # different in every slot
    # what the client could compute from two views of one round: x1 - x2 is hidden, not revealed
    diff = (spy.seen[0] - spy.seen[1]) - (xs[0] - xs[1])
    assert np.abs(diff).max() > 2.0**16  # the masks' difference, of width ~W, not ~0


def test_mask_width_and_uniformity_as_documented(kit):
    """docs/security.md: r is uniform in [-W, W) with W = bound * 2^hiding_bits, per slot. Checked on what the
    client sees (minus the secret): the range, and a Kolmogorov-Smirnov test against U(-W, W)."""
    from scipy import stats

    bound, hiding = 8.0, 16
    spy = SpyClient(kit.keys)
    ref = Refresher(kit.ev, spy, bound=bound, hiding_bits=hiding)
    ref.refresh([kit.ev.align(kit.enc(X), 0) for _ in range(4)])
    width = bound * 2.0**hiding  # the documented formula, not the code's own attribute
    r = np.concatenate([seen - X for seen in spy.seen])
    assert np.abs(r).max() <= width * (1 + 1e-6) and np.abs(r).max() > 0.99 * width
    assert stats.kstest(r, stats.uniform(loc=-width, scale=2 * width).cdf).pvalue > 1e-3


def test_masks_come_from_the_os_generator(kit, monkeypatch):
    """Masks are drawn from os.urandom (numpy's PCG64 is predictable from its outputs): with os.urandom
    replaced by zeros, every mask is -W exactly."""
    import he_aero.ckks.refresh as refresh_module

    calls = []

    def zeros(n):
        calls.append(n)
        return bytes(n)

    monkeypatch.setattr(refresh_module.os, "urandom", zeros)
    spy = SpyClient(kit.keys)
    ref = Refresher(kit.ev, spy, bound=8.0, hiding_bits=16)
    ref.refresh([kit.ev.align(kit.enc(X), 0)])
    assert calls == [8 * SMALL.slots] * 2  # the real and the imaginary parts
    assert np.abs(spy.seen[0] - X + ref.width).max() < 1e-2  # x + (-W) on every slot


# --- limits, levels and accounting, checked exactly (found by mutation testing, docs/mutation.md) ---
def _symbolic(bound=8.0, hiding_bits=16, **kw):
    """A refresher on the symbolic evaluator of SMALL (levels and counts only; no client needed)."""
    return Refresher(Evaluator(SMALL), None, bound=bound, hiding_bits=hiding_bits, **kw)


def test_refresh_log_summary_names_every_counter():
    from he_aero.ckks.refresh import RefreshLog

    log = RefreshLog(rounds=2, ciphertexts=5, bytes_to_client=7, bytes_to_server=11)
    assert log.summary() == {"rounds": 2, "ciphertexts": 5, "bytes_to_client": 7, "bytes_to_server": 11}


def test_defaults_are_the_documented_bound_and_hiding():
    """docs/security.md: B = 64 and h = 20 by default, W = B * 2^h."""
    ref = Refresher(Evaluator(SMALL), None)
    assert (ref.bound, ref.hiding_bits, ref.width) == (64.0, 20, 64.0 * 2.0**20)


@pytest.mark.parametrize(
    "bound, hiding, message",
    [
        (0.0, 16, r"bound must be a positive number, got 0.0"),
        (-1.0, 16, r"bound must be a positive number, got -1.0"),
        (float("inf"), 16, r"bound must be a positive number, got inf"),
        (float("nan"), 16, r"bound must be a positive number, got nan"),
        (8.0, 0, r"hiding_bits must be in \[1, 40\], got 0"),
        (8.0, 41, r"hiding_bits must be in \[1, 40\], got 41"),
        (2.0**120, 40, r"a mask of width 2\^160.0 does not fit any level of N=2048 .*; lower hiding_bits"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(bound, hiding, message):
    with pytest.raises(HeAeroError, match=f"^refresh: {message}"):
        _symbolic(bound, hiding)


@pytest.mark.parametrize("bound, hiding", [(0.5, 16), (8.0, 1), (8.0, 40)])
def test_settings_at_the_limits_are_accepted(bound, hiding):
    ref = _symbolic(bound, hiding)
    assert ref.width == bound * 2.0**hiding


@pytest.mark.parametrize(
    "bound, hiding, level",
    [
        (8.0, 16, 0),  # 2^19 + 8 fits q0's 27 bits of headroom
        (1.0, 27, 1),  # sqrt(2) 2^27 + 1 = 2^27.5 does not fit 27 bits
        (2.0**26.4 / (2**20), 20, 0),  # sqrt(2) W + B = 2^26.9 + 2^6.4 < 2^27: fits q0
        (2.0**26.5 / (2**20), 20, 1),  # sqrt(2) W = 2^27 exactly: headroom must exceed it strictly
        (2.0**100, 20, 3),
        (2.0**130, 20, 4),  # the top level is the last candidate
    ],
)
def test_min_level_is_the_first_level_whose_headroom_holds_the_mask(bound, hiding, level):
    """SMALL's headroom by level: 27, 59, 91, 123, 155 bits (q0..q_l minus the 2^32 scale and a sign bit);
    the mask is complex, |r| <= sqrt(2) W."""
    ref = _symbolic(bound, hiding)
    assert ref.min_level() == level and ref.usable_levels() == SMALL.levels - level


def test_seeded_masks_are_numpys_and_logged_per_ciphertext(kit):
    """seed=7 (tests only) draws numpy's uniform(-W, W), real then imaginary part per ciphertext; the log
    keeps each ciphertext's first (real) mask value."""
    ref = Refresher(kit.ev, kit.refresh_client, bound=8.0, hiding_bits=16, seed=7)
    rng = np.random.default_rng(7)
    draws = [rng.uniform(-ref.width, ref.width, SMALL.slots) for _ in range(4)]
    expected = [draws[0], draws[2]]  # the real parts (draws 1 and 3: the imaginary parts)
    spy = SpyClient(kit.keys)
    ref.client = spy
    ref.refresh([kit.ev.align(kit.enc(X), 0), kit.ev.align(kit.enc(-X), 0)])
    assert ref.log.masks_seen == [[float(expected[0][0]), float(expected[1][0])]]
    assert_close_bits(spy.seen[0] - X, expected[0], 4, "client's view minus x")
    assert_close_bits(spy.seen[1] + X, expected[1], 4, "client's view minus x")


def test_unseeded_masks_differ_between_refreshers(kit):
    a = Refresher(kit.ev, kit.refresh_client, bound=8.0, hiding_bits=16)._mask(64)
    b = Refresher(kit.ev, kit.refresh_client, bound=8.0, hiding_bits=16)._mask(64)
    assert np.abs(a - b).min() > 0


def test_ensure_uses_the_effective_level_of_pending_products():
    """A pending product at level l has l - 1 levels to give: it is refreshed when l - 1 < floor + need, and
    the trace records l - 1."""
    ref = _symbolic()  # floor 0, 4 usable levels
    ct = Ct(None, 2, "L", pending=True)
    out = ref.ensure([ct], 2)
    assert out[0].level == SMALL.levels and out[0].layout == "L" and ref.log.rounds == 1
    assert ref.trace == [{"stage": "stage", "need": 2, "level_in": 1, "refreshed": 1}]


def test_ensure_keeps_a_ciphertext_with_exactly_enough_levels():
    ref = _symbolic()
    ct = Ct(None, 2)
    assert ref.ensure([ct], 2, "exact")[0] is ct and ref.log.rounds == 0
    top = Ct(None, SMALL.levels)
    assert ref.ensure([top], SMALL.levels, "all levels")[0] is top  # need == usable_levels is allowed
    assert [t["refreshed"] for t in ref.trace] == [0, 0]


def test_ensure_refuses_a_pending_product_below_the_floor():
    ref = _symbolic(2.0**20, 20)  # a 2^40 mask: floor 1
    assert ref.min_level() == 1 and ref.usable_levels() == SMALL.levels - 1
    with pytest.raises(HeAeroError, match="refresh: mul: a ciphertext fell below level 1, its mask would"):
        ref.ensure([Ct(None, 1, pending=True)], 1, "mul")
    assert ref.log.rounds == 0


def test_symbolic_rounds_count_ciphertexts_levels_and_bytes():
    """Per ciphertext: 16 N (level + 1) bytes to the client, 16 N (top + 1) back; counts add up."""
    ev = Evaluator(SMALL)
    ref = Refresher(ev, None, bound=8.0, hiding_bits=16)
    n = SMALL.poly_modulus_degree
    out = ref.refresh([Ct(None, 0, "a"), Ct(None, 2, "b")])
    ref.refresh([Ct(None, 1), Ct(None, 0)])
    assert [(c.level, c.layout) for c in out] == [(SMALL.levels, "a"), (SMALL.levels, "b")]
    assert ref.log.bytes_to_client == 16 * n * (1 + 3 + 2 + 1)
    assert ref.log.bytes_to_server == 16 * n * (SMALL.levels + 1) * 4
    assert (ref.log.rounds, ref.log.ciphertexts) == (2, 4)
    assert ev.stats.refresh_rounds == 2 and dict(ev.stats.refresh_cts) == {0: 2, 2: 1, 1: 1}


def test_real_rounds_count_the_bytes_each_way_and_keep_layouts(kit):
    sizes = []

    def client(blobs):
        replies = refresh_reply(kit.keys, blobs)
        sizes.append((sum(map(len, blobs)), sum(map(len, replies))))
        return replies

    ev = Evaluator(SMALL, kit.server)
    ref = Refresher(ev, client, bound=8.0, hiding_bits=16, seed=1)
    out = ref.refresh([Ct(kit.ev.align(kit.enc(X), 0).data, 0, "rows")])
    ref.refresh([kit.ev.align(kit.enc(X), 1)])
    assert out[0].layout == "rows"
    assert ref.log.bytes_to_client == sizes[0][0] + sizes[1][0]
    assert ref.log.bytes_to_server == sizes[0][1] + sizes[1][1]
    assert ev.stats.refresh_rounds == 2 and dict(ev.stats.refresh_cts) == {0: 1, 1: 1}


def test_a_stale_or_short_reply_is_refused(kit):
    """The reply must be one fresh top-level ciphertext per request, in order."""
    cts = [kit.ev.align(kit.enc(X), 0), kit.ev.align(kit.enc(X), 0)]

    def echo_second(blobs):  # the masked level-0 ciphertext sent back instead of a fresh one
        return [refresh_reply(kit.keys, blobs[:1])[0], blobs[1]]

    ref = Refresher(kit.ev, echo_second, bound=8.0, hiding_bits=16)
    with pytest.raises(HeAeroError, match="^refresh reply ciphertext 1 is not a fresh top-level encryption"):
        ref.refresh(cts)
    short = Refresher(kit.ev, lambda blobs: refresh_reply(kit.keys, blobs[:1]), bound=8.0, hiding_bits=16)
    with pytest.raises(ValueError, match="zip"):
        short.refresh(cts)


def _c1(kit, blob, count=256):
    """The first `count` RNS words of polynomial c1 of a serialised ciphertext."""
    from he_aero.ckks.backend import load_ciphertext

    ct = load_ciphertext(kit.keys.seal_context, blob, "view")
    words = ct.dyn_array()
    start = words.size() // 2  # polynomial-major layout: c0's words, then c1's
    return [words.at(start + i) for i in range(count)]


@pytest.mark.parametrize("rerandomized", [True, False])
def test_two_refreshes_of_one_ciphertext_show_independent_c1(kit, monkeypatch, rerandomized):
    """Without re-randomisation c1 is a deterministic function of the client's ciphertext and the weights
    (the review's candidate-weight test); with it, c1 is fresh each time. The False case shows the check
    can fail."""
    from he_aero.ckks.ciphertext import Evaluator

    if not rerandomized:
        monkeypatch.setattr(Evaluator, "rerandomize", lambda self, a: self.rescale(a))
    blobs = []

    def capture(request):
        blobs.extend(request)
        return kit.refresh_client(request)

    ref = Refresher(kit.ev, capture, bound=8.0, hiding_bits=16)
    low = kit.ev.align(kit.enc(X), 0)
    ref.refresh([low])
    ref.refresh([low])
    a, b = _c1(kit, blobs[0]), _c1(kit, blobs[1])
    same = sum(x == y for x, y in zip(a, b, strict=True))
    assert (same == 0) if rerandomized else (same == len(a))


def test_a_mask_that_exactly_fills_the_headroom_moves_up_a_level():
    """sqrt(2) W + B = 2^27 exactly: q0's 27 bits of headroom must exceed it strictly."""
    import math

    bound = 2.0**27 / (math.sqrt(2) * 2**20 + 1)
    assert math.log2(math.sqrt(2) * bound * 2**20 + bound) == 27.0
    assert _symbolic(bound, 20).min_level() == 1


def test_imaginary_parts_get_their_own_uniform_mask(kit):
    """seed=7: the client sees x + r_re + i r_im with r_re, r_im numpy's first two draws of uniform(-W, W)
    (the complex slots of what it decrypts, before it keeps the real parts)."""
    from he_aero.ckks.backend import load_ciphertext

    views = []

    def client(blobs):
        views.extend(kit.keys.decrypt(load_ciphertext(kit.keys.seal_context, b, "v"), True) for b in blobs)
        return kit.refresh_client(blobs)

    ref = Refresher(kit.ev, client, bound=8.0, hiding_bits=16, seed=7)
    rng = np.random.default_rng(7)
    r_re, r_im = (rng.uniform(-ref.width, ref.width, SMALL.slots) for _ in range(2))
    ref.refresh([kit.ev.align(kit.enc(X), 0)])
    assert_close_bits(views[0].real - X, r_re, 4, "real mask")
    assert_close_bits(views[0].imag, r_im, 4, "imaginary mask")
