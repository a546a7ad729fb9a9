"""Exact integer polynomials (the refresh's arithmetic) against Python's own big integers."""

import random
from fractions import Fraction

import numpy as np
import pytest

from he_aero.ckks.rns import OFFSET_BITS, SHIFT, IntPoly, scale_factor
from he_aero.errors import HeAeroError

# the default N=8192 chain's primes (level 4: q0..q4), and a 60-bit prime like the test rings' q0
PRIMES = [137438773249, 68718428161, 68719230977, 4293918721, 4294475777]
WIDE = 1152921504606830593

random.seed(0)
EDGES = [0, 1, -1, 2**107 - 1, -(2**107), 2**150, -(2**150) + 3]
VALUES = EDGES + [random.randrange(-(2**108), 2**108) for _ in range(500)]


def test_ints_round_trip():
    assert IntPoly.from_ints(VALUES).to_ints() == VALUES


@pytest.mark.parametrize("wide", [True, False])
def test_residues_match_python_modulo(wide):
    """Both paths: some |v| >= 2^128 (all 256 bits reduced), and all below (the refresh's: 128 bits)."""
    vals = VALUES if wide else [v for v in VALUES if abs(v) < 2**128]
    res = IntPoly.from_ints(vals).residues(PRIMES + [WIDE])
    for row, q in zip(res, PRIMES + [WIDE], strict=True):
        assert [int(w) for w in row] == [v % q for v in vals]


@pytest.mark.parametrize("primes", [PRIMES[:3], PRIMES, [WIDE, *PRIMES[1:3]]])
def test_crt_recovers_the_centred_values(primes):
    """|v| <= Q/4 comes back exactly (the refresh keeps |V| < 2^(k+1) <= Q/4)."""
    modulus = int(np.prod([Fraction(q) for q in primes]))
    vals = [v for v in VALUES if abs(v) <= modulus // 4]
    assert len(vals) > 200
    words = np.array([[v % q for v in vals] for q in primes], dtype=np.uint64)
    assert IntPoly.from_residues(words, primes).to_ints() == vals


def test_crt_refuses_unreduced_or_misshapen_words():
    with pytest.raises(HeAeroError, match="^rns: a residue is not reduced modulo its prime$"):
        IntPoly.from_residues(np.array([[PRIMES[0]]], dtype=np.uint64), PRIMES[:1])
    with pytest.raises(HeAeroError, match=r"^rns: \(2, 1\) words for 3 primes$"):
        IntPoly.from_residues(np.zeros((2, 1), np.uint64), PRIMES[:3])


@pytest.mark.parametrize("ratio", [1.0, 0.9999, 1.0001, 2.0**-0.00017])
def test_scaling_rounds_exactly_like_python(ratio):
    factor = scale_factor(2.0**32 * ratio, 2.0**32)
    assert factor == round(Fraction(2.0**32 * ratio) / Fraction(2.0**32) * 2**SHIFT)
    vals = [v for v in VALUES if abs(v) < 2 ** (OFFSET_BITS - 2)]
    want = [(2 * v * factor + 2**SHIFT) // 2 ** (SHIFT + 1) for v in vals]  # round half up
    assert IntPoly.from_ints(vals).scaled(factor).to_ints() == want


def test_a_mask_and_its_scaled_copy_cancel_to_within_one_unit():
    """What the refresh relies on: round((M + r) P / 2^60) - round(r P / 2^60) = round(M P / 2^60) +- 1."""
    factor = scale_factor(2.0**31.9998, 2.0**32)
    r = IntPoly.uniform(107, 512)
    m = [random.randrange(-(2**41), 2**41) for _ in range(512)]
    v = IntPoly.from_ints([a + b for a, b in zip(m, r.to_ints(), strict=True)])
    got = [a - b for a, b in zip(v.scaled(factor).to_ints(), r.scaled(factor).to_ints(), strict=True)]
    want = [Fraction(x * factor, 2**SHIFT) for x in m]
    assert max(abs(g - w) for g, w in zip(got, want, strict=True)) <= 1


def test_uniform_masks_cover_their_range_uniformly():
    from scipy import stats

    for bits in (20, 63, 64, 107):
        vals = np.array(IntPoly.uniform(bits, 4096).to_ints(), dtype=object)
        assert vals.min() >= -(2**bits) and vals.max() < 2**bits
        x = (vals.astype(np.float64)) / 2.0**bits
        assert x.min() < -0.99 and x.max() > 0.99
        assert stats.kstest(x, stats.uniform(loc=-1, scale=2).cdf).pvalue > 1e-3


def test_bad_arguments_are_refused():
    with pytest.raises(HeAeroError, match=r"^rns: mask bits must lie in \[1, 127\], got 0$"):
        IntPoly.uniform(0, 4)
    with pytest.raises(HeAeroError, match=r"^rns: scale ratio 3 is outside \(1/2, 2\)$"):
        scale_factor(3.0, 1.0)
    with pytest.raises(HeAeroError, match="^rns: scale factor 0 out of range$"):
        IntPoly.from_ints([1]).scaled(0)
    with pytest.raises(HeAeroError, match="^rns: a value does not fit a field$"):
        IntPoly.from_ints([2**200])


def test_max_abs_bits():
    assert IntPoly.from_ints([5, -3]).max_abs_bits() == pytest.approx(np.log2(5))
    assert IntPoly.from_ints([-(2**100), 7]).max_abs_bits() == pytest.approx(100)
    assert IntPoly.from_ints([0, 0]).max_abs_bits() == float("-inf")
