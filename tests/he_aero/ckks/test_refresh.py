"""The refresh round trip: values survive, the client sees only masked values, masks are fresh each round."""

import numpy as np
import pytest

from he_aero.ckks.ciphertext import Evaluator
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
    assert calls == [8 * SMALL.slots]
    assert np.abs(spy.seen[0] - X + ref.width).max() < 1e-2  # x + (-W) on every slot
