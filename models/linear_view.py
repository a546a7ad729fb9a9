"""Linear-algebra view of a trained softmax-only decoder: the plain float64 arrays the encrypted runtime uses.

Contract: docs/design.md section 1. Row-vector convention `x @ W`. Per layer the temperature and 1/sqrt(d_k)
are folded into W_Q (and b_Q), and the scaled fused FFN into one matrix, `w_mix = beta I + W_ffn / alpha`,
`b_mix = b_ffn / alpha` (identity and zero in a pruned layer). W_O stays separate: folding it into w_mix is
not exact, because the residual X also passes through w_mix.

`view_forward` is the numpy reference forward pass built only from the view; it matches `Decoder` to 1e-5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.decoder import Decoder
from models.errors import ModelError


@dataclass(frozen=True)
class LayerView:
    """One softmax-only block as plain arrays (shapes for d = d_model, H heads)."""

    w_q: np.ndarray  # (d, d), 1/(t_h sqrt(d_k)) folded into head h's columns
    b_q: np.ndarray  # (d,)
    w_k: np.ndarray  # (d, d)
    b_k: np.ndarray  # (d,)
    w_v: np.ndarray  # (d, d)
    b_v: np.ndarray  # (d,)
    w_o: np.ndarray  # (d, d)
    b_o: np.ndarray  # (d,)
    w_mix: np.ndarray  # (d, d)
    b_mix: np.ndarray  # (d,)
    sink: np.ndarray | None  # (H,) c_h, or None for plain softmax
    n_head: int


@dataclass(frozen=True)
class LinearView:
    """The whole model: embeddings, layers, tied LM head."""

    tok_emb: np.ndarray  # (V, d)
    pos_emb: np.ndarray  # (T_max, d)
    layers: tuple[LayerView, ...]
    lm_head: np.ndarray  # (d, V) = tok_emb.T (tied)
    lm_bias: np.ndarray  # (V,)

    @classmethod
    def from_model(cls, model: Decoder) -> LinearView:
        """Export a softmax-only decoder (no LayerNorm); other variants raise ModelError."""
        cfg = model.cfg
        if cfg.variant != "softmax-only":
            raise ModelError(f"linear view: only the softmax-only variant has one, not {cfg.variant!r}")

        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().to(torch.float64).numpy().copy()

        d, dk = cfg.d_model, cfg.d_head
        layers = []
        with torch.no_grad():
            for block in model.blocks:
                att = block.attn
                # torch Linear computes x W^T + b: the row-vector matrix is W^T.
                col_scale = np.repeat(arr(att.query_scale()), dk)  # (d,): head h's scale on its dk columns
                if block.pruned:
                    w_mix, b_mix = np.eye(d), np.zeros(d)
                else:
                    alpha, beta = float(block.alpha), float(block.beta)
                    w_mix = beta * np.eye(d) + arr(block.ffn.weight).T / alpha
                    b_mix = arr(block.ffn.bias) / alpha
                layers.append(
                    LayerView(
                        w_q=arr(att.q.weight).T * col_scale,
                        b_q=arr(att.q.bias) * col_scale,
                        w_k=arr(att.k.weight).T,
                        b_k=arr(att.k.bias),
                        w_v=arr(att.v.weight).T,
                        b_v=arr(att.v.bias),
                        w_o=arr(att.o.weight).T,
                        b_o=arr(att.o.bias),
                        w_mix=w_mix,
                        b_mix=b_mix,
                        sink=None if att.sink is None else arr(att.sink),
                        n_head=cfg.n_head,
                    )
                )
        tok = arr(model.tok_emb.weight)
        return cls(tok, arr(model.pos_emb.weight), tuple(layers), tok.T.copy(), arr(model.lm_bias))

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat name -> array mapping (e.g. for `np.savez`); names like `layers.0.w_q`."""
        out = {
            "tok_emb": self.tok_emb,
            "pos_emb": self.pos_emb,
            "lm_head": self.lm_head,
            "lm_bias": self.lm_bias,
        }
        for i, lay in enumerate(self.layers):
            for name in ("w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "w_o", "b_o", "w_mix", "b_mix", "sink"):
                value = getattr(lay, name)
                if value is not None:
                    out[f"layers.{i}.{name}"] = value
        return out


def attention_weights(z: np.ndarray, sink: bool) -> np.ndarray:
    """Causal attention weights from z (H, T, T) (c_h already subtracted when `sink`).

    Sink: a_ij = exp(z_ij) / (1 + sum_{j'<=i} exp(z_ij')), computed directly as the encrypted runtime will
    (training keeps z in a narrow window, so no max-shift is needed). Plain softmax: max-shifted softmax.
    """
    T = z.shape[-1]
    causal = np.tril(np.ones((T, T), dtype=bool))
    if sink:
        e = np.where(causal, np.exp(np.where(causal, z, 0.0)), 0.0)
        return e / (1.0 + e.sum(-1, keepdims=True))
    zm = np.where(causal, z, -np.inf)
    e = np.exp(zm - zm.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def view_forward(view: LinearView, tokens) -> np.ndarray:
    """Reference forward pass from the view alone: tokens (T,) ints -> logits (T, V) float64."""
    tokens = np.asarray(tokens, dtype=np.int64)
    T = tokens.shape[0]
    if T < 1 or T > view.pos_emb.shape[0]:
        raise ModelError(f"view_forward: need 1 to {view.pos_emb.shape[0]} tokens, got {T}")
    x = view.tok_emb[tokens] + view.pos_emb[:T]  # (T, d)
    for lay in view.layers:
        H = lay.n_head
        dk = x.shape[1] // H
        q = (x @ lay.w_q + lay.b_q).reshape(T, H, dk).transpose(1, 0, 2)  # (H, T, dk)
        k = (x @ lay.w_k + lay.b_k).reshape(T, H, dk).transpose(1, 0, 2)
        v = (x @ lay.w_v + lay.b_v).reshape(T, H, dk).transpose(1, 0, 2)
        z = q @ k.transpose(0, 2, 1)  # (H, T, T)
        if lay.sink is not None:
            z = z - lay.sink[:, None, None]
        a = attention_weights(z, lay.sink is not None)
        heads = (a @ v).transpose(1, 0, 2).reshape(T, H * dk)  # (H, T, dk) -> (T, d)
        x_sa = x + heads @ lay.w_o + lay.b_o
        x = x_sa @ lay.w_mix + lay.b_mix
    return x @ view.lm_head + view.lm_bias
