"""`make bench-kernels`: measured figures of the kernels, written to docs/kernels.md and docs/kernels.json.

    python -m bench.kernels [--out-dir docs] [--rings 8192 16384 32768] [--smoke]

Figures, not tests: every number below is measured in this run on this machine (2 shared vCPUs, so read
times as ratios), except where a row says "skipped" and why. TenSEAL's high-level operations run in the
same process on the same ring for the ratios. docs/kernels.md is the design text (bench/kernels.md.in)
followed by this run's tables. `--smoke` runs one small case of each kind on N=8192 (seconds; to check the
script, not for figures).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import tenseal as ts

from approx import bsgs
from bench.oplatency import measure_op_latency
from he_aero.ckks.attention import KVCache
from he_aero.ckks.backend import public_context
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.layer import EncryptedLayer
from he_aero.ckks.linalg import PlainLinear
from he_aero.ckks.packing import feature_layout, pack, unpack
from he_aero.ckks.params import default_params
from he_aero.ckks.poly import evaluate_chebyshev
from he_aero.ckks.refresh import Refresher
from he_aero.client.client import refresh_reply
from he_aero.client.keys import ClientKeys

DESIGN = Path(__file__).with_name("kernels.md.in")
"""The design half of docs/kernels.md (Markdown; the measured half is rendered by `render`)."""

DEFAULT_N = 8192
MATMUL_CASES = {  # (d, T) per ring; the rest is skipped for time or memory (see SKIPPED)
    8192: [(128, 64), (128, 128), (256, 64), (256, 128), (768, 64)],
    16384: [(128, 64), (128, 128), (256, 64)],
    32768: [(128, 64)],
}
SKIPPED = [
    "N=8192, d=768, T=128: 18,432 plaintext products, twice the d=768, T=64 row; same cost per product",
    "N=16384, d=256 T=128 and d=768: 1,024-4,608 plaintext products at the ct x pt latency above each",
    "N=32768 beyond d=128, T=64: plaintext products at the ct x pt latency above, ~180 MB per rotation key",
    "TenSEAL vector.matmul at N=32768: it needs TenSEAL's default Galois key set (~5 GB, 13 GB RAM)",
    "TenSEAL CKKSTensor.mm beyond d=128 at N=8192: d^2 ciphertext-plaintext products (16,384 at d=128)",
]


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _bits(got, want) -> float:
    err = float(np.max(np.abs(np.asarray(got) - np.asarray(want))))
    return math.inf if err == 0 else round(-math.log2(err), 1)


def _tenseal_context(params, galois: bool):
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree, coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes)
    )
    ctx.global_scale = 2.0**params.scale_bits
    if galois:
        ctx.generate_galois_keys()
    return ctx


def bench_matmul(n: int, d: int, t: int, rng) -> dict:
    """Our BSGS X W (cached diagonals) vs TenSEAL's CKKSVector.matmul on one row (x T rows)."""
    params = default_params(n)
    layout = feature_layout(params.slots, t, d)
    x = rng.normal(size=(t, d))
    w = rng.normal(size=(d, d)) / np.sqrt(d)
    lin = PlainLinear("bench", w, None, layout)
    sym = Evaluator(params)
    lin(sym, [Ct(None, params.levels, layout)] * layout.n_ct)
    keys = ClientKeys(params, rotation_steps=tuple(sym.stats.steps_used))
    ev = Evaluator(params, public_context(keys.public_keys()))
    xs = [Ct(keys.encrypt(v), params.levels, layout) for v in pack(x, layout)]
    _, first = _timed(lambda: lin(ev, xs))  # includes encoding every diagonal once
    ev.reset_stats()
    ys, cached = _timed(lambda: lin(ev, xs))
    got = unpack([keys.decrypt(y.data) for y in ys], layout)
    row = {
        "N": n, "d": d, "T": t, "ours_s": round(cached, 3), "ours_first_call_s": round(first, 3),
        "rotations": ev.stats.n_rotations, "ctct_mults": 0, "pt_mults": ev.stats.n_pt,
        "key_switches": ev.stats.key_switches, "levels": 1, "rotation_keys": len(sym.stats.steps_used),
        "seal_share": round(ev.stats.seal_seconds / cached, 3), "precision_bits": _bits(got, x @ w),
    }  # fmt: skip
    if n <= 16384:  # the default Galois set TenSEAL's matmul needs is ~5 GB at N=32768
        ctx = _tenseal_context(params, galois=True)
        vec = ts.ckks_vector(ctx, x[0].tolist())
        _, one = _timed(lambda: vec.matmul(w.tolist()))
        row["tenseal_vector_matmul_row_s"] = round(one, 3)
        row["tenseal_vector_matmul_T_rows_s"] = round(one * t, 2)
        row["speedup_vs_vector_matmul"] = round(one * t / cached, 1)
        del ctx
    return row


def bench_tensor_mm(n: int, d: int, t: int, rng) -> dict:
    """TenSEAL CKKSTensor (batched over tokens) .mm(W): the other high-level route, measured once."""
    params = default_params(n)
    ctx = _tenseal_context(params, galois=False)
    x = rng.normal(size=(t, d))
    w = rng.normal(size=(d, d)) / np.sqrt(d)
    enc = ts.ckks_tensor(ctx, ts.plain_tensor(x.tolist(), [t, d]), batch=True)
    _, secs = _timed(lambda: enc.reshape([1, d]).mm(ts.plain_tensor(w.tolist(), [d, d])))
    return {"N": n, "d": d, "T": t, "tenseal_tensor_mm_s": round(secs, 2)}


def polyval_ctct_mults(degree: int) -> int:
    """ct-ct products of TenSEAL 0.3.18's `polyval` for a dense polynomial, counted from its algorithm:
    floor(log2 d) squarings build x^(2^i); monomial x^i is then a product of its popcount(i) power-of-two
    factors (popcount(i) - 1 products, the coefficient rides on a plaintext product)."""
    return int(math.floor(math.log2(degree))) + sum(bin(i).count("1") - 1 for i in range(1, degree + 1))


def bench_poly(rng, n: int = 16384, degrees=(15, 31, 63)) -> list[dict]:
    """Our Chebyshev BSGS vs TenSEAL polyval (monomial basis) on the same ring and input in [-1, 1]."""
    params = default_params(n)
    keys = ClientKeys(params)
    ev = Evaluator(params, public_context(keys.public_keys()))
    ctx = _tenseal_context(params, galois=False)
    t = rng.uniform(-1, 1, params.slots)
    rows = []
    for degree in degrees:
        cheb = np.polynomial.chebyshev.Chebyshev.interpolate(lambda u: np.exp(2 * u), degree)
        ev.reset_stats()
        x = Ct(keys.encrypt(t), params.levels)
        y, ours = _timed(lambda c=cheb.coef, x=x: evaluate_chebyshev(ev, c, x))
        want = cheb(t)
        mono = np.polynomial.chebyshev.cheb2poly(cheb.coef)
        vec = ts.ckks_vector(ctx, t[:4096].tolist())
        try:
            res, theirs = _timed(lambda m=mono, v=vec: v.polyval(m.tolist()))
            their_bits = _bits(res.decrypt(), want[:4096])
        except ValueError as exc:  # depth exhausted
            theirs, their_bits = None, f"failed: {exc}"
        ours_ct = ev.stats.n_ctct
        rows.append(
            {
                "degree": degree, "N": n, "ours_s": round(ours, 3), "ours_ctct_mults": ours_ct,
                "ours_scalar_mults": ev.stats.n_pt, "ours_depth": params.levels - y.level,
                "ours_precision_bits": _bits(keys.decrypt(y.data), want),
                "polyval_s": None if theirs is None else round(theirs, 3),
                "polyval_ctct_mults": polyval_ctct_mults(degree), "polyval_depth": int(degree).bit_length(),
                "polyval_precision_bits": their_bits, "approx_bsgs_cost": list(bsgs.bsgs_cost(degree)),
            }
        )  # fmt: skip
    return rows


def _bench_view(d: int, h: int, rng):
    from models.linear_view import LayerView

    s = 1 / np.sqrt(d)

    def m(*shape, sc=1.0):
        return rng.normal(size=shape) * sc

    return LayerView(
        w_q=m(d, d, sc=0.5 * s), b_q=m(d, sc=0.1), w_k=m(d, d, sc=0.5 * s), b_k=m(d, sc=0.1),
        w_v=m(d, d, sc=s), b_v=m(d, sc=0.1), w_o=m(d, d, sc=s), b_o=m(d, sc=0.1),
        w_mix=np.eye(d) + m(d, d, sc=0.2 * s), b_mix=m(d, sc=0.1), sink=np.linspace(5.0, 7.0, h), n_head=h,
    )  # fmt: skip


def _reference_layer(lay, x):
    """One layer in numpy: `view_forward` with x's rows as the embedding and the identity as LM head."""
    from models.linear_view import LinearView, view_forward

    n, d = x.shape
    view = LinearView(
        tok_emb=x, pos_emb=np.zeros((n, d)), layers=(lay,), lm_head=np.eye(d), lm_bias=np.zeros(d)
    )
    return view_forward(view, np.arange(n))


def bench_layer(rng, n: int = DEFAULT_N, t: int = 64, d: int = 128, h: int = 4, params=None) -> dict:
    """One attention layer (prefill of T tokens) and one decode step at position T-1, with real refreshes
    (on `default_params(n)` unless `params` is given: the tests' small ring)."""
    from he_aero.plan import Ranges, denominator_domain, fit_plans

    params = params or default_params(n)
    n = params.poly_modulus_degree
    bound, hiding = 64.0, 20
    probe = Refresher(Evaluator(params), None, bound, hiding)
    window = (-16.0, 1.0)  # the bench weights keep z = q.k - c in it (sinks 5..7)
    den = denominator_domain(window, t)
    exp_plan, recip_plan = fit_plans(window, den, Ranges((window,)), probe.usable_levels())
    view = _bench_view(d, h, rng)
    layer = EncryptedLayer(0, view, exp_plan, recip_plan)
    layout = feature_layout(params.slots, t, d, block=t)
    one = layout.with_tokens(1)
    steps: set = set()
    for lay in (layout, one):
        sym = Evaluator(params)
        sref = Refresher(sym, None, bound, hiding)
        xs = [Ct(None, params.levels, lay)] * lay.n_ct
        if lay is one:
            layer.decode(
                sym,
                sref,
                xs,
                KVCache([Ct(None, params.levels)] * lay.n_ct, [Ct(None, params.levels)] * lay.n_ct, t - 1),
                lay,
            )
        else:
            layer.prefill(sym, sref, xs, lay)
        steps |= sym.stats.steps_used
    keys = ClientKeys(params, rotation_steps=tuple(steps))
    server = public_context(keys.public_keys())
    ev = Evaluator(params, server)
    client = partial(refresh_reply, keys)  # the client's half of a refresh round, in process
    x = rng.normal(size=(t, d))
    out = {"N": n, "T": t, "d": d, "heads": h, "rotation_keys": len(steps), "key_bytes": server.key_bytes}
    out["plans"] = {"exp": exp_plan.describe(), "recip": recip_plan.describe()}
    want = _reference_layer(view, x)
    for phase in ("prefill", "decode"):
        for run in ("warm-up (encodes the weights)", "timed"):
            ref = Refresher(ev, client, bound, hiding)
            ev.reset_stats()
            if phase == "prefill":
                xs = [Ct(keys.encrypt(v), params.levels, layout) for v in pack(x, layout)]
                (res, cache), secs = _timed(lambda xs=xs, ref=ref: layer.prefill(ev, ref, xs, layout))
                got = unpack([keys.decrypt(c.data) for c in res], layout)
            else:
                cache_t = t - 1
                xs_p = [Ct(keys.encrypt(v), params.levels, layout.with_tokens(cache_t)) for v in
                        pack(x[:cache_t], layout.with_tokens(cache_t))]  # fmt: skip
                _, cache = layer.prefill(ev, Refresher(ev, client, bound, hiding), xs_p,
                                         layout.with_tokens(cache_t))  # fmt: skip
                ev.reset_stats()
                xs = [Ct(keys.encrypt(v), params.levels, one) for v in pack(x[cache_t:], one)]
                res, secs = _timed(lambda xs=xs, ref=ref, cache=cache: layer.decode(ev, ref, xs, cache, one))
                got = unpack([keys.decrypt(c.data) for c in res], one)
            if run == "timed":
                s = ev.stats
                out[phase] = {
                    "wall_s": round(secs, 2), "seal_s": round(s.seal_seconds, 2),
                    "seal_time_share": round(s.seal_seconds / secs, 3), "rotations": s.n_rotations,
                    "ctct_mults": s.n_ctct, "pt_mults": s.n_pt, "key_switches": s.key_switches,
                    "refresh": ref.log.summary(), "output_level": min(c.level for c in res),
                    "max_abs_output": round(float(np.abs(got).max()), 3),
                    "precision_bits": _bits(got, want if phase == "prefill" else want[-1:]),
                }  # fmt: skip
    return out


SMOKE = {"matmul": {8192: [(16, 8)]}, "tensor_mm": (8192, 16, 8), "poly": (8192, (3,)),
         "layer": {"n": 8192, "t": 8, "d": 16, "h": 2}}  # fmt: skip
"""The smallest case of each kind (`--smoke`): checks the script end to end in seconds."""


def run(
    out_dir: Path = Path("docs"), rings=(8192, 16384, 32768), smoke: bool = False, layer_params=None
) -> dict:
    """Measure everything, write out_dir/kernels.json and out_dir/kernels.md; returns the JSON.

    `smoke`: the SMOKE cases only; `layer_params`: the attention layer's ring (tests pass their small one)."""
    rng = np.random.default_rng(0)
    cases = SMOKE["matmul"] if smoke else MATMUL_CASES
    t0 = time.perf_counter()
    result: dict = {
        "format_version": 1,
        "generated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.machine()}, {platform.python_version()}, TenSEAL {ts.__version__}",
        "default_N": DEFAULT_N,
        "smoke": smoke,
        "params": {n: default_params(n).describe() for n in rings},
    }
    print("op latency ...", flush=True)
    result["op_latency_ms"] = {n: measure_op_latency(n) for n in rings}
    print("matmul ...", flush=True)
    result["matmul"] = [bench_matmul(n, d, t, rng) for n in rings for d, t in cases.get(n, [])]
    result["tensor_mm"] = [bench_tensor_mm(*SMOKE["tensor_mm"], rng) if smoke else
                           bench_tensor_mm(DEFAULT_N, 128, 64, rng)]  # fmt: skip
    print("polynomials ...", flush=True)
    result["poly"] = bench_poly(rng, *SMOKE["poly"]) if smoke else bench_poly(rng)
    print("attention layer ...", flush=True)
    layer_case = SMOKE["layer"] if smoke else {}
    result["layer"] = bench_layer(rng, **layer_case, params=layer_params)
    result["skipped"] = SKIPPED
    if smoke:  # the headline cases are not run: take the smoke ones
        ref_mm, deg31 = result["matmul"][0], result["poly"][0]
    else:
        ref_mm = next(r for r in result["matmul"] if r["N"] == DEFAULT_N and r["d"] == 128 and r["T"] == 64)
        deg31 = next(r for r in result["poly"] if r["degree"] == 31)
    result["matmul_speedup_vs_tenseal"] = ref_mm["speedup_vs_vector_matmul"]
    result["matmul_speedup_vs_tenseal_tensor_mm"] = round(
        result["tensor_mm"][0]["tenseal_tensor_mm_s"] / ref_mm["ours_s"], 1
    )
    result["poly_ctct_mults_ratio_vs_polyval"] = round(
        deg31["ours_ctct_mults"] / deg31["polyval_ctct_mults"], 3
    )
    result["poly_depth_equal_to_polyval"] = deg31["ours_depth"] == deg31["polyval_depth"]
    result["seal_time_share"] = result["layer"]["prefill"]["seal_time_share"]
    result["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "kernels.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "kernels.md").write_text(render(result))
    return result


def render(r: dict) -> str:
    """docs/kernels.md: the design decisions, then this run's tables."""
    lines = [
        DESIGN.read_text(),
        "",
        f"## Measured ({r['generated']}, {r['machine']}, whole run {r['bench_wall_s']} s)",
        "",
    ]
    if r.get("smoke"):
        lines += ["**Smoke run** (`--smoke`): the smallest case of each kind; the labels below name the full "
                  "run's cases, not these.", ""]  # fmt: skip
    lines += ["### Headline figures", "", "| key | value | goal |", "|---|---|---|"]
    lines += [
        f"| matmul_speedup_vs_tenseal (d=128, T=64, N={r['default_N']}, vs T x CKKSVector.matmul) | "
        f"{r['matmul_speedup_vs_tenseal']}x | >= 5x |",
        f"| vs CKKSTensor.mm (same X W) | {r['matmul_speedup_vs_tenseal_tensor_mm']}x | - |",
        f"| poly_ctct_mults_ratio_vs_polyval (degree 31) | {r['poly_ctct_mults_ratio_vs_polyval']} "
        f"(depth equal: {r['poly_depth_equal_to_polyval']}) | <= 0.5, equal depth |",
        f"| seal_time_share (attention layer prefill) | {r['seal_time_share']} | >= 0.8 |",
        "",
        "### Operation latency, top level (ms; the planner's cost model)",
        "",
        *_table(
            ["N", "chain", "rotate", "ct x ct (+relin, rescale)", "ct x pt (+rescale)", "add", "encrypt",
             "decrypt", "ciphertext bytes", "one rotation key bytes"],
            [[n, o["chain"], o["rotate"], o["ctct_mult"], o["pt_mult"], o["add"], o["encrypt"], o["decrypt"],
              f"{o['ciphertext_bytes']:,}", f"{o['rotation_key_bytes']:,}"]
             for n, o in r["op_latency_ms"].items()],
        ),
    ]  # fmt: skip
    lines += [
        "",
        "### X W (plaintext W, d x d), seconds",
        "",
        *_table(
            ["N", "d", "T", "ours (cached diagonals)", "first call (encodes)", "rotations", "pt mults",
             "key switches", "keys", "SEAL share", "bits", "TenSEAL vector.matmul 1 row", "x T rows",
             "speedup"],
            [[m["N"], m["d"], m["T"], m["ours_s"], m["ours_first_call_s"], m["rotations"], m["pt_mults"],
              m["key_switches"], m["rotation_keys"], m["seal_share"], m["precision_bits"],
              m.get("tenseal_vector_matmul_row_s", "-"), m.get("tenseal_vector_matmul_T_rows_s", "-"),
              m.get("speedup_vs_vector_matmul", "-")] for m in r["matmul"]],
        ),
    ]  # fmt: skip
    tm = r["tensor_mm"][0]
    lines += [
        "",
        f"TenSEAL `CKKSTensor(batch=True).reshape([1, d]).mm(W)` (N={tm['N']}, d={tm['d']}, T={tm['T']}): "
        f"{tm['tenseal_tensor_mm_s']} s. The vector.matmul column times one row (measured) by T rows, since "
        "CKKSVector.matmul multiplies one vector.",
        "",
        f"### Polynomials (input in [-1, 1]), N={r['poly'][0]['N']}",
        "",
        *_table(
            ["degree", "ours s", "ours ct-ct", "ours pt (scalars, aligns)", "ours depth", "ours bits",
             "polyval s", "polyval ct-ct", "polyval depth", "polyval bits"],
            [[p["degree"], p["ours_s"], p["ours_ctct_mults"], p["ours_scalar_mults"], p["ours_depth"],
              p["ours_precision_bits"], p["polyval_s"], p["polyval_ctct_mults"], p["polyval_depth"],
              p["polyval_precision_bits"]] for p in r["poly"]],
        ),
    ]  # fmt: skip
    lay = r["layer"]
    lines += [
        "",
        "polyval's ct-ct count is counted from its algorithm (`polyval_ctct_mults`: squarings + per-monomial "
        "products); its time and precision are measured (TenSEAL resets scales to the nominal 2^32).",
        "",
        f"### One attention layer: N={lay['N']}, T={lay['T']}, d={lay['d']}, {lay['heads']} heads "
        f"({lay['rotation_keys']} rotation keys, {lay['key_bytes'] / 1e6:.1f} MB of public keys)",
        "",
        f"Plans: exp `{lay['plans']['exp']}`, 1/x `{lay['plans']['recip']}`. Second run (weights already "
        "encoded); refreshes go through the real client handler in-process (no network).",
        "",
        *_table(
            ["phase", "wall s", "SEAL s", "SEAL share", "rotations", "ct-ct", "pt", "key switches",
             "refresh rounds", "refreshed cts", "bytes to client", "bytes to server", "output level",
             "bits vs numpy"],
            [[ph, p["wall_s"], p["seal_s"], p["seal_time_share"], p["rotations"], p["ctct_mults"],
              p["pt_mults"], p["key_switches"], p["refresh"]["rounds"], p["refresh"]["ciphertexts"],
              f"{p['refresh']['bytes_to_client']:,}", f"{p['refresh']['bytes_to_server']:,}",
              p["output_level"], p["precision_bits"]]
             for ph, p in ((ph, lay[ph]) for ph in ("prefill", "decode"))],
        ),
    ]  # fmt: skip
    lines += ["", "### Skipped (time or memory)", ""] + [f"- {s}" for s in r["skipped"]]
    return "\n".join(lines) + "\n"


def _table(header: list, rows: list[list]) -> list[str]:
    """Markdown table lines."""
    out = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=Path("docs"), help="where kernels.{md,json} go")
    ap.add_argument(
        "--rings", type=int, nargs="+", default=None, help="default: 8192 16384 32768 (smoke: 8192)"
    )
    ap.add_argument("--smoke", action="store_true", help="one small case of each kind (checks the script)")
    args = ap.parse_args(argv)
    rings = args.rings or ([DEFAULT_N] if args.smoke else [8192, 16384, 32768])
    result = run(args.out_dir, tuple(rings), smoke=args.smoke)
    print(json.dumps({k: result[k] for k in result if k.endswith(("tenseal", "polyval", "share"))}, indent=2))


if __name__ == "__main__":
    main()
