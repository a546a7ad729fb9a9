"""AERO's claim under CKKS: every ablation variant encrypted at one shape -> docs/he-costs.{md,json}.

    python -m bench.aero [--runs DIR ...] [--prompts 4] [--decode 2] --out docs

`make bench-aero` runs it on the checkpoints of `make ablation-sink` in models/checkpoints/ablation-sink/
(bench/ablation.py's "sink" rows and the default recipe: every variant with the shipped model's sink
attention and range penalty, so attention is the same in every row and the table isolates what LayerNorm,
GELU / ReLU and the unfused FFN cost).

Each row goes through the product's own stages, as a user's model would: `he_aero.calibrate.calibrate`
(training text, degenerate windows), `he_aero.plan.compile_plan` (the planner compares the rings and picks
the cheapest that fits its approximations between refreshes), then an in-process `Session` (client and
server joined by a byte-counting channel, real keys, the hiding refresh). Measured per row:

- accuracy against the row's own plaintext model: teacher-forced top-1 on the first `--prompts` acceptance
  prompts (bench/data/prompts.json, 8 continuation tokens each; `bench.infer.accept`) and bits per byte of
  encrypted prefills on `--bpb-windows` test windows next to plaintext on the same windows;
- a prefill of `--prefill` tokens, and `--decode` decode steps after a prompt of `--decode-after` tokens
  (`bench.infer.speed`): seconds on this machine, bytes each way, refresh rounds; the decode figures are the
  mean over the steps;
- the planner's levels per layer without refreshes (`he_aero.plan.layer_depths`) and its ring choice;
- the WAN time a row would take on AERO's network (100 Mbit/s, 80 ms round trip): compute + bytes / bandwidth
  + (refresh rounds + 1) x round trip, per prefill and per decoded token.

Savings against the baseline (SM+LN+G) are ratios of measured figures: comm = baseline bytes / row bytes,
latency = baseline seconds / row seconds, per decoded token (and for the WAN time); AERO's 2PC ratios
(../shared/reference/aero.md) stand beside them.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from he_aero.ckks.hiding import SESSION_HIDING_BITS

CHECKPOINTS = Path(__file__).resolve().parent.parent / "models" / "checkpoints" / "ablation-sink"
"""Where `make ablation-sink` trains the rows' models (committed, so the table reruns without training)."""
WAN_BITS_PER_SECOND = 100e6
WAN_ROUND_TRIP_SECONDS = 0.080
"""AERO's network: SecretFlow/BumbleBee over a 100 Mbit/s WAN with 80 ms latency."""

PAPER_SAVINGS = {  # GPT-2 L=12, T=128, 2PC, against SM+LN+G (../shared/reference/aero.md)
    "SM+LN+R": {"comm": 2.68, "latency": 1.35, "note": "9.44 GB, 6.06 min against 25.32 GB, 8.21 min"},
    "softmax-only": {"comm": 3.94, "latency": 1.72, "note": "SM+ScFuFFN"},
    "softmax-only+ER": {"comm": 3.94, "latency": 1.72, "note": "EReg(SM(t)+ScFuFFN)"},
    "softmax-only+ER pruned": {"comm": 4.00, "latency": 1.94, "note": "6 deepest FFNs pruned"},
}


@dataclass(frozen=True)
class Row:
    """One table row: its name, the ablation row whose checkpoint it runs, and what it is."""

    name: str
    ablation_row: str
    variant: str
    entropy_reg: bool = False
    pruned_ffns: int = 0


ROWS = (
    Row("baseline (SM+LN+G)", "sink baseline", "baseline"),
    Row("SM+LN+R", "sink relu", "relu"),
    Row("SM+R", "sink lnfree-relu", "lnfree-relu"),
    Row("softmax-only", "sink softmax-only", "softmax-only"),
    Row("softmax-only+ER", "default recipe", "softmax-only", entropy_reg=True),
    Row("softmax-only+ER pruned", "sink softmax-only+ER pruned", "softmax-only", True, 1),
)


def checkpoint_dir(runs: list[Path], ablation_row: str) -> Path | None:
    """The first of the `runs` folders that holds the ablation row's checkpoint (bench/ablation.py names the
    folder after the row)."""
    name = ablation_row.replace(" ", "_").replace("+", "_")
    for base in runs:
        if (base / name / "model.safetensors").is_file():
            return base / name
    return None


def _relative(path: Path) -> str:
    """`path` relative to the repository when it lies inside it (the JSON must not carry this machine's
    absolute paths)."""
    try:
        return str(path.resolve().relative_to(CHECKPOINTS.parents[2]))
    except ValueError:
        return str(path)


def wan_seconds(compute_s: float, n_bytes: float, rounds: float) -> float:
    """compute + transfer at WAN_BITS_PER_SECOND + (rounds + 1) round trips (the exchange itself and each
    refresh round)."""
    return compute_s + 8 * n_bytes / WAN_BITS_PER_SECOND + (rounds + 1) * WAN_ROUND_TRIP_SECONDS


def measure(row: Row, ckpt: Path, args) -> dict:
    """Calibrate, plan, key and run one row (module docstring); returns its JSON row."""
    from bench.ablation import flops_and_nonlinearities
    from bench.infer import accept, speed
    from he_aero.calibrate import CalibrationConfig, calibrate
    from he_aero.client.policy import ClientPolicy
    from he_aero.plan import PlanConfig, compile_plan, layer_depths
    from he_aero.session import Session
    from models.checkpoint import load_checkpoint
    from models.linear_view import LinearView

    model, header = load_checkpoint(ckpt)
    t0 = time.perf_counter()
    cal = calibrate(model, header, CalibrationConfig(samples=args.calibration_windows))
    t1 = time.perf_counter()
    hiding = args.session_hiding_bits
    plan = compile_plan(header, cal, PlanConfig(session_hiding_bits=hiding))
    t2 = time.perf_counter()
    # the client demands what the plan was made for (its default minimum is the plan's default)
    session = Session(LinearView.from_model(model), header, plan, policy=ClientPolicy(hiding))
    t3 = time.perf_counter()
    took = f"calibrated {t1 - t0:.0f} s, planned {t2 - t1:.0f} s ({plan.summary()}), keys {t3 - t2:.0f} s"
    print(f"{row.name}: {took}", flush=True)
    depths = layer_depths(plan.shape, plan.plans)  # symbolic: before the long encrypted runs, not after
    # speed() decodes after a prefill of its first length: a short prompt, then the full-length prefill
    sp = speed([args.decode_after, args.prefill], args.decode, session=session)
    # the speed run's caches (every token count's diagonals, the decode step's plaintexts) are not needed
    # again: at N=16384 they and the acceptance prefills' held 19.6 GB before this (killed by the OOM killer)
    session.server.ev.clear_cache()
    acc = accept(args.prompts, 0, args.bpb_windows, session=session)
    prefill = sp["prefill"][-1]
    dec = sp["decode"]
    per_token = {
        k: sum(d[k] for d in dec) / len(dec)
        for k in ("wall_seconds", "bytes_to_server", "bytes_to_client", "refresh_rounds")
    }
    forced = acc["teacher_forced"]
    bpb = acc["bits_per_byte"] or {}
    metrics = json.loads((ckpt / "metrics.json").read_text())
    token_bytes = per_token["bytes_to_server"] + per_token["bytes_to_client"]
    errors = forced["max_abs_logit_error"]
    prefill_bytes = prefill["bytes_to_server"] + prefill["bytes_to_client"]
    wan_prefill = wan_seconds(prefill["wall_seconds"], prefill_bytes, prefill["refresh_rounds"])
    return {
        "variant": row.name,
        "model_variant": row.variant,
        "ablation_row": row.ablation_row,
        "entropy_reg": row.entropy_reg,
        "pruned_ffns": row.pruned_ffns,
        "checkpoint": _relative(ckpt),
        "layers": model.cfg.n_layer,
        "d_model": model.cfg.d_model,
        "context": model.cfg.block_size,
        "train_steps": metrics.get("steps"),
        "test_bits_per_byte": metrics["test_bits_per_byte"],
        "encrypted_bits_per_byte": bpb.get("encrypted_bits_per_byte"),
        "plaintext_bits_per_byte_same_windows": bpb.get("plaintext_bits_per_byte"),
        "bpb_windows": bpb.get("windows"),
        "encrypted_top1": forced["top1_agreement"],
        "top1_tokens": forced["tokens"],
        "max_abs_logit_error": errors["max"] if errors else None,
        "ring_degree": plan.params.poly_modulus_degree,
        "session_hiding_bits": hiding,
        "usable_levels": plan.usable_levels,
        "depth_per_layer": depths,
        "refresh_rounds_per_token": per_token["refresh_rounds"],
        "refresh_rounds_prefill": prefill["refresh_rounds"],
        "bytes_per_token": int(token_bytes),
        "bytes_up_per_token": int(per_token["bytes_to_server"]),
        "bytes_down_per_token": int(per_token["bytes_to_client"]),
        "bytes_prefill": int(prefill_bytes),
        "bytes_up_prefill": prefill["bytes_to_server"],
        "bytes_down_prefill": prefill["bytes_to_client"],
        "key_bytes": sp["key_bytes"],
        "prefill_tokens": args.prefill,
        "prefill_seconds": prefill["wall_seconds"],
        "decode_seconds_per_token": round(per_token["wall_seconds"], 2),
        "decode_steps": len(dec),
        "decode_after": args.decode_after,
        "wan_prefill_seconds": round(wan_prefill, 2),
        "wan_seconds_per_token": round(
            wan_seconds(per_token["wall_seconds"], token_bytes, per_token["refresh_rounds"]), 2
        ),
        "nonlinearities": flops_and_nonlinearities(model.cfg),
        "calibration_seconds": round(t1 - t0, 1),
        "plan_seconds": round(t2 - t1, 1),
        "plan": plan.explain().splitlines(),
    }  # fmt: skip


def savings(rows: list[dict]) -> dict:
    """Per row, baseline figure / row figure: comm (bytes per decoded token and per prefill), latency
    (seconds per decoded token, per prefill) and the WAN times; 1.0 for the baseline itself."""
    base = next((r for r in rows if r["model_variant"] == "baseline"), None)
    if base is None:
        return {}

    def ratio(key, r):
        return round(base[key] / r[key], 2) if r[key] and base[key] else None

    return {
        r["variant"]: {
            "comm": ratio("bytes_per_token", r),
            "latency": ratio("decode_seconds_per_token", r),
            "wan_latency": ratio("wan_seconds_per_token", r),
            "prefill_comm": ratio("bytes_prefill", r),
            "prefill_latency": ratio("prefill_seconds", r),
            "refresh_rounds": ratio("refresh_rounds_per_token", r),
            "aero_2pc": PAPER_SAVINGS.get(r["variant"]),
        }
        for r in rows
    }


def markdown(result: dict) -> str:
    """docs/he-costs.md: the measured table, the savings beside AERO's 2PC ratios."""
    rows, sav = result["rows"], result["savings_vs_baseline"]
    if not rows:
        return "# What AERO buys under CKKS: every variant encrypted\n\nNo rows were measured.\n"
    r0 = rows[0]
    how = (
        f"Written by `make bench-aero` (`python -m bench.aero`) in {result['seconds'] / 60:.0f} min on "
        f"{result['machine']['cpus']} CPUs."
    )
    if result.get("merged_from"):
        how = (
            f"Merged by `python -m bench.aero --from-json` from rows measured in separate runs "
            f"({', '.join(result['merged_from'])}) on {result['machine']['cpus']} CPUs shared with other "
            "jobs: operation counts, refresh rounds and bytes are exact; seconds carry the load of the "
            "moment (compare ratios of seconds with care)."
        )
    lines = [
        "# What AERO buys under CKKS: every variant encrypted",
        "",
        f"{how} Every row: {r0['layers']} layers, d={r0['d_model']}, context "
        f"{r0['context']}, sink attention with the range penalty, {r0['train_steps']} training steps, seed 0 "
        "(bench/ablation.py). Each model is calibrated, planned (the planner picks the ring) and run through "
        "an in-process client/server session with the hiding refresh. Prefill: "
        f"{r0['prefill_tokens']} tokens; decode: mean of {r0['decode_steps']} steps after a "
        f"{r0.get('decode_after', '?')}-token prompt. Top-1: "
        "teacher-forced on the acceptance prompts against the row's own plaintext model. WAN: compute + "
        "bytes at 100 Mbit/s + (refresh rounds + 1) x 80 ms.",
        "",
        "| row | test bpb | enc. bpb (plain, same windows) | top-1 | max \\|dlogit\\| | N | depth/layer "
        "| refresh rounds prefill / token | MB prefill / token | prefill s | decode s/token | WAN s/token "
        "| exp/recip/act/LN per token |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        nl = r["nonlinearities"]
        enc = r["encrypted_bits_per_byte"]
        enc_txt = "-" if enc is None else f"{enc:.3f} ({r['plaintext_bits_per_byte_same_windows']:.3f})"
        top1 = (
            "-" if r["encrypted_top1"] is None else f"{100 * r['encrypted_top1']:.0f}% of {r['top1_tokens']}"
        )
        err = "-" if r["max_abs_logit_error"] is None else f"{r['max_abs_logit_error']:.1e}"
        lines.append(
            f"| {r['variant']} | {r['test_bits_per_byte']:.3f} | {enc_txt} | "
            f"{top1} | {err} | "
            f"{r['ring_degree']} | {'/'.join(map(str, r['depth_per_layer']))} | "
            f"{r['refresh_rounds_prefill']} / {r['refresh_rounds_per_token']:.0f} | "
            f"{r['bytes_prefill'] / 1e6:.0f} / {r['bytes_per_token'] / 1e6:.1f} | "
            f"{r['prefill_seconds']:.0f} | "
            f"{r['decode_seconds_per_token']:.1f} | {r['wan_seconds_per_token']:.1f} | "
            f"{nl['exp_per_token']}/{nl['reciprocals_per_token']}/{nl['gelu_or_relu_per_token']}/"
            f"{nl['layernorms_per_token']} |"
        )
    weaker = [r for r in rows if r.get("session_hiding_bits", SESSION_HIDING_BITS) < SESSION_HIDING_BITS]
    for r in weaker:
        lines += [
            "",
            f"{r['variant']} was planned (and its client configured) for {r['session_hiding_bits']} bits of "
            f"session hiding instead of the default {SESSION_HIDING_BITS}: at the default its calibrated "
            "bound leaves too few refreshed polynomials for a full context (he-aero plan says by how much).",
        ]
    if sav:
        lines += [
            "",
            "## Savings against the baseline (baseline / row, measured here) and AERO's 2PC figures",
            "",
            "| row | comm / token | latency / token | WAN latency / token | comm prefill | latency prefill "
            "| refresh rounds | AERO 2PC comm / latency |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, s in sav.items():
            s = {k: ("-" if v is None else v) for k, v in s.items()}
            paper = None if s["aero_2pc"] == "-" else s["aero_2pc"]
            paper_txt = "-" if paper is None else f"{paper['comm']}x / {paper['latency']}x ({paper['note']})"
            lines.append(
                f"| {name} | {s['comm']}x | {s['latency']}x | {s['wan_latency']}x | {s['prefill_comm']}x | "
                f"{s['prefill_latency']}x | {s['refresh_rounds']}x | {paper_txt} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, action="append", help="folders holding the ablation checkpoints")
    p.add_argument("--only", action="append", choices=[r.name for r in ROWS], help="measure only these rows")
    p.add_argument(
        "--prompts", type=int, default=4, help="acceptance prompts, teacher-forced (8 tokens each)"
    )
    p.add_argument("--bpb-windows", type=int, default=1, help="test windows for encrypted bits per byte")
    p.add_argument("--prefill", type=int, default=64, help="prefill length in tokens")
    p.add_argument("--decode", type=int, default=2, help="decode steps after --decode-after tokens")
    p.add_argument("--decode-after", type=int, default=16, help="prompt length before the decode steps")
    p.add_argument("--calibration-windows", type=int, default=2048)
    p.add_argument(
        "--session-hiding-bits",
        type=int,
        default=SESSION_HIDING_BITS,
        help="the plan's and the client's session hiding (a row whose bound needs less is refused otherwise)",
    )
    p.add_argument("--out", type=Path, default=Path("docs"), help="folder for he-costs.{json,md}")
    p.add_argument("--from-json", type=Path, nargs="+", default=None, help="merge saved row lists, no runs")
    a = p.parse_args(argv)
    for name in ("prompts", "decode", "decode_after", "prefill", "calibration_windows"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 1 <= a.session_hiding_bits <= 128:
        p.error("--session-hiding-bits must be in [1, 128]")
    if a.bpb_windows < 0:
        p.error("--bpb-windows must be >= 0")
    if not a.out.is_dir():
        p.error(f"--out: no such directory: {a.out}")
    t0 = time.perf_counter()
    if a.from_json:
        saved = {r["variant"]: r for f in a.from_json for r in json.loads(f.read_text())["rows"]}
        rows = [saved[r.name] for r in ROWS if r.name in saved]
    else:
        runs = a.runs or [CHECKPOINTS]
        todo = [r for r in ROWS if a.only is None or r.name in a.only]
        found = {r.name: checkpoint_dir(runs, r.ablation_row) for r in todo}
        missing = [f"{n} ({r.ablation_row})" for r in todo for n in [r.name] if found[n] is None]
        if missing:
            p.error(f"--runs: no checkpoint for {', '.join(missing)} in {', '.join(map(str, runs))} "
                    "(make ablation-sink trains them)")  # fmt: skip
        for r in todo:  # before any work: every run must fit its checkpoint's context
            context = json.loads((found[r.name] / "config.json").read_text())["config"]["block_size"]
            if a.prefill > context or a.decode_after + a.decode > context:
                p.error(f"--prefill / --decode-after + --decode must fit {found[r.name]}'s {context} tokens")
        rows = []
        partial = a.out / "he-costs.partial.json"  # finished rows survive an interrupted run (--from-json)
        for r in todo:
            rows.append(measure(r, found[r.name], a))
            partial.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    from bench.infer import _machine

    result = {
        "rows": rows,
        "savings_vs_baseline": savings(rows),
        "wan": {"bits_per_second": WAN_BITS_PER_SECOND, "round_trip_seconds": WAN_ROUND_TRIP_SECONDS},
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": _machine(),
        "merged_from": [f.name for f in a.from_json] if a.from_json else None,
    }
    (a.out / "he-costs.json").write_text(json.dumps(result, indent=1) + "\n")
    (a.out / "he-costs.md").write_text(markdown(result))
    if not a.from_json:
        partial.unlink(missing_ok=True)
    print(markdown(result))


if __name__ == "__main__":
    main()
