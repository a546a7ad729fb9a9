"""The shipped model's first layer at its production shape, value-checked: d=128 in two ciphertexts at N=8192,
the shipped plan's exp (squarings) and 1/x (Newton steps) with refreshes between them, and prompts of 33 and
64 tokens (two lag groups of d_k = 32 rows: the branch of prefill attention that tiny shapes never reach),
then a decode step against the cache, all against the numpy layer in bits.

Measured here (N=8192, 2^32 scale, fresh noise each run): prefill rows keep 12.6-15 bits (median 14.5), the
decode step 11.3-12.3 bits. The tolerances keep about 10x (3.3 bits) of margin below the worst measured
figure. A key shift by d_k blocks instead of d_k rows between lag groups (measured 1.3 bits on the rows
beyond d_k, or a missing rotation key) fails this test."""

import numpy as np
import pytest

from he_aero.ckks.backend import public_context
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.packing import pack, unpack
from he_aero.ckks.pipeline import Pipeline
from he_aero.ckks.refresh import Refresher
from he_aero.client.client import refresh_reply
from he_aero.client.keys import ClientKeys
from he_aero.plan import load_plan
from models.checkpoint import load_checkpoint
from models.data import load_split
from models.linear_view import LinearView, embed, layer_forward
from tests.conftest import bits_of_precision

PREFILL_BITS, DECODE_BITS = 9.3, 8.0


@pytest.fixture(scope="module")
def shipped():
    model, header = load_checkpoint()
    view, plan = LinearView.from_model(model), load_plan()
    keys = ClientKeys(plan.params, plan.rotation_steps)
    ev = Evaluator(plan.params, public_context(keys.public_keys()))
    pipe = Pipeline(view, plan.plans, plan.params, plan.block, plan.decode_rows)
    return view, plan, keys, ev, pipe


def _run_layer(shipped, n_tokens):
    view, plan, keys, ev, pipe = shipped
    tokens = np.frombuffer(load_split("test")[8192 : 8192 + n_tokens + 1], dtype=np.uint8)
    x = embed(view, tokens)  # (n + 1, d): the real embedding of test text
    want = layer_forward(view.layers[0], x)["x_out"]
    ref = Refresher(ev, lambda blobs: refresh_reply(keys, blobs), plan.activation_bound, plan.mask_bits)
    layout = pipe.layout(n_tokens)
    xs = [Ct(keys.encrypt(v), ev.top, layout) for v in pack(x[:n_tokens], layout)]
    assert len(xs) == 2  # d=128 features: two ciphertexts of 64 blocks at N=8192
    out, cache = pipe.layers[0].prefill(ev, ref, xs, layout)
    got = unpack([keys.decrypt(c.data) for c in out], layout)
    rows = [bits_of_precision(got[i], want[i]) for i in range(n_tokens)]
    one = layout.with_tokens(1)
    y = pipe.layers[0].decode(ev, ref, [Ct(keys.encrypt(v), ev.top, one) for v in pack(x[n_tokens:], one)],
                              cache, one)  # fmt: skip
    decoded = unpack([keys.decrypt(c.data) for c in y], one)[0]
    return rows, bits_of_precision(decoded, want[n_tokens]), ref.log.rounds


@pytest.mark.parametrize("n_tokens", [33, 63])
def test_shipped_layer_at_production_shape_matches_numpy(shipped, n_tokens):
    rows, decode_bits, rounds = _run_layer(shipped, n_tokens)
    worst = int(np.argmin(rows))
    assert min(rows) >= PREFILL_BITS, f"row {worst} of {n_tokens} keeps {rows[worst]:.1f} bits"
    assert min(rows[32:]) >= PREFILL_BITS  # the second lag group (d_k = 32 rows per group)
    assert decode_bits >= DECODE_BITS, f"decode step keeps {decode_bits:.1f} bits"
    assert rounds >= 10  # the production plans refresh between squarings and Newton steps
