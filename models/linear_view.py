"""Linear-algebra view of a trained softmax-only decoder: the plain float64 arrays the encrypted runtime uses.

Contract: docs/design.md section 1. Row-vector convention `x @ W`. Per layer the temperature and 1/sqrt(d_k)
are folded into W_Q (and b_Q), and the scaled fused FFN into one matrix, `w_mix = beta I + W_ffn / alpha`,
`b_mix = b_ffn / alpha` (identity and zero in a pruned layer). W_O stays separate: folding it into w_mix is
not exact, because the residual X also passes through w_mix.

`view_forward` is the numpy reference forward pass built only from the view; it matches `Decoder` to 1e-5.
It is composed of `embed` and `layer_forward`, which returns every intermediate of one layer by name: the one
numpy forward (he_aero's calibration measures its intermediates; the encrypted runtime is tested against it).
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


def _exp_weights(z: np.ndarray, sink: bool) -> tuple[np.ndarray, np.ndarray]:
    """Causal exp weights e (H, T, T) and their denominators (H, T) from z (H, T, T); a = e / den.

    Sink: e_ij = exp(z_ij), den_i = 1 + sum_{j<=i} e_ij, computed directly as the encrypted runtime will
    (training keeps z in a narrow window, so no max-shift is needed; the 1 is the sink's term). Plain
    softmax: e_ij = exp(z_ij - max_j z_ij), den_i = sum_j e_ij (max-shifted, as torch does). Entries
    above the diagonal (future tokens) are exactly 0.
    """
    T = z.shape[-1]
    causal = np.tril(np.ones((T, T), dtype=bool))
    if sink:
        e = np.where(causal, np.exp(np.where(causal, z, 0.0)), 0.0)
        return e, 1.0 + e.sum(-1)
    zm = np.where(causal, z, -np.inf)
    e = np.exp(zm - zm.max(-1, keepdims=True))
    return e, e.sum(-1)


def embed(view: LinearView, tokens) -> np.ndarray:
    """Token + position embedding: tokens (T,) ints -> x (T, d) float64; the encrypted embedding's twin.

    Raises ModelError unless 1 <= T <= the context length (pos_emb has one row per position).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    T = tokens.shape[0] if tokens.ndim == 1 else -1
    if not 1 <= T <= view.pos_emb.shape[0]:
        raise ModelError(
            f"embed: need 1 to {view.pos_emb.shape[0]} tokens (a 1-D sequence), got shape {tokens.shape}"
        )
    return view.tok_emb[tokens] + view.pos_emb[:T]


LAYER_INTERMEDIATES = ("q", "k", "v", "z", "den", "num", "heads", "x_sa", "x_out")


def layer_forward(lay: LayerView, x: np.ndarray) -> dict[str, np.ndarray]:
    """One layer on x (T, d), returning every intermediate the encrypted layer holds, by name.

    Keys (LAYER_INTERMEDIATES), for H heads of d_k = d / H features:

    - q, k, v (T, d): projections (q carries the folded temperature and 1/sqrt(d_k));
    - z (H, T, T): q_h . k_h, minus c_h with a sink (what exp sees; above the diagonal unused);
    - den (H, T): the attention denominators, 1 + sum_j exp(z_ij) with a sink (what 1/x sees);
    - num (H, T, d_k): sum_j exp(z_ij) v_j, the attention numerators (max-shifted exps without a sink);
    - heads (T, d): the concatenated head outputs, num / den;
    - x_sa (T, d): x + heads @ W_O + b_O; x_out (T, d): x_sa @ w_mix + b_mix, the next layer's input.

    `view_forward` is `embed`, these layers composed on "x_out", then the LM head.
    """
    T, d = x.shape
    H = lay.n_head
    dk = d // H
    sink = lay.sink is not None
    q = x @ lay.w_q + lay.b_q
    k = x @ lay.w_k + lay.b_k
    v = x @ lay.w_v + lay.b_v
    qh, kh, vh = (m.reshape(T, H, dk).transpose(1, 0, 2) for m in (q, k, v))  # (H, T, dk)
    z = qh @ kh.transpose(0, 2, 1)  # (H, T, T)
    if sink:
        z = z - lay.sink[:, None, None]
    e, den = _exp_weights(z, sink)  # (H, T, T), (H, T)
    heads = ((e / den[..., None]) @ vh).transpose(1, 0, 2).reshape(T, d)  # (H, T, dk) -> (T, d)
    x_sa = x + heads @ lay.w_o + lay.b_o
    return {
        "q": q,
        "k": k,
        "v": v,
        "z": z,
        "den": den,
        "num": e @ vh,  # (H, T, dk)
        "heads": heads,
        "x_sa": x_sa,
        "x_out": x_sa @ lay.w_mix + lay.b_mix,
    }


def view_forward(view: LinearView, tokens) -> np.ndarray:
    """Reference forward pass from the view alone: tokens (T,) ints -> logits (T, V) float64.

    Raises ModelError unless 1 <= T <= the context length.
    """
    x = embed(view, tokens)  # (T, d)
    for lay in view.layers:
        x = layer_forward(lay, x)["x_out"]
    return x @ view.lm_head + view.lm_bias  # (T, V)
