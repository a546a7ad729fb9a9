"""Minimum-depth baby-step giant-step (Paterson-Stockmeyer) evaluation of a Chebyshev series, and its cost.

The same code runs in plaintext (numpy arrays) and, through an `Ops` adapter, on ciphertexts: the CKKS
evaluator in `he_aero/ckks/` passes its own `Ops` and gets exactly the operation order, depth and counts
that `bsgs_cost` reports. Depth model: every ciphertext-ciphertext product AND every product by a
non-integer plaintext scalar consumes one level (TenSEAL rescales after both); additions, subtractions,
doubling by self-addition and adding a plaintext constant are free.

Algorithm (input t in [-1, 1] at depth 0; p = sum_j c_j T_j(t), degree d, D = ceil(log2(d + 1)))
----------------------------------------------------------------------------------------------------
1. Baby-step bound m = 2^l, chosen by `baby_steps(d)` as the l in 0..D-1 with the fewest non-scalar
   multiplications (ties: fewest scalar ones, then the smaller l). Baby steps are T_1..T_m; giant steps are
   the powers of two T_{2m}, T_{4m}, ..., T_{2^(D-1)}.
2. Chebyshev powers are built lazily, each at most once, with one non-scalar multiplication each:
   T_{2a} = 2 T_a^2 - 1 (power of two), otherwise T_k = 2 T_a T_b - T_{a-b} with a the largest power of two
   below k and b = k - a. T_k then sits at depth ceil(log2 k). "2 y" is computed as y + y (no level).
3. eval(c, budget), started with budget = D:
   - k = deg c. If k <= m and leafdepth(k) = ceil(log2 k) + 1 <= budget: a leaf,
     c_0 + sum_{j>=1, c_j != 0} c_j * T_j (one scalar mult per term, summed in increasing j).
   - Otherwise split at G = the largest power of two <= k, using T_{G+j} = 2 T_G T_j - T_{G-j}:
     high_0 = c_G, high_j = 2 c_{G+j} (j >= 1); low = c_0..c_{G-1} with low_{G-j} -= c_{G+j}.
     Then p = eval(low, budget) + eval(high, budget - 1) * T_G; a constant `high` becomes a scalar
     multiplication of T_G, a zero one is skipped, a constant `low` is added as a plaintext.
   The budget keeps the depth at exactly D: the factor multiplied by T_G (depth log2 G) gets one level less,
   so products never exceed D, while `low` keeps the slack that lets it be a cheap leaf.
4. The affine map t = alpha x + beta (one scalar mult, +1 depth) is applied by the caller (`plans`) unless the
   domain is [-1, 1] or it folds into a preceding plaintext multiply.
Exactly-zero coefficients are skipped (SEAL refuses a product by a zero plaintext); the depth can then only be
lower than `bsgs_cost(d)` reports, and the evaluator must align levels (TenSEAL's auto mod-switch does).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from approx.chebyshev import check_degree


class Ops:
    """The arithmetic the evaluator uses: numpy float64 by default; subclass for ciphertexts or counting."""

    def mul(self, a, b):  # ciphertext x ciphertext: one level
        return a * b

    def mul_scalar(self, a, c: float):  # ciphertext x plaintext scalar: one level
        return a * c

    def add(self, a, b):
        return a + b

    def sub(self, a, b):
        return a - b

    def add_scalar(self, a, c: float):
        return a + c

    def constant(self, like, c: float):  # a plaintext constant shaped like `like` (no level)
        return np.full(np.shape(like), float(c))


@dataclass
class CountingOps(Ops):
    """Tracks depth instead of values: a 'value' is the depth (int) of the ciphertext holding it."""

    nonscalar: int = 0
    scalar: int = 0

    def mul(self, a, b):
        self.nonscalar += 1
        return max(a, b) + 1

    def mul_scalar(self, a, c):
        self.scalar += 1
        return a + 1

    def add(self, a, b):
        return max(a, b)

    def sub(self, a, b):
        return max(a, b)

    def add_scalar(self, a, c):
        return a

    def constant(self, like, c):
        return 0


@dataclass(frozen=True)
class Cost:
    """Depth and multiplication counts of an evaluation."""

    depth: int
    nonscalar_mults: int
    scalar_mults: int


def min_depth(degree: int) -> int:
    """ceil(log2(degree + 1)): the least depth of any degree-`degree` polynomial on [-1, 1]."""
    return int(degree).bit_length()


def _ceil_log2(k: int) -> int:
    return (k - 1).bit_length()


class _Powers:
    """Lazy cache of T_k(t) built with the rules of step 2 of the module docstring."""

    def __init__(self, t, ops: Ops):
        self.ops = ops
        self.cache = {1: t}

    def get(self, k: int):
        if k not in self.cache:
            ops = self.ops
            if k & (k - 1) == 0:  # power of two: T_k = 2 T_{k/2}^2 - 1
                h = self.get(k // 2)
                s = ops.mul(h, h)
                self.cache[k] = ops.add_scalar(ops.add(s, s), -1.0)
            else:
                a = 1 << (k.bit_length() - 1)
                b = k - a
                ta, tb = self.get(a), self.get(b)
                s = ops.mul(ta, tb)
                self.cache[k] = ops.sub(ops.add(s, s), self.get(a - b))
        return self.cache[k]


def split(c: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
    """Split p = sum c_j T_j (degree >= g) as low + high * T_g with deg low < g and deg high = deg p - g."""
    d = len(c) - 1
    high = 2.0 * c[g:].copy()
    high[0] = c[g]
    low = c[:g].copy()
    for j in range(1, d - g + 1):
        low[g - j] -= c[g + j]
    return low, high


def _eval(c: np.ndarray, budget: int, m: int, powers: _Powers, skip: bool = True):
    """Step 3 of the module docstring; returns a float for a constant result."""
    ops = powers.ops
    k = len(c) - 1
    if k == 0:
        return float(c[0])
    if k <= m and _ceil_log2(k) + 1 <= budget:
        acc = None
        for j in range(1, k + 1):
            if c[j] != 0.0 or not skip:
                term = ops.mul_scalar(powers.get(j), float(c[j]))
                acc = term if acc is None else ops.add(acc, term)
        if acc is None:
            return float(c[0])
        return ops.add_scalar(acc, float(c[0])) if c[0] != 0.0 or not skip else acc
    g = 1 << (k.bit_length() - 1)
    low, high = split(c, g)
    lo = _eval(low, budget, m, powers, skip)
    hi = _eval(high, budget - 1, m, powers, skip)
    if isinstance(hi, float):
        if hi == 0.0 and skip:
            return lo
        prod = ops.mul_scalar(powers.get(g), hi)
    else:
        prod = ops.mul(hi, powers.get(g))
    if isinstance(lo, float):
        return ops.add_scalar(prod, lo) if lo != 0.0 or not skip else prod
    return ops.add(lo, prod)


def evaluate(coefficients, t, ops: Ops | None = None, baby_log: int | None = None, skip_zeros: bool = True):
    """Evaluate sum_j c_j T_j(t) (coefficients low to high) by the minimum-depth BSGS of the module docstring.

    Parameters
    ----------
    coefficients : Chebyshev coefficients, low to high (trailing zeros are NOT trimmed: the degree is
        len - 1 so the structure matches `bsgs_cost(len - 1)`).
    t : the input, already mapped to [-1, 1] (numpy array, or whatever `ops` handles).
    ops : arithmetic adapter (numpy by default).
    baby_log : override of l (m = 2^l); default `baby_steps(degree)`.
    skip_zeros : skip terms whose coefficient is exactly zero (False: the dense structure `bsgs_cost` counts).

    Returns
    -------
    The value (a float when the polynomial is constant).
    """
    c = np.asarray(coefficients, dtype=float)
    degree = len(c) - 1
    m = 1 << (baby_steps(degree) if baby_log is None else baby_log)
    return _eval(c, min_depth(degree), m, _Powers(t, ops or Ops()), skip_zeros)


def _count(coefficients, baby_log: int, skip_zeros: bool) -> Cost:
    ops = CountingOps()
    depth = evaluate(coefficients, 0, ops, baby_log, skip_zeros)
    # a float result is a plaintext constant: no ciphertext, depth 0
    return Cost(0 if isinstance(depth, float) else int(depth), ops.nonscalar, ops.scalar)


@cache
def baby_steps(degree: int) -> int:
    """The baby-step exponent l (m = 2^l) that `evaluate` uses for this degree: fewest non-scalar mults."""
    degree = check_degree(degree)
    if degree <= 1:
        return 0
    ones = np.ones(degree + 1)
    costs = []
    for log in range(min_depth(degree)):
        cost = _count(ones, log, skip_zeros=False)
        costs.append((cost.nonscalar_mults, cost.scalar_mults, log))
    return min(costs)[2]


def bsgs_cost(degree: int) -> tuple[int, int, int]:
    """(depth, nonscalar_mults, scalar_mults) of `evaluate` for a dense degree-`degree` series on [-1, 1].

    The depth is always ceil(log2(degree + 1)); the affine map to [-1, 1] is not included (add 1 level and
    1 scalar mult unless it folds). Exactly-zero coefficients can only lower these numbers.
    """
    degree = check_degree(degree)
    cost = _count(np.ones(degree + 1), baby_steps(degree), skip_zeros=False)
    return cost.depth, cost.nonscalar_mults, cost.scalar_mults


def cost_of(coefficients) -> Cost:
    """Exact cost of `evaluate` for these coefficients (zeros skipped), without the affine map."""
    c = np.asarray(coefficients, dtype=float)
    return _count(c, baby_steps(len(c) - 1), skip_zeros=True)
