"""Private-inference commands: `he-aero calibrate` and `he-aero encrypt-infer`.

Thin wrappers: parse, call `he_aero.calibrate` / `he_aero.generate`, report. Without options,
`encrypt-infer` runs the shipped default checkpoint with the shipped default calibration.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from he_aero.cli_options import force_option, output_option
from he_aero.errors import HeAeroError


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(file_okay=False))
@click.option(
    "--samples",
    type=click.IntRange(1, 100_000),
    default=512,
    show_default=True,
    help="windows of context length bytes from the TRAINING split",
)
@click.option(
    "--margin",
    type=click.FloatRange(0, 2),
    default=0.1,
    show_default=True,
    help="widen every measured interval by this fraction of its width on both sides",
)
@click.option(
    "--exp-error",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=1e-4,
    show_default=True,
    help="certified relative error of the exp plans",
)
@click.option(
    "--recip-error",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=1e-4,
    show_default=True,
    help="certified relative error of the 1/x plans",
)
@output_option("--out", required=True, help="calibration file to write (JSON)")
@force_option
def calibrate(checkpoint, samples, margin, exp_error, recip_error, out, force) -> None:
    """Measure the ranges the encrypted runtime must cover on CHECKPOINT (default: the shipped model) over
    training text, widen them by a margin, fit the approximation plans, and write a calibration file
    bound to the checkpoint's weights."""
    from he_aero.calibrate import CalibrationConfig, describe
    from he_aero.calibrate import calibrate as run_calibration
    from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint

    model, header = load_checkpoint(Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT)
    cfg = CalibrationConfig(
        samples=samples, margin=margin, exp_max_rel_error=exp_error, recip_max_rel_error=recip_error
    )
    cal = run_calibration(model, header, cfg)
    path = cal.save(out)
    click.echo(describe(cal))
    click.echo(f"wrote {path}")


def _read_prompt(path: str) -> bytes:
    data = Path(path).read_bytes()
    if not data:
        raise click.BadParameter(
            "the prompt file is empty: there is nothing to continue", param_hint="PROMPT_FILE"
        )
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        click.echo(
            "note: the prompt is not valid UTF-8; its raw bytes are encrypted as they are (the model is "
            "byte-level) and shown with U+FFFD",
            err=True,
        )
    return data


def _text(data: bytes) -> str:
    from models.data import to_text

    return to_text(data)


class _Bars:
    """tqdm progress bars on stderr: one over the prefill's stages, one over the decode steps' stages."""

    def __init__(self, n_stages: int, new_tokens: int, enabled: bool):
        from tqdm import tqdm

        self.tqdm, self.n_stages, self.enabled = tqdm, n_stages, enabled
        self.decode_total = max(0, new_tokens - 1) * n_stages
        self.bar = None
        self.phase = None
        self.done = 0

    def __call__(self, stage: str) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = self.tqdm(
                total=self.n_stages, desc="prefill", unit="stage", file=sys.stderr, leave=True
            )
            self.phase = "prefill"
        elif self.phase == "prefill" and self.bar.n >= self.n_stages:
            self.bar.close()
            self.bar = self.tqdm(
                total=self.decode_total, desc="decode", unit="stage", file=sys.stderr, leave=True
            )
            self.phase = "decode"
        self.bar.set_postfix_str(
            stage if self.phase == "prefill" else f"token {self.bar.n // self.n_stages + 2}, {stage}"
        )
        self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _explain(session, n_tokens: int) -> str:
    srv = session.server
    p = srv.params
    from he_aero.ckks.ciphertext import Evaluator
    from he_aero.ckks.params import SEAL_MAX_BITS
    from he_aero.ckks.refresh import Refresher

    ref = Refresher(
        Evaluator(p, None), None, bound=srv.calibration.activation_bound, hiding_bits=srv.hiding_bits
    )
    lines = [srv.plan.explain(), ""] if srv.plan is not None else []
    lines += [
        f"ring N={p.poly_modulus_degree} ({p.slots} slots), chain {list(p.coeff_mod_bit_sizes)} = "
        f"{p.total_bits} bits (128-bit limit {SEAL_MAX_BITS[p.poly_modulus_degree]}"
        f"{', INSECURE test ring' if not p.is_secure else ''}), "
        f"scale 2^{p.scale_bits}, {p.levels} levels; refresh needs level >= {ref.min_level()}, so "
        f"{ref.usable_levels()} levels between refreshes",
        f"slot layout: features, {srv.block}-slot token blocks, {p.slots // srv.block} features per "
        "ciphertext; "
        f"{len(srv.rotation_steps)} rotation keys (exactly the steps the kernels use)",
        f"refresh: mask width {srv.calibration.activation_bound:.4g} x 2^{srv.hiding_bits} "
        f"(statistical hiding 2^-{srv.hiding_bits + 1} per slot)",
    ]
    for i, lay in enumerate(srv.calibration.layers):
        lines.append(
            f"layer {i}: exp {lay.exp_plan.describe()} (depth {lay.exp_plan.depth}); "
            f"1/x {lay.recip_plan.describe()} (depth {lay.recip_plan.depth})"
        )
    lines.append(
        f"this prompt: prefill of {n_tokens} tokens with embedding and LM head, counted without encrypting:"
    )
    for r in srv.symbolic_records(n_tokens):
        o = r.ops
        lines.append(
            f"  {r.name:8s} rotations {o['rotations']:5d}  ct*ct {o['ctct_mults']:4d}  "
            f"ct*pt {o['pt_mults']:5d}  "
            f"refresh rounds {o['refresh_rounds']}  levels {r.level_in}->{r.level_out}"
        )
    return "\n".join(lines)


def _stage_line(records) -> str:
    return "".join(
        f"\n  {r.name:8s} {r.seconds:7.2f} s  (rotations {r.ops['rotations']}, ct*ct {r.ops['ctct_mults']}, "
        f"refresh rounds {r.ops['refresh_rounds']}, inside SEAL {r.ops['seal_seconds']:.2f} s)"
        for r in records
    )


def _summary(res, session) -> str:
    t = res.seconds
    tr = res.traffic
    n_dec = len(res.decode_stages)
    per_tok = t.get("decode", 0.0) / n_dec if n_dec else 0.0
    by = tr["bytes_by_purpose"]
    setup = by.get("setup", {"to_server": 0, "to_client": 0})
    lines = [
        f"ring N={res.ring_degree}, {res.levels} levels, {res.rotation_keys} rotation keys",
        "time: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in t.items())
        + (f"; decode {per_tok:.2f} s per token ({n_dec} tokens)" if n_dec else ""),
        "prefill per stage:" + _stage_line(res.prefill_stages),
    ]
    if n_dec:
        import statistics

        means = []
        for i, first in enumerate(res.decode_stages[0]):
            means.append(f"{first.name} {statistics.mean(d[i].seconds for d in res.decode_stages):.2f} s")
        lines.append("decode per stage (mean per token): " + ", ".join(means))
    lines.append(
        "levels (in->out): " + ", ".join(f"{r.name} {r.level_in}->{r.level_out}" for r in res.prefill_stages)
    )

    def both(*purposes):
        up = sum(by.get(k, {}).get("to_server", 0) for k in purposes)
        return up, sum(by.get(k, {}).get("to_client", 0) for k in purposes)

    pre_up, pre_down = both("prefill", "refresh:prefill")
    dec_up, dec_down = both("decode", "refresh:decode")
    lines.append(
        f"bytes client->server {_mb(tr['bytes_client_to_server'])}, server->client "
        f"{_mb(tr['bytes_server_to_client'])}: keys once {_mb(setup['to_server'])}; prefill (refreshes "
        f"included) up {_mb(pre_up)} down {_mb(pre_down)}"
        + (f"; per decoded token up {_mb(dec_up / n_dec)} down {_mb(dec_down / n_dec)}" if n_dec else "")
    )
    lines.append(
        f"rounds {tr['rounds']} ({', '.join(f'{k} {v}' for k, v in tr['rounds_by_purpose'].items())})"
    )
    lines.append("client decryptions: " + ", ".join(f"{k} {v}" for k, v in res.client_decryptions.items()))
    return "\n".join(lines)


def _json(res) -> dict:
    return {
        "continuation": _text(res.continuation),
        "continuation_bytes": list(res.continuation),
        "tokens": res.tokens,
        "prompt_bytes": len(res.prompt),
        "dropped_prompt_bytes": res.dropped_prompt_bytes,
        "top1_agreement": res.top1_agreement,
        "max_abs_logit_error": res.max_abs_logit_error,
        "per_token": [
            {
                "token": r.token,
                "position": r.position,
                "seconds": round(r.seconds, 3),
                "flag": r.flag,
                "plaintext_token": r.plaintext_token,
                "top1_agree": r.top1_agree,
                "max_abs_logit_error": r.max_abs_logit_error,
            }
            for r in res.records
        ],
        "plaintext_continuation": None
        if res.plaintext_continuation is None
        else _text(res.plaintext_continuation),
        "seconds": res.seconds,
        "prefill_stages": [
            {
                "name": r.name,
                "seconds": round(r.seconds, 3),
                "ops": r.ops,
                "level_in": r.level_in,
                "level_out": r.level_out,
            }
            for r in res.prefill_stages
        ],
        "bytes_client_to_server": res.traffic["bytes_client_to_server"],
        "bytes_server_to_client": res.traffic["bytes_server_to_client"],
        "bytes_by_purpose": res.traffic["bytes_by_purpose"],
        "rounds": res.traffic["rounds"],
        "rounds_by_purpose": res.traffic["rounds_by_purpose"],
        "ring_degree": res.ring_degree,
        "levels": res.levels,
        "rotation_keys": res.rotation_keys,
        "client_decryptions": {
            "logits": res.client_decryptions.get("logits", 0),
            "refresh": res.client_decryptions.get("refresh", 0),
        },
        "flag": res.flag,
    }


@click.command("encrypt-infer")
@click.argument("prompt_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--max-new-tokens", type=click.IntRange(1), default=8, show_default=True)
@click.option(
    "--checkpoint", type=click.Path(file_okay=False), default=None, help="default: the shipped model"
)
@click.option(
    "--calibration",
    type=click.Path(dir_okay=False),
    default=None,
    help="calibration file for the checkpoint (default: the shipped one)",
)
@click.option(
    "--temperature", type=click.FloatRange(0, 100), default=0.0, show_default=True, help="0: greedy"
)
@click.option(
    "--top-k", type=click.IntRange(0), default=0, show_default=True, help="sample among the top k (0: all)"
)
@click.option("--seed", type=int, default=0, show_default=True, help="seeds the sampler only")
@click.option(
    "--verify",
    is_flag=True,
    help="also run the plaintext model; per token top-1 agreement and max |delta logit|",
)
@click.option(
    "--explain", is_flag=True, help="print the parameters, plans, levels and op counts before running"
)
@output_option("--json", "json_out", default=None, help="write the results as JSON")
@force_option
@click.option("--no-progress", is_flag=True, help="no progress bars")
@click.option(
    "--test-ring",
    type=click.Choice(["2048", "4096", "8192"]),
    default=None,
    hidden=True,
    help="tests only: an INSECURE small ring with the default chain shape",
)
def encrypt_infer(
    prompt_file,
    max_new_tokens,
    checkpoint,
    calibration,
    temperature,
    top_k,
    seed,
    verify,
    explain,
    json_out,
    no_progress,
    test_ring,
    force,
) -> None:
    """Continue the prompt in PROMPT_FILE under CKKS encryption: the server runs the model on ciphertexts
    and only this client's secret key decrypts the logits."""
    from he_aero.calibrate import load_calibration
    from he_aero.generate import GenerationConfig, Session, fit_prompt
    from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
    from models.linear_view import LinearView

    prompt = _read_prompt(prompt_file)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed, verify=verify
    )
    model, header = load_checkpoint(Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT)
    cal = load_calibration(calibration)
    cal.check_checkpoint(header, where=f"calibration {calibration or 'default'}")
    params = None
    if test_ring:
        from he_aero.ckks.params import CkksParams

        click.echo(f"WARNING: insecure test ring N={test_ring}", err=True)
        params = CkksParams(int(test_ring), (50,) + (35,) * 9 + (60,), 35, insecure_for_tests=True)
    view = LinearView.from_model(model)
    context = view.pos_emb.shape[0]
    fitted, dropped = fit_prompt(prompt, context, max_new_tokens)  # refuse before any key is made
    click.echo("setting up: plan, keys (the client), public context (the server)...", err=True)
    session = Session(view, cal, header, params)
    if dropped:
        click.echo(
            f"note: the prompt has {len(prompt)} bytes; with {max_new_tokens} new tokens the "
            f"{context}-token context keeps its last {len(fitted)} bytes ({dropped} dropped)",
            err=True,
        )
    if explain:
        click.echo(_explain(session, len(fitted)))
    bars = _Bars(len(session.server.layers) + 2, max_new_tokens, not no_progress)
    try:
        res = session.generate(prompt, config, bars)
    finally:
        bars.close()
    click.echo(f"prompt ({len(res.prompt)} bytes): {_text(res.prompt)!r}")
    click.echo(f"continuation: {_text(res.continuation)!r}")
    if verify:
        click.echo(f"plaintext:    {_text(res.plaintext_continuation)!r}")
        for i, r in enumerate(res.records):
            if r.top1_agree is not None:
                click.echo(
                    f"  token {i + 1}: {_text(bytes([r.token]))!r} top-1 "
                    f"{'agrees' if r.top1_agree else 'DIFFERS'} "
                    f"(plaintext {_text(bytes([r.plaintext_token]))!r}), "
                    f"max |delta logit| {r.max_abs_logit_error:.2e}"
                )
        click.echo(
            f"top-1 agreement {res.top1_agreement:.0%}, max |delta logit| {res.max_abs_logit_error:.3e}"
        )
    click.echo(_summary(res, session))
    if json_out:
        Path(json_out).write_text(json.dumps(_json(res), indent=2) + "\n")
        click.echo(f"wrote {json_out}")
    if res.flag is not None:
        raise HeAeroError(
            f"token {len(res.tokens) + 1} flagged by the client, generation stopped: {res.flag}"
        )
