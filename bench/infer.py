"""Encrypted-inference benchmark and acceptance measurements on the shipped default (`make bench-he`).

    python -m bench.infer prompts [--n 20] [--length 24] --out bench/data/prompts.json
    python -m bench.infer accept [--prompts K] [--decode-prompts D] [--bpb-windows W] [--plan P] --out F.json
    python -m bench.infer speed [--lengths 16 32 64] [--decode 3] [--plan P] [--ray-workers K] --out F.json
    python -m bench.infer report --speed docs/he-bench.json --accept docs/he-accept.json --out F.md

`prompts` picks the acceptance prompts from the TEST split (evenly spaced, each at the start of a code line).
`accept` measures, on the default model with the shipped plan (or `--plan`):
  - teacher-forced greedy agreement for K prompts: one encrypted prefill of prompt + the plaintext model's
    8-token greedy continuation (minus its last token) gives the encrypted logits at all 8 generation
    positions; if top-1 agrees at every one, the encrypted greedy continuation equals the plaintext one (by
    induction on the prefix). One prefill instead of a prefill plus 7 decode steps per prompt;
  - true autoregressive generation (prefill + decode against the K/V cache) for D prompts;
  - bits per byte of encrypted prefills on W windows of the test split against plaintext.
`speed` times prefills of the given lengths and decode steps, with operation counts per layer (checked
against the pipeline's symbolic count, `Pipeline.symbolic_prefill` / `symbolic_decode`) and the share of
server wall time spent inside SEAL calls (the server process's own: actors' time is not in it); with
`--ray-workers K` the same prefills then run on K Ray actors in the same run (`ray_speedup`). `report`
renders both JSON files as docs/he-bench.md.
Both sides run in one process through `he_aero.session.Session` (`Session.forward`: one pass, no sampling).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from bench import DATA

PROMPTS = DATA / "prompts.json"
COUNTS = ("rotations", "ctct_mults", "pt_mults", "key_switches", "refresh_rounds")
"""The operation counts a real run must share with the symbolic one (`_counted`)."""


def select_prompts(n: int = 20, length: int = 24) -> list[bytes]:
    """n distinct prompts of `length` ASCII bytes from the test split: evenly spaced offsets, each moved to
    the next line that starts with a letter or underscore (code, not comments or blank lines)."""
    from models.data import load_split

    data = load_split("test")
    out, step = [], len(data) // n
    for i in range(n):
        pos = data.index(b"\n", i * step) + 1
        while True:
            cand = data[pos : pos + length]
            if (cand[:1].isalpha() or cand[:1] == b"_") and cand.isascii() and cand not in out:
                break
            pos = data.index(b"\n", pos) + 1
        out.append(cand)
    return out


def load_prompts(path: Path = PROMPTS) -> list[bytes]:
    rows = json.loads(Path(path).read_text())["prompts"]
    return [bytes(r["bytes"]) for r in rows]


def _session(plan_path: Path | None = None, checkpoint: Path | None = None, cache_limit: int | None = None):
    """(Session on `checkpoint` (default: the shipped one) with the plan `plan_path` (default: the shipped
    plan; it must be compiled for that checkpoint), the server's plaintext cache capped at `cache_limit`
    bytes (None: no cap), setup seconds)."""
    from he_aero.plan import load_plan
    from he_aero.session import Session
    from models.checkpoint import load_checkpoint
    from models.linear_view import LinearView

    model, header = load_checkpoint(checkpoint)
    plan = load_plan(plan_path)
    t0 = time.perf_counter()
    session = Session(LinearView.from_model(model), header, plan, cache_limit=cache_limit)
    return session, time.perf_counter() - t0


def _greedy(view, tokens: list[int], n: int) -> list[int]:
    from models.linear_view import view_forward

    seq = list(tokens)
    for _ in range(n):
        seq.append(int(np.argmax(view_forward(view, seq)[-1])))
    return seq[len(tokens) :]


def _stats(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {
        "n": int(v.size),
        "max": float(v.max()),
        "p50": float(np.percentile(v, 50)),
        "p90": float(np.percentile(v, 90)),
        "mean": float(v.mean()),
    }


def accept(
    n_prompts: int,
    decode_prompts: int,
    bpb_windows: int,
    new_tokens: int = 8,
    start: int = 0,
    session=None,
    plan_path: Path | None = None,
) -> dict:
    """The acceptance measurements (module docstring) on prompts start .. start + n_prompts - 1 (on the
    shipped model unless a `Session` is given)."""
    from he_aero.generation import GenerationConfig, fit_prompt
    from models.data import load_split
    from models.linear_view import view_forward

    session, setup_s = (session, 0.0) if session is not None else _session(plan_path)
    view = session.view
    # the context rule of `he-aero encrypt-infer` (a no-op for the committed 24-byte prompts at T=64)
    prompts = [
        fit_prompt(p, session.context, new_tokens)[0] for p in load_prompts()[start : start + n_prompts]
    ]
    forced, errors = [], []
    for i, prompt in enumerate(prompts):
        cont = _greedy(view, list(prompt), new_tokens)
        seq = list(prompt) + cont[:-1]
        t0 = time.perf_counter()
        out, _ = session.forward(seq)
        enc = out.logits[len(prompt) - 1 :]  # rows that chose the 8 continuation tokens
        plain = view_forward(view, seq)[len(prompt) - 1 :]
        per_tok = np.abs(enc - plain).max(axis=1)
        errors += per_tok.tolist()
        agree = [int(np.argmax(e)) == t for e, t in zip(enc, cont, strict=True)]
        forced.append(
            {
                "prompt": prompt.decode("latin-1"),
                "plaintext_continuation": bytes(cont).decode("latin-1"),
                "top1_agree": agree,
                "max_abs_logit_error": per_tok.tolist(),
                "flag": out.flag,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(
            f"forced {i + 1}/{len(prompts)}: agree {sum(agree)}/{len(agree)} max|d| {per_tok.max():.2e}",
            flush=True,
        )
    true_runs = []
    session.server.ev.clear_cache()  # plaintext diagonals are cached per token count: one set at a time
    for prompt in prompts[:decode_prompts]:
        res = session.generate(prompt, GenerationConfig(max_new_tokens=new_tokens, verify=True))
        true_runs.append(
            {
                "prompt": prompt.decode("latin-1"),
                "continuation": res.continuation.decode("latin-1"),
                "plaintext_continuation": res.plaintext_continuation.decode("latin-1"),
                "top1_agreement": res.top1_agreement,
                "max_abs_logit_error": [r.max_abs_logit_error for r in res.records],
                "flag": res.flag,
                "token_seconds": [round(r.seconds, 2) for r in res.records],
            }
        )
        print(f"generated: agreement {res.top1_agreement} max|d| {res.max_abs_logit_error}", flush=True)
    session.server.ev.clear_cache()
    bpb = session.bits_per_byte(load_split("test"), bpb_windows) if bpb_windows else None
    all_agree = [a for f in forced for a in f["top1_agree"]]
    return {
        "setup_seconds": round(setup_s, 1),
        "prompt_range": [start, start + len(prompts)],
        "teacher_forced": {
            "prompts": len(forced),
            "tokens": len(all_agree),
            "top1_agreement": sum(all_agree) / len(all_agree) if all_agree else None,
            "continuations_equal": sum(all(f["top1_agree"]) for f in forced),
            "max_abs_logit_error": _stats(errors) if errors else None,
            "runs": forced,
        },
        "generated": true_runs,
        "bits_per_byte": bpb,
        "machine": _machine(),
    }


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_1m": os.getloadavg()[0]}


def _phase_row(stages: list[dict], wall: float, before: dict, after: dict) -> dict:
    """One prefill or decode measurement: times, SEAL share, bytes each way, refresh rounds."""
    server_s = sum(s["seconds"] for s in stages)
    return {
        "wall_seconds": round(wall, 2),
        "server_seconds": round(server_s, 2),
        "seal_share": round(sum(s["seal_seconds"] for s in stages) / server_s, 3),
        "bytes_to_server": after["bytes_client_to_server"] - before["bytes_client_to_server"],
        "bytes_to_client": after["bytes_server_to_client"] - before["bytes_server_to_client"],
        "refresh_rounds": sum(s["refresh_rounds"] for s in stages),
        "refresh_seconds": round(sum(s.get("refresh_seconds", 0.0) for s in stages), 2),
        "stages": stages,
    }


def _stage_rows(records, counted) -> list[dict]:
    """Measured stages, each with whether its operation counts equal the symbolic run's (`counted`)."""
    return [{"name": r.name, "seconds": round(r.seconds, 3), **r.ops, "level_in": r.level_in,
             "level_out": r.level_out, "counted_match": all(r.ops[k] == c.ops[k] for k in COUNTS)}
            for r, c in zip(records, counted, strict=True)]  # fmt: skip


def _counted(session, n_tokens: int, decode: bool, workers: int = 1, after: int = 0) -> list:
    """StageRecords of the same pass on a symbolic evaluator (no SEAL objects): a prefill of n_tokens (its
    parts split as `workers` processes split them), or the decode step that follows it and `after` earlier
    decode steps (replayed: a cache's levels depend on its history, not its length alone)."""
    pipe, plan = session.server.pipeline, session.server.plan
    _, _, caches, records = pipe.symbolic_prefill(n_tokens, plan.activation_bound, plan.mask_bits, workers)
    if decode:
        for i in range(after + 1):
            _, _, records = pipe.symbolic_decode(
                caches, plan.activation_bound, plan.mask_bits, grow=i < after
            )
    return records


def _checked(view, tokens: list[int], logits: np.ndarray) -> dict:
    """The decrypted logits of the last len(logits) positions of `tokens` against the plaintext model's:
    max |delta logit| and top-1 agreement (every encrypted figure is checked, not only timed)."""
    from models.linear_view import view_forward

    plain = view_forward(view, tokens)[len(tokens) - len(logits) :]
    return {
        "max_abs_dlogit": float(np.abs(logits - plain).max()),
        "top1_agreement": float(np.mean(np.argmax(logits, axis=1) == np.argmax(plain, axis=1))),
    }


def _prefills(session, prompts: list[list[int]], workers: int = 1) -> list[dict]:
    """One cold prefill per prompt (the evaluator's plaintext cache cleared first: diagonals are cached per
    token count, so memory holds one length at a time), with its counts checked against the symbolic
    prefill split as `workers` processes split it, and its logits against the plaintext model."""
    runs = []
    for tokens in prompts:
        session.server.ev.clear_cache()
        before = session.channel.traffic.summary()
        out, wall = session.forward(tokens)
        after = session.channel.traffic.summary()
        counted = _counted(session, len(tokens), decode=False, workers=workers)
        stages = _stage_rows(session.server.records, counted)
        check = _checked(session.view, tokens, out.logits)
        runs.append({"tokens": len(tokens), **_phase_row(stages, wall, before, after), **check})
        where = f" on {workers} Ray workers" if workers > 1 else ""
        print(f"prefill {len(tokens)}{where}: {wall:.1f} s", flush=True)
    return runs


def _ray_prefills(session, prompts: list[list[int]], workers: int, cache_limit: int | None = None) -> dict:
    """The same prefills with the server's parts on `workers` Ray actors (a local Ray of `workers` CPUs),
    each cold like the single-process ones: the actors keep their plaintexts between lengths, but those are
    keyed by the token count, so each length encodes its own on first use."""
    from he_aero.server.ray_pool import RayPool
    from he_aero.session import Session

    srv = session.server
    t0 = time.perf_counter()
    pool = RayPool(srv.view, srv.plan, workers=workers, cache_limit=cache_limit)
    started = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        ray_session = Session(srv.view, srv.header, srv.plan, pool=pool, cache_limit=cache_limit)
        setup = time.perf_counter() - t0
        runs = _prefills(ray_session, prompts, workers)
    finally:
        pool.close()
    return {"workers": workers, "pool_start_seconds": round(started, 1), "setup_seconds": round(setup, 1),
            "prefill": runs}  # fmt: skip


def speed(
    lengths: list[int],
    decode: int,
    session=None,
    plan_path: Path | None = None,
    ray_workers: int = 0,
    checkpoint: Path | None = None,
    cache_limit: int | None = None,
    ray_cache_limit: int | None = None,
) -> dict:
    """Prefill timings per length, then `decode` decode steps after a prefill of lengths[0] tokens, then (with
    `ray_workers`) the same prefills on Ray actors, in the same run, for the speed-up. Every pass's logits
    are checked against the plaintext model. `checkpoint`, `plan_path`, `cache_limit`: as `_session`'s;
    `ray_cache_limit`: the Ray run's, per process (its session's server and each actor). A failed Ray run is
    recorded as such ("ray": {"error": ...}), the single-process figures kept."""
    from models.data import load_split

    if session is None:
        session, setup_s = _session(plan_path, checkpoint, cache_limit)
    else:
        setup_s = 0.0
    srv = session.server
    text = load_split("test")
    start = text.index(b"\ndef ") + 1
    prompts = [list(text[start : start + n]) for n in lengths]
    runs = _prefills(session, prompts)
    dec = []
    tokens = list(text[start : start + lengths[0]])
    srv.ev.clear_cache()
    decode_plaintext_bytes = srv.prepare_decode()  # as at SETUP: the decode step's plaintexts alone
    if prompts[-1] != tokens:  # else the server's K/V cache already holds this prompt (the last prefill's)
        session.forward(tokens)
    for i in range(decode):
        before = session.channel.traffic.summary()
        out, wall = session.forward([tokens[-1]], len(tokens) + i)
        after = session.channel.traffic.summary()
        stages = _stage_rows(srv.records, _counted(session, len(tokens), decode=True, after=i))
        check = _checked(session.view, tokens + [tokens[-1]] * (i + 1), out.logits)
        dec.append({"cache_length": len(tokens) + i + 1, **_phase_row(stages, wall, before, after), **check})
        print(f"decode {i + 1}: {wall:.1f} s", flush=True)
    after_decode_bytes = srv.ev.cache_bytes()
    srv.ev.clear_cache()  # before the Ray run's session: one session's plaintexts at a time
    ray = None
    if ray_workers:
        try:
            ray = _ray_prefills(session, prompts, ray_workers, ray_cache_limit)
        except Exception as exc:  # a Ray failure (e.g. its OOM killer) must not lose the measurements above
            print(f"Ray run failed: {str(exc).splitlines()[0]}", flush=True)
            ray = {"workers": ray_workers, "error": str(exc).splitlines()[0][:500]}
    ray_ok = ray is not None and "error" not in ray
    p = srv.params
    steady = [d["wall_seconds"] for d in dec[1:]]
    return {
        # the headline figures (issue 13); details below
        "prefill_seconds": {str(r["tokens"]): r["wall_seconds"] for r in runs},
        "decode_seconds_per_token": round(statistics.mean(steady), 2) if steady else None,
        "first_decode_seconds": dec[0]["wall_seconds"] if dec else None,
        "ray_speedup": _speedups(runs, ray["prefill"])[str(lengths[-1])] if ray_ok else None,
        "ray": {**ray, "speedup": _speedups(runs, ray["prefill"])} if ray_ok else ray,
        "plan_sha256": srv.plan.sha256,
        "shape": dataclasses.asdict(srv.plan.shape),
        "plan": srv.plan.explain().splitlines(),
        "ring_degree": p.poly_modulus_degree,
        "chain": list(p.coeff_mod_bit_sizes),
        "rotation_keys": len(srv.rotation_steps),
        "key_bytes": session.channel.traffic.to_server["setup"],
        "setup_seconds": round(setup_s, 1),
        "session_seconds": {k: round(v, 2) for k, v in session.seconds.items()},
        "prefill": runs,
        "decode": dec,
        "decode_plaintext_mb": round(decode_plaintext_bytes / 1e6, 1),
        "plaintext_cache_mb_after_decode": round(after_decode_bytes / 1e6, 1),
        "machine": _machine(),
    }


def _speedups(single: list[dict], parallel: list[dict]) -> dict:
    """Single-process wall seconds / parallel wall seconds per prompt length."""
    return {
        str(a["tokens"]): round(a["wall_seconds"] / b["wall_seconds"], 2)
        for a, b in zip(single, parallel, strict=True)
    }


def merge_accept(parts: list[dict]) -> dict:
    """One acceptance result from several runs over disjoint prompt ranges."""
    runs = [r for p in parts for r in p["teacher_forced"]["runs"]]
    agree = [a for r in runs for a in r["top1_agree"]]
    errors = [e for r in runs for e in r["max_abs_logit_error"]]
    return {
        "teacher_forced": {
            "prompts": len(runs),
            "tokens": len(agree),
            "top1_agreement": sum(agree) / len(agree) if agree else None,
            "continuations_equal": sum(all(r["top1_agree"]) for r in runs),
            "max_abs_logit_error": _stats(errors) if errors else None,
            "runs": runs,
        },
        "generated": [g for p in parts for g in p["generated"]],
        "bits_per_byte": next((p["bits_per_byte"] for p in parts if p.get("bits_per_byte")), None),
    }


def _before_after(before: dict, after: dict) -> list[str]:
    """A table of the phases two speed runs share (same token count or the decode steps in order)."""
    mb = 1e6
    lines = [
        "",
        f"### Before and after: {before.get('label', 'before')} vs this run",
        "",
        f"Before: chain {before['chain']}; after: chain {after['chain']}. Both runs on this machine, one "
        "after the other, nothing else running. " + before.get("note", ""),
        "",
        "| phase | before s | after s | after: refresh s | refresh rounds | MB up before / after | "
        "MB down before / after |",
        "|---|---|---|---|---|---|---|",
    ]
    pairs = [
        (f"prefill {r['tokens']}", r, a)
        for r in before["prefill"]
        for a in after["prefill"]
        if a["tokens"] == r["tokens"]
    ]
    steps = zip(before["decode"], after["decode"], strict=False)  # the shorter run's steps
    pairs += [
        (f"decode step {i + 1} (cache {r['cache_length']} / {a['cache_length']})", r, a)
        for i, (r, a) in enumerate(steps)
    ]
    for name, r, a in pairs:
        lines.append(
            f"| {name} | {r['wall_seconds']} | {a['wall_seconds']} | {a.get('refresh_seconds', '-')} | "
            f"{r['refresh_rounds']} / {a['refresh_rounds']} | {r['bytes_to_server'] / mb:.1f} / "
            f"{a['bytes_to_server'] / mb:.1f} | {r['bytes_to_client'] / mb:.1f} / "
            f"{a['bytes_to_client'] / mb:.1f} |"
        )
    return lines


TARGETS = {
    "decode_seconds_per_token": 2.0,
    "first_over_steady": 1.2,
    "prefill_64_seconds": 10.0,
    "ray_speedup": 1.7,
}
"""Issue 13's targets: decode <= 2 s per token, the first decode step within 1.2x of steady, a 64-token
prefill <= 10 s, Ray on 2 cores >= 1.7x faster than one process."""


def _target_lines(s: dict) -> list[str]:
    """The issue's targets against this run's figures."""
    steady, first = s.get("decode_seconds_per_token"), s.get("first_decode_seconds")
    ratio = round(first / steady, 2) if steady and first else None
    rows = [
        ("decode, steady, s per token", "<=", TARGETS["decode_seconds_per_token"], steady),
        ("first decode step / steady", "<=", TARGETS["first_over_steady"], ratio),
        (
            "prefill of 64 tokens, s",
            "<=",
            TARGETS["prefill_64_seconds"],
            s.get("prefill_seconds", {}).get("64"),
        ),
        ("Ray on 2 workers vs one process, prefill 64", ">=", TARGETS["ray_speedup"], s.get("ray_speedup")),
    ]
    lines = ["## Targets (issue 13)", "", "| figure | target | measured | met |", "|---|---|---|---|"]
    for name, op, target, got in rows:
        met = "-" if got is None else ("yes" if (got <= target if op == "<=" else got >= target) else "no")
        lines.append(f"| {name} | {op} {target} | {'-' if got is None else got} | {met} |")
    big = max(s["prefill"], key=lambda r: r["tokens"])
    steps = s["decode"][1:] or s["decode"]
    if steps:
        refresh = statistics.mean(d["refresh_seconds"] for d in steps)
        lines += [
            "",
            f"What bounds them: a decode step makes {steps[0]['refresh_rounds']} refresh rounds, which alone "
            f"take {refresh:.1f} s (both parties, in this process); a prefill of {big['tokens']} makes "
            f"{big['refresh_rounds']}, {big['refresh_seconds']} s. Refreshes wait for the client, so no "
            "number of workers shortens them: they, the lockstep exp / 1/x stages and the client's own work "
            "are the sequential share that keeps the Ray speed-up below 2.",
        ]
    return lines + [""]


def _ray_lines(s: dict) -> list[str]:
    ray = s.get("ray")
    if not ray:
        return []
    if "error" in ray:
        return ["", f"## The prefill on {ray['workers']} Ray workers: FAILED", "", f"`{ray['error']}`"]
    lines = [
        "",
        f"## The prefill on {ray['workers']} Ray workers (same run)",
        "",
        f"`RayPool` (he_aero/server/ray_pool.py): a local Ray of {ray['workers']} CPUs, "
        f"{ray['workers']} actors holding the model (started in {ray['pool_start_seconds']} s, before any "
        "client) and, from SETUP, the session's public keys. The actors run each product's output "
        "ciphertexts and each head group's score and weighted-value loops; refreshes and the lockstep "
        "exp / 1/x stages stay in the server's process. "
        "Each prefill is cold on both sides.",
        "",
        "| tokens | one process s | Ray s | speed-up | refresh s (Ray run) | counts = symbolic split |",
        "|---|---|---|---|---|---|",
    ]
    for one, par in zip(s["prefill"], ray["prefill"], strict=False):
        match = all(st.get("counted_match") for st in par["stages"])
        lines.append(
            f"| {one['tokens']} | {one['wall_seconds']} | {par['wall_seconds']} | "
            f"{ray['speedup'][str(one['tokens'])]}x | {par['refresh_seconds']} | {'yes' if match else 'NO'} |"
        )
    return lines


def _workers_lines(w: dict) -> list[str]:
    """The simulated worker plan (bench/workers.py)."""
    ship, gpt = w["shipped"], w["gpt2_layer"]
    shape = gpt["shape"]
    lines = [
        "",
        "## Simulated: 1 to 32 workers (`python -m bench.workers`, docs/he-workers.json)",
        "",
        *[f"> {line}" for line in w["method"]],
        "",
        f"Shipped model (N={ship['ring']}), simulated prefill of the full context: "
        + ", ".join(f"{r['workers']} worker(s) {r['seconds']} s" for r in ship["prefill"])
        + f"; one decode step {ship['decode']['seconds']} s. (Measured in this run: the table above.)",
        "",
        f"GPT-2-size layer (d={shape['d_model']}, {shape['n_head']} heads, T={shape['t_max']}, "
        f"N={gpt['ring']}, the shipped layer-0 approximations), simulated. The parts stop scaling at 12 "
        "workers: attention has one part per head group (12), the products one per output ciphertext. The "
        "cost model charges every plaintext product a rescale (the measured op includes one), which a "
        "`dot_plain` term does not pay: product-heavy stages (the products, a decode step) come out high.",
        "",
        "| workers | prefill s, layer 1 of 2 | refresh s | own ops s | parts s | 12 layers + ends, s |",
        "|---|---|---|---|---|---|",
    ]
    for r in gpt["prefill"]:
        st = r["stages"]["layer 1"]
        lines.append(
            f"| {r['workers']} | {r['layer_seconds']} | {st['refresh_seconds']} | {st['own_ops_seconds']} | "
            f"{st['parts_seconds']} | {r['gpt2_12_layers_seconds']} |"
        )
    d = gpt["decode"]["stages"]["layer 1"]
    lines += [
        "",
        f"One decode step, per GPT-2-size layer (one process, a cache of {shape['t_max'] - 1} tokens): "
        f"{d['seconds']} s ({d['refresh_seconds']} s of it refreshes, {d['refreshed_ciphertexts']} "
        f"ciphertexts, {d['refresh_bytes'] / 1e6:.0f} MB uncompressed); 12 layers with the embedding and "
        f"the head: {gpt['decode_12_layers_seconds']} s per token. Anchors: THOR runs BERT-base (12 layers, "
        "T=128) in ~590 s on one A100 (~49 s per layer); AERO's 2PC GPT-2 takes 4.23 min and 6.29 GB per "
        "forward pass over a WAN.",
    ]
    return lines


def _gpt2_lines(g: dict | None) -> list[str]:
    """The measured GPT-2-size layer (bench/gpt2.py), when this run's JSON carries it."""
    if not g or g.get("simulated") is not False:
        return []
    shape, proj, check = g["shape"], g["projection_12_layers_seconds"], g["check"]
    per = g["prefill_seconds"]
    workers = ", ".join(f"{k} worker(s) {v:.1f} s" for k, v in per.items())
    if len(per) > 1:
        workers += f" ({per['1'] / min(per.values()):.2f}x)"
    lines = [
        "",
        "## Measured: a GPT-2-size layer (`make bench-gpt2`)",
        "",
        f"One Softmax-only layer at d={shape['d_model']}, {shape['n_head']} heads, T={shape['t_max']}, "
        f"trained here (bench/gpt2.py says how), on N={g['ring']}; a prefill of {g['prefill_tokens']} "
        "tokens, then "
        f"decode steps at cache lengths {g['decode_cache_lengths']}. Client and server in one process; every "
        f"pass checked against the plaintext model: top-1 {check['top1_agreement']:.1%}, max |delta logit| "
        f"{check['max_abs_dlogit']:.2g}.",
        "",
        "| figure | measured |",
        "|---|---|",
        f"| prefill, s per layer | {workers} |",
        f"| decode, s per layer per token (steady) | {g['decode_seconds_per_token']} "
        f"(first step {g['first_decode_layer_seconds']}) |",
        f"| bytes per decode step (both ways) | {g['bytes_per_token'] / 1e6:.1f} MB |",
        f"| refresh rounds: prefill / decode step | {g['refresh']['prefill_rounds']} / "
        f"{g['refresh']['decode_rounds']} |",
        f"| plaintexts encoded per decode step ({g.get('plaintext_cache_mb')} MB cached) | "
        f"{g['encodes_per_decode_step']} |",
        "| projected 12 layers + ends: prefill | "
        + ", ".join(f"{k} worker(s) {v} s" for k, v in proj["prefill"].items())
        + " |",
        f"| projected 12 layers + ends: decode, s per token | {proj['decode_per_token']} |",
    ]
    if "simulated_plan" in g:
        sim = g["simulated_plan"]
        lines += [
            "",
            f"The simulated plan (above) predicted {sim['prefill_seconds'].get('1')} s per layer for a "
            f"prefill in one process and {sim['decode_seconds_per_token']} s per decode step.",
        ]
    return lines


def report(
    speed_json: Path,
    accept_jsons: list[Path],
    before_json: Path | None = None,
    workers_json: Path | None = None,
) -> str:
    """docs/he-bench.md from the JSON files (`before_json`: an earlier speed run to compare with;
    `workers_json`: bench/workers.py's simulated plan)."""
    s = json.loads(Path(speed_json).read_text())
    mb = 1e6
    lines = [
        "# Encrypted inference: benchmark (`make bench-he`)",
        "",
        f"Shipped default model and plan; ring N={s['ring_degree']}, chain {s['chain']}, "
        f"{s['rotation_keys']} rotation keys ({s['key_bytes'] / mb:.0f} MB sent once); session setup "
        f"(plan, keygen, key loading) {s['setup_seconds']} s. Machine: {s['machine']['cpus']} CPUs, load "
        f"{s['machine']['load_avg_1m']:.1f} at the end (shared with other jobs: read times as upper bounds).",
        "",
        f"The plan that ran (`he-aero plan --explain`; SHA-256 {s.get('plan_sha256', '?')[:12]}...):",
        "",
        "```",
        *s.get("plan", ["(not recorded)"]),
        "```",
        "",
        *_target_lines(s),
        "| phase | tokens | wall s | inside SEAL | refresh rounds | refresh s | MB up | MB down |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in s["prefill"]:
        lines.append(
            f"| prefill | {r['tokens']} | {r['wall_seconds']} | {r['seal_share']:.0%} | "
            f"{r['refresh_rounds']} | {r.get('refresh_seconds', '-')} | "
            f"{r['bytes_to_server'] / mb:.1f} | {r['bytes_to_client'] / mb:.1f} |"
        )
    for r in s["decode"]:
        lines.append(
            f"| decode | cache {r['cache_length']} | {r['wall_seconds']} | {r['seal_share']:.0%} | "
            f"{r['refresh_rounds']} | {r.get('refresh_seconds', '-')} | "
            f"{r['bytes_to_server'] / mb:.1f} | {r['bytes_to_client'] / mb:.1f} |"
        )
    lines += [
        "",
        "Each prefill row is cold: the evaluator's cache of encoded weight diagonals is cleared before each "
        "length, so the time includes encoding the plaintexts for that token count (a server that keeps them "
        "would skip it). Decode steps follow a prefill of the first length; the decode step's plaintexts "
        "are encoded before it, as the server does at SETUP (`Server.prepare_decode`), so the first step is "
        "warm. Wall time is client encrypt + server + client decrypt, refresh rounds included (both sides "
        "run in one process here); 'inside SEAL' is the server's share.",
    ]
    if "decode_plaintext_mb" in s:
        lines += [
            "",
            "Plaintext cache (measured, 8 bytes per RNS word): the decode step's "
            f"{s['decode_plaintext_mb']} MB"
            + (
                "."
                if s.get("plaintext_cache_mb_after_decode") is None
                else f", {s['plaintext_cache_mb_after_decode']} MB with the first prefill length's after "
                "the decode steps."
            ),
        ]
    if s["decode"]:
        steady = [r["wall_seconds"] for r in s["decode"][1:]] or [s["decode"][0]["wall_seconds"]]
        lines += [
            "",
            f"Decode, steady state (after the first step): {statistics.mean(steady):.1f} s per token.",
        ]
    passes = s["prefill"] + s["decode"]
    if all("top1_agreement" in r for r in passes):
        lines += [
            "",
            "Every pass above was checked against the plaintext model: top-1 agreement "
            f"{min(r['top1_agreement'] for r in passes):.1%} (the worst pass), max |delta logit| "
            f"{max(r['max_abs_dlogit'] for r in passes):.2g}.",
        ]
    lines += _ray_lines(s)
    if workers_json is not None:
        lines += _workers_lines(json.loads(Path(workers_json).read_text()))
    lines += _gpt2_lines(s.get("gpt2_layer"))
    if before_json is not None:
        lines += _before_after(json.loads(Path(before_json).read_text()), s)
    big = max(s["prefill"], key=lambda r: r["tokens"])
    every = [st.get("counted_match") for r in s["prefill"] + s["decode"] for st in r["stages"]]
    if all(m is not None for m in every):
        lines += [
            "",
            "Operation counts (rotations, products, key switches, refresh rounds) of every stage above "
            + ("equal" if all(every) else "DIFFER FROM")
            + " the pipeline's symbolic count of the same pass (what the planner costs).",
        ]
    lines += ["", f"## Operations per stage, prefill of {big['tokens']} tokens", "",
              "| stage | s | SEAL s | rotations | ct*ct | ct*pt | key switches | refresh rounds | levels |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for st in big["stages"]:
        lines.append(
            f"| {st['name']} | {st['seconds']:.1f} | {st['seal_seconds']:.1f} | {st['rotations']} | "
            f"{st['ctct_mults']} | {st['pt_mults']} | {st['key_switches']} | {st['refresh_rounds']} | "
            f"{st['level_in']}->{st['level_out']} |"
        )
    if s["decode"]:
        d = s["decode"][0]
        lines += ["", f"## Operations per stage, one decode step (cache {d['cache_length']})", ""]
        lines += ["| stage | s | rotations | ct*ct | ct*pt | refresh rounds |", "|---|---|---|---|---|---|"]
        for st in d["stages"]:
            lines.append(
                f"| {st['name']} | {st['seconds']:.2f} | {st['rotations']} | {st['ctct_mults']} | "
                f"{st['pt_mults']} | {st['refresh_rounds']} |"
            )
    if accept_jsons:
        a = merge_accept([json.loads(Path(f).read_text()) for f in accept_jsons])
        tf = a["teacher_forced"]
        lines += ["", "## Accuracy (acceptance)", ""]
        if tf["tokens"]:
            e = tf["max_abs_logit_error"]
            lines.append(
                f"Teacher-forced greedy check on {tf['prompts']} of the 20 committed test-split prompts "
                f"(`bench/data/prompts.json`) x 8 tokens: top-1 agreement {tf['top1_agreement']:.1%}, "
                f"{tf['continuations_equal']}/{tf['prompts']} continuations equal to plaintext; "
                f"max |delta logit| per token: max {e['max']:.2e}, p90 {e['p90']:.2e}, "
                f"median {e['p50']:.2e}, "
                f"mean {e['mean']:.2e}."
            )
        for g in a["generated"]:
            lines.append(
                f"- autoregressive (prefill + decode with the K/V cache): {g['prompt']!r} -> "
                f"{g['continuation']!r} (plaintext {g['plaintext_continuation']!r}), top-1 "
                f"{g['top1_agreement']:.0%}, max |delta logit| {max(g['max_abs_logit_error']):.2e}, "
                f"seconds per token {g['token_seconds']}"
            )
        if a.get("bits_per_byte"):
            b = a["bits_per_byte"]
            lines.append(
                f"- bits per byte on {b['windows']} test-split windows ({b['bytes']} bytes): encrypted "
                f"{b['encrypted_bits_per_byte']:.4f}, plaintext {b['plaintext_bits_per_byte']:.4f} "
                f"(relative gap {b['relative_gap']:+.2e}), max |delta logit| {b['max_abs_logit_error']:.2e}"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.infer")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prompts")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--length", type=int, default=24)
    p.add_argument("--out", type=Path, default=PROMPTS)
    a = sub.add_parser("accept")
    a.add_argument("--prompts", type=int, default=20)
    a.add_argument("--start", type=int, default=0, help="first prompt (to split the set across processes)")
    a.add_argument("--decode-prompts", type=int, default=2)
    a.add_argument("--bpb-windows", type=int, default=2)
    a.add_argument("--new-tokens", type=int, default=8)
    a.add_argument("--plan", type=Path, default=None, help="plan file (default: the shipped plan)")
    a.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("speed")
    s.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64])
    s.add_argument("--decode", type=int, default=3)
    s.add_argument("--plan", type=Path, default=None, help="plan file (default: the shipped plan)")
    s.add_argument("--ray-workers", type=int, default=0, help="also run the prefills on this many Ray actors")
    s.add_argument("--checkpoint", type=Path, default=None, help="model folder (default: the shipped model)")
    s.add_argument(
        "--cache-mb",
        type=float,
        default=None,
        help="cap on each process's plaintext cache, MB (default: none)",
    )
    s.add_argument(
        "--ray-cache-mb", type=float, default=None, help="the same cap in the Ray run (default: --cache-mb's)"
    )
    s.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("report")
    r.add_argument("--speed", type=Path, required=True)
    r.add_argument("--accept", type=Path, nargs="*", default=[], help="accept JSON files (merged)")
    r.add_argument("--before", type=Path, help="an earlier speed JSON to compare with (label: its 'label')")
    r.add_argument("--workers", type=Path, help="bench/workers.py's JSON (the simulated worker plan)")
    r.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "speed":  # refuse before any key is made: decode steps follow a prefill of lengths[0]
        from he_aero.plan import load_plan
        from he_aero.server.service import MAX_CACHE_MB

        context = load_plan(args.plan).shape.t_max
        if not all(1 <= n <= context for n in args.lengths):
            ap.error(f"--lengths: each must lie in [1, {context}] (the model's context), got {args.lengths}")
        if args.ray_workers < 0:
            ap.error(f"--ray-workers: expected >= 0, got {args.ray_workers}")
        for opt, mb in (("--cache-mb", args.cache_mb), ("--ray-cache-mb", args.ray_cache_mb)):
            if mb is not None and not 0 <= mb <= MAX_CACHE_MB:
                ap.error(f"{opt}: expected a number of MB in [0, {MAX_CACHE_MB:g}], got {mb}")
        if args.checkpoint is not None and not args.checkpoint.is_dir():
            ap.error(f"--checkpoint: {args.checkpoint} is not a folder")
        if args.decode < 0 or args.lengths[0] + args.decode > context:
            ap.error(
                f"--decode: {args.decode} steps after a prefill of {args.lengths[0]} tokens "
                f"(--lengths' first) pass the context of {context}"
            )
    if args.cmd == "prompts":
        rows = [{"text": p.decode("latin-1"), "bytes": list(p)} for p in select_prompts(args.n, args.length)]
        doc = {
            "source": "models.data.load_split('test'), bench.infer.select_prompts",
            "prompts": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    elif args.cmd == "report":
        args.out.write_text(report(args.speed, args.accept, args.before, args.workers))
    else:
        result = None
        if args.cmd == "accept":
            result = accept(
                args.prompts, args.decode_prompts, args.bpb_windows, args.new_tokens, args.start,
                plan_path=args.plan,
            )  # fmt: skip
        if args.cmd == "speed":
            limit = None if args.cache_mb is None else int(args.cache_mb * 1e6)
            ray_mb = args.cache_mb if args.ray_cache_mb is None else args.ray_cache_mb
            result = speed(
                args.lengths, args.decode, plan_path=args.plan, ray_workers=args.ray_workers,
                checkpoint=args.checkpoint, cache_limit=limit,
                ray_cache_limit=None if ray_mb is None else int(ray_mb * 1e6),
            )  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
