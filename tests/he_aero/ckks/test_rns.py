"""Exact integer polynomials (the refresh's arithmetic) against Python's own big integers."""

import math
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


@pytest.mark.parametrize(
    "to, frm",
    [
        (2.0**32, 2.0**32),
        (2.0**32 * 0.9999, 2.0**32),
        (2.0**32 * 1.0001, 2.0**32),
        # the chain's scales are not powers of two: a factor with every low bit in play (a dyadic ratio's
        # factor is a multiple of 2^8, which hid a wrong mask of the next field's bits from mutation testing)
        (4294221865.8310547, 4294475777.123),
    ],
)
def test_scaling_rounds_exactly_like_python(to, frm):
    factor = scale_factor(to, frm)
    assert factor == round(Fraction(to) / Fraction(frm) * 2**SHIFT)
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


def test_scaling_by_the_smallest_factor():
    vals = [2**61, -(2**61), 3 * 2**59, 5]
    assert IntPoly.from_ints(vals).scaled(1).to_ints() == [
        (2 * v + 2**SHIFT) // 2 ** (SHIFT + 1) for v in vals
    ]


@pytest.mark.parametrize("factor", [0, 2 ** (SHIFT + 1)])
def test_scale_factors_outside_the_range_are_refused(factor):
    with pytest.raises(HeAeroError, match=f"^rns: scale factor {factor} out of range$"):
        IntPoly.from_ints([1]).scaled(factor)


@pytest.mark.parametrize("ratio", [0.5, 0.4, 2.0, 2.5])
def test_scale_ratios_at_and_beyond_the_limits_are_refused(ratio):
    with pytest.raises(HeAeroError, match=r"^rns: scale ratio [0-9.]+ is outside \(1/2, 2\)$"):
        scale_factor(ratio, 1.0)
    assert scale_factor(0.5001, 1.0) > 0 and scale_factor(1.9999, 1.0) > 0


@pytest.mark.parametrize("to, frm", [(-1.0, 1.0), (1.0, 0.0), (float("nan"), 1.0), (1.0, float("inf"))])
def test_scales_must_be_positive_and_finite(to, frm):
    with pytest.raises(HeAeroError, match="^rns: scales must be positive finite numbers, got "):
        scale_factor(to, frm)


def test_the_field_range_is_exactly_plus_minus_2_to_the_192():
    edge = [-(2**192), 2**192 - 1]
    assert IntPoly.from_ints(edge).to_ints() == edge
    with pytest.raises(HeAeroError, match="^rns: a value does not fit a field$"):
        IntPoly.from_ints([2**192])
    with pytest.raises(HeAeroError, match="^rns: a value does not fit a field$"):
        IntPoly.from_ints([-(2**192) - 1])


def _coprime_moduli(last: int) -> list[int]:
    """Three odd numbers just below 2^62 and `last`, pairwise coprime (the CRT needs no primes)."""
    import math

    base = [2**62 - 1, 2**62 - 3, 2**62 - 5]
    assert all(math.gcd(a, b) == 1 for a in base + [last] for b in base + [last] if a != b)
    return base + [last]


def test_moduli_up_to_190_bits_and_below_2_62_are_accepted():
    mods = _coprime_moduli(11)  # product: 190 bits
    assert math.prod(mods).bit_length() == 190
    words = [[0, 1] for _ in mods]  # a list, not an array: read as uint64
    assert IntPoly.from_residues(words, mods).to_ints() == [0, 1]
    assert IntPoly.from_residues(np.array([[5]], np.uint64), [2**62 - 1]).to_ints() == [5]


@pytest.mark.parametrize("mods", [_coprime_moduli(23), [2**62], [2**62 + 1, 3]])
def test_moduli_beyond_the_field_layout_are_refused(mods):
    """191 bits (a product that no longer fits 2^190 fields with room), or a modulus of 2^62 or more."""
    with pytest.raises(HeAeroError, match="^rns: primes too wide for the field layout$"):
        IntPoly.from_residues(np.zeros((len(mods), 1), np.uint64), mods)


@pytest.mark.parametrize("sign", [1, -1])
def test_one_sided_wide_values_take_the_full_reduction(sign):
    """All values of one sign beyond 2^128: the 128-bit shortcut must not be taken."""
    vals = [sign * (2**150 + k) for k in range(5)]
    res = IntPoly.from_ints(vals).residues(PRIMES)
    for row, q in zip(res, PRIMES, strict=True):
        assert [int(w) for w in row] == [v % q for v in vals]


@pytest.mark.parametrize("bits", [1, 20, 63, 64, 107, 127])
def test_uniform_masks_use_every_low_bit(bits):
    """Odd and even values both occur (a mask that clears bit 0, or goes through doubles, would not)."""
    vals = IntPoly.uniform(bits, 512).to_ints()
    assert min(vals) >= -(2**bits) and max(vals) < 2**bits
    assert {v % 2 for v in vals} == {0, 1}
    if bits >= 11:  # the low 11 bits vary (doubles would keep 53 bits and zero the rest of a 64-bit limb)
        assert len({v % 2**11 for v in vals}) > 100


@pytest.mark.parametrize("bits", [0, 128])
def test_mask_bits_beyond_1_to_127_are_refused(bits):
    with pytest.raises(HeAeroError, match=rf"^rns: mask bits must lie in \[1, 127\], got {bits}$"):
        IntPoly.uniform(bits, 4)


def test_max_abs_bits_reads_every_limb():
    assert IntPoly.from_ints([1, -1]).max_abs_bits() == 0.0
    assert IntPoly.from_ints([2**150]).max_abs_bits() == pytest.approx(150)
    assert IntPoly.from_ints([-(2**70)]).max_abs_bits() == pytest.approx(70)
