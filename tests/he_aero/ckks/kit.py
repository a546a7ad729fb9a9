"""Helpers of the kernel tests: small insecure rings (tests only) with keys for exactly the steps used."""

from __future__ import annotations

import numpy as np

from he_aero.ckks.backend import public_context
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.params import CkksParams
from he_aero.client.client import refresh_reply
from he_aero.client.keys import ClientKeys

SMALL = CkksParams(2048, (60, 32, 32, 32, 32, 60), 32, insecure_for_tests=True)
"""N=2048 (1024 slots), 4 levels: kernels and levels as on the real rings, ~16x faster than N=8192."""

TEST_MASK_BITS = 48
"""Refresh mask bits on the small test rings: the refresh is exact whatever k, so tests use a k whose mask
fits q0 (2^48 + 2^38 < 2^59) and keeps every level of SMALL usable; the production k is hiding.MASK_BITS."""

BITS = 14
"""Tolerance of single ops at N=2048, scale 2^32 (measured 14-20 bits; SEAL draws fresh noise each run)."""

STEPS = tuple(sorted({s * k for k in (1, 8, 16, 32, 64, 128) for s in (1, -1)} | {-9, -17, 2, 4}))


class Kit:
    """Client keys, the server's evaluator and helpers to encrypt / decrypt slot vectors."""

    def __init__(self, params: CkksParams, steps):
        self.params = params
        self.keys = ClientKeys(params, rotation_steps=tuple(steps))
        self.server = public_context(self.keys.public_keys())
        self.ev = Evaluator(params, self.server)

    def enc(self, values, layout=None) -> Ct:
        return Ct(self.keys.encrypt(values), self.params.levels, layout)

    def dec(self, ct: Ct) -> np.ndarray:
        return self.keys.decrypt(ct.data)

    def refresh_client(self, blobs: list[bytes]) -> list[bytes]:
        """The client's half of a refresh round with these keys (the `Refresher` callback)."""
        return refresh_reply(self.keys, blobs)


def layer_steps(layer, params: CkksParams, layout, bound: float, cache_length: int) -> set[int]:
    """The rotation steps an `EncryptedLayer` uses: a symbolic prefill on `layout` and a symbolic decode step
    against a cache of `cache_length` tokens (the keys a `Kit` for the layer needs)."""
    from he_aero.ckks.attention import KVCache
    from he_aero.ckks.refresh import Refresher

    steps = set()
    for lay in (layout, layout.with_tokens(1)):
        ev = Evaluator(params)
        ref = Refresher(ev, None, bound, TEST_MASK_BITS)
        xs = [Ct(None, params.levels, lay)] * lay.n_ct
        if lay.n_tokens == 1:
            blank = [Ct(None, params.levels)] * lay.n_ct
            layer.decode(ev, ref, xs, KVCache(blank, list(blank), cache_length), lay)
        else:
            layer.prefill(ev, ref, xs, lay)
        steps |= ev.stats.steps_used
    return steps
