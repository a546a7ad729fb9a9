"""One encrypted decoder layer (server side): the API issue 5's server builds on.

    X_SA = X + concat_h(A_h V_h) @ w_o + b_o ;  X_out = X_SA @ w_mix + b_mix      (docs/design.md section 1)

Baseline blocks (LayerNorm, unfused GELU / ReLU FFN; models/linear_view.py) read normalise(X) in attention
(he_aero/ckks/norm.py) and end in the FFN of he_aero/ckks/ffn.py instead of w_mix; their extra
approximations come in a `BaselinePlans`.

`EncryptedLayer.prefill` runs the layer on T encrypted tokens and returns the output plus the layer's K/V
cache; `EncryptedLayer.decode` runs one new token (row 0 of its ciphertexts) against the cache and appends
to it. Refreshes happen inside, through the `Refresher` (a callback to the client), whenever the next stage
lacks levels; Q, K and V come from one fused plaintext product (the baby-step rotations of X are shared).

Decode products (one token; docs/kernels.md "Decode products"): the skewed kernel (`linalg.SkewedLinear`:
n_in * n_out products instead of n_in * n_out * F, one level) needs rows >= 1 of its input exactly 0 and
leaves garbage there, which a row-0 mask (`linalg.mask_rows`, one level) clears.
- QKV, on a clean input, followed by the mask (the K/V cache and q's spread need clean rows), where that
  costs no round more for the input (`Refresher.affords`) and either q, k and v one level lower change
  nothing because attention refreshes them before use anyway (`attention.decode_refreshes_inputs`), or the
  products it saves outweigh the refresh round the level might cost (`REFRESH_IN_PRODUCTS`). On the shipped
  ring (2 levels between refreshes) the first holds for every layer but the first, whose input (the
  embedding, one level below the top) it would cost a round, and the second does not; at GPT-2's width on
  N=16384 the second holds for every layer.
- w_o: skewed, with w_mix's block-diagonal kernel after it, which reads X_SA's garbage rows as 0 and gives
  a clean layer output (attention's decode output is clean: it masks the reciprocal). Where the products
  w_mix's kernel costs outweigh a round (`skew_outweighs_a_round`; GPT-2's width, not the shipped model),
  w_o and w_mix are fused instead: X_out = X w_mix + heads (w_o w_mix) + (b_o w_mix + b_mix), one skewed
  product on [X | heads] (both clean, so a refresh before it sees no garbage rows) and the mask: 2 levels
  from min(X, heads), one more than X alone paid. Not before an FFN (its LayerNorm needs clean rows) nor in
  a pruned layer (X_SA is then the layer's output).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from approx.plans import Plan
from approx.sign import CompositeRelu
from he_aero.ckks.attention import (
    PARTS,
    AttentionSpec,
    KVCache,
    attention_decode,
    attention_prefill,
    decode_refreshes_inputs,
)
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.ffn import EncryptedFFN
from he_aero.ckks.linalg import PlainLinear, SkewedLinear, mask_rows, skewable
from he_aero.ckks.norm import NormPlan, check_inv_sqrt_plan, normalise
from he_aero.ckks.packing import FeatureLayout, is_clean
from he_aero.ckks.parallel import product, run_parts
from he_aero.ckks.refresh import Refresher
from he_aero.errors import HeAeroError


@dataclass(frozen=True)
class BaselinePlans:
    """What a baseline block approximates beyond attention: its FFN activation (a GELU `Plan` or a
    `CompositeRelu`) on the calibrated pre-activations, and the 1/sqrt plans of its LayerNorms on the
    calibrated var + eps (`NormPlan`s; None where the block has no LayerNorm)."""

    act: Plan | CompositeRelu
    norm_attn: NormPlan | None = None
    norm_ffn: NormPlan | None = None


class EncryptedLayer:
    """A decoder layer's plaintext weights (a `models.linear_view.LayerView` or anything with its fields)
    prepared for the encrypted runtime; linear maps are built per token count and cached.

    Parameters
    ----------
    index : layer number (names cache keys and error messages).
    view : the layer's arrays: w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, w_mix, b_mix, sink (H,), n_head.
    exp_plan, recip_plan : approximation plans for exp on the shifted z window and 1/x on the shifted
        denominators (`AttentionSpec`).
    shift : the exp shift delta of `AttentionSpec` (he_aero/plan.py `exp_shift`); 0 for none.
    baseline : the extra plans of a baseline block (`view.act` set); None for a softmax-only block.
    """

    def __init__(
        self,
        index: int,
        view,
        exp_plan: Plan,
        recip_plan: Plan,
        shift: float = 0.0,
        baseline: BaselinePlans | None = None,
    ):
        if view.sink is None:
            raise HeAeroError(
                f"layer {index}: plain softmax (no sink) is not supported by the encrypted runtime"
            )
        self.index, self.view = index, view
        self.name = f"l{index}"
        self.norm_attn = self.ffn = None
        act = getattr(view, "act", None)
        if (act is None) != (baseline is None):
            raise HeAeroError(
                f"layer {index}: a baseline block (unfused FFN) needs BaselinePlans, a softmax-only one none"
            )
        # a pruned FFN (models/linear_view.py: identity mix, zero bias) costs nothing: X_out = X_SA
        self.pruned = baseline is None and _is_identity(view.w_mix, view.b_mix)
        if baseline is not None:
            self.ffn = EncryptedFFN(self.name, view, baseline.act, baseline.norm_ffn)
            if view.norm_attn:
                check_inv_sqrt_plan(baseline.norm_attn, f"{self.name} ln1")
                self.norm_attn = baseline.norm_attn
        self.d = view.w_q.shape[0]
        self.spec = AttentionSpec(
            self.name,
            int(view.n_head),
            tuple(float(c) for c in np.asarray(view.sink)),
            exp_plan,
            recip_plan,
            float(shift),
        )
        self._linears: dict = {}
        self.address = index  # how worker processes find this layer (he_aero/ckks/parallel.py)

    def _linear(self, which: str, layout: FeatureLayout, skewed: bool = False) -> PlainLinear | SkewedLinear:
        """The map `which` on `layout`: the block-diagonal kernel, or the one-token skewed one."""
        key = (which, layout, skewed)
        if key not in self._linears:
            w, b = {
                "qkv": self._fused_qkv(layout),
                "o": (self.view.w_o, self.view.b_o),
                "mix": (self.view.w_mix, self.view.b_mix),
            }[which]
            kernel = SkewedLinear if skewed else PlainLinear
            self._linears[key] = kernel(f"{self.name}.{which}", w, b, layout)
        return self._linears[key]

    def _product(self, ev, which: str, layout: FeatureLayout, xs: list[Ct], rescale: bool = True) -> list[Ct]:
        """A block-diagonal plaintext-weight product, split over the executor's workers at prefill
        (`parallel.product`)."""
        return product(ev, self, self._linear(which, layout), (which, layout), xs, rescale)

    def run_part(self, ev: Evaluator, part: str, *args):
        """One independent part of the prefill (he_aero/ckks/parallel.py): "linear" with (which, layout, xs,
        outputs, rescale) gives those output ciphertexts of the product `which` ("qkv", "o", "mix");
        "scores" and "values" run attention's parts (attention.PARTS) with this layer's spec.
        HeAeroError for any other part."""
        if part == "linear":
            which, layout, xs, outputs, rescale = args
            return self._linear(which, layout)(ev, xs, rescale=rescale, outputs=outputs)
        if part in PARTS:
            return PARTS[part](ev, self.spec, *args)
        raise HeAeroError(f"{self.name}: no part {part!r}")

    def _fused_qkv(self, layout: FeatureLayout) -> tuple[np.ndarray, np.ndarray]:
        """[W_q | W_k | W_v], each padded to whole ciphertexts so Q, K and V land in separate ciphertexts."""
        width = layout.n_ct * layout.per_ct
        w = np.zeros((self.d, 3 * width))
        b = np.zeros(3 * width)
        v = self.view
        for i, (wi, bi) in enumerate(((v.w_q, v.b_q), (v.w_k, v.b_k), (v.w_v, v.b_v))):
            w[:, i * width : i * width + self.d] = wi
            b[i * width : i * width + self.d] = bi
        return w, b

    def _check(self, xs: list[Ct], layout: FeatureLayout):
        if layout.n_features != self.d:
            raise HeAeroError(f"{self.name}: layout has {layout.n_features} features, the layer {self.d}")
        if len(xs) != layout.n_ct:
            raise HeAeroError(f"{self.name}: expected {layout.n_ct} ciphertexts, got {len(xs)}")

    def _qkv(self, ev, ref, xs, layout, cache: KVCache | None = None):
        """(residual, q, k, v), q k v pending; `cache`: a decode step's (module docstring)."""
        h = xs
        if self.norm_attn is not None:
            h = normalise(ev, ref, self.norm_attn, xs, layout, self.view.norm_eps, f"{self.name} ln1")
        skewed = (
            cache is not None
            and skewable(h, layout)
            and ref.affords(h, 2)
            and (
                decode_refreshes_inputs(ref, ref.headroom(h, 2) - 1, cache)  # what the old kernel leaves
                or skew_outweighs_a_round(layout, layout.n_ct, 3 * layout.n_ct, 3 * layout.n_ct)
            )
        )
        h = ref.ensure(h, 2 if skewed else 1, f"{self.name} qkv")
        if self.norm_attn is None:
            xs = h  # the residual refreshed with the projection's input (one round)
        # pending: attention rotates them first
        if skewed:
            qkv = mask_rows(ev, self._linear("qkv", layout, True)(ev, h), layout, rescale=False)
        else:
            qkv = self._product(ev, "qkv", layout, h, rescale=False)
            for c in qkv:
                c.layout = layout
        n = layout.n_ct
        return xs, qkv[:n], qkv[n : 2 * n], qkv[2 * n :]

    def _output_linear(self, layout: FeatureLayout) -> SkewedLinear:
        """The decode step's fused output map: X_out = X_SA w_mix + b_mix = X w_mix + heads (w_o w_mix) +
        (b_o w_mix + b_mix), one skewed product on the stacked input [X | heads] (each padded to whole
        ciphertexts: n_ct + n_ct ciphertexts in, n_ct out)."""
        key = ("out", layout)
        if key not in self._linears:
            v, n, d = self.view, layout.n_ct, self.d
            width = n * layout.per_ct
            w = np.zeros((2 * width, d))
            w[:d] = v.w_mix
            w[width : width + d] = np.asarray(v.w_o) @ np.asarray(v.w_mix)
            b = np.asarray(v.b_o) @ np.asarray(v.w_mix) + np.asarray(v.b_mix)
            self._linears[key] = SkewedLinear(f"{self.name}.out", w, b, layout.with_features(2 * width))
        return self._linears[key]

    def _finish(self, ev, ref, xs, heads, layout, decode: bool = False):
        mixes = decode and self.ffn is None and not self.pruned  # a decode step's w_mix follows w_o
        both = list(xs) + list(heads)
        if (
            mixes
            and skewable(both, layout)
            and ref.affords(both, 2)
            and skew_outweighs_a_round(layout, layout.n_ct, layout.n_ct, layout.n_ct)
        ):
            # w_o fused into w_mix: one skewed product of both inputs (clean, so a refresh sees no garbage
            # rows) and a row mask: n_in x n_out x 2 products instead of a block-diagonal w_mix's x F
            both = ref.ensure(both, 2, f"{self.name} w_o.w_mix")
            return mask_rows(ev, self._output_linear(layout)(ev, both), layout)
        heads = ref.ensure(heads, 1, f"{self.name} w_o")
        skewed = mixes and skewable(heads, layout)
        o = self._linear("o", layout, True)(ev, heads) if skewed else self._product(ev, "o", layout, heads)
        sa = layout.with_clean(is_clean(xs) and is_clean(o))  # a skewed w_o leaves garbage in rows >= 1
        x_sa = [ev.add(x, y, sa) for x, y in zip(xs, o, strict=True)]
        if self.ffn is not None:
            return self.ffn(ev, ref, x_sa, layout)
        if self.pruned:
            return x_sa
        x_sa = ref.ensure(x_sa, 1, f"{self.name} w_mix")
        return self._product(ev, "mix", layout, x_sa)

    def prefill(
        self, ev: Evaluator, ref: Refresher, xs: list[Ct], layout: FeatureLayout
    ) -> tuple[list[Ct], KVCache]:
        """The layer on T = layout.n_tokens encrypted tokens; returns (X_out, this layer's K/V cache)."""
        self._check(xs, layout)
        xs, q, k, v = self._qkv(ev, ref, xs, layout)
        fan_out = lambda part, calls: run_parts(ev, self, part, calls)  # noqa: E731
        heads = attention_prefill(ev, ref, self.spec, q, k, v, layout, fan_out)
        cache = KVCache([ev.rescale(c) for c in k], [ev.rescale(c) for c in v], layout.n_tokens)
        return self._finish(ev, ref, xs, heads, layout), cache

    def decode(
        self, ev: Evaluator, ref: Refresher, xs: list[Ct], cache: KVCache, layout: FeatureLayout
    ) -> list[Ct]:
        """One new token (row 0; layout.n_tokens == 1) against the cache, which grows by this token."""
        if layout.n_tokens != 1:
            raise HeAeroError(f"{self.name}: decode takes one token, the layout has {layout.n_tokens}")
        self._check(xs, layout)
        xs, q, k, v = self._qkv(ev, ref, xs, layout, cache)
        cache.append(ev, k, v)
        heads = attention_decode(ev, ref, self.spec, q, cache, layout)
        return self._finish(ev, ref, xs, heads, layout, decode=True)


REFRESH_IN_PRODUCTS = 150
"""Plaintext products that cost about as much as refreshing one ciphertext: ~54 ms per refreshed ciphertext
(both parties, in one process) against ~0.37 ms per product term of a `dot_plain`, measured on the shipped
ring (a decode step's profile, 2026-11-30); the two scale alike with the ring."""


def skew_outweighs_a_round(layout: FeatureLayout, n_in: int, n_out: int, round_cts: int) -> bool:
    """Whether a skewed decode product of n_in x n_out ciphertexts (G products per pair instead of the
    block-diagonal kernel's F) saves more than a refresh round of `round_cts` ciphertexts would cost, should
    its extra level cause one (`REFRESH_IN_PRODUCTS`). QKV (n_ct in, 3 n_ct out, q k v refreshed) and the
    fused output (the w_mix it replaces: n_ct x n_ct, the residual refreshed): no on the shipped model (756
    products against ~900, 252 against ~300), yes at GPT-2's width on N=16384 (27,216 against ~5,400, 9,072
    against ~1,800)."""
    f = layout.per_ct
    return n_in * n_out * (f - f // min(f, layout.block)) > REFRESH_IN_PRODUCTS * round_cts


def _is_identity(w, b) -> bool:
    w, b = np.asarray(w), np.asarray(b)
    return w.ndim == 2 and w.shape[0] == w.shape[1] and np.array_equal(w, np.eye(w.shape[0])) and not b.any()
