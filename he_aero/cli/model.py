"""Plaintext model commands: `he-aero train`, `eval`, `generate`, `info`.

Thin wrappers: parse, call one function of `models`, report. Without a CHECKPOINT argument, `eval`,
`generate` and `info` use the shipped default (`models/checkpoints/default/`).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from he_aero.cli.options import force_option, output_option
from models.decoder import ATTENTIONS, VARIANTS


def _load(checkpoint: str | None):
    from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint

    path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    model, header = load_checkpoint(path)
    return path, model, header


CHECKPOINT_ARG = click.argument("checkpoint", required=False, type=click.Path(file_okay=False))


@click.command()
@click.option("--variant", type=click.Choice(VARIANTS), default="softmax-only", show_default=True)
@click.option("--attention", type=click.Choice(ATTENTIONS), default="sink", show_default=True)
@click.option("--layers", type=click.IntRange(1), default=3, show_default=True)
@click.option("--d-model", type=click.IntRange(1), default=128, show_default=True)
@click.option("--heads", type=click.IntRange(1), default=4, show_default=True)
@click.option("--context", type=click.IntRange(2), default=64, show_default=True, help="context length T")
@click.option("--entropy-reg/--no-entropy-reg", default=True, show_default=True)
@click.option("--entropy-lambda", type=click.FloatRange(0), default=1e-5, show_default=True)
@click.option("--pruned-ffns", type=click.IntRange(0), default=0, show_default=True)
@click.option("--temperature/--no-temperature", default=True, show_default=True, help="learnable, bounded")
@click.option("--range-weight", type=click.FloatRange(0), default=1000.0, show_default=True, help="0: off")
@click.option("--steps", type=click.IntRange(1), default=20000, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=6e-3, show_default=True)
@click.option("--warmup", type=click.IntRange(0), default=300, show_default=True)
@click.option("--eval-every", type=click.IntRange(1), default=500, show_default=True)
@click.option("--test-bytes", type=click.IntRange(1), default=None, help="cap on test bytes (default: all)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True)
@output_option("--out", directory=True, required=True, help="output checkpoint directory")
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
@CHECKPOINT_ARG
@click.option("--text-file", type=click.Path(exists=True, dir_okay=False), help="default: test split")
@click.option("--max-bytes", type=click.IntRange(2), default=None, help="evaluate an evenly spaced subset")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def eval_(checkpoint: str | None, text_file: str | None, max_bytes: int | None, as_json: bool) -> None:
    """Bits per byte (and per-byte perplexity) of CHECKPOINT on the test split or on --text-file."""
    from models.data import load_split
    from models.evaluate import bits_per_byte

    path, model, _ = _load(checkpoint)
    data = Path(text_file).read_bytes() if text_file else load_split("test")
    result = {
        **bits_per_byte(model, data, max_bytes),
        "checkpoint": str(path),
        "data": text_file or "test split",
    }
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(
            f"{result['data']}: {result['bits_per_byte']:.4f} bits/byte, perplexity/byte "
            f"{result['perplexity_per_byte']:.3f} over {result['bytes_evaluated']} bytes ({path})"
        )


@click.command()
@CHECKPOINT_ARG
@click.option("--prompt-file", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--max-new-tokens", type=click.IntRange(0), default=200, show_default=True)
@click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True, help="0: greedy")
@click.option("--top-k", type=click.IntRange(1), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
def generate(checkpoint, prompt_file, max_new_tokens, temperature, top_k, seed) -> None:
    """Plaintext continuation of the prompt (greedy by default); prints prompt + continuation."""
    from models.data import to_text
    from models.evaluate import generate as run_generate

    _, model, _ = _load(checkpoint)
    prompt = Path(prompt_file).read_bytes()
    out = run_generate(model, prompt, max_new_tokens, temperature, top_k, seed)
    click.echo(to_text(prompt + out))


@click.command()
@CHECKPOINT_ARG
def info(checkpoint: str | None) -> None:
    """Path, config and metrics of CHECKPOINT (default: the shipped model)."""
    path, model, header = _load(checkpoint)
    click.echo(f"checkpoint: {path.resolve()}")
    click.echo(f"parameters: {model.num_params()}")
    click.echo("config: " + json.dumps(header["config"], indent=2))
    metrics_path = path / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        summary = {k: v for k, v in metrics.items() if k != "ranges"}
        summary["ranges_summary"] = metrics.get("ranges", {}).get("summary")
        click.echo("metrics: " + json.dumps(summary, indent=2))
