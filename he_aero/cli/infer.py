"""`he-aero encrypt-infer`: private inference in one process (client and server joined in memory).

Thin: parse, load the checkpoint and its plan, run a `he_aero.session.Session`, print what the result says
about itself. Without options it runs the shipped model with the shipped plan: nothing is fitted.
"""

from __future__ import annotations

import sys

import click

from he_aero.cli.options import (
    Outputs,
    blame,
    checkpoint_option,
    force_option,
    json_option,
    plan_option,
    progress_option,
    prompt_argument,
    report,
    sampling_options,
)

# GenerationConfig's messages start with its field: the option that set it.
_FIELD_OPTIONS = {"max_new_tokens": "--max-new-tokens", "temperature": "--temperature", "top_k": "--top-k"}


class _Bars:
    """tqdm progress bars on stderr: one over the prefill's stages, then one over the decode steps' stages.

    The pipeline calls `progress(name)` AFTER stage `name` finishes, so a call counts that stage as done and
    the text names the stage now running."""

    def __init__(self, stages: list[str], new_tokens: int, enabled: bool):
        self.stages, self.enabled = stages, enabled
        self.decode_total = max(0, new_tokens - 1) * len(stages)
        self.bar = None
        self.phase = "prefill"

    def _open(self, phase: str, total: int) -> None:
        from tqdm import tqdm

        self.phase = phase
        self.bar = tqdm(total=total, desc=phase, unit="stage", file=sys.stderr, leave=True)

    def __enter__(self):
        if self.enabled:
            self._open("prefill", len(self.stages))
            self.bar.set_postfix_str(f"running {self.stages[0]}")
        return self

    def __call__(self, finished: str) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        n, done = len(self.stages), self.bar.n
        if self.phase == "prefill":
            if done < n:
                self.bar.set_postfix_str(f"{finished} done, running {self.stages[done]}")
                return
            self.bar.set_postfix_str(f"{finished} done: token 1")
            if self.decode_total:
                self.bar.close()
                self._open("decode", self.decode_total)
                self.bar.set_postfix_str(f"token 2: running {self.stages[0]}")
            return
        token, following = (done - 1) // n + 2, done % n  # the token whose stage finished; the next stage
        if following:
            self.bar.set_postfix_str(f"token {token}: {finished} done, running {self.stages[following]}")
        elif done < self.decode_total:
            self.bar.set_postfix_str(f"token {token} done; token {token + 1}: running {self.stages[0]}")
        else:
            self.bar.set_postfix_str(f"token {token} done")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


@click.command("encrypt-infer")
@prompt_argument()
@checkpoint_option()
@plan_option
@click.option(
    "--max-new-tokens",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="bytes to generate (prompt bytes + this - 1 must fit the model's context)",
)
@sampling_options
@click.option(
    "--verify",
    is_flag=True,
    show_default=True,
    help="also run the plaintext model; per token top-1 agreement and max |delta logit|",
)
@click.option(
    "--explain",
    is_flag=True,
    show_default=True,
    help="print the parameters, plans, levels and op counts before running",
)
@json_option
@force_option
@progress_option
@click.option(
    "--server",
    default=None,
    show_default="in-process",
    help="HOST:PORT (or ws:// / wss:// URL) of a `he-aero serve`: run remotely; --verify then needs the same "
    "weights locally (--checkpoint) and pins the server to them",
)
@click.option(
    "--expect-model",
    default=None,
    show_default="any",
    help="with --server: refuse a server whose weights have another SHA-256 (64 hex digits)",
)
@click.option(
    "--allow-insecure-for-tests",
    "insecure",
    is_flag=True,
    hidden=True,
    help="tests only: run a plan on a ring below 128-bit security (client and server in this process)",
)
def encrypt_infer(
    prompt,
    checkpoint,
    plan_file,
    max_new_tokens,
    temperature,
    top_k,
    seed,
    verify,
    explain,
    json_out,
    force,
    no_progress,
    server,
    expect_model,
    insecure,
) -> None:
    """Continue PROMPT (a file, or - for standard input) under CKKS encryption: the server runs the model on
    ciphertexts and only this client's secret key decrypts the logits."""
    from pathlib import Path

    from he_aero.client.policy import ClientPolicy
    from he_aero.errors import HeAeroError
    from he_aero.generation import GenerationConfig, describe_prefill, fit_prompt
    from he_aero.plan import load_plan
    from he_aero.session import Session
    from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, read_header
    from models.linear_view import LinearView

    say = report(json_out)
    path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    with blame("--checkpoint"):
        context = int(read_header(path)["config"]["block_size"])
    if max_new_tokens > context:  # refused before anything is loaded, let alone encrypted
        raise click.BadParameter(
            f"{max_new_tokens} exceeds the model's context of {context} positions",
            param_hint="'--max-new-tokens'",
        )
    fitted, dropped = fit_prompt(prompt, context, max_new_tokens)
    try:
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed, verify=verify
        )
    except HeAeroError as exc:  # "field: message" -> the option that set the field
        field, _, message = str(exc).partition(": ")
        option = _FIELD_OPTIONS.get(field, "--max-new-tokens")
        raise click.BadParameter(message or str(exc), param_hint=f"'{option}'") from exc
    if server is not None:
        _remote(
            server, expect_model, prompt, config, path, plan_file, insecure, verify, json_out, no_progress
        )
        return
    if expect_model is not None:
        raise click.BadParameter(
            "needs --server (in-process, the weights are local)", param_hint="'--expect-model'"
        )
    with blame("--plan"):
        plan = load_plan(plan_file)
    with blame("--checkpoint"):
        model, header = load_checkpoint(path)
    with blame("--plan", shipped_default=plan_file is None):  # before any key is made, naming the option
        plan.check_checkpoint(header)
    with blame("--plan"):
        if not plan.params.is_secure and not insecure:
            plan.params.require_secure()
    if not plan.params.is_secure:
        click.echo(f"WARNING: insecure test ring N={plan.params.poly_modulus_degree}", err=True)
    click.echo("setting up: keys (the client), public context (the server)...", err=True)
    policy = ClientPolicy(allow_insecure_for_tests=insecure)
    session = Session(
        LinearView.from_model(model), header, plan, policy=policy, allow_insecure_for_tests=insecure
    )
    if dropped:
        click.echo(
            f"note: the prompt has {len(prompt)} bytes; with {max_new_tokens} new tokens the "
            f"{context}-token context keeps its last {len(fitted)} bytes ({dropped} dropped)",
            err=True,
        )
    if explain:
        srv = session.server
        *_, records = srv.pipeline.symbolic_prefill(len(fitted), plan.activation_bound, plan.mask_bits)
        say(plan.explain() + "\n\n" + describe_prefill(records, len(fitted)))
    with _Bars(session.server.pipeline.stage_names, max_new_tokens, not no_progress) as bars:
        res = session.generate(prompt, config, bars)
    _finish(res, json_out, say)


def _remote(server, expect_model, prompt, config, path, plan_file, insecure, verify, json_out, no_progress):
    """`encrypt-infer --server`: the same generation loop over a websocket (he_aero/client/remote.py)."""
    from he_aero.client.policy import ClientPolicy
    from he_aero.client.remote import RemoteSession

    if plan_file is not None:
        raise click.BadParameter(
            "the server holds the plan; drop --plan with --server", param_hint="'--plan'"
        )
    say = report(json_out)
    view = None
    if verify:  # the plaintext twin is local: pin the server to exactly these weights
        from models.checkpoint import load_checkpoint
        from models.linear_view import LinearView

        with blame("--checkpoint"):
            model, header = load_checkpoint(path)
        local = str(header["weights_sha256"])
        if expect_model is not None and expect_model.lower() != local:
            raise click.BadParameter(
                f"--verify compares with the local checkpoint ({local[:12]}...), not {expect_model[:12]}...",
                param_hint="'--expect-model'",
            )
        expect_model, view = local, LinearView.from_model(model)
    with blame("--expect-model"):
        policy = ClientPolicy(allow_insecure_for_tests=insecure, expect_model_sha256=expect_model)
    click.echo(
        f"connecting to {server}: keys (this client), then the encrypted run on the server...", err=True
    )
    streamed = []

    def on_token(token: int) -> None:
        streamed.append(token)
        if json_out != "-":
            click.echo(
                f"token {len(streamed)}: {bytes([token]).decode('utf-8', errors='replace')!r}", err=True
            )

    with RemoteSession(server, policy, view=view, on_token=on_token) as session:
        stages = list(session.server.stages)
        with _Bars(stages, config.max_new_tokens, not no_progress) as bars:
            res = session.generate(prompt, config, bars)
    _finish(res, json_out, say)


def _finish(res, json_out, say) -> None:
    """Print the result, write --json; exit 1 naming a failed write or the client's flag."""
    say(res.report())
    outputs = Outputs()
    if outputs.write_json("--json", json_out, res.to_dict()) and json_out != "-":
        say(f"wrote {json_out}")
    problems = [*outputs.failures, *([res.flag_message()] if res.flag is not None else [])]
    if problems:
        raise click.ClickException("; ".join(problems))
