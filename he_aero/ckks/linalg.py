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
of every diagonal and of the bias are 0, so padding rows stay exactly 0, whatever the input holds there.

One token (decode) has its data in row 0 of each block only; the kernel above still pays n_in * n_out * F
products for it. `SkewedLinear` pays n_in * n_out (docstring there) when the input's rows >= 1 are exactly
0, and leaves garbage in the output's rows >= 1; `mask_rows` clears them with one more level.
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
        self.name, self.layout = name, layout
        self.w, self.b = _checked(name, w, b, layout)
        # its diagonals are 0 on rows >= n_tokens: the output is clean whatever the input holds there
        self.out_layout = layout.with_features(self.w.shape[1]).with_clean(True)
        f = layout.per_ct
        self.g = baby_steps(f)
        self.giants = -(-f // self.g)
        # diag[a, b_, s, j] = W[a F + (j + s) % F, b_ F + j] (0 outside W)
        n_in, n_out = layout.n_ct, self.out_layout.n_ct
        wpad = _padded(self.w, n_in * f, n_out * f)
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
        return np.repeat(_bias_part(self.b, b, self.layout.per_ct), self.layout.block) * self.row_mask

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
        nz = _representable(ev, np.abs(self.diag).max(axis=3))  # (n_in, n_out, F): diagonals to multiply
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


class SkewedLinear:
    """y = x W + b for ONE token (decode) in the features layout: n_in * n_out plaintext products, not
    `PlainLinear`'s n_in * n_out * F. The input's rows >= 1 must be exactly 0 (refused otherwise); the
    output holds y in row 0 and garbage in rows >= 1 (its layout says so: `FeatureLayout.clean` False).

    With x_a (a features chunk, x_a[i] = x[a F + i]) in row 0 of each block of X_a, R = min(F, B) rows and
    G = F / R skewed copies (B, F powers of two, F B = slots):

    1. Skew. S_a = sum_{t<R} rot(X_a, t (B - 1)), built by doubling (S += rot(S, 2^k (B - 1)), k < log2 R).
       A left rotation by t (B - 1) takes slot (j + t) B (row 0 of block j + t) to slot j B + t (row t of
       block j), cyclically over the F B slots, so
           SLOT-LAYOUT "skewed": slot j B + t of S_a holds x_a[(j + t) mod F] for t < R, 0 for t >= R.
       Each rotation fills one row that was 0: hence exact zeros in rows >= 1 of X_a, or rows collide.
       Copy g (F > B only) is rot(S_a, g R B): block j + g R moved to block j, slot j B + t holding
       x_a[(j + g R + t) mod F] (a chain of rotations by R B, one key).
    2. Product. out_b = sum_{a, g} copy_g(S_a) * D[a, b, g] with D[a, b, g][j B + t] =
       W[a F + (j + g R + t) mod F, b F + j] for t < R (diagonal g R + t of block (a, b), placed in row t):
       one `dot_plain`, one rescale.
    3. Row sum. `block_sum(out_b, R, 1)` on the PENDING product (log2 R rotations by 1, 2, .., R / 2; key
       switching noise ~2^-32 of the value before the rescale): row 0 of block j = y[b F + j]. Rows >= 1
       get partial sums that cross into block j + 1. The bias is added on row 0 only.

    Cost: log2(R) + G - 1 rotations per input ciphertext, log2(R) per output ciphertext, n_in * n_out * G
    plaintext products (all-zero diagonals skipped), one level; rotation keys 2^k (B - 1) (k < log2 R), R B
    (if F > B) and 1, 2, .., R / 2. The shipped ring (F = B = 64, d = 128): the fused QKV takes 48 rotations
    and 12 products instead of 56 and 768.

    Parameters as `PlainLinear` (layout.n_tokens must be 1).
    """

    def __init__(self, name: str, w: np.ndarray, b: np.ndarray | None, layout: FeatureLayout):
        if layout.n_tokens != 1:
            raise HeAeroError(f"{name}: the skewed kernel takes one token, the layout has {layout.n_tokens}")
        self.name, self.layout = name, layout.with_clean(True)
        self.w, self.b = _checked(name, w, b, layout)
        self.out_layout = layout.with_features(self.w.shape[1]).with_clean(False)
        f, blk = layout.per_ct, layout.block
        self.rows = min(f, blk)
        self.copies = f // self.rows
        n_in, n_out = layout.n_ct, self.out_layout.n_ct
        wpad = _padded(self.w, n_in * f, n_out * f)
        j, t = np.arange(f)[:, None], np.arange(self.rows)[None, :]
        cols = np.arange(n_out)[:, None, None] * f + j[None]  # (n_out, F, 1): output feature of block j
        # diag[a, b_, g, j, t] = W[a F + (j + g R + t) % F, b_ F + j]
        self.diag = np.empty((n_in, n_out, self.copies, f, self.rows))
        for a in range(n_in):
            for g in range(self.copies):
                self.diag[a, :, g] = wpad[(a * f + (j + g * self.rows + t) % f)[None], cols]

    def _diag_vector(self, a: int, b: int, g: int) -> np.ndarray:
        vec = np.zeros((self.layout.per_ct, self.layout.block))  # SLOT-LAYOUT: skewed, (block j, row t)
        vec[:, : self.rows] = self.diag[a, b, g]
        return vec.ravel()

    def _bias_vector(self, b: int) -> np.ndarray:
        vec = np.zeros((self.layout.per_ct, self.layout.block))
        vec[:, 0] = _bias_part(self.b, b, self.layout.per_ct)
        return vec.ravel()

    def _skew(self, ev: Evaluator, x: Ct) -> list[Ct]:
        """The G skewed copies of x (step 1 of the class docstring)."""
        blk, step = self.layout.block, 1
        while step < self.rows:
            x = ev.add(x, ev.rotate(x, step * (blk - 1)))
            step *= 2
        copies = [x]
        while len(copies) < self.copies:
            copies.append(ev.rotate(copies[-1], self.rows * blk))
        return copies

    def __call__(self, ev: Evaluator, xs: list[Ct], rescale: bool = True) -> list[Ct]:
        """X W + b in row 0 (rows >= 1: garbage); `rescale=False` returns the outputs still pending."""
        if len(xs) != self.layout.n_ct:
            raise HeAeroError(f"{self.name}: expected {self.layout.n_ct} ciphertexts, got {len(xs)}")
        if not skewable(xs, self.layout):
            raise HeAeroError(
                f"{self.name}: the skewed kernel needs one token with rows >= 1 exactly 0 (a clean "
                f"{self.layout.block}-slot-block features layout); got layouts {[x.layout for x in xs]}"
            )
        xs = [ev.rescale(x) for x in xs]
        level = ev.lowest(xs)
        xs = [ev.align(x, level) for x in xs]
        nz = _representable(ev, np.abs(self.diag).max(axis=(3, 4)))  # (n_in, n_out, G)
        skewed: dict[int, list[Ct]] = {}  # made on first use: an input whose weights are all 0 costs nothing
        outs = []
        for b in range(self.out_layout.n_ct):
            terms = []
            for a, g in zip(*np.nonzero(nz[:, b]), strict=True):
                a, g = int(a), int(g)
                if a not in skewed:
                    skewed[a] = self._skew(ev, xs[a])
                make = lambda a=a, b=b, g=g: self._diag_vector(a, b, g)  # noqa: E731
                terms.append((skewed[a][g], (self.name, "skewed", a, b, g), make))
            if not terms:
                raise HeAeroError(f"{self.name}: output ciphertext {b} has an all-zero weight block")
            out = block_sum(ev, ev.dot_plain(terms, rescale=False), self.rows, 1)
            if self.b is not None and np.any(self.b[b * self.layout.per_ct : (b + 1) * self.layout.per_ct]):
                out = ev.add_plain(out, (self.name, "skewed-bias", b), lambda b=b: self._bias_vector(b))
            if rescale:
                out = ev.rescale(out)
            out.layout = self.out_layout
            outs.append(out)
        return outs


def skewable(xs: list[Ct], layout: FeatureLayout) -> bool:
    """Whether `SkewedLinear` takes xs: one token in `layout`'s blocks, rows >= 1 exactly 0 (their layouts
    say so, `FeatureLayout.clean`; a ciphertext without a `FeatureLayout` does not)."""
    return all(
        isinstance(x.layout, FeatureLayout)
        and x.layout.clean
        and (x.layout.slots, x.layout.block, x.layout.n_tokens) == (layout.slots, layout.block, 1)
        for x in xs
    )


def mask_rows(ev: Evaluator, cts: list[Ct], layout: FeatureLayout, rescale: bool = True) -> list[Ct]:
    """Rows t >= layout.n_tokens of every block set to 0 (one plaintext product, one level; the mask is
    cached): what a consumer that needs clean rows reads after a `SkewedLinear`. The outputs carry `layout`,
    clean; `rescale=False` leaves them pending."""
    mask = layout.with_clean(True)
    key = ("rows", layout.block, layout.n_tokens)
    return [ev.mul_plain(c, key, mask.row_mask, mask, rescale) for c in cts]


def _checked(name: str, w, b, layout: FeatureLayout) -> tuple[np.ndarray, np.ndarray | None]:
    """(w, b) as float64, HeAeroError naming `name` unless w is (layout.n_features, d_out), b (d_out,)."""
    w = np.asarray(w, dtype=float)
    if w.ndim != 2 or w.shape[0] != layout.n_features:
        raise HeAeroError(f"{name}: weight shape {w.shape} does not match {layout.n_features} input features")
    if b is not None and np.asarray(b).shape != (w.shape[1],):
        raise HeAeroError(f"{name}: bias shape {np.asarray(b).shape} != ({w.shape[1]},)")
    return w, None if b is None else np.asarray(b, dtype=float)


def _padded(w: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """w in the top left corner of a (rows, cols) zero matrix (whole ciphertexts of features)."""
    out = np.zeros((rows, cols))
    out[: w.shape[0], : w.shape[1]] = w
    return out


def _bias_part(bias: np.ndarray, b: int, per_ct: int) -> np.ndarray:
    """The F bias values of output ciphertext b (0 past the end)."""
    vals = np.zeros(per_ct)
    part = bias[b * per_ct : (b + 1) * per_ct]
    vals[: part.size] = part
    return vals


def _representable(ev: Evaluator, peaks: np.ndarray) -> np.ndarray:
    """Which diagonals (by their largest |value|) encode to a nonzero plaintext. SEAL refuses a product by
    the zero plaintext ("result ciphertext is transparent"); what a skipped one drops is below the
    plaintext resolution."""
    return peaks * 2.0**ev.params.scale_bits >= 0.5


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
