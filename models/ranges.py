"""HE-friendliness: the value ranges every nonlinearity of the decoder sees on real text.

`measure_ranges` runs the plaintext model on evenly spaced context windows and returns a JSON-able dict that
calibration (he_aero) reuses to choose polynomial domains. Per layer and head:

- ``z``: min / max of z_ij = q_i . k_j - c_h over all causal pairs (j <= i); c_h = 0 for plain softmax;
- ``row_max``: min / max over rows of max_j z_ij; ``row_spread``: max over rows of (max_j z_ij - min_j z_ij);
- ``denominator``: min / max of the softmax denominator: with the sink 1 + sum_j exp(z_ij) (what the encrypted
  runtime inverts); for plain softmax sum_j exp(z_ij - C_h) with C_h the head's overall max (one constant per
  head), and ``ratio`` = max / min;
- ``entropy``:    mean attention entropy (nats) of the head, against ``entropy_max`` = log T.

Per layer, ``residual`` is the min / max of the residual stream after the layer (``embedding``: before
layer 0); ``logits`` is the min / max of the final logits.
"""

from __future__ import annotations

import math

import torch

from models.data import eval_windows
from models.decoder import Decoder


def _mm(t: torch.Tensor) -> dict:
    return {"min": float(t.min()), "max": float(t.max())}


@torch.no_grad()
def measure_ranges(
    model: Decoder,
    data: bytes | None,
    max_bytes: int = 65536,
    batch_size: int = 64,
    windows: torch.Tensor | None = None,
) -> dict:
    """Per-layer, per-head ranges of the attention inputs and denominators, residual stream and logits.

    Measured on `eval_windows(data, T, max_bytes)`, or on `windows` ((n, T) int64 tokens) when given."""
    was_training = model.training
    model.eval()
    x = windows if windows is not None else eval_windows(data, model.cfg.block_size, max_bytes)[0]
    cfg = model.cfg
    acc: dict = {}

    def fold(key: str, value: torch.Tensor, how: str) -> None:
        acc[key] = value if key not in acc else getattr(torch, how)(acc[key], value)

    ent_sum = torch.zeros(cfg.n_layer, cfg.n_head, dtype=torch.float64)
    rows = 0
    for i in range(0, len(x), batch_size):
        logits, auxes, streams = model(x[i : i + batch_size], record=True)
        for layer, aux in enumerate(auxes):
            z, mask = aux["z"], aux["mask"]  # (B, H, T, T), (1, 1, T, T)
            hi = z.masked_fill(~mask, float("-inf"))
            lo = z.masked_fill(~mask, float("inf"))
            row_max, row_min = hi.amax(-1), lo.amin(-1)  # (B, H, T)
            fold(f"zmax{layer}", row_max.amax(dim=(0, 2)), "maximum")
            fold(f"zmin{layer}", row_min.amin(dim=(0, 2)), "minimum")
            fold(f"rmaxlo{layer}", row_max.amin(dim=(0, 2)), "minimum")
            fold(f"spread{layer}", (row_max - row_min).amax(dim=(0, 2)), "maximum")
            if aux["log_denom"] is not None:
                denom = aux["log_denom"].exp()  # (B, H, T)
                fold(f"dmin{layer}", denom.amin(dim=(0, 2)), "minimum")
                fold(f"dmax{layer}", denom.amax(dim=(0, 2)), "maximum")
            else:
                # log sum_j exp(z_ij) per row; the head-wide constant C_h is subtracted at the end.
                lse = torch.logsumexp(hi, dim=-1)
                fold(f"lsemin{layer}", lse.amin(dim=(0, 2)), "minimum")
                fold(f"lsemax{layer}", lse.amax(dim=(0, 2)), "maximum")
            p = aux["probs"]
            ent_sum[layer] += (-(p * torch.log(p + 1e-9)).sum(-1)).sum(dim=(0, 2)).double()
        rows += x[i : i + batch_size].shape[0] * x.shape[1]
        for layer, s in enumerate(streams):
            fold(f"resmin{layer}", s.min(), "minimum")
            fold(f"resmax{layer}", s.max(), "maximum")
        fold("logmin", logits.min(), "minimum")
        fold("logmax", logits.max(), "maximum")
    model.train(was_training)

    layers = []
    for layer in range(cfg.n_layer):
        heads = []
        for h in range(cfg.n_head):
            if f"dmin{layer}" in acc:
                dmin, dmax = float(acc[f"dmin{layer}"][h]), float(acc[f"dmax{layer}"][h])
            else:
                c = float(acc[f"zmax{layer}"][h])
                dmin = math.exp(float(acc[f"lsemin{layer}"][h]) - c)
                dmax = math.exp(float(acc[f"lsemax{layer}"][h]) - c)
            heads.append(
                {
                    "z": {"min": float(acc[f"zmin{layer}"][h]), "max": float(acc[f"zmax{layer}"][h])},
                    "row_max": {"min": float(acc[f"rmaxlo{layer}"][h]), "max": float(acc[f"zmax{layer}"][h])},
                    "row_spread": float(acc[f"spread{layer}"][h]),
                    "denominator": {"min": dmin, "max": dmax, "ratio": dmax / dmin},
                    "entropy": float(ent_sum[layer, h] / rows),
                }
            )
        layers.append(
            {
                "heads": heads,
                "residual": {
                    "min": float(acc[f"resmin{layer + 1}"]),
                    "max": float(acc[f"resmax{layer + 1}"]),
                },
            }
        )
    z_all = [hd["z"] for lay in layers for hd in lay["heads"]]
    d_all = [hd["denominator"] for lay in layers for hd in lay["heads"]]
    return {
        "attention": cfg.attention,
        "bytes_measured": int(x.numel()),
        "entropy_max": math.log(cfg.block_size),
        "embedding": {"min": float(acc["resmin0"]), "max": float(acc["resmax0"])},
        "layers": layers,
        "logits": {"min": float(acc["logmin"]), "max": float(acc["logmax"])},
        "summary": {
            "z": {"min": min(z["min"] for z in z_all), "max": max(z["max"] for z in z_all)},
            "denominator": {
                "min": min(d["min"] for d in d_all),
                "max": max(d["max"] for d in d_all),
                "worst_head_ratio": max(d["ratio"] for d in d_all),
            },
            "residual": {
                "min": min(lay["residual"]["min"] for lay in layers),
                "max": max(lay["residual"]["max"] for lay in layers),
            },
        },
    }


def ranges_markdown(ranges: dict) -> str:
    """A per-layer, per-head markdown table of a `measure_ranges` result (for docs and reports)."""
    lines = [
        "| layer | head | z min..max | row max min..max | max row spread | denominator min..max (ratio) "
        "| entropy / log T |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, layer in enumerate(ranges["layers"]):
        for j, h in enumerate(layer["heads"]):
            z, rm, d = h["z"], h["row_max"], h["denominator"]
            lines.append(
                f"| {i} | {j} | {z['min']:.1f}..{z['max']:.1f} | {rm['min']:.1f}..{rm['max']:.1f} "
                f"| {h['row_spread']:.1f} | {d['min']:.3g}..{d['max']:.3g} ({d['ratio']:.3g}) "
                f"| {h['entropy'] / ranges['entropy_max']:.2f} |"
            )
    lines.append("")
    lines.append("| stream | min | max |")
    lines.append("|---|---|---|")
    lines.append(f"| embedding | {ranges['embedding']['min']:.2f} | {ranges['embedding']['max']:.2f} |")
    for i, layer in enumerate(ranges["layers"]):
        lines.append(
            f"| residual after layer {i} | {layer['residual']['min']:.2f} | {layer['residual']['max']:.2f} |"
        )
    lines.append(f"| final logits | {ranges['logits']['min']:.2f} | {ranges['logits']['max']:.2f} |")
    return "\n".join(lines) + "\n"
