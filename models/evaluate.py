"""Evaluation (bits per byte) and plaintext generation (greedy or sampled)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from models.data import eval_windows
from models.decoder import Decoder
from models.errors import ModelError


@torch.no_grad()
def bits_per_byte(
    model: Decoder,
    data: bytes,
    max_bytes: int | None = None,
    batch_size: int = 128,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Mean cross-entropy in bits per predicted byte over non-overlapping context windows of `data`.

    Each window restarts the context, so a byte is predicted from 0 to T-1 preceding bytes (the model's own
    regime). Returns bits_per_byte, perplexity per byte (2 ** bits), bytes_evaluated. `progress(done, total)`
    (windows) is called before the first batch and after each one.
    """
    was_training = model.training
    model.eval()
    x, y = eval_windows(data, model.cfg.block_size, max_bytes)
    total_nats, count = 0.0, 0
    if progress is not None:
        progress(0, len(x))
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        logits = model.logits(xb)
        nll = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), yb.reshape(-1), ignore_index=-1, reduction="sum"
        )
        total_nats += float(nll)
        count += int((yb >= 0).sum())
        if progress is not None:
            progress(min(i + batch_size, len(x)), len(x))
    model.train(was_training)
    bpb = total_nats / count / math.log(2)
    return {"bits_per_byte": bpb, "perplexity_per_byte": 2.0**bpb, "bytes_evaluated": count}


@torch.no_grad()
def generate(
    model: Decoder,
    prompt: bytes,
    max_new_tokens: int = 200,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
) -> bytes:
    """Continue `prompt` byte by byte (temperature 0: greedy); the context is the last T bytes."""
    if not prompt:
        raise ModelError("generate: the prompt is empty")
    if max_new_tokens < 0 or temperature < 0:
        raise ModelError("generate: max_new_tokens and temperature must be >= 0")
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    tokens = list(prompt)
    T = model.cfg.block_size
    for _ in range(max_new_tokens):
        ctx = torch.tensor([tokens[-T:]], dtype=torch.long)
        logits = model.logits(ctx)[0, -1]  # (V,)
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = int(torch.multinomial(F.softmax(logits, -1), 1, generator=gen))
        tokens.append(nxt)
    return bytes(tokens[len(prompt) :])
