"""Plaintext-weight linear algebra on the "features" layout (he_aero/ckks/packing.py).

X W + b with X (T x d_in) in n_in ciphertexts and W (d_in x d_out) plaintext: a block-diagonal method with
baby-step giant-step. With F feature blocks per ciphertext, rot(X_a, s B) moves feature column (j + s) mod F
of input ciphertext a into block j, so

    out_b = sum_a sum_{s<F} rot(X_a, s B) * D[a, b, s],   D[a, b, s][j B + t] = W[a F + (j+s) % F, b F + j]

and writing s = g u + v (v < g baby steps, u giant steps)

    out_b = sum_u rot( sum_{a, v} rot(X_a, v B) * roll(D[a, b, g u + v], g u B), g u B ).

Cost per product: (g - 1) rotations per input ciphertext, (F/g - 1) per output ciphertext, n_in * n_out * F
plaintext products (all-zero diagonals skipped, one rescale per giant step), one level. Only two rotation
keys: the baby steps are a chain of rotations by B, the giant steps a Horner scheme in rotations by g B.
Diagonals are encoded once per (layer, level, token count) and cached by the evaluator. Rows t >= n_tokens
of every diagonal and of the bias are 0, so padding rows stay exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.packing import FeatureLayout
from he_aero.errors import HeAeroError


def baby_steps(per_ct: int) -> int:
    """g = the power of two nearest sqrt(F) from above: g - 1 + F/g - 1 rotations is then minimal."""
    return 1 << math.ceil(math.log2(math.sqrt(per_ct))) if per_ct > 1 else 1


class PlainLinear:
    """y = x W + b on encrypted x in the features layout, W and b plaintext (float64).

    Parameters
    ----------
    name : cache key prefix (unique per weight matrix, e.g. "l0.w_q").
    w : (d_in, d_out); b : (d_out,) or None.
    layout : the input layout (its n_tokens decides the row mask; d_in must equal n_features).
    """

    def __init__(self, name: str, w: np.ndarray, b: np.ndarray | None, layout: FeatureLayout):
        w = np.asarray(w, dtype=float)
        if w.ndim != 2 or w.shape[0] != layout.n_features:
            raise HeAeroError(
                f"{name}: weight shape {w.shape} does not match {layout.n_features} input features"
            )
        if b is not None and np.asarray(b).shape != (w.shape[1],):
            raise HeAeroError(f"{name}: bias shape {np.asarray(b).shape} != ({w.shape[1]},)")
        self.name, self.w, self.layout = name, w, layout
        self.b = None if b is None else np.asarray(b, dtype=float)
        self.out_layout = layout.with_features(w.shape[1])
        f = layout.per_ct
        self.g = baby_steps(f)
        self.giants = -(-f // self.g)
        # diag[a, b_, s, j] = W[a F + (j + s) % F, b_ F + j] (0 outside W)
        n_in, n_out = layout.n_ct, self.out_layout.n_ct
        wpad = np.zeros((n_in * f, n_out * f))
        wpad[: w.shape[0], : w.shape[1]] = w
        j = np.arange(f)
        cols = np.arange(n_out)[:, None] * f + j[None, :]  # (n_out, F): output feature of block j
        self.diag = np.empty((n_in, n_out, f, f))
        for a in range(n_in):
            for s in range(f):
                self.diag[a, :, s, :] = wpad[(a * f + (j + s) % f)[None, :], cols]
        self.row_mask = layout.row_mask()

    def _diag_vector(self, a: int, b: int, s: int, u: int) -> np.ndarray:
        vec = np.repeat(self.diag[a, b, s], self.layout.block) * self.row_mask  # SLOT-LAYOUT: features
        return np.roll(vec, self.g * u * self.layout.block)

    def _bias_vector(self, b: int) -> np.ndarray:
        f = self.layout.per_ct
        vals = np.zeros(f)
        part = self.b[b * f : (b + 1) * f]
        vals[: part.size] = part
        return np.repeat(vals, self.layout.block) * self.row_mask

    def __call__(
        self, ev: Evaluator, xs: list[Ct], rescale: bool = True, outputs: Sequence[int] | None = None
    ) -> list[Ct]:
        """X W + b. The giant-step rotations act on the products before their rescale (small key-switching
        noise); `rescale=False` returns the outputs still pending, for callers that rotate them further.
        `outputs`: only these output ciphertexts (default all), in the order given: they share nothing but
        the baby steps, so separate processes can compute separate outputs (he_aero/ckks/parallel.py)."""
        if len(xs) != self.layout.n_ct:
            raise HeAeroError(f"{self.name}: expected {self.layout.n_ct} ciphertexts, got {len(xs)}")
        xs = [ev.rescale(x) for x in xs]
        level = ev.lowest(xs)
        xs = [ev.align(x, level) for x in xs]
        f, blk, g = self.layout.per_ct, self.layout.block, self.g
        # (n_in, n_out, F): skip diagonals that would encode to the zero plaintext (SEAL refuses a product
        # by it: "result ciphertext is transparent"); what they drop is below the plaintext resolution
        nz = np.abs(self.diag).max(axis=3) * 2.0**ev.params.scale_bits >= 0.5
        baby = [[x] for x in xs]  # baby[a][v] = rot(X_a, v B), built as a chain of rotations by B (one key)
        outs = []
        tok = self.layout.n_tokens
        n_out = self.out_layout.n_ct
        for b in range(n_out) if outputs is None else outputs:
            if not 0 <= b < n_out:
                raise HeAeroError(f"{self.name}: no output ciphertext {b} (the product has {n_out})")
            partials = []
            for u in range(self.giants):
                terms = []
                for a in range(len(xs)):
                    for v in range(g):
                        s = g * u + v
                        if s >= f or not nz[a, b, s]:
                            continue
                        while len(baby[a]) <= v:
                            baby[a].append(ev.rotate(baby[a][-1], blk))
                        key = (self.name, tok, a, b, s)
                        make = lambda a=a, b=b, s=s, u=u: self._diag_vector(a, b, s, u)  # noqa: E731
                        terms.append((baby[a][v], key, make))
                partials.append(ev.dot_plain(terms, rescale=False) if terms else None)
            if all(p is None for p in partials):
                raise HeAeroError(f"{self.name}: output ciphertext {b} has an all-zero weight block")
            out = horner(ev, partials, g * blk)
            if self.b is not None and np.any(self.b[b * f : (b + 1) * f]):
                out = ev.add_plain(out, (self.name, "bias", tok, b), lambda b=b: self._bias_vector(b))
            if rescale:
                out = ev.rescale(out)
            out.layout = self.out_layout
            outs.append(out)
        return outs


def horner(ev: Evaluator, parts: list[Ct | None], step: int) -> Ct:
    """sum_u rot(parts[u], u * step) with len - 1 rotations by the one step `step` (None parts are 0)."""
    acc = None
    for part in reversed(parts):
        if acc is not None:
            acc = ev.rotate(acc, step)
        if part is not None:
            acc = part if acc is None else ev.add(acc, part)
    return acc


def rotate_binary(ev: Evaluator, ct: Ct, step: int) -> Ct:
    """Rotation by any `step` as a product of power-of-two rotations of the same sign (keys +-2^k only)."""
    sign, k = (1 if step >= 0 else -1), abs(step)
    bit = 1
    while k:
        if k & 1:
            ct = ev.rotate(ct, sign * bit)
        k >>= 1
        bit <<= 1
    return ct


def block_sum(ev: Evaluator, ct: Ct, group: int, block: int) -> Ct:
    """Block j <- sum of blocks j .. j + group - 1 (cyclic): log2(group) rotations. Exact at group starts.
    (Works on pending products too: pass one to keep the rotation noise small.)"""
    _check_pow2(group)
    step = 1
    while step < group:
        ct = ev.add(ct, ev.rotate(ct, step * block))
        step *= 2
    return ct


def block_spread(ev: Evaluator, ct: Ct, group: int, block: int) -> Ct:
    """Block j <- sum of blocks j - group + 1 .. j: copies a block held alone at a group start to the whole
    group (the other blocks must be 0). log2(group) rotations."""
    _check_pow2(group)
    step = 1
    while step < group:
        ct = ev.add(ct, ev.rotate(ct, -step * block))
        step *= 2
    return ct


def _check_pow2(n: int):
    if n < 1 or n & (n - 1):
        raise HeAeroError(f"group size must be a power of two, got {n}")
