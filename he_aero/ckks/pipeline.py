"""The model on ciphertexts: embedding -> decoder layers -> LM head, real or symbolic.

One pipeline serves the server (real ciphertexts), the planner (a symbolic `Evaluator`: levels, counts,
rotation steps, refresh points, no SEAL objects) and the benchmarks, so what is planned is what runs.

Token embedding (why this way): the client sends each token as an encrypted one-hot row over the 256-byte
vocabulary, in the same "features" slot layout as the activations (he_aero/ckks/packing.py). The embedding
is then one plaintext product `onehot @ tok_emb` (the same BSGS kernel as every other matrix: O(sqrt(F))
rotations, one level) plus the position rows `pos_emb[position : position + n]` added as a plaintext, so the
client needs no weights and the lookup is exact up to CKKS noise. Cheaper alternatives fail a requirement:
the client looking up rows itself needs the embedding matrix (the model owner's weights); an encrypted token
id needs a degree-255 interpolation per feature. The cost is the upload: vocab / F ciphertexts per message.

Decode steps may use the "rows" layout for the one-token embedding and LM head (`decode_rows`, decided by
the planner): far fewer rotations and products when the model's features fit one ciphertext. In the
"features" layout the decode LM head runs the skewed one-token kernel (`linalg.SkewedLinear`, n_in * n_out
products instead of n_in * n_out * F) with a row-0 mask after it (the LOGITS hold the logits and ~0
elsewhere: the client checks it), where that level costs no refresh round; the decode embedding keeps the
block-diagonal kernel: its input is the client's one-hot, whose rows >= 1 the server cannot know to be 0
(the block-diagonal kernel ignores them, the skewed one would mix them into x), and a row mask after it
would leave x one level lower, so layer 0's QKV would need a refresh round.

The K/V cache stays encrypted on the server (one `KVCache` per layer, grown by `EncryptedLayer.decode`), so a
new token costs one query against it, not a re-run of the prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from he_aero.ckks.attention import KVCache
from he_aero.ckks.ciphertext import Ct, Evaluator, real_parts
from he_aero.ckks.layer import EncryptedLayer
from he_aero.ckks.linalg import PlainLinear, SkewedLinear, block_spread, block_sum, mask_rows, skewable
from he_aero.ckks.norm import NormPlan, check_inv_sqrt_plan, normalise
from he_aero.ckks.packing import FeatureLayout, check_clean, pack, rows_count
from he_aero.ckks.parallel import InPlace, product
from he_aero.ckks.params import CkksParams
from he_aero.ckks.refresh import Refresher
from he_aero.errors import HeAeroError


@dataclass
class StageRecord:
    """Wall time, operation counts and levels of one pipeline stage (embedding, a layer, the LM head)."""

    name: str
    seconds: float = 0.0
    ops: dict = field(default_factory=dict)
    level_in: int | None = None
    level_out: int | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "seconds": round(self.seconds, 3),
            "ops": self.ops,
            "level_in": self.level_in,
            "level_out": self.level_out,
        }


def _counts(ev: Evaluator) -> dict:
    s = ev.stats
    return {
        "rotations": s.n_rotations,
        "ctct_mults": s.n_ctct,
        "pt_mults": s.n_pt,
        "key_switches": s.key_switches,
        "encodes": s.encodes,  # plaintexts encoded in the stage: those the cache had not (or could not) hold
        "refresh_rounds": s.refresh_rounds,
        "seal_seconds": s.seal_seconds,
        "refresh_seconds": s.refresh_seconds,
    }


def _delta(after: dict, before: dict) -> dict:
    return {
        k: round(after[k] - before[k], 4) if isinstance(after[k], float) else after[k] - before[k]
        for k in after
    }


def shape_only_view(
    d_model: int,
    n_head: int,
    n_layer: int,
    t_max: int,
    vocab: int = 256,
    variant: str = "softmax-only",
    pruned_ffns: int = 0,
):
    """A stand-in for `models.linear_view.LinearView` with every weight 1: a symbolic run's counts depend on
    shapes only (no all-zero diagonal is skipped), so the planner needs no checkpoint weights. `variant` and
    `pruned_ffns` as in `models.decoder.DecoderConfig`: the baseline variants get LayerNorms and an unfused
    d -> 4d -> d FFN, pruned layers the identity mix (which the layer skips)."""
    d = d_model
    ones, vec = np.ones((d, d)), np.ones(d)
    norm = variant in ("baseline", "relu")
    layers = []
    for i in range(n_layer):
        layer = SimpleNamespace(
            w_q=ones, b_q=vec, w_k=ones, b_k=vec, w_v=ones, b_v=vec, w_o=ones, b_o=vec,
            w_mix=ones, b_mix=vec, sink=np.zeros(n_head), n_head=n_head, norm_attn=False, norm_ffn=False,
            act=None, norm_eps=1e-5,
        )  # fmt: skip
        if variant != "softmax-only":
            layer.w_mix = layer.b_mix = None
            layer.act = "gelu" if variant == "baseline" else "relu"
            layer.norm_attn = layer.norm_ffn = norm
            layer.w_1, layer.b_1 = np.ones((d, 4 * d)), np.ones(4 * d)
            layer.w_2, layer.b_2 = np.ones((4 * d, d)), vec
        elif i >= n_layer - pruned_ffns:
            layer.w_mix, layer.b_mix = np.eye(d), np.zeros(d)
        layers.append(layer)
    return SimpleNamespace(
        tok_emb=np.ones((vocab, d)),
        pos_emb=np.ones((t_max, d)),
        layers=layers,
        lm_head=np.ones((d, vocab)),
        lm_bias=np.ones(vocab),
        final_norm=norm,
    )


class Pipeline:
    """The model's plaintext weights prepared for one ring and slot layout.

    Parameters
    ----------
    view : `models.linear_view.LinearView` (or `shape_only_view` for symbolic runs): tok_emb (V, d),
        pos_emb (T, d), layers, lm_head (d, V), lm_bias (V,).
    plans : per layer, (exp Plan, reciprocal Plan, exp shift) as the plan file lists them
        (`ExecutionPlan.plans`), with a fourth item, the layer's `BaselinePlans`, for a baseline block.
    params : the ring and chain.
    block : slots per feature column (a power of two >= the context).
    decode_rows : decode steps take and give the "rows" layout (packing.rows_pack).
    final_norm : the `NormPlan` of the final LayerNorm (baseline variants: `view.final_norm`), else None.
    """

    def __init__(
        self,
        view,
        plans,
        params: CkksParams,
        block: int,
        decode_rows: bool,
        final_norm: NormPlan | None = None,
    ):
        if len(plans) != len(view.layers):
            raise HeAeroError(f"pipeline: {len(plans)} layer plans for {len(view.layers)} layers")
        self.view, self.params, self.block, self.rows = view, params, int(block), bool(decode_rows)
        self.vocab, self.d = view.tok_emb.shape
        self.context = view.pos_emb.shape[0]
        if self.block > params.slots or self.block < self.context:
            raise HeAeroError(f"pipeline: block {self.block} must hold the context {self.context} and fit "
                              f"{params.slots} slots")  # fmt: skip
        if self.rows and self.d > params.slots // self.block:
            raise HeAeroError(
                f"decode_rows: d={self.d} features do not fit one ciphertext of {params.slots // self.block} "
                "blocks"
            )
        self.layers = [
            EncryptedLayer(i, lay, *per_layer)
            for i, (lay, per_layer) in enumerate(zip(view.layers, plans, strict=True))
        ]
        self.final_norm = None
        if getattr(view, "final_norm", False):
            check_inv_sqrt_plan(final_norm, "final LayerNorm")
            self.final_norm = final_norm
        self._linears: dict = {}
        self.address = "pipeline"  # how worker processes find this object (he_aero/ckks/parallel.py)

    @classmethod
    def for_plan(cls, view, plan) -> Pipeline:
        """The pipeline an `he_aero.plan.ExecutionPlan` runs on `view`: the one way the server and its Ray
        actors build it (their parts must find the same layers and products)."""
        return cls(view, plan.plans, plan.params, plan.block, plan.decode_rows, plan.final_norm_plan)

    @property
    def stage_names(self) -> list[str]:
        """The stages of `run` in order, as its StageRecords and `progress` calls name them."""
        return ["embed", *(f"layer {i}" for i in range(len(self.layers))), "lm_head"]

    # --- layouts -------------------------------------------------------------------------------------------
    def layout(self, n_tokens: int, n_features: int | None = None) -> FeatureLayout:
        return FeatureLayout(self.params.slots, self.block, n_features or self.d, n_tokens)

    def rows_step(self, n_tokens: int, position: int) -> bool:
        """Whether a TOKENS/LOGITS exchange uses the "rows" layout: one token after the prompt (the
        client's rule too, `Client._rows`)."""
        return self.rows and n_tokens == 1 and position > 0

    def token_cts(self, rows: bool, n_tokens: int = 1) -> int:
        """Ciphertexts of a one-hot token upload: vocab / block in "rows", vocab / F in "features"."""
        return rows_count(self.vocab, self.block) if rows else self.layout(n_tokens, self.vocab).n_ct

    # --- stages --------------------------------------------------------------------------------------------
    def _linear(self, which: str, n_tokens: int, skewed: bool = False) -> PlainLinear | SkewedLinear:
        """The embedding and LM head maps with their weights HALVED: their pending products are projected to
        the real part (`real_parts`), which doubles them. `skewed`: the one-token kernel (LM head only)."""
        key = (which, n_tokens, skewed)
        if key not in self._linears:
            if which == "embed":  # onehot (n, vocab) @ tok_emb (vocab, d) / 2
                self._linears[key] = PlainLinear(
                    "embed", self.view.tok_emb / 2, None, self.layout(n_tokens, self.vocab)
                )
            else:  # (x (n, d) @ lm_head (d, vocab) + lm_bias) / 2
                kernel = SkewedLinear if skewed else PlainLinear
                self._linears[key] = kernel(
                    "lm", self.view.lm_head / 2, self.view.lm_bias / 2, self.layout(n_tokens)
                )
        return self._linears[key]

    def _product(self, ev: Evaluator, which: str, n: int, xs: list[Ct], rescale: bool) -> list[Ct]:
        """The embedding or LM-head product of n tokens, split over the executor's workers at prefill
        (`parallel.product`), as a layer's are."""
        return product(ev, self, self._linear(which, n), (which, n), xs, rescale)

    def run_part(self, ev: Evaluator, part: str, *args):
        """An independent part of the embedding or LM head: "linear" with (which, n_tokens, xs, outputs,
        rescale), `which` "embed" or "lm" (he_aero/ckks/parallel.py). HeAeroError for any other part."""
        if part != "linear":
            raise HeAeroError(f"pipeline: no part {part!r}")
        which, n, xs, outputs, rescale = args
        return self._linear(which, n)(ev, xs, rescale=rescale, outputs=outputs)

    def _embed(self, ev: Evaluator, onehot: list[Ct], position: int, n: int) -> list[Ct]:
        """x = onehot @ tok_emb + pos_emb[position : position + n] in the features layout."""
        xs = real_parts(ev, self._product(ev, "embed", n, onehot, rescale=False))
        pos = pack(self.view.pos_emb[position : position + n], self.layout(n))
        return [
            ev.add_plain(x, ("pos", position, n, i), lambda v=v: v)
            for i, (x, v) in enumerate(zip(xs, pos, strict=True))
        ]

    def _embed_rows(self, ev: Evaluator, onehot: list[Ct], position: int) -> list[Ct]:
        """One token whose one-hot is in the "rows" layout: chunk c times P_c, P_c[j B + t] =
        tok_emb[c B + t, j], summed over chunks (one rescale) and over rows (log2 B rotations: row 0 of
        block j = x_j); a row-0 mask (one level) clears the partial sums left in rows >= 1; + pos_emb."""
        B, F, layout = self.block, self.params.slots // self.block, self.layout(1)

        def chunk(c):
            p = np.zeros((F, B))  # (block j, row t)
            part = self.view.tok_emb[c * B : (c + 1) * B]  # (<= B, d)
            p[: self.d, : part.shape[0]] = part.T
            return p.ravel()

        terms = [(ct, ("embed-rows", c), lambda c=c: chunk(c)) for c, ct in enumerate(onehot)]
        y = block_sum(ev, ev.dot_plain(terms, layout), B, 1)
        half_mask = lambda: 0.5 * layout.row_mask() * (np.arange(self.params.slots) < self.d * B)  # noqa: E731
        (x,) = real_parts(ev, [ev.mul_plain(y, ("row0/2", "features"), half_mask, rescale=False)])
        pos = pack(self.view.pos_emb[position : position + 1], layout)[0]
        return [ev.add_plain(x, ("pos", position, 1, 0), lambda: pos, layout)]

    def _lm_rows(self, ev: Evaluator, ref: Refresher, xs: list[Ct]) -> list[Ct]:
        """Decode LM head: x (row 0 of each block, other rows 0) spread over the rows (log2 B rotations),
        times Q_c[j B + t] = lm_head[j, c B + t], summed over blocks (log2 F rotations): logit c B + t lands
        in row t of block 0 of chunk c; a mask (one level) clears the partial sums elsewhere; + the bias."""
        B, F = self.block, self.params.slots // self.block
        check_clean(xs, "lm head")  # the spread sums every row
        (x,) = ref.ensure(xs, 2, "lm head")
        spread = block_spread(ev, x, B, 1)
        out = []
        for c in range(rows_count(self.vocab, B)):

            def chunk(c=c):
                q = np.zeros((F, B))
                part = self.view.lm_head[:, c * B : (c + 1) * B]  # (d, <= B)
                q[: self.d, : part.shape[1]] = part
                return q.ravel()

            z = block_sum(ev, ev.mul_plain(spread, ("lm-rows", c), chunk), F, B)
            width = min(B, self.vocab - c * B)
            half_mask = lambda w=width: 0.5 * (np.arange(self.params.slots) < w)  # noqa: E731
            z = ev.mul_plain(z, ("block0/2", width), half_mask, rescale=False)
            bias = np.zeros(self.params.slots)
            bias[:width] = self.view.lm_bias[c * B : c * B + width] / 2
            out += real_parts(ev, [ev.add_plain(z, ("lm-rows-bias/2", c), lambda b=bias: b)])
        return out

    def _head(
        self, ev: Evaluator, ref: Refresher, xs: list[Ct], rows: bool, layout, decode: bool
    ) -> list[Ct]:
        """The final LayerNorm's normalise (baseline variants), then the LM head in the step's layout (a
        decode step in "features": skewed where its row mask costs no round, module docstring)."""
        if self.final_norm is not None:
            eps = self.view.layers[-1].norm_eps
            xs = normalise(ev, ref, self.final_norm, xs, layout, eps, "ln_f")
        if rows:
            return self._lm_rows(ev, ref, xs)
        if decode and skewable(xs, layout) and ref.affords(xs, 2):
            lm = self._linear("lm", 1, skewed=True)
            logits = real_parts(ev, lm(ev, ref.ensure(xs, 2, "lm head"), rescale=False))
            return mask_rows(ev, logits, lm.out_layout)
        xs = ref.ensure(xs, 1, "lm head")
        return real_parts(ev, self._product(ev, "lm", layout.n_tokens, xs, rescale=False))

    # --- the run -------------------------------------------------------------------------------------------
    def run(
        self,
        ev: Evaluator,
        ref: Refresher,
        onehot: list[Ct],
        position: int,
        n: int,
        caches: list[KVCache] | None,
        progress: Callable[[str], None] | None = None,
    ) -> tuple[list[Ct], list[KVCache], list[StageRecord]]:
        """Embedding, layers (a prefill when `caches` is None, else one decode step that grows them), LM head.

        Returns (logit ciphertexts, the K/V caches, one StageRecord per stage); `progress(name)` is called
        after each stage."""
        records = []

        def stage(name, fn, level_in):
            t0, c0 = time.perf_counter(), _counts(ev)
            out = fn()
            cts = out[0] if isinstance(out, tuple) else out
            records.append(
                StageRecord(name, time.perf_counter() - t0, _delta(_counts(ev), c0), level_in, ev.lowest(cts))
            )
            if progress is not None:
                progress(name)
            return out

        layout = self.layout(n)
        rows = self.rows and caches is not None  # decode steps: "rows" layout in and out
        embed, *layer_names, head = self.stage_names
        if rows:
            xs = stage(embed, lambda: self._embed_rows(ev, onehot, position), ev.lowest(onehot))
        else:
            xs = stage(embed, lambda: self._embed(ev, onehot, position, n), ev.lowest(onehot))
        new_caches = []
        for i, layer in enumerate(self.layers):
            lvl = ev.lowest(xs)
            if caches is None:
                xs, cache = stage(
                    layer_names[i], lambda layer=layer, xs=xs: layer.prefill(ev, ref, xs, layout), lvl
                )
                new_caches.append(cache)
            else:
                xs = stage(
                    layer_names[i],
                    lambda layer=layer, xs=xs, c=caches[i]: layer.decode(ev, ref, xs, c, layout),
                    lvl,
                )
        lvl = ev.lowest(xs)
        logits = stage(head, lambda: self._head(ev, ref, xs, rows, layout, caches is not None), lvl)
        return logits, (new_caches if caches is None else caches), records

    # --- symbolic runs (no SEAL objects) -------------------------------------------------------------------
    def _symbolic_tokens(self, ev: Evaluator, rows: bool, n: int) -> list[Ct]:
        layout = None if rows else self.layout(n, self.vocab)
        return [Ct(None, ev.top, layout) for _ in range(self.token_cts(rows, n))]

    def symbolic_prefill(self, n_tokens: int, bound: float, mask_bits: int, workers: int = 1):
        """(Evaluator, Refresher, caches, records) of a counted prefill of n_tokens, its independent parts
        split as `workers` processes split them (he_aero/ckks/parallel.py `InPlace`)."""
        ev = Evaluator(self.params, None)
        ev.executor = InPlace(workers) if workers > 1 else None
        ref = Refresher(ev, None, bound=bound, mask_bits=mask_bits)
        _, caches, records = self.run(ev, ref, self._symbolic_tokens(ev, False, n_tokens), 0, n_tokens, None)
        return ev, ref, caches, records

    def symbolic_decode(self, caches: list[KVCache], bound: float, mask_bits: int, grow: bool = False):
        """(Evaluator, Refresher, records) of one counted decode step against `caches`; `grow` keeps the
        step's token in them (the next step then sees the levels a real cache has after it), else they stay
        as given."""
        ev = Evaluator(self.params, None)
        ref = Refresher(ev, None, bound=bound, mask_bits=mask_bits)
        length = caches[0].length
        saved = [(c.k, c.v) for c in caches]
        _, _, records = self.run(ev, ref, self._symbolic_tokens(ev, self.rows, 1), length, 1, caches)
        if not grow:
            for c, (k, v) in zip(caches, saved, strict=True):  # undo the append
                c.k, c.v, c.length = k, v, length
        return ev, ref, records

    def decode_plaintexts(self, bound: float, mask_bits: int) -> dict:
        """Every plaintext one decode step encodes (`Evaluator.requests`: weight diagonals, biases, masks),
        from a symbolic prefill of one token and a symbolic decode step after it. The weight diagonals do
        not depend on the position, so `Evaluator.prepare` on them takes the encoding out of the first
        decoded token (issue: no cold first token); the few position masks are encoded again per position."""
        _, _, caches, _ = self.symbolic_prefill(1, bound, mask_bits)
        ev, _, _ = self.symbolic_decode(caches, bound, mask_bits)
        return ev.requests

    def rotation_steps(self, bound: float, mask_bits: int) -> tuple[int, ...]:
        """Every rotation step the kernels use: a symbolic prefill of the full context (all attention lags)
        and decode steps at every cache length (their rotations differ by length only)."""
        ev, _, caches, _ = self.symbolic_prefill(self.context, bound, mask_bits)
        steps = set(ev.stats.steps_used)
        for length in range(1, self.context):
            for c in caches:
                c.length = length
            dec, _, _ = self.symbolic_decode(caches, bound, mask_bits)
            steps |= dec.stats.steps_used
        self.clear()
        return tuple(sorted(steps))

    def clear(self) -> None:
        """Drop the cached linear maps (their diagonals): symbolic runs at many token counts build many."""
        self._linears.clear()
        for layer in self.layers:
            layer._linears.clear()
