"""Linear-algebra view of a trained decoder: the plain float64 arrays the encrypted runtime uses.

Contract: docs/design.md section 1. Row-vector convention `x @ W`. Per layer the temperature and 1/sqrt(d_k)
are folded into W_Q (and b_Q), and the scaled fused FFN into one matrix, `w_mix = beta I + W_ffn / alpha`,
`b_mix = b_ffn / alpha` (identity and zero in a pruned layer). W_O stays separate: folding it into w_mix is
not exact, because the residual X also passes through w_mix.

The baseline variants (models/decoder.py: LayerNorm, an unfused d -> 4d -> d FFN with GELU or ReLU) have a
view too, for the encrypted cost comparison (issue 12). A LayerNorm is split into a parameter-free part
and a fold:

    LN(x) = sqrt(d) gamma * normalise(x) + beta,   normalise(x) = (x - mean(x)) / sqrt(d (var(x) + eps))

(rows of normalise(x) have unit length), and sqrt(d) gamma, beta are folded into the linear map that reads it
(W_Q, W_K, W_V; W_1; the LM head), so the encrypted runtime computes only `normalise`: a mean, a sum of
squares and one 1/sqrt on u = var + eps.

`view_forward` is the numpy reference forward pass built only from the view; it matches `Decoder` to 1e-5.
It is composed of `embed` and `layer_forward`, which returns every intermediate of one layer by name: the one
numpy forward (he_aero's calibration measures its intermediates; the encrypted runtime is tested against it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import erf

from models.decoder import Decoder
from models.errors import ModelError

ACTIVATION_FUNCTIONS = ("gelu", "relu")


@dataclass(frozen=True)
class LayerView:
    """One decoder block as plain arrays (shapes for d = d_model, H heads).

    Softmax-only blocks have `w_mix`/`b_mix` (the fused FFN) and no LayerNorm. Baseline blocks (`act` set)
    have `w_mix = b_mix = None` and X_out = X_SA + act(N @ w_1 + b_1) @ w_2 + b_2, N = normalise(X_SA) if
    `norm_ffn` else X_SA; with `norm_attn`, Q, K and V read normalise(X) (module docstring: the LayerNorm
    gains are folded into w_q, w_k, w_v and w_1)."""

    w_q: np.ndarray  # (d, d), 1/(t_h sqrt(d_k)) folded into head h's columns
    b_q: np.ndarray  # (d,)
    w_k: np.ndarray  # (d, d)
    b_k: np.ndarray  # (d,)
    w_v: np.ndarray  # (d, d)
    b_v: np.ndarray  # (d,)
    w_o: np.ndarray  # (d, d)
    b_o: np.ndarray  # (d,)
    w_mix: np.ndarray | None  # (d, d); None in an unfused (baseline) block
    b_mix: np.ndarray | None  # (d,)
    sink: np.ndarray | None  # (H,) c_h, or None for plain softmax
    n_head: int
    norm_attn: bool = False  # Q, K, V read normalise(X)
    norm_ffn: bool = False  # the FFN reads normalise(X_SA)
    act: str | None = None  # unfused FFN activation ("gelu" | "relu"); None: fused
    w_1: np.ndarray | None = None  # (d, 4d)
    b_1: np.ndarray | None = None  # (4d,)
    w_2: np.ndarray | None = None  # (4d, d)
    b_2: np.ndarray | None = None  # (d,)
    norm_eps: float = 1e-5  # LayerNorm's eps (added to the variance)

    def __post_init__(self):
        if self.act is None and self.w_mix is None:
            raise ModelError("layer view: a block needs a fused FFN (w_mix) or an activation and w_1, w_2")
        if self.act is not None and (
            self.act not in ACTIVATION_FUNCTIONS or self.w_1 is None or self.w_2 is None
        ):
            raise ModelError(f"layer view: act must be one of {ACTIVATION_FUNCTIONS} with w_1, w_2 given")


@dataclass(frozen=True)
class LinearView:
    """The whole model: embeddings, layers, LM head (tied: lm_head = tok_emb.T, with a final LayerNorm's
    gains folded in when `final_norm`)."""

    tok_emb: np.ndarray  # (V, d)
    pos_emb: np.ndarray  # (T_max, d)
    layers: tuple[LayerView, ...]
    lm_head: np.ndarray  # (d, V)
    lm_bias: np.ndarray  # (V,)
    final_norm: bool = False  # logits = normalise(x) @ lm_head + lm_bias

    @classmethod
    def from_model(cls, model: Decoder) -> LinearView:
        """Export any variant of `Decoder` (LayerNorms split and folded as the module docstring says)."""
        cfg = model.cfg

        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().to(torch.float64).numpy().copy()

        def folded(ln, w, b):
            """(w, b) of a map that reads LN(x), rewritten to read normalise(x)."""
            if ln is None:
                return w, b
            gain = np.sqrt(cfg.d_model) * arr(ln.weight)
            return gain[:, None] * w, arr(ln.bias) @ w + b

        d, dk = cfg.d_model, cfg.d_head
        layers = []
        with torch.no_grad():
            for block in model.blocks:
                att = block.attn
                # torch Linear computes x W^T + b: the row-vector matrix is W^T.
                col_scale = np.repeat(arr(att.query_scale()), dk)  # (d,): head h's scale on its dk columns
                unfused = {}
                if not block.fused:
                    lin1, lin2 = block.ffn[0], block.ffn[2]
                    w_1, b_1 = folded(block.ln2, arr(lin1.weight).T, arr(lin1.bias))
                    unfused = dict(
                        act="gelu" if cfg.variant == "baseline" else "relu",
                        w_1=w_1, b_1=b_1, w_2=arr(lin2.weight).T, b_2=arr(lin2.bias),
                        norm_ffn=block.ln2 is not None,
                    )  # fmt: skip
                    w_mix = b_mix = None
                elif block.pruned:
                    w_mix, b_mix = np.eye(d), np.zeros(d)
                else:
                    alpha, beta = float(block.alpha), float(block.beta)
                    w_mix = beta * np.eye(d) + arr(block.ffn.weight).T / alpha
                    b_mix = arr(block.ffn.bias) / alpha
                qkv = {}
                for name, lin, scale in (("q", att.q, col_scale), ("k", att.k, 1.0), ("v", att.v, 1.0)):
                    w, b = folded(block.ln1, arr(lin.weight).T * scale, arr(lin.bias) * scale)
                    qkv[f"w_{name}"], qkv[f"b_{name}"] = w, b
                eps = {"norm_eps": float(block.ln1.eps)} if block.ln1 is not None else {}
                layers.append(
                    LayerView(
                        **qkv,
                        w_o=arr(att.o.weight).T,
                        b_o=arr(att.o.bias),
                        w_mix=w_mix,
                        b_mix=b_mix,
                        sink=None if att.sink is None else arr(att.sink),
                        n_head=cfg.n_head,
                        norm_attn=block.ln1 is not None,
                        **unfused,
                        **eps,
                    )
                )
        tok = arr(model.tok_emb.weight)
        head, bias = folded(model.ln_f, tok.T.copy(), arr(model.lm_bias))
        return cls(tok, arr(model.pos_emb.weight), tuple(layers), head, bias, model.ln_f is not None)

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat name -> array mapping (e.g. for `np.savez`); names like `layers.0.w_q`."""
        out = {
            "tok_emb": self.tok_emb,
            "pos_emb": self.pos_emb,
            "lm_head": self.lm_head,
            "lm_bias": self.lm_bias,
        }
        for i, lay in enumerate(self.layers):
            for name in (*LAYER_ARRAYS, "w_1", "b_1", "w_2", "b_2"):
                value = getattr(lay, name)
                if value is not None:
                    out[f"layers.{i}.{name}"] = value
        return out


LAYER_ARRAYS = ("w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "w_o", "b_o", "w_mix", "b_mix", "sink")


def normalise(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The parameter-free part of LayerNorm (module docstring): x (T, d) -> (normalise(x) (T, d), u (T,)),
    u = var + eps the value whose 1/sqrt the encrypted runtime approximates (biased variance, as torch)."""
    centred = x - x.mean(-1, keepdims=True)
    u = (centred**2).mean(-1) + eps
    return centred / np.sqrt(x.shape[-1] * u)[:, None], u


def activation(name: str, x: np.ndarray) -> np.ndarray:
    """The unfused FFN's activation: exact GELU x Phi(x) (torch's default) or ReLU."""
    if name == "gelu":
        return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
    return np.maximum(x, 0.0)


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
BASELINE_INTERMEDIATES = ("u_attn", "u_ffn", "pre", "act")
"""Extra keys of `layer_forward` for blocks that have them (LayerNorm, unfused FFN)."""


def layer_forward(lay: LayerView, x: np.ndarray) -> dict[str, np.ndarray]:
    """One layer on x (T, d), returning every intermediate the encrypted layer holds, by name.

    Keys (LAYER_INTERMEDIATES), for H heads of d_k = d / H features:

    - q, k, v (T, d): projections (q carries the folded temperature and 1/sqrt(d_k));
    - z (H, T, T): q_h . k_h, minus c_h with a sink (what exp sees; above the diagonal unused);
    - den (H, T): the attention denominators, 1 + sum_j exp(z_ij) with a sink (what 1/x sees);
    - num (H, T, d_k): sum_j exp(z_ij) v_j, the attention numerators (max-shifted exps without a sink);
    - heads (T, d): the concatenated head outputs, num / den;
    - x_sa (T, d): x + heads @ W_O + b_O; x_out (T, d): the next layer's input, x_sa @ w_mix + b_mix
      (fused) or x_sa + act @ w_2 + b_2 (unfused).

    Baseline blocks add (BASELINE_INTERMEDIATES, those that apply, in that order): u_attn / u_ffn (T,):
    var + eps of the LayerNorm before attention / the FFN (what 1/sqrt sees); pre (T, 4d): the FFN's
    pre-activation (what GELU or ReLU sees); act (T, 4d): the activation.

    `view_forward` is `embed`, these layers composed on "x_out", then the LM head.
    """
    T, d = x.shape
    H = lay.n_head
    dk = d // H
    sink = lay.sink is not None
    extra = {}
    x_in = x
    if lay.norm_attn:
        x_in, extra["u_attn"] = normalise(x, lay.norm_eps)
    q = x_in @ lay.w_q + lay.b_q
    k = x_in @ lay.w_k + lay.b_k
    v = x_in @ lay.w_v + lay.b_v
    qh, kh, vh = (m.reshape(T, H, dk).transpose(1, 0, 2) for m in (q, k, v))  # (H, T, dk)
    z = qh @ kh.transpose(0, 2, 1)  # (H, T, T)
    if sink:
        z = z - lay.sink[:, None, None]
    e, den = _exp_weights(z, sink)  # (H, T, T), (H, T)
    heads = ((e / den[..., None]) @ vh).transpose(1, 0, 2).reshape(T, d)  # (H, T, dk) -> (T, d)
    x_sa = x + heads @ lay.w_o + lay.b_o
    if lay.act is None:
        x_out = x_sa @ lay.w_mix + lay.b_mix
    else:
        h = x_sa
        if lay.norm_ffn:
            h, extra["u_ffn"] = normalise(x_sa, lay.norm_eps)
        extra["pre"] = h @ lay.w_1 + lay.b_1
        extra["act"] = activation(lay.act, extra["pre"])
        x_out = x_sa + extra["act"] @ lay.w_2 + lay.b_2
    return {
        "q": q,
        "k": k,
        "v": v,
        "z": z,
        "den": den,
        "num": e @ vh,  # (H, T, dk)
        "heads": heads,
        "x_sa": x_sa,
        "x_out": x_out,
        **extra,
    }


def lm_forward(view: LinearView, x: np.ndarray) -> np.ndarray:
    """The LM head: the last layer's output x (T, d) -> logits (T, V), after the final normalise if any."""
    if view.final_norm:
        x = normalise(x, view.layers[-1].norm_eps)[0]
    return x @ view.lm_head + view.lm_bias


def view_forward(view: LinearView, tokens) -> np.ndarray:
    """Reference forward pass from the view alone: tokens (T,) ints -> logits (T, V) float64.

    Raises ModelError unless 1 <= T <= the context length.
    """
    x = embed(view, tokens)  # (T, d)
    for lay in view.layers:
        x = layer_forward(lay, x)["x_out"]
    return lm_forward(view, x)  # (T, V)
