"""The flooding refresh: values survive exactly, the client sees only flooded polynomials, masks are fresh,
uniform, from the OS generator and of the documented width; the session cap holds; bad replies are refused."""

import math

import numpy as np
import pytest

from he_aero.ckks import rns
from he_aero.ckks.backend import ciphertext_words, load_ciphertext
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.hiding import RefreshHiding
from he_aero.ckks.refresh import Refresher, RefreshLog, refresh_level
from he_aero.client.client import refresh_reply
from he_aero.errors import HeAeroError
from tests.conftest import assert_close_bits
from tests.he_aero.ckks.kit import BITS, SMALL, TEST_MASK_BITS

X = np.random.default_rng(0).uniform(-8, 8, SMALL.slots)
K = TEST_MASK_BITS


class SpyClient:
    """The real client handler, recording the exact integer polynomial the client decrypts each time."""

    def __init__(self, keys, level=None, mask_bits=None):
        self.keys, self.level, self.mask_bits, self.seen = keys, level, mask_bits, []

    def __call__(self, blobs):
        for b in blobs:
            self.seen.append(self.keys.decrypt_poly(load_ciphertext(self.keys.seal_context, b, "view")))
        return refresh_reply(self.keys, blobs, self.level, self.mask_bits)


def _message(kit, ct: Ct) -> np.ndarray:
    """The unmasked message polynomial of `ct` (what the mask hides), as Python ints."""
    return np.array(kit.keys.decrypt_poly(ct.data).to_ints(), dtype=object)


def test_round_trip_is_as_precise_as_a_fresh_encryption(kit):
    spy = SpyClient(kit.keys, 0, K)
    ref = Refresher(kit.ev, spy, bound=8.0, mask_bits=K)
    low = kit.ev.align(kit.enc(X), 0)
    out = ref.refresh([low, low])
    for c in out:
        assert c.level == SMALL.levels and c.data.scale == kit.ev.scales[SMALL.levels]
        assert_close_bits(kit.dec(c), X, BITS, "refreshed")
    # exact arithmetic: the refresh adds a fresh encryption's noise to what the level-0 ciphertext held
    before = np.abs(kit.dec(low) - X).max()
    after = np.abs(kit.dec(out[0]) - X).max()
    fresh = np.abs(kit.dec(kit.enc(X)) - X).max()
    assert after <= before + 4 * fresh
    assert (ref.log.rounds, ref.log.ciphertexts) == (1, 2)


def test_the_whole_polynomial_is_masked_with_the_documented_width(kit):
    """No coefficient of what the client decrypts equals the message's; V - M is uniform on [-2^k, 2^k)
    (Kolmogorov-Smirnov), the documented width, not the code's own attribute."""
    from scipy import stats

    spy = SpyClient(kit.keys)
    ref = Refresher(kit.ev, spy, bound=8.0, mask_bits=K)
    low = kit.ev.align(kit.enc(X), 0)
    message = _message(kit, low)
    ref.refresh([low, low])
    for view in spy.seen:
        diff = np.array(view.to_ints(), dtype=object) - message  # r + the re-randomisation's noise
        assert all(d != 0 for d in diff)
        r = diff.astype(np.float64) / 2.0**K
        assert np.abs(r).max() <= 1 + 2.0**-20 and np.abs(r).max() > 0.99
        assert stats.kstest(r, stats.uniform(loc=-1, scale=2).cdf).pvalue > 1e-3


def test_one_round_masks_every_ciphertext_with_its_own_mask(kit):
    """Three ciphertexts in one round: three different masks (a mask reused across a round would reveal
    x1 - x2 exactly: the planted bug of issue 14)."""
    spy = SpyClient(kit.keys)
    ref = Refresher(kit.ev, spy, bound=8.0, mask_bits=K)
    cts = [kit.ev.align(kit.enc(x), 0) for x in (X, -X, X[::-1].copy())]
    messages = [_message(kit, c) for c in cts]
    ref.refresh(cts)
    masks = [np.array(v.to_ints(), dtype=object) - m for v, m in zip(spy.seen, messages, strict=True)]
    assert ref.log.rounds == 1 and len(masks) == 3
    for i in range(3):
        for j in range(i + 1, 3):
            gap = (masks[i] - masks[j]).astype(np.float64)
            assert np.abs(gap).min() > 2.0**20  # different in every coefficient, by more than the noise
            assert np.abs(gap).max() > 2.0**K  # the difference of two masks has their width, not ~0


def test_masks_come_from_the_os_generator(kit, monkeypatch):
    """Masks are drawn from os.urandom (numpy's PCG64 is predictable from its outputs): with os.urandom
    replaced by zeros, every coefficient of every mask is -2^k."""
    calls = []

    def zeros(n):
        calls.append(n)
        return bytes(n)

    monkeypatch.setattr(rns.os, "urandom", zeros)
    spy = SpyClient(kit.keys)
    ref = Refresher(kit.ev, spy, bound=8.0, mask_bits=K)
    low = kit.ev.align(kit.enc(X), 0)
    message = _message(kit, low)
    ref.refresh([low])
    assert calls == [16 * SMALL.poly_modulus_degree]
    diff = (np.array(spy.seen[0].to_ints(), dtype=object) - message + 2**K).astype(np.float64)
    assert np.abs(diff).max() < 2.0**20  # -2^k plus the re-randomisation's noise on every coefficient


def test_the_client_refuses_an_unflooded_polynomial(kit):
    """A server that forgets the mask would hand the client its activation: the client refuses it (an
    honest mask has a coefficient above 2^(k-2) except with probability 4^-N)."""
    low = kit.ev.align(kit.enc(X), 0)
    with pytest.raises(
        HeAeroError, match=r"^refresh: the polynomial is not flooded \(largest coefficient 2\^3"
    ):
        refresh_reply(kit.keys, [kit.ev.to_bytes(low)], 0, K)
    masked = kit.ev.add_integer_poly(low, rns.IntPoly.uniform(K, SMALL.poly_modulus_degree))
    assert len(refresh_reply(kit.keys, [kit.ev.to_bytes(masked)], 0, K)) == 1


def test_the_client_refuses_a_ciphertext_off_the_refresh_level(kit):
    high = kit.ev.align(kit.enc(X), 2)
    with pytest.raises(
        HeAeroError, match="^client: refresh ciphertext 0 is not a two-polynomial ciphertext at"
    ):
        refresh_reply(kit.keys, [kit.ev.to_bytes(high)], 0, K)


def _c1(kit, blob, count=256):
    """The first `count` RNS words of polynomial c1 of a serialised ciphertext."""
    return ciphertext_words(load_ciphertext(kit.keys.seal_context, blob, "view"))[1, 0, :count]


@pytest.mark.parametrize("rerandomized", [True, False])
def test_two_refreshes_of_one_ciphertext_show_independent_c1(kit, monkeypatch, rerandomized):
    """Without re-randomisation c1 is a deterministic function of the client's ciphertext and the weights
    (the review's candidate-weight test); with it, c1 is fresh each time. The False case shows the check
    can fail."""
    if not rerandomized:
        monkeypatch.setattr(Evaluator, "rerandomize", lambda self, a: self.rescale(a))
    blobs = []

    def capture(request):
        blobs.extend(request)
        return kit.refresh_client(request)

    ref = Refresher(kit.ev, capture, bound=8.0, mask_bits=K)
    low = kit.ev.align(kit.enc(X), 0)
    ref.refresh([low])
    ref.refresh([low])
    same = int((_c1(kit, blobs[0]) == _c1(kit, blobs[1])).sum())
    assert (same == 0) if rerandomized else (same == 256)


def test_ciphertexts_go_down_to_the_refresh_level_before_they_leave(kit):
    """A ciphertext above the refresh level is mod-switched down first: fewer bytes, one level for the
    client to accept."""
    spy = SpyClient(kit.keys, 0, K)
    ref = Refresher(kit.ev, spy, bound=8.0, mask_bits=K)
    out = ref.refresh([kit.ev.align(kit.enc(X), 2)])
    assert_close_bits(kit.dec(out[0]), X, BITS, "refreshed from level 2")


def test_the_session_cap_refuses_the_round_that_would_pass_it(kit):
    ref = Refresher(kit.ev, kit.refresh_client, bound=8.0, mask_bits=K, max_polynomials=3)
    low = kit.ev.align(kit.enc(X), 0)
    ref.refresh([low, low])
    with pytest.raises(
        HeAeroError,
        match="^refresh: this session has refreshed 2 polynomials; 2 more would pass its budget of 3, beyond "
        "which the hiding it was offered no longer holds$",
    ):
        ref.refresh([low, low])
    assert ref.log.ciphertexts == 2
    ref.refresh([low])  # exactly at the cap is allowed
    assert ref.log.ciphertexts == 3


def test_a_stale_or_short_reply_is_refused(kit):
    """The reply must be one fresh top-level ciphertext per request, in order."""
    cts = [kit.ev.align(kit.enc(X), 0), kit.ev.align(kit.enc(X), 0)]

    def echo_second(blobs):  # the masked level-0 ciphertext sent back instead of a fresh one
        return [refresh_reply(kit.keys, blobs[:1])[0], blobs[1]]

    ref = Refresher(kit.ev, echo_second, bound=8.0, mask_bits=K)
    with pytest.raises(HeAeroError, match="^refresh reply ciphertext 1 is not a fresh top-level encryption"):
        ref.refresh(cts)
    short = Refresher(kit.ev, lambda blobs: refresh_reply(kit.keys, blobs[:1]), bound=8.0, mask_bits=K)
    with pytest.raises(HeAeroError, match="^refresh: the client returned 1 ciphertexts for 2"):
        short.refresh(cts)


def test_real_rounds_count_the_bytes_each_way_and_keep_layouts(kit):
    sizes = []

    def client(blobs):
        replies = refresh_reply(kit.keys, blobs)
        sizes.append((sum(map(len, blobs)), sum(map(len, replies))))
        return replies

    ev = Evaluator(SMALL, kit.server)
    ref = Refresher(ev, client, bound=8.0, mask_bits=K)
    out = ref.refresh([Ct(kit.ev.align(kit.enc(X), 0).data, 0, "rows")])
    ref.refresh([kit.ev.align(kit.enc(X), 1)])
    assert out[0].layout == "rows"
    assert ref.log.bytes_to_client == sizes[0][0] + sizes[1][0]
    assert ref.log.bytes_to_server == sizes[0][1] + sizes[1][1]
    assert ev.stats.refresh_rounds == 2 and dict(ev.stats.refresh_cts) == {0: 1, 1: 1}


def test_ensure_refreshes_only_what_lacks_levels(kit):
    ref = Refresher(kit.ev, kit.refresh_client, bound=8.0, mask_bits=K)
    high, low = kit.enc(X), kit.ev.align(kit.enc(X), 1)
    out = ref.ensure([high, low], 2, "test")
    assert out[0] is high and out[1].level == SMALL.levels and ref.log.ciphertexts == 1
    assert ref.trace[-1] == {"stage": "test", "need": 2, "level_in": 1, "refreshed": 1}


# --- levels, limits and accounting (symbolic: no client needed) ------------------------------------------
def _symbolic(bound=8.0, mask_bits=K, **kw):
    return Refresher(Evaluator(SMALL), None, bound=bound, mask_bits=mask_bits, **kw)


@pytest.mark.parametrize(
    "bound, mask_bits, level",
    [
        (8.0, 48, 0),  # 2^48 + 2^37: 49 bits + a sign bit + one spare: q0's 60 bits hold it
        (8.0, 57, 0),  # 2^57 + 2^37 needs 59 bits: exactly q0's 60 minus the spare bit
        (8.0, 58, 1),  # 60 needed: q0 + q1 = 92 bits
        (8.0, 90, 1),
        (8.0, 91, 2),
        (2.0**26, 48, 1),  # T = 2^60 dominates the mask: 62 bits, q0..q1
    ],
)
def test_the_refresh_level_is_the_first_whose_modulus_holds_the_masked_value(bound, mask_bits, level):
    """SMALL's moduli by level: 60, 92, 124, 156, 188 bits. Needed: log2(2^k + T) + 1 (sign) + 1 (SEAL's
    primes lie just below 2^bits), T = 2^(32 + 2) B."""
    ref = _symbolic(bound, mask_bits)
    assert ref.min_level() == level and ref.usable_levels() == SMALL.levels - level
    assert refresh_level(SMALL, RefreshHiding(2048, mask_bits, 32, bound)) == level


def test_a_message_bound_beyond_the_chain_is_refused():
    with pytest.raises(
        HeAeroError, match=r"^refresh: a mask of 2\^48 needs a modulus of 196.0 bits, which no"
    ):
        _symbolic(2.0**160, 48)


@pytest.mark.parametrize(
    "bound, mask_bits, message",
    [
        (0.0, 48, r"bound must be a positive number, got 0.0"),
        (float("nan"), 48, r"bound must be a positive number, got nan"),
        (8.0, 0, r"mask_bits must be a positive integer, got 0"),
        (8.0, 2.5, r"mask_bits must be a positive integer, got 2.5"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(bound, mask_bits, message):
    with pytest.raises(HeAeroError, match=f"^refresh hiding: {message}"):
        _symbolic(bound, mask_bits)


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


@pytest.mark.parametrize(
    "levels, need, base, affords, headroom",
    [
        ([2, 3], 2, 1, True, 2),  # both hold 2 levels: no round either way
        ([1, 3], 2, 1, False, 3),  # 1 level: enough for base, a round for need (the other kept)
        ([0, 3], 2, 1, True, 3),  # a round is due for base anyway; it leaves the level-3 one alone
        ([0, 0], 5, 1, False, 4),  # more than the ring gives between refreshes
    ],
)
def test_affords_an_optional_level_only_where_it_costs_no_round(levels, need, base, affords, headroom):
    ref = _symbolic()  # floor 0, 4 usable levels
    cts = [Ct(None, lvl) for lvl in levels]
    assert ref.affords(cts, need, base) is affords
    if need <= ref.usable_levels():
        assert ref.headroom(cts, need) == headroom
        assert min(c.level for c in ref.ensure(cts, need)) - ref.min_level() == headroom
    pending = [Ct(None, 3, pending=True)]  # 2 levels to give
    assert ref.affords(pending, 2) and not ref.affords(pending, 3, 2)
    assert not _symbolic(allow=False).affords([Ct(None, 0)], 2)  # no round at all: ensure will refuse


def test_refresh_limits_are_clear_errors():
    wide = _symbolic(8.0, 60)  # floor 1
    with pytest.raises(HeAeroError, match="^refresh: mul: a ciphertext fell below level 1, its mask would"):
        wide.ensure([Ct(None, 1, pending=True)], 1, "mul")
    off = _symbolic(allow=False)
    with pytest.raises(HeAeroError, match="refresh is disabled"):
        off.ensure([Ct(None, 0)], 1, "stage")
    with pytest.raises(HeAeroError, match="needs 5 levels between refreshes but"):
        off.ensure([Ct(None, 4)], 5, "stage")


def test_symbolic_rounds_count_ciphertexts_levels_and_bytes():
    """Per ciphertext: 16 N (floor + 1) bytes to the client (it goes down to the refresh level first),
    16 N (top + 1) back; counts add up."""
    ev = Evaluator(SMALL)
    ref = Refresher(ev, None, bound=8.0, mask_bits=60)  # floor 1
    n = SMALL.poly_modulus_degree
    out = ref.refresh([Ct(None, 1, "a"), Ct(None, 3, "b")])
    ref.refresh([Ct(None, 2), Ct(None, 1)])
    assert [(c.level, c.layout) for c in out] == [(SMALL.levels, "a"), (SMALL.levels, "b")]
    assert ref.log.bytes_to_client == 16 * n * 2 * 4
    assert ref.log.bytes_to_server == 16 * n * (SMALL.levels + 1) * 4
    assert (ref.log.rounds, ref.log.ciphertexts) == (2, 4)
    assert ev.stats.refresh_rounds == 2 and dict(ev.stats.refresh_cts) == {1: 2, 3: 1, 2: 1}


def test_refresh_log_summary_names_every_counter():
    log = RefreshLog(rounds=2, ciphertexts=5, bytes_to_client=7, bytes_to_server=11)
    assert log.summary() == {"rounds": 2, "ciphertexts": 5, "bytes_to_client": 7, "bytes_to_server": 11}


def test_the_default_is_the_production_mask_on_the_default_ring():
    """The default chain at N=8192 refreshes at level 2 (q0..q2 = 115 bits) with 2^113 masks: two usable
    levels, as before the flooding refresh."""
    from he_aero.ckks.params import default_params

    params = default_params(8192)
    ref = Refresher(Evaluator(params), None, bound=154.3)
    assert (ref.mask_bits, ref.min_level(), ref.usable_levels()) == (113, 2, 2)
    assert math.isclose(ref.hiding.per_polynomial_bits, 114 - 13 - (34 + math.log2(154.3)))


def test_a_bound_whose_square_overflows_the_refresh_level_is_refused():
    """SMALL's level 0 holds 60 - 32 - 2 = 26 bits above the scale: values up to 2^13 square into it,
    2^13.5 would overflow (and decrypt as a wrong number, with no error)."""
    assert _symbolic(2.0**13, 48).min_level() == 0
    with pytest.raises(HeAeroError, match=r"^refresh: products of values up to 1.16e\+04 need 27.0 bits"):
        _symbolic(2.0**13.5, 48)


def _crafted_reply(kit, c1_words):
    """A top-level ciphertext at the exact top scale with a fresh c0 and the given c1 words (NTT form)."""
    from he_aero.ckks.backend import ciphertext_like

    fresh = kit.keys.encrypt(np.zeros(4))
    words = ciphertext_words(fresh)
    words[1] = c1_words(words[1])
    return ciphertext_like(kit.server.seal_context, fresh, words, ntt=True, scale=fresh.scale)


@pytest.mark.parametrize(
    "c1, message",
    [
        (np.zeros_like, "^refresh reply ciphertext 0 is not a fresh top-level encryption"),  # c1 = 0
        (np.ones_like, "^a ciphertext whose c1 cancels against the constant 1: crafted, refused"),
    ],
)
def test_a_crafted_reply_is_refused_cleanly(kit, c1, message):
    """A reply with c1 = 0 (a plaintext in disguise) or c1 = 1 (cancels in the unmasking) gets a clear
    refusal, not SEAL's raw "transparent" error (found by review)."""
    from he_aero.ckks.backend import to_bytes

    blob = to_bytes(_crafted_reply(kit, c1))
    ref = Refresher(kit.ev, lambda blobs: [blob] * len(blobs), bound=8.0, mask_bits=K)
    with pytest.raises(HeAeroError, match=message):
        ref.refresh([kit.ev.align(kit.enc(X), 0)])


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 1e-300, 2.0**40])
def test_the_client_refuses_a_refresh_ciphertext_with_a_crafted_scale(kit, scale):
    from he_aero.ckks.backend import ciphertext_like, to_bytes

    low = kit.ev.align(kit.enc(X), 0).data
    crafted = ciphertext_like(kit.server.seal_context, low, ciphertext_words(low), ntt=True, scale=scale)
    with pytest.raises(HeAeroError, match="^client: refresh ciphertext 0 has scale"):
        refresh_reply(kit.keys, [to_bytes(crafted)], 0, K)


def test_the_refresh_level_search_starts_at_the_base_and_reaches_the_top():
    """[60, 60, 60 | 32, 32 | 60]: level 0 alone would hold a 2^48 mask, but no product may land below the
    base (level 2); SMALL's top level (188 bits) is the only one for a 2^170 mask."""
    from he_aero.ckks.params import CkksParams

    wide_base = CkksParams(2048, (60, 60, 60, 32, 32, 60), 32, insecure_for_tests=True)
    assert wide_base.base_level == 2
    assert refresh_level(wide_base, RefreshHiding(2048, 48, 32, 8.0)) == 2
    assert refresh_level(SMALL, RefreshHiding(2048, 170, 32, 8.0)) == SMALL.levels


def test_a_ciphertext_exactly_at_the_refresh_level_is_refreshed():
    ref = _symbolic()  # floor 0
    out = ref.ensure([Ct(None, 0), Ct(None, 1, pending=True)], 1, "at the floor")
    assert [c.level for c in out] == [SMALL.levels] * 2 and ref.log.ciphertexts == 2


def test_refresh_time_accumulates_over_rounds(monkeypatch):
    """A fake clock that advances one second per reading: each round adds exactly 1 s to the stats."""
    import he_aero.ckks.refresh as refresh_module

    ticks = iter(range(100))
    monkeypatch.setattr(refresh_module.time, "perf_counter", lambda: float(next(ticks)))
    ref = _symbolic()
    ref.refresh([Ct(None, 0)])
    ref.refresh([Ct(None, 0)])
    assert ref.ev.stats.refresh_seconds == 2.0


@pytest.mark.parametrize("peak_bits, flooded", [(K - 2.5, False), (K - 1.5, True)])
def test_the_flooding_check_sits_at_2_to_the_k_minus_2(kit, peak_bits, flooded):
    """A constant slot vector c is the constant polynomial S c: its largest coefficient is 2^peak_bits."""
    low = kit.ev.align(kit.enc(np.full(SMALL.slots, 2.0**peak_bits / kit.ev.scales[0])), 0)
    blob = [kit.ev.to_bytes(low)]
    if flooded:
        assert len(refresh_reply(kit.keys, blob, 0, K)) == 1
    else:
        with pytest.raises(
            HeAeroError,
            match=rf"^refresh: the polynomial is not flooded \(largest coefficient 2\^{peak_bits}",
        ):
            refresh_reply(kit.keys, blob, 0, K)
