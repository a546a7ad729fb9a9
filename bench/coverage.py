"""`make bench-coverage`: which prompts stay inside a plan's approximation domains, and do they compute?

A prompt whose attention inputs z or denominators leave the plan's exp / 1/x domains cannot be computed
correctly under encryption (a polynomial diverges outside its domain); the in-process client refuses it
before encrypting (`ExecutionPlan.domain_violations`). This benchmark runs the plaintext model over families
of prompts and counts those inside the domains, per family:

- test windows: random 64-byte windows of the test split (seeded; the acceptance text);
- single-byte runs: each printable character repeated over the context (the calibration measures every
  byte repeated, so this family is covered by construction: it checks the plan, not the calibration);
- held out (never calibrated on): alternating printable pairs ('abab...'), natural text ending in a run of
  one character, three-character cycles, uniformly random bytes.

Then (`--encrypted K`) it runs K prompts that a reference plan (`--before`, e.g. the previous shipped plan
loaded by the previous code) refused, under encryption, teacher-forced, and reports top-1 agreement with
the plaintext model and the logits' largest deviation.

Usage: python -m bench.coverage [--plan FILE] [--windows 4000] [--before OLD.json --encrypted 3]
       [--out docs/coverage.json]
It reads `he_aero.plan.load_plan` and `domain_violations` only, so the same file can score an older tree's
plan: PYTHONPATH=OLD_TREE python bench/coverage.py --out before.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

PRINTABLE = bytes(range(32, 127))


def families(context: int, windows: int, held_out: int, seed: int = 0) -> dict[str, list[bytes]]:
    """Prompt families (module docstring), each a list of `context`-byte prompts."""
    from models.data import load_split

    rng = np.random.default_rng(seed)
    test = load_split("test")
    starts = rng.integers(0, len(test) - context, windows)
    pairs = [(a, b) for i, a in enumerate(PRINTABLE) for b in PRINTABLE[i + 1 :]]
    picked = rng.choice(len(pairs), min(held_out, len(pairs)), replace=False)

    def text_then_run():
        s = int(rng.integers(0, len(test) - context))
        k = int(rng.integers(context // 8, context - context // 8))
        return test[s : s + context - k] + bytes([int(rng.choice(list(PRINTABLE)))]) * k

    return {
        "test windows": [test[s : s + context] for s in starts],
        "single-byte runs": [bytes([c]) * context for c in PRINTABLE],
        "alternating pairs (held out)": [bytes(pairs[i]) * (context // 2) for i in picked],
        "text then a run (held out)": [text_then_run() for _ in range(held_out)],
        "three-byte cycles (held out)": [
            (bytes(rng.choice(list(PRINTABLE), 3)) * context)[:context] for _ in range(held_out)
        ],
        "random bytes (held out)": [bytes(rng.integers(0, 256, context).tolist()) for _ in range(held_out)],
    }


def scan(plan, view, prompts: list[bytes]) -> dict:
    """In-domain count and the worst violations (first line of each refused prompt, up to 3)."""
    refused = []
    for p in prompts:
        found = plan.domain_violations(view, list(p))
        if found:
            refused.append((p, found[0]))
    return {
        "prompts": len(prompts),
        "in_domain": len(prompts) - len(refused),
        "refused_examples": [{"prompt": p.decode("latin-1"), "why": why} for p, why in refused[:3]],
        "refused": [p.decode("latin-1") for p, _ in refused],
    }


def encrypted(plan_path: Path | None, prompts: list[bytes]) -> list[dict]:
    """Teacher-forced encrypted logits of each prompt (one prefill) against the plaintext model."""
    from bench.infer import _session
    from models.linear_view import view_forward

    session, _ = _session(plan_path)
    rows = []
    for p in prompts:
        t0 = time.perf_counter()
        out, _ = session.forward(list(p))
        plain = view_forward(session.view, list(p))
        if out.logits is None:
            rows.append({"prompt": p.decode("latin-1"), "flag": out.flag})
            continue
        agree = (out.logits.argmax(1) == plain.argmax(1)).tolist()
        err = float(np.abs(out.logits - plain).max())
        rows.append(
            {
                "prompt": p.decode("latin-1"),
                "positions": len(agree),
                "top1_agreement": sum(agree) / len(agree),
                "max_abs_logit_error": err,
                "flag": out.flag,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(f"encrypted {p[:24]!r}: top-1 {sum(agree)}/{len(agree)}, max|d| {err:.2e}", flush=True)
        session.server.ev.clear_cache()
    return rows


def markdown(result: dict, before: dict | None) -> str:
    lines = [
        "# Domain coverage (`make bench-coverage`)",
        "",
        f"Plan `{result['plan']}`; {result['context']}-byte prompts. A prompt is in domain when every "
        "attention input z and denominator of the plaintext model stays inside the plan's exp and 1/x "
        "domains; the in-process client refuses the others before encrypting, naming layer, head, range "
        "and gap.",
        "",
        "| family | prompts | in domain" + (" | before" if before else "") + " |",
        "|---|---|---" + ("|---" if before else "") + "|",
    ]
    for name, row in result["families"].items():
        cell = f"{row['in_domain']} ({100 * row['in_domain'] / row['prompts']:.2f}%)"
        old = ""
        if before and name in before["families"]:
            b = before["families"][name]
            old = f" | {b['in_domain']} ({100 * b['in_domain'] / b['prompts']:.2f}%)"
        lines.append(f"| {name} | {row['prompts']} | {cell}{old} |")
    lines += ["", "What the plan covers, per layer (z: exp's input; denominators: 1/x's):", ""]
    for i, lay in enumerate(result.get("layers", [])):
        lines.append(
            f"- layer {i}: z in [{lay['z_domain'][0]:.2f}, {lay['z_domain'][1]:.2f}], denominators in "
            f"[1, {lay['denominator_domain'][1]:.4g}], exp shift {lay['exp_shift']:.3g}; exp: {lay['exp']}; "
            f"1/x: {lay['reciprocal']}"
        )
    if result.get("refresh_rounds"):
        lines.append(f"- refresh rounds (planned): {result['refresh_rounds']}")
    for name, row in result["families"].items():
        if row["refused_examples"]:
            lines += ["", f"Refused, {name} (first {len(row['refused_examples'])}):"]
            lines += [f"- `{e['prompt'][:32]!r}`: {e['why']}" for e in row["refused_examples"]]
    if result.get("encrypted"):
        lines += [
            "",
            "## Encrypted, prompts the previous plan refused (teacher-forced, every position)",
            "",
            "| prompt | positions | top-1 agreement | max abs logit error |",
            "|---|---|---|---|",
        ]
        for r in result["encrypted"]:
            if "positions" in r:
                lines.append(
                    f"| `{r['prompt'][:24]!r}` | {r['positions']} | {100 * r['top1_agreement']:.1f}% | "
                    f"{r['max_abs_logit_error']:.2e} |"
                )
            else:
                lines.append(f"| `{r['prompt'][:24]!r}` | - | flagged: {r['flag']} | - |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", type=Path, default=None, help="plan file (default: the shipped one)")
    ap.add_argument("--windows", type=int, default=4000, help="random test-split windows")
    ap.add_argument("--held-out", type=int, default=400, help="prompts per held-out family")
    ap.add_argument("--before", type=Path, default=None, help="an earlier run's JSON: compare, and pick the "
                    "prompts it refused for --encrypted")  # fmt: skip
    ap.add_argument("--encrypted", type=int, default=0, help="encrypt this many prompts --before refused")
    ap.add_argument("--out", type=Path, default=None, help="write JSON here (and Markdown beside it)")
    args = ap.parse_args(argv)
    if args.windows < 1 or args.held_out < 1 or args.encrypted < 0:
        ap.error("--windows and --held-out must be >= 1, --encrypted >= 0")
    if args.encrypted and args.before is None:
        ap.error("--encrypted needs --before (the prompts it refused)")
    if args.out is not None and not args.out.parent.is_dir():
        ap.error(f"--out: no such directory {args.out.parent}")
    before = None
    if args.before is not None:
        try:
            before = json.loads(args.before.read_text())
            refused = [p for f in before["families"].values() for p in f["refused"]]
            if not all(isinstance(p, str) for p in refused):
                raise TypeError("refused prompts must be strings")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            ap.error(f"--before: {args.before} is not a coverage JSON file ({exc})")
    from he_aero.errors import HeAeroError
    from he_aero.plan import load_plan
    from models.checkpoint import load_checkpoint
    from models.linear_view import LinearView

    model, _ = load_checkpoint()
    try:
        plan = load_plan(args.plan)
    except HeAeroError as exc:
        ap.error(f"--plan: {exc}")
    view = LinearView.from_model(model)
    context = view.pos_emb.shape[0]
    result = {"plan": str(args.plan or "shipped"), "context": context, "families": {}, "layers": [
        {
            "z_domain": list(lay.z_domain),
            "denominator_domain": list(lay.denominator_domain),
            "exp_shift": getattr(lay, "exp_shift", 0.0),  # plans before format 3 have none
            "exp": lay.exp.describe(),
            "reciprocal": lay.reciprocal.describe(),
        }
        for lay in plan.layers
    ], "refresh_rounds": {k: v.get("refresh_rounds") for k, v in plan.estimates.items()}}  # fmt: skip
    for name, prompts in families(context, args.windows, args.held_out).items():
        result["families"][name] = scan(plan, view, prompts)
        row = result["families"][name]
        print(f"{name}: {row['in_domain']}/{row['prompts']} in domain", flush=True)
    if args.encrypted:
        old = [p.encode("latin-1") for f in before["families"].values() for p in f["refused"]]
        rng = np.random.default_rng(1)
        pick = [old[i] for i in sorted(rng.choice(len(old), min(args.encrypted, len(old)), replace=False))]
        result["encrypted"] = encrypted(args.plan, pick)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(result, before))
        print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
