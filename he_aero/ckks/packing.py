"""Slot layouts: how a (tokens x features) matrix, or one token's vector, sits in CKKS slots.

SLOT-LAYOUT "features" (the runtime's activation layout, chosen in docs/kernels.md):
    ciphertext c, slot j * B + t  holds  X[t, c * F + j]      (0 <= j < F, 0 <= t < B)
    B = block = a power of two >= the token count, F = slots / B features per ciphertext,
    rows t >= n_tokens are exactly 0 (kernels keep them 0: padding must not leak into sums), unless the
    layout says otherwise (`FeatureLayout.clean` False: they hold bounded garbage, e.g. a row sum's partial
    sums, that only a row-masked plaintext product may read).
Why: a rotation by s * B moves whole feature columns cyclically (F * B = slots), so X W is a block-diagonal
BSGS with O(sqrt(F)) rotations; a rotation by r < B shifts every column down r tokens at once (the causal
lag of attention), and a head's d_k consecutive blocks are summed by log2(d_k) rotations.
At N=8192, B=64: F=64, X (64 x 128) is two ciphertexts; at N=16384: one.

SLOT-LAYOUT "rows" (one token at decode, `rows_pack`): ciphertext c, slot j * B + t holds v[c * B + t] in
EVERY block j (the chunk replicated across blocks). Every slot layout the runtime uses is defined here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from he_aero.errors import HeAeroError


@dataclass(frozen=True)
class FeatureLayout:
    """The "features" slot layout (module docstring) for n_tokens x n_features at a given slot count.

    clean : rows t >= n_tokens are exactly 0 (the layout's invariant). False on a ciphertext whose rows
        t >= n_tokens hold bounded garbage (a decode row sum's partial sums): the K/V cache, q's spread over
        the rows, a LayerNorm and the skewed decode kernel refuse it; the block-diagonal kernel reads it
        (its diagonals are 0 on those rows) and gives a clean result."""

    slots: int
    block: int
    n_features: int
    n_tokens: int
    clean: bool = True

    def __post_init__(self):
        b = self.block
        if b < 1 or b & (b - 1) or b > self.slots:
            raise HeAeroError(f"layout: block must be a power of two <= {self.slots}, got {b}")
        if not 1 <= self.n_tokens <= b:
            raise HeAeroError(f"layout: {self.n_tokens} tokens do not fit blocks of {b} slots")
        if self.n_features < 1:
            raise HeAeroError(f"layout: need at least one feature, got {self.n_features}")

    @property
    def per_ct(self) -> int:
        """F: feature columns per ciphertext."""
        return self.slots // self.block

    @property
    def n_ct(self) -> int:
        return -(-self.n_features // self.per_ct)

    def with_tokens(self, n_tokens: int) -> FeatureLayout:
        return replace(self, n_tokens=n_tokens)

    def with_features(self, n_features: int) -> FeatureLayout:
        return replace(self, n_features=n_features)

    def with_clean(self, clean: bool) -> FeatureLayout:
        return replace(self, clean=bool(clean))

    def row_mask(self) -> np.ndarray:
        """(slots,) 1 on rows t < n_tokens of every block."""
        return np.tile((np.arange(self.block) < self.n_tokens).astype(float), self.per_ct)


def is_clean(cts) -> bool:
    """No ciphertext's layout says its padding rows hold garbage (`FeatureLayout.clean`; a ciphertext
    without a `FeatureLayout` counts as clean: nothing is known against it)."""
    return all(getattr(c.layout, "clean", True) for c in cts)


def check_clean(cts, what: str) -> None:
    """HeAeroError naming `what` unless `is_clean(cts)`."""
    dirty = [i for i, c in enumerate(cts) if not is_clean([c])]
    if dirty:
        raise HeAeroError(
            f"{what}: ciphertexts {dirty} hold garbage in rows >= n_tokens (a row sum's partial sums); this "
            "stage needs them exactly 0: a row mask (`linalg.mask_rows`) or the block-diagonal kernel first"
        )


def block_for(n_tokens: int) -> int:
    """B: the smallest power of two holding n_tokens (slots per feature column)."""
    return 1 << max(0, (int(n_tokens) - 1).bit_length())


def feature_layout(slots: int, n_tokens: int, n_features: int, block: int | None = None) -> FeatureLayout:
    """Layout with the smallest power-of-two block holding n_tokens (or the given block)."""
    return FeatureLayout(slots, block or block_for(n_tokens), n_features, n_tokens)


def pack(x: np.ndarray, layout: FeatureLayout) -> list[np.ndarray]:
    """(n_tokens, n_features) matrix -> one (slots,) vector per ciphertext."""
    x = np.asarray(x, dtype=float)
    if x.shape != (layout.n_tokens, layout.n_features):
        raise HeAeroError(f"pack: expected shape {(layout.n_tokens, layout.n_features)}, got {x.shape}")
    f, b = layout.per_ct, layout.block
    full = np.zeros((layout.n_ct * f, b))  # (features padded, block) = column-major with padded rows
    full[: layout.n_features, : layout.n_tokens] = x.T
    return [full[c * f : (c + 1) * f].ravel() for c in range(layout.n_ct)]


def unpack(vectors, layout: FeatureLayout) -> np.ndarray:
    """Inverse of `pack`: slot vectors -> (n_tokens, n_features)."""
    f, b = layout.per_ct, layout.block
    full = np.concatenate([np.asarray(v, dtype=float)[: f * b].reshape(f, b) for v in vectors])
    return full[: layout.n_features, : layout.n_tokens].T.copy()


# --- SLOT-LAYOUT "rows": one token's vectors at decode ------------------------------------------------------
def rows_pack(vector, slots: int, block: int) -> list[np.ndarray]:
    """A vector (length m) in SLOT-LAYOUT "rows": ciphertext c, slot j * block + t holds vector[c * block + t]
    in EVERY block j (the chunk replicated across blocks; 0 past the end); ceil(m / block) ciphertexts.

    Why (decode embeds one token): with the one-hot in this layout, a plaintext product puts
    tok_emb[c * block + t, j] in slot j * block + t of chunk c, and a row sum (log2(block) rotations) leaves
    x_j = tok_emb[token, j] in row 0 of block j, the "features" layout: 6 rotations and 5 plaintext products
    instead of the matrix kernel's 37 and 256 at N=16384."""
    v = np.asarray(vector, dtype=float).ravel()
    n_ct = rows_count(v.size, block)
    padded = np.zeros(n_ct * block)
    padded[: v.size] = v
    return [np.tile(padded[c * block : (c + 1) * block], slots // block) for c in range(n_ct)]


def rows_unpack(vectors, length: int, block: int) -> np.ndarray:
    """The inverse of `rows_pack` when chunk c is read from block 0 only (what the decode LM head leaves)."""
    return np.concatenate([np.asarray(v, dtype=float)[:block] for v in vectors])[:length]


def rows_count(length: int, block: int) -> int:
    """Ciphertexts of a length-`length` vector in the "rows" layout."""
    return -(-int(length) // block)
