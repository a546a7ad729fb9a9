"""A simulated plan of the server's work on N = 1..32 Ray workers, from the planner's operation counts and op
latencies measured here (issue 13), at the shipped model's shape and at a GPT-2-size layer.

    python -m bench.workers [--workers 1 2 4 8 16 32] --out docs/he-workers.json

How: the pipeline runs symbolically (no SEAL objects) with an executor that runs every independent part in
place, split as k workers split them (he_aero/ckks/parallel.py), and records each part's operation counts.
Each stage's time is then
    the caller's own operations  +  the refreshes (measured seconds per refreshed ciphertext, both parties)
    +  per fan-out: the ciphertexts it moves (measured serialise + load, each way)  +  the slowest worker's
       share of the parts (round robin, as `RayPool.map` assigns them)
with every operation costed by `he_aero.plan.op_seconds` on latencies measured at the ring's top level
(`bench.oplatency`), scaled by the primes left at each level. Network transfer between machines is not
modelled (one machine's workers share memory; a cluster adds bytes / bandwidth per fan-out).
The shipped shape is simulated at k = 1 and 2 beside the measured Ray run in docs/he-bench.json, which says
how far to trust the GPT-2 figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

GPT2 = {"d_model": 768, "n_head": 12, "t_max": 128}
"""GPT-2 small's width, heads and a 128-token context (issue 13's GPT-2-size layer); our byte vocabulary."""
GPT2_LAYERS = 12
STEADY = "layer 1"
"""The GPT-2 pipeline has two layers; the per-layer figures are the second's: at decode the first layer's
QKV reads the embedding one level down and keeps the block-diagonal kernel, every later one the skewed
kernel (he_aero/ckks/layer.py), so layer 1 is what layers 1..11 cost."""


def _minus(a, b):
    """OpStats a - b (counts only)."""
    out = copy.deepcopy(a)
    out.add(b, sign=-1)
    return out


def _count_cts(obj) -> int:
    from he_aero.ckks.ciphertext import Ct

    if isinstance(obj, Ct):
        return 1
    if isinstance(obj, (list, tuple)):
        return sum(_count_cts(o) for o in obj)
    return 0


class Recording:
    """An in-place executor split `workers` ways that records, per fan-out, each part's counts and the
    ciphertexts it takes and gives (the stage it belongs to is set by the caller)."""

    def __init__(self, workers: int):
        self.workers, self.stage, self.fanouts = workers, None, []

    def map(self, ev, owner, part, calls):
        from he_aero.ckks.ciphertext import OpStats
        from he_aero.ckks.parallel import add_counts

        parts, out = [], []
        for args in calls:
            saved, ev.stats = ev.stats, OpStats()
            result = owner.run_part(ev, part, *args)
            stats, ev.stats = ev.stats, saved
            add_counts(ev.stats, stats)
            parts.append({"stats": stats, "moved": _count_cts(args) + _count_cts(result)})
            out.append(result)
        self.fanouts.append({"stage": self.stage, "part": part, "parts": parts})
        return out


def measure_costs(ring: int) -> dict:
    """Op latencies at the top level (ms), serialise + load of one ciphertext (ms) and a refresh round's
    seconds per ciphertext (both parties, in process), on ring `ring`."""
    from bench.oplatency import measure_op_latency
    from he_aero.ckks.backend import load_ciphertext, public_context, to_bytes
    from he_aero.ckks.ciphertext import Ct, Evaluator
    from he_aero.ckks.hiding import MASK_BITS
    from he_aero.ckks.params import default_params
    from he_aero.ckks.refresh import Refresher
    from he_aero.client.client import refresh_reply
    from he_aero.client.keys import ClientKeys

    lat = measure_op_latency(ring)
    params = default_params(ring)
    keys = ClientKeys(params, rotation_steps=(1,))
    ev = Evaluator(params, public_context(keys.public_keys()))
    x = np.random.default_rng(0).uniform(-1, 1, params.slots)
    cts = [Ct(keys.encrypt(x), params.levels) for _ in range(4)]
    t0 = time.perf_counter()
    for c in cts:
        load_ciphertext(ev.server.seal_context, to_bytes(c.data), "bench")
    ser = (time.perf_counter() - t0) / len(cts)
    ref = Refresher(ev, lambda blobs: refresh_reply(keys, blobs), bound=8192.0, mask_bits=MASK_BITS)
    low = [ev.drop_to(c, ref.min_level()) for c in cts]
    ref.refresh(low)  # warm-up
    t0 = time.perf_counter()
    ref.refresh(low)
    per_ct = (time.perf_counter() - t0) / len(low)
    return {
        **lat,
        "serialise_and_load": round(1000 * ser, 3),
        "refresh_per_ciphertext": round(1000 * per_ct, 3),
    }


def simulate(
    pipeline, plan_bound: float, mask_bits: int, workers: int, costs: dict, decode: bool = False
) -> dict:
    """Per stage: seconds of a prefill of the full context on `workers` workers (or, with `decode`, of one
    decode step against a cache of context - 1 tokens: decode parts stay in place), and the counts and
    refresh bytes behind it. `costs`: milliseconds per operation (`measure_costs`)."""
    from he_aero.ckks.ciphertext import Evaluator
    from he_aero.ckks.refresh import Refresher
    from he_aero.plan import op_seconds

    def seconds(stats):
        return op_seconds(stats, pipeline.params, costs)

    ev = Evaluator(pipeline.params, None)
    rec = Recording(workers)
    ev.executor = rec
    ref = Refresher(ev, None, bound=plan_bound, mask_bits=mask_bits)
    names = pipeline.stage_names
    own, refreshed, moved_bytes = {}, {}, {}
    marks = {"stats": copy.deepcopy(ev.stats), "refreshed": 0, "bytes": 0}
    rec.stage = names[0]

    def progress(name):  # a stage ended: its counts, and the next stage's fan-outs start
        own[name] = _minus(ev.stats, marks["stats"])
        refreshed[name] = ref.log.ciphertexts - marks["refreshed"]
        sent = ref.log.bytes_to_client + ref.log.bytes_to_server
        moved_bytes[name] = sent - marks["bytes"]
        marks["stats"], marks["refreshed"], marks["bytes"] = (
            copy.deepcopy(ev.stats),
            ref.log.ciphertexts,
            sent,
        )
        i = names.index(name)
        rec.stage = names[i + 1] if i + 1 < len(names) else None

    n = pipeline.context
    if decode:
        _, _, caches, _ = pipeline.symbolic_prefill(n - 1, plan_bound, mask_bits)
        tokens = pipeline._symbolic_tokens(ev, pipeline.rows, 1)
        pipeline.run(ev, ref, tokens, n - 1, 1, caches, progress)
    else:
        pipeline.run(ev, ref, pipeline._symbolic_tokens(ev, False, n), 0, n, None, progress)
    stages = {}
    for name in names:
        fans = [f for f in rec.fanouts if f["stage"] == name]
        mine, fan_seconds = own[name], 0.0
        for f in fans:
            loads = [0.0] * workers
            for i, part in enumerate(f["parts"]):  # round robin, as RayPool.map assigns them
                mine = _minus(mine, part["stats"])
                loads[i % workers] += seconds(part["stats"])
            moved = sum(part["moved"] for part in f["parts"]) if workers > 1 else 0
            fan_seconds += max(loads) + moved * costs["serialise_and_load"] / 1000
        refresh = refreshed[name] * costs["refresh_per_ciphertext"] / 1000
        stages[name] = {
            "seconds": round(seconds(mine) + refresh + fan_seconds, 2),
            "own_ops_seconds": round(seconds(mine), 2),
            "refresh_seconds": round(refresh, 2),
            "parts_seconds": round(fan_seconds, 2),
            "refreshed_ciphertexts": refreshed[name],
            "refresh_bytes": moved_bytes[name],
            "fan_outs": len(fans),
            "parts": sum(len(f["parts"]) for f in fans),
        }
    return {
        "workers": workers,
        "seconds": round(sum(s["seconds"] for s in stages.values()), 2),
        "stages": stages,
    }


def gpt2_pipeline(plan, ring: int):
    """Two Softmax-only layers at GPT-2 width (shape-only weights: counts depend on shapes alone) with the
    shipped model's layer-0 approximations, on `ring` with 128-slot token blocks (see STEADY)."""
    from he_aero.ckks.params import default_params
    from he_aero.ckks.pipeline import Pipeline, shape_only_view

    view = shape_only_view(GPT2["d_model"], GPT2["n_head"], 2, GPT2["t_max"])
    return Pipeline(view, [plan.plans[0]] * 2, default_params(ring), GPT2["t_max"], decode_rows=False)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--gpt2-ring", type=int, default=16384, help="ring degree of the GPT-2-size layer")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--into", type=Path, help="a bench.infer speed JSON to give the gpt2_layer figures")
    args = ap.parse_args(argv)
    if any(k < 1 for k in args.workers):
        ap.error(f"--workers: each must be >= 1, got {args.workers}")
    if args.into is not None and not args.into.is_file():
        ap.error(f"--into: {args.into} is not a file (run bench.infer speed first)")
    from he_aero.plan import load_plan
    from he_aero.server.server import Server
    from models.checkpoint import load_checkpoint
    from models.linear_view import LinearView

    plan = load_plan(None)
    model, header = load_checkpoint()
    shipped = Server(LinearView.from_model(model), header, plan).pipeline
    bound, mask = plan.activation_bound, plan.mask_bits
    out = {"method": __doc__.split("How: ")[1].split("\n\n")[0].split("\n")}
    costs8 = measure_costs(plan.params.poly_modulus_degree)
    out["shipped"] = {
        "ring": plan.params.poly_modulus_degree,
        "costs_ms": costs8,
        "prefill": [simulate(shipped, bound, mask, k, costs8) for k in (1, 2)],
        "decode": simulate(shipped, bound, mask, 1, costs8, decode=True),
    }
    print("shipped:", [r["seconds"] for r in out["shipped"]["prefill"]], flush=True)
    costs = measure_costs(args.gpt2_ring)
    gpt2 = gpt2_pipeline(plan, args.gpt2_ring)
    rows = []
    for k in args.workers:
        sim = simulate(gpt2, bound, mask, k, costs)
        st = sim["stages"]
        layer = st[STEADY]["seconds"]
        ends = st["embed"]["seconds"] + st["layer 0"]["seconds"] + st["lm_head"]["seconds"]
        rows.append(
            {
                **sim,
                "layer_seconds": layer,
                "gpt2_12_layers_seconds": round(ends + (GPT2_LAYERS - 1) * layer, 1),
            }
        )
        print(f"GPT-2 layer, {k} workers: {layer:.1f} s per layer", flush=True)
    dec = simulate(gpt2, bound, mask, 1, costs, decode=True)
    layer_dec = dec["stages"][STEADY]
    out["gpt2_layer"] = {
        # the figures docs/he-bench.json carries (issue 13), per layer; SIMULATED, not measured
        "simulated": True,
        "prefill_seconds": {str(r["workers"]): r["layer_seconds"] for r in rows},
        "decode_seconds_per_token": layer_dec["seconds"],
        "bytes_per_token": layer_dec["refresh_bytes"],
        "shape": GPT2,
        "ring": args.gpt2_ring,
        "costs_ms": costs,
        "prefill": rows,
        "decode": dec,
        "decode_12_layers_seconds": round(dec["seconds"] + (GPT2_LAYERS - 2) * layer_dec["seconds"], 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    if args.into is not None:  # docs/he-bench.json's top-level gpt2_layer (the figures)
        bench = json.loads(args.into.read_text())
        keys = (
            "simulated",
            "prefill_seconds",
            "decode_seconds_per_token",
            "bytes_per_token",
            "shape",
            "ring",
        )
        bench["gpt2_layer"] = {k: out["gpt2_layer"][k] for k in keys}
        args.into.write_text(json.dumps(bench, indent=1) + "\n")
        print(f"updated {args.into}")


if __name__ == "__main__":
    main()
