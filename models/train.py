"""Training: seeded AdamW with warmup + linear decay, gradient clipping, validation bits/byte logged as JSONL.

Run through `he-aero train` or `make train-default`. Output directory: a checkpoint (models/checkpoint.py)
plus `train_log.jsonl` (one JSON object per evaluation) and `metrics.json` (final test bits/byte, ranges).
The checkpoint is rewritten at every evaluation, so an interrupted run still leaves a usable model.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from models.checkpoint import save_checkpoint
from models.data import Batches, load_split
from models.decoder import Decoder, DecoderConfig
from models.errors import ModelError
from models.evaluate import bits_per_byte


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the model itself is described by DecoderConfig)."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 6e-3  # the biggest lever for softmax-only in the probe (2e-3 -> 6e-3: 2.57 -> 2.22 bits/byte)
    min_lr_frac: float = 0.1  # linear decay to this fraction of lr
    warmup: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 500
    eval_bytes: int = 131072  # validation bytes per evaluation during training (evenly spaced windows)
    test_bytes: int | None = None  # test bytes for the final metrics (None: the whole test split)
    final_val_bytes: int | None = None  # validation bytes for the final metrics (None: the whole split)
    threads: int = 1  # one thread was much faster than two on a shared machine in the probe

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_bytes", "threads"):
            if getattr(self, name) < 1:
                raise ModelError(f"train.{name}: must be >= 1")
        if self.lr <= 0 or not 0 <= self.min_lr_frac <= 1 or self.warmup < 0 or self.grad_clip <= 0:
            raise ModelError("train: need lr > 0, 0 <= min_lr_frac <= 1, warmup >= 0, grad_clip > 0")

    def lr_at(self, step: int) -> float:
        """Linear warmup over `warmup` steps, then linear decay to min_lr_frac * lr at the last step."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        frac = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (1.0 - (1.0 - self.min_lr_frac) * min(1.0, frac))


def train(
    cfg: DecoderConfig,
    tcfg: TrainConfig,
    out_dir: Path | str,
    train_data: bytes | None = None,
    val_data: bytes | None = None,
    test_data: bytes | None = None,
    progress: bool = True,
) -> dict:
    """Train a fresh model and write the checkpoint, log and metrics into `out_dir`; returns the metrics."""
    from models.ranges import measure_ranges  # local: ranges imports the decoder only

    torch.manual_seed(tcfg.seed)
    torch.set_num_threads(tcfg.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_data = load_split("train") if train_data is None else train_data
    val_data = load_split("val") if val_data is None else val_data
    test_data = load_split("test") if test_data is None else test_data

    model = Decoder(cfg)
    opt = torch.optim.AdamW(model.param_groups(tcfg.weight_decay), lr=tcfg.lr, betas=(0.9, 0.95))
    batches = Batches.from_bytes(train_data, cfg.block_size, tcfg.batch_size)
    gen = torch.Generator().manual_seed(tcfg.seed)
    meta = {"decoder": cfg.to_dict(), "train": asdict(tcfg)}
    log_path = out / "train_log.jsonl"
    log_path.write_text("")
    started = time.time()
    parts: dict = {}
    bar = tqdm(range(tcfg.steps), disable=not progress, desc=f"train {cfg.variant}", mininterval=5)
    for step in bar:
        lr = tcfg.lr_at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = batches.sample(gen)
        loss, parts = model.loss(x, y)
        if not math.isfinite(loss.item()):
            raise ModelError(f"training diverged at step {step} (loss {loss.item()}); lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        last = step == tcfg.steps - 1
        if (step + 1) % tcfg.eval_every == 0 or last:
            val = bits_per_byte(model, val_data, tcfg.eval_bytes)
            row = {
                "step": step + 1,
                "lr": lr,
                "train_ce_bits": parts["ce"] / math.log(2),
                **{k: v for k, v in parts.items() if k != "ce"},
                "val_bits_per_byte": val["bits_per_byte"],
                "elapsed_s": round(time.time() - started, 1),
            }
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            bar.set_postfix(val_bpb=f"{val['bits_per_byte']:.3f}")
            save_checkpoint(model, out, {**meta, "steps_done": step + 1})
    test = bits_per_byte(model, test_data, tcfg.test_bytes)
    val = bits_per_byte(model, val_data, tcfg.final_val_bytes)
    metrics = {
        "variant": cfg.variant,
        "attention": cfg.attention,
        "entropy_reg": cfg.entropy_reg,
        "pruned_ffns": cfg.pruned_ffns,
        "layers": cfg.n_layer,
        "d_model": cfg.d_model,
        "n_head": cfg.n_head,
        "block_size": cfg.block_size,
        "steps": tcfg.steps,
        "tokens_seen": tcfg.steps * tcfg.batch_size * cfg.block_size,
        "parameters": model.num_params(),
        "val_bits_per_byte": val["bits_per_byte"],
        "test_bits_per_byte": test["bits_per_byte"],
        "test_perplexity_per_byte": test["perplexity_per_byte"],
        "test_bytes_evaluated": test["bytes_evaluated"],
        "train_seconds": round(time.time() - started, 1),
        "ranges": measure_ranges(model, val_data),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    save_checkpoint(
        model, out, {**meta, "steps_done": tcfg.steps, "test_bits_per_byte": test["bits_per_byte"]}
    )
    return metrics
