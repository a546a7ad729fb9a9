"""The refresh's hiding in bits, against the formula of he_aero/ckks/hiding.py written out by hand."""

import math

import pytest

from he_aero.ckks.hiding import MASK_BITS, SESSION_HIDING_BITS, RefreshHiding
from he_aero.errors import HeAeroError


def test_the_shipped_settings_hide_40_bits_over_a_full_context_session():
    """N=8192, k=113, scale 2^32, B=2^13: T = 2^34 B, per polynomial k + 1 - 13 - log2 T = 54 bits.
    A full-context session refreshes at most 164 (prefill of 64) + 63 x 116 (decodes) = 7,472 polynomials
    (the shipped plan's counts) and must keep >= 40 bits."""
    h = RefreshHiding(8192, MASK_BITS, 32, 2.0**13)
    assert h.message_bits == pytest.approx(34 + 13)
    assert h.per_polynomial_bits == pytest.approx(114 - 13 - 34 - 13)
    assert h.session_bits(164 + 63 * 116) >= SESSION_HIDING_BITS
    cap = h.max_polynomials(SESSION_HIDING_BITS)
    assert h.session_bits(cap) >= 40 > h.session_bits(cap + 1)
    assert cap >= 164 + 63 * 116


def test_session_bits_fall_by_log2_of_the_count():
    h = RefreshHiding(2048, 48, 32, 8.0)
    assert h.session_bits(1) == h.per_polynomial_bits
    assert h.session_bits(1024) == pytest.approx(h.per_polynomial_bits - 10)
    assert h.session_bits(0) == math.inf
    assert h.max_polynomials(h.per_polynomial_bits + 1) == 0


def test_the_modulus_needed_holds_mask_and_message_with_a_sign_bit():
    h = RefreshHiding(8192, 107, 32, 154.3)
    assert h.modulus_bits_needed() == pytest.approx(math.log2(2.0**107 + 2.0**h.message_bits) + 1)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"bound": 0.0}, "bound must be a positive number"),
        ({"bound": math.inf}, "bound must be a positive number"),
        ({"mask_bits": 0}, "mask_bits must be a positive integer"),
        ({"mask_bits": True}, "mask_bits must be a positive integer"),
    ],
)
def test_bad_settings_are_refused(kw, message):
    args = {"ring_degree": 8192, "mask_bits": 107, "scale_bits": 32, "bound": 1.0} | kw
    with pytest.raises(HeAeroError, match=f"^refresh hiding: {message}"):
        RefreshHiding(**args)


@pytest.mark.parametrize("k, bound", [(48, 2.0**26), (107, 154.3), (20, 1.0)])
def test_the_modulus_needed_is_exact_when_the_message_dominates_too(k, bound):
    h = RefreshHiding(2048, k, 32, bound)
    assert h.modulus_bits_needed() == math.log2(2.0**k + 2.0 ** (34 + math.log2(bound))) + 1
    assert RefreshHiding(2048, 1, 32, 1.0).mask_bits == 1  # the smallest mask is a valid setting
