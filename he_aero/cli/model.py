"""Plaintext model commands: `he-aero train`, `eval`, `generate`, `info`.

Thin wrappers: parse, call one function of `models`, report. Without `--checkpoint`, `eval`, `generate` and
`info` use the shipped default (`models/checkpoints/default/`). torch loads inside the commands only.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from he_aero.cli.options import (
    Outputs,
    blame,
    checkpoint_option,
    force_option,
    json_option,
    load_model,
    output_option,
    progress_option,
    prompt_argument,
    read_prompt,
    report,
    sampling_options,
)

# The choices of `models.decoder` (VARIANTS, ATTENTIONS), spelled out so that `--help` needs no torch;
# tests/he_aero/cli/test_model.py checks they stay equal.
VARIANTS = ("baseline", "relu", "lnfree-relu", "softmax-only")
ATTENTIONS = ("softmax", "sink")


@click.command()
@click.option(
    "--variant", type=click.Choice(VARIANTS), default="softmax-only", show_default=True, help="architecture"
)
@click.option(
    "--attention",
    type=click.Choice(ATTENTIONS),
    default="sink",
    show_default=True,
    help="softmax, or sink (the bounded softmax the encrypted runtime runs)",
)
@click.option("--layers", type=click.IntRange(1), default=3, show_default=True, help="number of blocks")
@click.option("--d-model", type=click.IntRange(1), default=128, show_default=True, help="width (features)")
@click.option("--heads", type=click.IntRange(1), default=4, show_default=True, help="attention heads")
@click.option(
    "--context", type=click.IntRange(2), default=64, show_default=True, help="context length T, in bytes"
)
@click.option(
    "--entropy-reg/--no-entropy-reg", default=True, show_default=True, help="attention-entropy regulariser"
)
@click.option(
    "--entropy-lambda",
    type=click.FloatRange(0),
    default=1e-5,
    show_default=True,
    help="weight of the entropy regulariser in the loss",
)
@click.option(
    "--entropy-thresholds",
    type=click.Choice(["learned", "fixed"]),
    default="learned",
    show_default=True,
    help="the entropy regulariser's per-head targets: learned (as in AERO; they can drift to each head's "
    "entropy and switch the penalty off) or fixed at 0.5 log T (the heads must move instead)",
)
@click.option(
    "--pruned-ffns", type=click.IntRange(0), default=0, show_default=True, help="FFNs removed (from the end)"
)
@click.option(
    "--temperature/--no-temperature",
    default=True,
    show_default=True,
    help="learnable, bounded attention temperature",
)
@click.option(
    "--range-weight",
    type=click.FloatRange(0),
    default=1000.0,
    show_default=True,
    help="weight of the activation-range penalty in the loss (0: off)",
)
@click.option("--steps", type=click.IntRange(1), default=20000, show_default=True, help="optimiser steps")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="windows per step")
@click.option(
    "--lr",
    type=click.FloatRange(0, min_open=True),
    default=6e-3,
    show_default=True,
    help="peak learning rate",
)
@click.option(
    "--warmup", type=click.IntRange(0), default=300, show_default=True, help="learning-rate warm-up, in steps"
)
@click.option(
    "--eval-every",
    type=click.IntRange(1),
    default=500,
    show_default=True,
    help="validation every this many steps",
)
@click.option(
    "--test-bytes",
    type=click.IntRange(1),
    default=None,
    show_default="all",
    help="cap on the bytes of the test split evaluated at the end",
)
@click.option("--seed", type=int, default=0, show_default=True, help="seed of initialisation and batches")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="torch CPU threads")
@output_option(
    "--out",
    directory=True,
    required=True,
    help="checkpoint folder to write (created with its parents): weights, config, log, metrics",
)
@force_option
def train(**kw) -> None:
    """Train a decoder from scratch on the corpus's train split; write checkpoint, log and metrics to OUT."""
    from models.decoder import DecoderConfig
    from models.train import TrainConfig
    from models.train import train as run_training

    cfg = DecoderConfig(
        variant=kw["variant"],
        attention=kw["attention"],
        n_layer=kw["layers"],
        d_model=kw["d_model"],
        n_head=kw["heads"],
        block_size=kw["context"],
        entropy_reg=kw["entropy_reg"],
        entropy_lambda=kw["entropy_lambda"],
        entropy_theta_learned=kw["entropy_thresholds"] == "learned",
        pruned_ffns=kw["pruned_ffns"],
        learn_temperature=kw["temperature"],
        range_weight=kw["range_weight"],
    )
    tcfg = TrainConfig(
        steps=kw["steps"],
        batch_size=kw["batch_size"],
        lr=kw["lr"],
        warmup=kw["warmup"],
        eval_every=kw["eval_every"],
        test_bytes=kw["test_bytes"],
        seed=kw["seed"],
        threads=kw["threads"],
    )
    metrics = run_training(cfg, tcfg, kw["out"])
    click.echo(
        f"{kw['out']}: test {metrics['test_bits_per_byte']:.4f} bits/byte "
        f"(val {metrics['val_bits_per_byte']:.4f}), {metrics['parameters']} parameters, "
        f"{metrics['train_seconds']:.0f} s"
    )


@click.command(name="eval")
@checkpoint_option(positional_alias=True)
@click.option(
    "--text-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    show_default="the test split",
    help="evaluate on this file's bytes",
)
@click.option(
    "--max-bytes",
    type=click.IntRange(2),
    default=None,
    show_default="all",
    help="evaluate an evenly spaced subset of windows covering about this many bytes",
)
@json_option
@force_option
@progress_option
def eval_(checkpoint, text_file, max_bytes, json_out, force, no_progress) -> None:
    """Bits per byte (and per-byte perplexity) of the checkpoint on the test split or on --text-file."""
    from tqdm import tqdm

    from models.data import load_split
    from models.evaluate import bits_per_byte

    path, model, _ = load_model(checkpoint)
    data = Path(text_file).read_bytes() if text_file else load_split("test")
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="eval", unit="window", file=sys.stderr)
        bar.update(done - bar.n)

    with blame("--text-file") if text_file else contextlib.nullcontext():
        try:
            stats = bits_per_byte(model, data, max_bytes, progress=None if no_progress else progress)
        finally:
            if bar is not None:
                bar.close()
    result = {**stats, "checkpoint": str(path), "data": text_file or "test split"}
    report(json_out)(
        f"{result['data']}: {result['bits_per_byte']:.4f} bits/byte, perplexity/byte "
        f"{result['perplexity_per_byte']:.3f} over {result['bytes_evaluated']} bytes ({path})"
    )
    outputs = Outputs()
    if outputs.write_json("--json", json_out, result) and json_out != "-":
        report(json_out)(f"wrote {json_out}")
    outputs.finish()


@click.command()
@prompt_argument(required=False)
@click.option(
    "--prompt-file",
    type=click.Path(dir_okay=False),
    callback=read_prompt,
    hidden=True,
    help="the older spelling of PROMPT",
)
@checkpoint_option()
@click.option(
    "--max-new-tokens",
    type=click.IntRange(0),
    default=200,
    show_default=True,
    help="bytes to generate (the context slides: any number works)",
)
@sampling_options
def generate(prompt, prompt_file, checkpoint, max_new_tokens, temperature, top_k, seed) -> None:
    """Plaintext continuation of PROMPT (a file, or - for standard input), greedy by default; prints prompt +
    continuation."""
    from models.data import to_text
    from models.evaluate import generate as run_generate

    if prompt is not None and prompt_file is not None:
        raise click.UsageError("give the prompt once: PROMPT (--prompt-file is its older spelling)")
    prompt = prompt if prompt is not None else prompt_file
    if prompt is None:
        raise click.UsageError("missing argument 'PROMPT' (a file, or - for standard input)")
    _, model, _ = load_model(checkpoint)
    out = run_generate(model, prompt, max_new_tokens, temperature, top_k or None, seed)
    click.echo(to_text(prompt + out))


@click.command()
@checkpoint_option(positional_alias=True)
def info(checkpoint: str | None) -> None:
    """Path, config and metrics of the checkpoint."""
    path, model, header = load_model(checkpoint)
    click.echo(f"checkpoint: {path.resolve()}")
    click.echo(f"parameters: {model.num_params()}")
    click.echo("config: " + json.dumps(header["config"], indent=2))
    metrics_path = path / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        summary = {k: v for k, v in metrics.items() if k != "ranges"}
        summary["ranges_summary"] = metrics.get("ranges", {}).get("summary")
        click.echo("metrics: " + json.dumps(summary, indent=2))
