"""`he-aero encrypt-infer`: private inference in one process (client and server joined in memory).

Thin: parse, load the checkpoint and its plan, run a `he_aero.session.Session`, print what the result says
about itself. Without options it runs the shipped model with the shipped plan: nothing is fitted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from he_aero.cli.options import force_option, output_option
from he_aero.errors import HeAeroError


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
    """The plan as it runs, then this prompt's prefill counted symbolically (no encryption)."""
    srv = session.server
    plan = srv.plan
    _, _, _, records = srv.pipeline.symbolic_prefill(n_tokens, plan.activation_bound, plan.hiding_bits)
    lines = [plan.explain(), "", f"this prompt: prefill of {n_tokens} tokens, counted without encrypting:"]
    for r in records:
        o = r.ops
        lines.append(
            f"  {r.name:8s} rotations {o['rotations']:5d}  ct*ct {o['ctct_mults']:4d}  "
            f"ct*pt {o['pt_mults']:5d}  refresh rounds {o['refresh_rounds']}  "
            f"levels {r.level_in}->{r.level_out}"
        )
    return "\n".join(lines)


@click.command("encrypt-infer")
@click.argument("prompt_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--max-new-tokens", type=click.IntRange(1), default=8, show_default=True)
@click.option(
    "--checkpoint", type=click.Path(file_okay=False), default=None, help="default: the shipped model"
)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="plan file for the checkpoint (`he-aero plan --out`; default: the shipped model's)",
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
    "--allow-insecure-for-tests",
    "insecure",
    is_flag=True,
    hidden=True,
    help="tests only: run a plan on a ring below 128-bit security (client and server in this process)",
)
def encrypt_infer(
    prompt_file,
    max_new_tokens,
    checkpoint,
    plan_file,
    temperature,
    top_k,
    seed,
    verify,
    explain,
    json_out,
    no_progress,
    insecure,
    force,
) -> None:
    """Continue the prompt in PROMPT_FILE under CKKS encryption: the server runs the model on ciphertexts
    and only this client's secret key decrypts the logits."""
    from he_aero.generation import GenerationConfig, fit_prompt
    from he_aero.plan import load_plan
    from he_aero.session import Session
    from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
    from models.linear_view import LinearView

    prompt = _read_prompt(prompt_file)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed, verify=verify
    )
    model, header = load_checkpoint(Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT)
    plan = load_plan(plan_file)
    if not plan.params.is_secure:
        click.echo(f"WARNING: insecure test ring N={plan.params.poly_modulus_degree}", err=True)
    view = LinearView.from_model(model)
    context = view.pos_emb.shape[0]
    fitted, dropped = fit_prompt(prompt, context, max_new_tokens)  # refuse before any key is made
    click.echo("setting up: keys (the client), public context (the server)...", err=True)
    from he_aero.client.policy import ClientPolicy

    policy = ClientPolicy(allow_insecure_for_tests=insecure)
    session = Session(view, header, plan, policy=policy, allow_insecure_for_tests=insecure)
    if dropped:
        click.echo(
            f"note: the prompt has {len(prompt)} bytes; with {max_new_tokens} new tokens the "
            f"{context}-token context keeps its last {len(fitted)} bytes ({dropped} dropped)",
            err=True,
        )
    if explain:
        click.echo(_explain(session, len(fitted)))
    bars = _Bars(len(session.server.pipeline.layers) + 2, max_new_tokens, not no_progress)
    try:
        res = session.generate(prompt, config, bars)
    finally:
        bars.close()
    click.echo(f"prompt ({len(res.prompt)} bytes): {_text(res.prompt)!r}")
    click.echo(f"continuation: {_text(res.continuation)!r}")
    if verify:
        click.echo(res.verify_report())
    click.echo(res.summary())
    if json_out:
        Path(json_out).write_text(json.dumps(res.to_dict(), indent=2) + "\n")
        click.echo(f"wrote {json_out}")
    if res.flag is not None:
        raise HeAeroError(
            f"token {len(res.tokens) + 1} flagged by the client, generation stopped: {res.flag}"
        )
