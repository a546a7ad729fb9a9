"""Independent parts (he_aero/ckks/parallel.py): splitting, the in-place executor, ciphertexts on the wire."""

import numpy as np
import pytest

from he_aero.ckks.ciphertext import OpStats
from he_aero.ckks.linalg import PlainLinear
from he_aero.ckks.packing import feature_layout, pack, unpack
from he_aero.ckks.parallel import InPlace, WireCt, add_counts, from_wire, split, to_wire
from he_aero.errors import HeAeroError
from models.linear_view import view_forward
from tests.he_aero.conftest import LOGIT_TOL

PROMPT = list(b"if x:\n  ")


@pytest.mark.parametrize("n, parts", [(1, 1), (1, 4), (6, 2), (7, 3), (3, 8), (64, 5)])
def test_split_covers_every_item_once_in_near_equal_chunks(n, parts):
    chunks = split(n, parts)
    assert [i for c in chunks for i in c] == list(range(n))
    assert len(chunks) == min(n, parts)
    assert max(map(len, chunks)) - min(map(len, chunks)) <= 1


def test_a_product_split_by_outputs_equals_the_whole_product_bit_for_bit(kit):
    """The parts recompute the shared baby steps; rotations are deterministic, so each output ciphertext is
    the very same ciphertext (decrypts to the same doubles) whichever part computed it."""
    rng = np.random.default_rng(0)
    layout = feature_layout(kit.params.slots, 8, 128, block=16)  # 64 features per ciphertext: 2 in, 3 out
    x = rng.uniform(-1, 1, (8, 128))
    w, b = rng.uniform(-0.1, 0.1, (128, 192)), rng.uniform(-0.1, 0.1, 192)
    lin = PlainLinear("t", w, b, layout)
    xs = [kit.enc(v, layout) for v in pack(x, layout)]
    whole = lin(kit.ev, xs)
    parts = lin(kit.ev, xs, outputs=(2,)) + lin(kit.ev, xs, outputs=(0, 1))
    for got, want in zip(parts, [whole[2], whole[0], whole[1]], strict=True):
        assert np.array_equal(kit.dec(got), kit.dec(want))
    assert np.abs(unpack([kit.dec(c) for c in whole], lin.out_layout) - (x @ w + b)).max() < 1e-3
    with pytest.raises(HeAeroError, match="no output ciphertext 9"):
        lin(kit.ev, xs, outputs=(9,))


def test_wire_round_trip_keeps_levels_layouts_and_pending_products(kit):
    layout = feature_layout(kit.params.slots, 8, 16)
    a = kit.enc(np.arange(kit.params.slots) / kit.params.slots, layout)
    pending = kit.ev.mul(a, a, rescale=False)
    wire = to_wire([a, (pending, 3, "x")])
    assert isinstance(wire[0], WireCt) and isinstance(wire[1][0], WireCt) and wire[1][1:] == (3, "x")
    back = from_wire(kit.ev, wire)
    assert (back[0].level, back[0].layout, back[0].pending) == (a.level, layout, False)
    assert (back[1][0].level, back[1][0].pending) == (pending.level, True)
    assert np.array_equal(kit.dec(back[0]), kit.dec(a))
    assert np.allclose(kit.dec(kit.ev.rescale(back[1][0])), kit.dec(kit.ev.rescale(pending)))
    with pytest.raises(HeAeroError, match="a worker's ciphertext"):
        from_wire(kit.ev, WireCt(b"not SEAL", a.level, layout, False))


def test_add_counts_adds_operations_not_seconds():
    a, b = OpStats(), OpStats()
    a.rotations[3] += 2
    b.rotations[3] += 5
    b.pt_mults[2] += 1
    b.relins, b.adds, b.seal_seconds = 4, 7, 9.0
    b.steps_used.add(64)
    add_counts(a, b)
    assert (a.rotations[3], a.pt_mults[2], a.relins, a.adds, a.steps_used) == (7, 1, 4, 7, {64})
    assert a.seal_seconds == 0.0


def test_an_in_place_split_run_matches_plaintext_and_counts_what_the_symbolic_split_counts(tiny, tiny_plan):
    """The executor seam end to end without other processes: a prefill whose products are split two ways
    decrypts to the plaintext model's logits, and every stage's counts equal those of the symbolic prefill
    split the same way, which makes more rotations than the unsplit one (each part redoes the baby steps)."""
    from tests.he_aero.conftest import insecure_session

    _, _, header, view, _ = tiny
    session = insecure_session(view, header, tiny_plan)
    session.forward(list(b"ab"))  # SETUP, so the server has its evaluator
    srv = session.server
    srv.ev.executor = InPlace(2)
    out, _ = session.forward(PROMPT)
    want = view_forward(view, np.array(PROMPT))
    assert np.abs(np.asarray(out.logits) - want).max() < LOGIT_TOL
    plan = tiny_plan
    split_ev, _, _, split_records = srv.pipeline.symbolic_prefill(
        len(PROMPT), plan.activation_bound, plan.mask_bits, workers=2
    )
    _, _, _, whole_records = srv.pipeline.symbolic_prefill(len(PROMPT), plan.activation_bound, plan.mask_bits)
    for real, sym in zip(srv.records, split_records, strict=True):
        for op in ("rotations", "ctct_mults", "pt_mults", "key_switches", "refresh_rounds"):
            assert real.ops[op] == sym.ops[op], (real.name, op)
    assert sum(r.ops["rotations"] for r in split_records) > sum(r.ops["rotations"] for r in whole_records)
