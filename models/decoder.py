"""The plaintext decoder: a GPT-2-style byte-level model and its AERO variants, in one readable file.

Variants (`DecoderConfig.variant`), after Jha & Reagen, "AERO: Softmax-Only LLMs" (arXiv 2410.13060) and
"Entropy-Guided Attention for Private LLMs" (arXiv 2501.03489):

- ``baseline``     (SM+LN+G): pre-LN blocks, GELU FFN of width 4d, final LayerNorm;
- ``relu``         (SM+LN+R): the same with a ReLU FFN;
- ``lnfree-relu``  (SM+R):    no LayerNorm anywhere, ReLU FFN;
- ``softmax-only`` (SM+ScFuFFN): no LayerNorm, the FFN fused into one d x d matrix with learnable per-layer
  scaling ``X_out = beta * X_SA + (1/alpha) * (X_SA W_ffn + b_ffn)``; the FFNs of the ``pruned_ffns`` deepest
  layers are dropped (``X_out = X_SA``).

Attention (`DecoderConfig.attention`):

- ``softmax``: the usual softmax over causal logits;
- ``sink``: the bounded softmax the encrypted runtime approximates (docs/design.md section 1)::

      z_ij = q_i . k_j - c_h                 # c_h: learnable per-head sink logit
      a_ij = exp(z_ij) / (1 + sum_{j' <= i} exp(z_ij'))

  i.e. a softmax over the causal keys plus one constant "sink" key whose logit is c_h and whose value is 0.
  The denominator lies in [1, 1 + T] whenever z <= 0, so its reciprocal needs a narrow domain.

Training-only terms (no inference cost), all returned by `Decoder.loss`:

- the entropy regulariser (per-head threshold fraction theta of log T, margin gamma, weight lambda); theta is
  learned as in the papers, or fixed (`entropy_theta_learned=False`): a learned threshold can simply follow
  each head's entropy, which leaves the penalty at 0 (docs/ablation.md);
- a range penalty that keeps z (and, with the sink, log of the denominator) inside a bound, so the
  polynomial approximations of exp and 1/x in the encrypted runtime have narrow domains.

The softmax temperature (optional, per head) is bounded to [1/t_max, t_max]: unbounded it grew to 4-15 in a
probe and widened the logits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.errors import ModelError

VARIANTS = ("baseline", "relu", "lnfree-relu", "softmax-only")
ATTENTIONS = ("softmax", "sink")
LATER_FIELDS = ("entropy_theta_learned",)  # see DecoderConfig.to_dict


@dataclass(frozen=True)
class DecoderConfig:
    """The architecture and the training-only loss terms; validated on construction."""

    variant: str = "softmax-only"
    attention: str = "sink"
    vocab_size: int = 256  # byte-level tokens, no special tokens
    block_size: int = 64  # context length T
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 128
    pruned_ffns: int = 0  # softmax-only: drop the FFN of this many deepest layers
    learn_temperature: bool = True
    temperature_max: float = 2.0  # temperature lives in [1/t_max, t_max]
    entropy_reg: bool = True
    entropy_lambda: float = 1e-5
    entropy_gamma: float = 0.2
    entropy_theta_init: float = 0.5
    entropy_theta_learned: bool = True  # False: theta stays at entropy_theta_init (a buffer, not a parameter)
    range_weight: float = 1000.0  # 0: off. A row mean: rare out-of-range rows need a large weight
    z_min: float = -24.0  # bound on z = q.k - c_h (every causal pair)
    z_max: float = 4.0
    denom_max: float = 64.0  # sink only: bound on 1 + sum exp(z) per row

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ModelError(f"config.variant: {self.variant!r} is not one of {', '.join(VARIANTS)}")
        if self.attention not in ATTENTIONS:
            raise ModelError(f"config.attention: {self.attention!r} is not one of {', '.join(ATTENTIONS)}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ModelError(f"config.{name}: must be a positive integer, got {value!r}")
        if self.d_model % self.n_head:
            raise ModelError(f"config.d_model: {self.d_model} is not divisible by n_head={self.n_head}")
        if not isinstance(self.pruned_ffns, int) or not 0 <= self.pruned_ffns <= self.n_layer:
            raise ModelError(f"config.pruned_ffns: must be an integer in [0, n_layer={self.n_layer}]")
        if self.pruned_ffns and self.variant != "softmax-only":
            raise ModelError("config.pruned_ffns: FFN pruning is defined only for the softmax-only variant")
        if not self.temperature_max >= 1.0:
            raise ModelError(f"config.temperature_max: must be >= 1, got {self.temperature_max}")
        if self.entropy_lambda < 0 or not 0 <= self.entropy_gamma < 1:
            raise ModelError("config.entropy_lambda / entropy_gamma: need lambda >= 0 and 0 <= gamma < 1")
        if not 0 < self.entropy_theta_init < 1:
            raise ModelError(f"config.entropy_theta_init: must be in (0, 1), got {self.entropy_theta_init}")
        if self.range_weight < 0:
            raise ModelError(f"config.range_weight: must be >= 0, got {self.range_weight}")
        if not self.z_min < self.z_max:
            raise ModelError(f"config.z_min/z_max: need z_min < z_max, got [{self.z_min}, {self.z_max}]")
        if not self.denom_max > 1:
            raise ModelError(f"config.denom_max: must be > 1, got {self.denom_max}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    @property
    def layer_norm(self) -> bool:
        return self.variant in ("baseline", "relu")

    def to_dict(self) -> dict:
        """The config as JSON; fields added after models were shipped are left out at their defaults, so
        the config (and the calibrations and plans bound to it) of every earlier checkpoint keeps its hash."""
        data = asdict(self)
        for name in LATER_FIELDS:
            if data[name] == getattr(DecoderConfig, name):
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DecoderConfig:
        """Build from a JSON dict; an unknown key is an error (a typo must not fall back to a default)."""
        if not isinstance(data, dict):
            raise ModelError("config: expected a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"config: unknown field(s) {', '.join(map(repr, unknown))}")
        return cls(**data)


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention with plain or sink softmax; also computes its training-only penalties."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, h = cfg.d_model, cfg.n_head
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        # Per-head parameters. The sink logit starts at 0: at init z ~ 0 and every key gets ~equal weight.
        self.sink = nn.Parameter(torch.zeros(h)) if cfg.attention == "sink" else None
        # temperature = t_max ** tanh(temp_raw): bounded in [1/t_max, t_max], 1 at init.
        self.temp_raw = nn.Parameter(torch.zeros(h)) if cfg.learn_temperature else None
        # Entropy threshold fraction theta = sigmoid(theta_raw), kept in (0, 1).
        theta0 = torch.full((h,), math.log(cfg.entropy_theta_init / (1 - cfg.entropy_theta_init)))
        if not cfg.entropy_reg:
            self.theta_raw = None
        elif cfg.entropy_theta_learned:
            self.theta_raw = nn.Parameter(theta0)
        else:
            self.register_buffer("theta_raw", theta0)
        mask = torch.tril(torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool))
        self.register_buffer("mask", mask.view(1, 1, cfg.block_size, cfg.block_size), persistent=False)

    def temperature(self) -> torch.Tensor:
        """Per-head temperature (H,)."""
        if self.temp_raw is None:
            return torch.ones(self.cfg.n_head, device=self.q.weight.device)
        return self.cfg.temperature_max ** torch.tanh(self.temp_raw)

    def query_scale(self) -> torch.Tensor:
        """Per-head factor 1/(t sqrt(d_k)) that multiplies q (folded into W_Q by the linear view)."""
        return 1.0 / (self.temperature() * math.sqrt(self.cfg.d_head))

    def forward(self, x: torch.Tensor, record: bool = False) -> tuple[torch.Tensor, dict]:
        """x (B, T, d) -> (y (B, T, d), aux): penalties and, if `record`, z, probabilities, denominators."""
        cfg = self.cfg
        B, T, d = x.shape
        H, dk = cfg.n_head, cfg.d_head

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, H, dk).transpose(1, 2)  # (B, T, d) -> (B, H, T, dk)

        q = heads(self.q(x)) * self.query_scale().view(1, H, 1, 1)
        k, v = heads(self.k(x)), heads(self.v(x))
        z = q @ k.transpose(-2, -1)  # (B, H, T, T)
        if self.sink is not None:
            z = z - self.sink.view(1, H, 1, 1)
        mask = self.mask[:, :, :T, :T]
        z_masked = z.masked_fill(~mask, float("-inf"))
        if self.sink is not None:
            # Softmax over [sink, keys] with the sink logit at 0 (z already has c_h subtracted): equal to
            # exp(z)/(1 + sum exp(z)) but computed stably; the sink's value vector is zero: drop its column.
            full = torch.cat([torch.zeros(B, H, T, 1, dtype=z.dtype, device=z.device), z_masked], dim=-1)
            probs_full = F.softmax(full, dim=-1)  # (B, H, T, 1 + T)
            att = probs_full[..., 1:]
            log_denom = torch.logsumexp(full, dim=-1)  # (B, H, T): log(1 + sum_j exp z_ij)
        else:
            probs_full = att = F.softmax(z_masked, dim=-1)
            log_denom = None
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, d)  # (B, H, T, dk) -> (B, T, d)
        y = self.o(y)

        aux: dict = {}
        if self.theta_raw is not None:
            aux["entropy_pen"] = self.entropy_penalty(probs_full, T)
        if cfg.range_weight > 0:
            aux["range_pen"] = self.range_penalty(z, mask, log_denom)
        if record:
            aux["z"] = z.detach()
            aux["mask"] = mask
            aux["log_denom"] = None if log_denom is None else log_denom.detach()
            aux["probs"] = probs_full.detach()
        return y, aux

    def head_entropy(self, probs: torch.Tensor) -> torch.Tensor:
        """Mean attention entropy per head (H,): E = -(1/T) sum_i sum_j a_ij log(a_ij + eps), batch-averaged.

        With the sink, the distribution is the one over [sink, keys] (it sums to 1); masked entries are 0.
        """
        ent = -(probs * torch.log(probs + 1e-9)).sum(-1)  # (B, H, T)
        return ent.mean(dim=(0, 2))

    def entropy_penalty(self, probs: torch.Tensor, T: int) -> torch.Tensor:
        """Squared deviation of each head's entropy from theta log T, only outside the margin gamma log T."""
        e_max = math.log(T) if T > 1 else 1.0
        delta = self.head_entropy(probs) - torch.sigmoid(self.theta_raw) * e_max
        outside = (delta.abs() > self.cfg.entropy_gamma * e_max).to(delta.dtype)
        return (outside * delta.square()).mean()

    def range_penalty(
        self, z: torch.Tensor, mask: torch.Tensor, log_denom: torch.Tensor | None
    ) -> torch.Tensor:
        """Mean over rows of the squared overshoot of the row's max z, min z and log-denominator.

        Bounds: [z_min, z_max] and log(denom_max).

        Row extremes (not all pairs) are penalised because a single out-of-range pair breaks the polynomial.
        """
        cfg = self.cfg
        row_max = z.masked_fill(~mask, float("-inf")).amax(-1)  # (B, H, T)
        row_min = z.masked_fill(~mask, float("inf")).amin(-1)
        pen = F.relu(row_max - cfg.z_max).square() + F.relu(cfg.z_min - row_min).square()
        if log_denom is not None:
            pen = pen + F.relu(log_denom - math.log(cfg.denom_max)).square()
        return pen.mean()


class Block(nn.Module):
    """One decoder layer; its shape depends on the variant (see the module docstring)."""

    def __init__(self, cfg: DecoderConfig, layer: int) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.attn = CausalSelfAttention(cfg)
        self.ln1 = nn.LayerNorm(d) if cfg.layer_norm else None
        self.ln2 = nn.LayerNorm(d) if cfg.layer_norm else None
        self.fused = cfg.variant == "softmax-only"
        self.pruned = self.fused and layer >= cfg.n_layer - cfg.pruned_ffns
        if self.fused:
            # Fused FFN: no activation between the two FFN matrices, so they are one d x d matrix.
            self.ffn = None if self.pruned else nn.Linear(d, d)
            self.alpha = None if self.pruned else nn.Parameter(torch.ones(()))
            self.beta = None if self.pruned else nn.Parameter(torch.ones(()))
        else:
            act = nn.GELU() if cfg.variant == "baseline" else nn.ReLU()
            self.ffn = nn.Sequential(nn.Linear(d, 4 * d), act, nn.Linear(4 * d, d))

    def mix(self, x_sa: torch.Tensor) -> torch.Tensor:
        """Softmax-only FFN: X_out = beta X_SA + (1/alpha)(X_SA W + b); the identity when pruned."""
        if self.pruned:
            return x_sa
        return self.beta * x_sa + self.ffn(x_sa) / self.alpha

    def forward(self, x: torch.Tensor, record: bool = False) -> tuple[torch.Tensor, dict]:
        """x (B, T, d) -> (B, T, d), aux from attention."""
        a, aux = self.attn(self.ln1(x) if self.ln1 is not None else x, record)
        x = x + a
        if self.fused:
            return self.mix(x), aux
        return x + self.ffn(self.ln2(x) if self.ln2 is not None else x), aux


class Decoder(nn.Module):
    """Token + learned position embeddings, `n_layer` blocks, (final LayerNorm,) tied LM head with a bias."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model) if cfg.layer_norm else None
        self.lm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02), zero biases, output projections scaled by 1/sqrt(2 n_layer)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        for block in self.blocks:
            nn.init.normal_(block.attn.o.weight, std=0.02 / math.sqrt(2 * self.cfg.n_layer))
            if isinstance(block.ffn, nn.Sequential):
                nn.init.normal_(block.ffn[2].weight, std=0.02 / math.sqrt(2 * self.cfg.n_layer))

    def num_params(self) -> int:
        """Parameters, counting the tied embedding once."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, record: bool = False) -> tuple[torch.Tensor, list[dict], list]:
        """idx (B, T) int64 -> logits (B, T, V), per-layer aux dicts, residual streams [(B, T, d)] * (L+1)."""
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise ModelError(f"input of length {T} exceeds the context length {self.cfg.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)  # (B, T, d)
        auxes, streams = [], [x.detach()] if record else []
        for block in self.blocks:
            x, aux = block(x, record)
            auxes.append(aux)
            if record:
                streams.append(x.detach())
        if self.ln_f is not None:
            x = self.ln_f(x)
        logits = x @ self.tok_emb.weight.T + self.lm_bias  # tied head: (B, T, d) @ (d, V)
        return logits, auxes, streams

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, V)."""
        return self.forward(idx)[0]

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Total training loss and its parts: cross-entropy (nats), entropy and range penalties."""
        logits, auxes, _ = self.forward(idx)
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        total = ce
        parts = {"ce": ce.item()}
        for key, weight in (("entropy_pen", self.cfg.entropy_lambda), ("range_pen", self.cfg.range_weight)):
            terms = [a[key] for a in auxes if key in a]
            if terms:
                pen = torch.stack(terms).mean()
                total = total + weight * pen
                parts[key] = pen.item()
        return total, parts

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay only weight matrices and the token embedding.

        Biases, LayerNorm gains, alpha/beta, sinks, temperatures, entropy thresholds and position embeddings
        are not decayed: pulling them toward 0 changes what they mean (e.g. beta -> 0 cuts the residual).
        """
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (decay if p.dim() >= 2 and "pos_emb" not in name else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
