"""Encrypted sink attention (docs/design.md section 1) for all heads of one layer, on the "features" layout.

    z_ij = q_i . k_j - c_h ;  out_i = sum_{j<=i} exp(z_ij) v_j / (1 + sum_{j<=i} exp(z_ij))

computed with every weight scaled by e^-delta (`AttentionSpec.shift`, chosen by the planner so that weights,
numerators and denominators stay within the refresh bound: he_aero/plan.py `exp_shift`):
    w_ij = exp(z_ij - delta) ;  out_i = sum_j w_ij v_j / (e^-delta + sum_j w_ij)    (the same out_i).

Prefill (T tokens, causal). Scores are computed by lag r = i - j, which turns the causal mask into "rows
i >= r" and makes the key shift one slot rotation: rot(K, -r) puts k_{i-r} in row i of every feature block.
    SLOT-LAYOUT "lags" (scores and exp): ciphertext (a, g) holds, for the heads h of feature ciphertext a,
        block (h_local * d_k + rho), row i  =  z_h[i, i - r]  with r = g * d_k + rho,
        and exactly 0 where i < r or i >= T (and at padding).
    - per lag r: P = rot(Q, -rho B) * rot(K, -(r + rho B)) (both rotation chains: one key each); a head's
      d_k blocks are summed by log2(d_k) rotations, which leaves the lag-r scores of head h in block
      h d_k + rho; a masked plaintext product (one rescale per group, the exp polynomial's affine map folded
      into it) keeps only valid rows.
    - exp runs on the lag ciphertexts with constants added only on valid slots, so invalid slots stay 0.
    - per lag r: the lag's block is extracted (masked product) and spread over d_k blocks (log2(d_k)
      rotations): W_r = exp-weights broadcast over the head's features, in a window shifted by rho blocks.
      numerator = sum_r W_r * rot(V, -(r + rho B)) (one relinearisation per rho) and
      denominator = 1 + sum_r W_r (already broadcast), both shifted back per rho by a Horner scheme;
      out = numerator * recip(denominator).
Decode (one new token at row 0 against a K/V cache holding rows 0..n-1 of the same layout): q is spread to all
rows, scores for all cached keys come from one product and a head sum; the exp weights are spread over the
head's blocks, numerator and denominator are row sums (log2(B) rotations each) landing in row 0. The row
sums leave partial sums in rows >= 1; the reciprocal's input map is a plaintext product by a row-0 mask
(the level the map costs anyway) and its constants go to row 0 only, so 1/den, hence the output, is exactly 0
there: a clean output, which the skewed decode kernel of w_o needs (he_aero/ckks/linalg.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from approx.plans import Plan
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.linalg import block_spread, block_sum, horner, rotate_binary
from he_aero.ckks.packing import FeatureLayout, check_clean
from he_aero.ckks.poly import affine, run_plan_batch, shift_only
from he_aero.ckks.refresh import Refresher
from he_aero.errors import HeAeroError


@dataclass(frozen=True)
class AttentionSpec:
    """Per-layer attention constants: head count, sink logits c_h, the exp / reciprocal plans, the shift.

    exp_plan approximates exp on the shifted z window z - delta (its first poly's domain); recip_plan
    approximates 1/x on the shifted denominators [e^-delta, e^-delta den_max] (the sink's weight e^-delta is
    their floor). shift: delta >= 0 (0: exp(z) and a sink weight of 1)."""

    name: str
    n_head: int
    sink: tuple[float, ...]
    exp_plan: Plan
    recip_plan: Plan
    shift: float = 0.0

    def __post_init__(self):
        if len(self.sink) != self.n_head:
            raise HeAeroError(f"{self.name}: {len(self.sink)} sink logits for {self.n_head} heads")
        if self.exp_plan.steps[0].op != "poly" or self.recip_plan.steps[0].op != "poly":
            raise HeAeroError(f"{self.name}: plans must start with a poly step")
        if isinstance(self.shift, bool) or not (
            isinstance(self.shift, (int, float)) and 0 <= self.shift < 64
        ):
            raise HeAeroError(f"{self.name}: exp shift must be a number in [0, 64), got {self.shift!r}")

    @property
    def sink_weight(self) -> float:
        """The sink's term of every denominator: e^-delta."""
        return math.exp(-self.shift)

    def head_dim(self, layout: FeatureLayout) -> int:
        return head_size(layout.n_features, self.n_head, layout.per_ct, self.name)


def head_size(d: int, n_head: int, per_ct: int, name: str) -> int:
    """d_k = d / n_head. HeAeroError naming `name` unless it is a whole power of two dividing the per_ct
    feature blocks of a ciphertext (a head's blocks are summed by rotations inside one ciphertext)."""
    if d % n_head:
        raise HeAeroError(f"{name}: d={d} is not a multiple of {n_head} heads")
    dk = d // n_head
    if dk & (dk - 1) or per_ct % dk:
        raise HeAeroError(
            f"{name}: head size {dk} must be a power of two dividing the {per_ct} blocks per ciphertext"
        )
    return dk


DECODE_SCORE_LEVELS = 2
"""Levels the decode scores take from q and the keys: q k (ct x ct), then the masked product with the exp
map folded in."""
DECODE_VALUE_LEVELS = 1
"""Levels the decode's weighted values take from the values: weights x values."""


def decode_refreshes_inputs(ref: Refresher, levels: int, cache: KVCache) -> bool:
    """Whether `attention_decode` refreshes q and the keys (its scores) and the values (A.V) before using
    them whenever q and the new k, v arrive at most `levels` above the refresh floor: then one level more or
    less on them changes nothing downstream (the decode QKV's row mask, he_aero/ckks/layer.py). The cached
    values count at their lowest (a new one joins them at the lower level of the two)."""
    cached = min(c.level - c.pending for c in cache.v) - ref.min_level()
    return levels < DECODE_SCORE_LEVELS and min(levels, cached) < DECODE_VALUE_LEVELS


def _head_const(spec: AttentionSpec, a: int, hpc: int, dk: int, block: int, valid: np.ndarray) -> np.ndarray:
    """beta - alpha (c_h + delta) on the valid slots of each head's blocks (the folded affine map of the exp
    poly, and the shift)."""
    alpha, beta = affine(spec.exp_plan.steps[0])
    sinks = [spec.sink[a * hpc + h] + spec.shift if a * hpc + h < spec.n_head else 0.0 for h in range(hpc)]
    per_block = np.repeat([beta - alpha * c for c in sinks], dk)
    return np.repeat(per_block, block) * valid


class KVCache:
    """Encrypted keys and values of the tokens seen so far, in the features layout (row t = token t)."""

    def __init__(self, k: list[Ct], v: list[Ct], length: int):
        self.k, self.v, self.length = k, v, length

    def append(self, ev: Evaluator, k_new: list[Ct], v_new: list[Ct]):
        """Add one token's k, v (row 0 of their ciphertexts, other rows 0) as row `length`. HeAeroError, with
        the cache unchanged, unless every list holds one ciphertext per feature ciphertext."""
        counts = (len(self.k), len(self.v), len(k_new), len(v_new))
        if len(set(counts)) != 1:
            raise HeAeroError(
                f"K/V cache: keys, values, new key, new value hold {counts} ciphertexts, not equal"
            )
        check_clean(list(k_new) + list(v_new), "K/V cache append")  # rows >= 1 would land on cached rows
        p = self.length  # row 0 -> row p: power-of-two rotations (keys shared with the row spreads)
        self.k = [ev.add(c, ev.rescale(rotate_binary(ev, n, -p))) for c, n in zip(self.k, k_new, strict=True)]
        self.v = [ev.add(c, ev.rescale(rotate_binary(ev, n, -p))) for c, n in zip(self.v, v_new, strict=True)]
        self.length += 1


def attention_prefill(
    ev: Evaluator,
    ref: Refresher,
    spec: AttentionSpec,
    q: list[Ct],
    k: list[Ct],
    v: list[Ct],
    layout: FeatureLayout,
    fan_out: Callable[[str, list[tuple]], list] | None = None,
) -> list[Ct]:
    """Causal sink attention of T = layout.n_tokens tokens; q, k, v in the features layout (heads in
    consecutive d_k-block groups). Returns the heads' outputs concatenated, features layout.

    The score and weighted-value loops of each feature ciphertext share no ciphertext with the others'
    (`lag_scores`, `weighted_values`): `fan_out(part, calls)` runs them, in place by default or on worker
    processes (he_aero/ckks/parallel.py); refreshes and the lockstep exp / 1/x stages stay here."""
    if fan_out is None:
        fan_out = lambda part, calls: [PARTS[part](ev, spec, *c) for c in calls]  # noqa: E731
    groups, n_ct = -(-layout.n_tokens // spec.head_dim(layout)), layout.n_ct
    both = ref.ensure(list(q) + list(k), 2, f"{spec.name} scores")
    per_ct = fan_out("scores", [(both[a], both[n_ct + a], a, layout) for a in range(n_ct)])
    lag_cts = [c for cts in per_ct for c in cts]  # lag_cts[a * groups + g] (SLOT-LAYOUT "lags")
    valids = [
        ((spec.name, "valid", layout.n_tokens, a, g), _lag_valid(spec, layout, a, g).ravel())
        for a in range(n_ct)
        for g in range(groups)
    ]
    # exp on valid slots only, all lag ciphertexts in lockstep
    weights = run_plan_batch(ev, spec.exp_plan, None, lag_cts, valids, ref, f"{spec.name} exp")
    stage = ref.ensure(weights + list(v), 2, f"{spec.name} A.V")
    weights, vs = stage[: len(weights)], stage[len(weights) :]
    calls = [(weights[a * groups : (a + 1) * groups], vs[a], a, layout) for a in range(n_ct)]
    nums, dens = zip(*fan_out("values", calls), strict=True)
    return _normalise(ev, ref, spec, list(nums), list(dens), layout)


def _lag_valid(spec: AttentionSpec, layout: FeatureLayout, a: int, g: int) -> np.ndarray:
    """(heads per ciphertext, d_k, B): 1 on the slots of lag group g of feature ciphertext a that hold a
    score (rows i >= r and i < T of block h d_k + rho, r = g d_k + rho; real heads only)."""
    dk = spec.head_dim(layout)
    blk, T = layout.block, layout.n_tokens
    hpc = layout.per_ct // dk
    real = min(hpc, spec.n_head - a * hpc)  # heads present in this ciphertext (the rest is padding)
    rows = np.arange(blk)
    valid = np.zeros((hpc, dk, blk))
    for rho in range(min(dk, T - g * dk)):
        r = g * dk + rho
        valid[:real, rho, :] = (rows >= r) & (rows < T)
    return valid


def lag_scores(ev: Evaluator, spec: AttentionSpec, qa: Ct, ka: Ct, a: int, layout: FeatureLayout) -> list[Ct]:
    """The shifted, affinely mapped scores of feature ciphertext a's heads, one ciphertext per lag group
    (SLOT-LAYOUT "lags", module docstring), from its q and k (2 levels)."""
    dk = spec.head_dim(layout)
    blk, f, T = layout.block, layout.per_ct, layout.n_tokens
    hpc, groups = f // dk, -(-T // dk)
    alpha, _ = affine(spec.exp_plan.steps[0])
    qrot = [qa]  # qrot[rho] = rot(Q, -rho B): a chain of rotations by -B (on the pending product)
    while len(qrot) < min(dk, T):
        qrot.append(ev.rotate(qrot[-1], -blk))
    qrot = [ev.rescale(c) for c in qrot]
    out, kstart = [], ka
    for g in range(groups):
        if g:
            kstart = ev.rotate(kstart, -dk)  # rot(K, -g d_k)
        kcur = kstart
        valid = _lag_valid(spec, layout, a, g)
        terms = []
        for rho in range(min(dk, T - g * dk)):
            r = g * dk + rho
            if rho:
                kcur = ev.rotate(kcur, -(blk + 1))  # now rot(K, -(r + rho B))
            hs = ev.rescale(block_sum(ev, ev.mul(qrot[rho], ev.rescale(kcur), rescale=False), dk, blk))
            mask = np.zeros((hpc, dk, blk))
            mask[:, rho, :] = alpha * valid[:, rho, :]
            terms.append((hs, (spec.name, "lagmask", T, a, r), lambda m=mask: m.ravel()))
        z = ev.dot_plain(terms)
        vflat = valid.ravel()
        const = lambda vf=vflat, a=a: _head_const(spec, a, hpc, dk, blk, vf)  # noqa: E731
        out.append(ev.add_plain(z, (spec.name, "zconst", T, a, g), const))
    return out


def weighted_values(
    ev: Evaluator, spec: AttentionSpec, weights: list[Ct], va: Ct, a: int, layout: FeatureLayout
) -> tuple[Ct, Ct]:
    """(numerator, denominator) of feature ciphertext a's heads from its lag groups' exp weights and its V.

    Lag r's weights stay in block h d_k + rho and are spread over the d_k blocks that follow (a window
    shifted by rho); V is shifted by rho blocks to match (the same rotation chain as K). The per-rho
    numerators and denominators are rotated back by a Horner scheme in rotations by B: 2 keys in all."""
    dk = spec.head_dim(layout)
    blk, f, T = layout.block, layout.per_ct, layout.n_tokens
    hpc, groups = f // dk, -(-T // dk)
    pairs: list[list] = [[] for _ in range(min(dk, T))]
    dens: list[list] = [[] for _ in range(min(dk, T))]
    vstart = va
    for g in range(groups):
        if g:
            vstart = ev.rotate(vstart, -dk)
        vcur = vstart
        for rho in range(min(dk, T - g * dk)):
            if rho:
                vcur = ev.rotate(vcur, -(blk + 1))  # rot(V, -(r + rho B))
            sel = np.zeros((hpc, dk, blk))
            sel[:, rho, :] = 1.0
            key = (spec.name, "lagsel", rho)
            w = ev.mul_plain(weights[g], key, lambda s=sel: s.ravel(), rescale=False)
            w = block_spread(ev, w, dk, blk)  # still pending: the spread's rotations add little noise
            pairs[rho].append((ev.rescale(w), ev.rescale(vcur)))
            dens[rho].append(w)
    num = ev.rescale(horner(ev, [ev.dot(p, rescale=False) for p in pairs], blk))
    den = ev.rescale(horner(ev, [ev.add_many(d) for d in dens], blk))
    return num, ev.add_scalar(den, spec.sink_weight)


PARTS = {"scores": lag_scores, "values": weighted_values}
"""attention_prefill's independent parts by name (what `fan_out` is asked to run)."""


def _normalise(ev, ref, spec, nums, dens, layout, rows: bool = False) -> list[Ct]:
    """out = numerator * (1 / denominator), all ciphertexts in lockstep.

    rows : (decode) rows >= n_tokens of nums and dens hold garbage. The reciprocal's input map
        t = alpha den + beta is then a plaintext product by alpha on rows < n_tokens only (the level its
        scalar product costs) plus beta there, and the plan adds its constants there only (`valid`), so
        1/den and the output are exactly 0 on the other rows (he_aero/ckks/poly.py, "Masking"). A map that
        is a shift (no level to fold the mask into) leaves them dirty, and the output's layout says so."""
    plan, step = spec.recip_plan, spec.recip_plan.steps[0]
    mask = rows and not shift_only(step)
    if mask:
        valid, rows_key = layout.row_mask(), (spec.name, layout.n_tokens)
        valids = [(("recip rows", *rows_key), valid)] * len(dens)
        alpha, beta = affine(step)
        # its own stage: the level the plan's first piece would have spent on the map (a round here or at
        # the mapped poly falls where one fell on the unmapped poly)
        dens = ref.ensure(dens, 1, f"{spec.name} 1/x map")
        ts = [  # the keys hold the constants: a key names its plaintext's content (specs may share a name)
            ev.add_plain(
                ev.mul_plain(d, ("recip map", *rows_key, alpha), lambda: alpha * valid, layout),  # clean
                ("recip shift", *rows_key, beta),
                lambda: beta * valid,
            )
            for d in dens
        ]
        recips = run_plan_batch(ev, plan, dens, ts, valids, ref, f"{spec.name} 1/x")
    else:
        recips = run_plan_batch(ev, plan, dens, refresher=ref, name=f"{spec.name} 1/x")
    stage = ref.ensure(nums + recips, 1, f"{spec.name} normalise")
    n = len(nums)
    out = layout.with_clean(mask or not rows)
    return [ev.mul(a, b, out) for a, b in zip(stage[:n], stage[n:], strict=True)]


def attention_decode(
    ev: Evaluator, ref: Refresher, spec: AttentionSpec, q: list[Ct], cache: KVCache, layout: FeatureLayout
) -> list[Ct]:
    """One query (row 0 of q, rows >= 1 exactly 0) against all `cache.length` cached keys/values (the new
    token included). Returns the output in row 0, rows >= 1 exactly 0 unless the reciprocal's map is a
    shift (`_normalise`; the layout then says they hold garbage)."""
    dk = spec.head_dim(layout)
    blk, f, n = layout.block, layout.per_ct, cache.length
    if n > blk:
        raise HeAeroError(f"{spec.name}: the cache holds {n} tokens, blocks hold {blk}")
    hpc = f // dk
    alpha, _ = affine(spec.exp_plan.steps[0])
    n_ct = layout.n_ct
    if not len(q) == len(cache.k) == len(cache.v) == n_ct:
        raise HeAeroError(
            f"{spec.name}: decode takes {n_ct} ciphertexts each of q, cached keys and cached values, got "
            f"{len(q)}, {len(cache.k)}, {len(cache.v)}"
        )
    check_clean(q, f"{spec.name} decode q")  # its spread over the rows sums them all
    both = ref.ensure(list(q) + list(cache.k), DECODE_SCORE_LEVELS, f"{spec.name} decode scores")
    zs, valids = [], []
    for a in range(n_ct):
        valid = np.zeros((hpc, dk, blk))
        valid[: min(hpc, spec.n_head - a * hpc), 0, :n] = 1.0  # head starts, cached rows, real heads only
        vflat = valid.ravel()
        qs = ev.rescale(block_spread(ev, both[a], blk, 1))  # row 0 copied to every row (rows >= 1 are 0)
        hs = ev.rescale(block_sum(ev, ev.mul(qs, both[n_ct + a], rescale=False), dk, blk))
        z = ev.mul_plain(hs, (spec.name, "dmask", n, a), lambda vf=vflat: alpha * vf)
        const = lambda vf=vflat, a=a: _head_const(spec, a, hpc, dk, blk, vf)  # noqa: E731
        zs.append(ev.add_plain(z, (spec.name, "dconst", n, a), const))
        valids.append(((spec.name, "dvalid", n, a), vflat))
    ws = run_plan_batch(ev, spec.exp_plan, None, zs, valids, ref, f"{spec.name} decode exp")
    ws = [block_spread(ev, w, dk, blk) for w in ws]  # exp weights broadcast over the head's features
    stage = ref.ensure(ws + list(cache.v), DECODE_VALUE_LEVELS, f"{spec.name} decode A.V")
    # row 0 holds the row sums; rows >= 1 partial sums (garbage): marked, so no stage that needs clean
    # rows can take them unawares (`_normalise` reads row 0 through a row-masked product)
    dirty = layout.with_clean(False)
    nums = [
        ev.rescale(block_sum(ev, ev.mul(w, va, dirty, rescale=False), blk, 1))
        for w, va in zip(stage[:n_ct], stage[n_ct:], strict=True)
    ]
    dens = [ev.add_scalar(block_sum(ev, w, blk, 1), spec.sink_weight, dirty) for w in stage[:n_ct]]
    return _normalise(ev, ref, spec, nums, dens, layout, rows=True)
