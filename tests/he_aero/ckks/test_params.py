"""Parameter validation: SEAL's 128-bit table is enforced; test-only insecure rings are explicit."""

import pytest

from he_aero.ckks.params import SEAL_MAX_BITS, CkksParams, default_params
from he_aero.errors import HeAeroError


@pytest.mark.parametrize("n, usable", [(8192, 2), (16384, 8), (32768, 22)])
def test_default_chains_are_secure_and_fill_the_budget(n, usable):
    p = default_params(n)
    assert p.is_secure and p.require_secure() is p
    assert SEAL_MAX_BITS[n] - p.total_bits < 32  # no room for another rescale prime
    # the 115-bit base holds a 2^113 mask (hiding.MASK_BITS); the levels above it compute
    assert (p.base_level, p.modulus_bits(p.base_level), p.levels - p.base_level) == (2, 115, usable)


@pytest.mark.parametrize(
    "chain, scale, base",
    [((60, 32, 32, 60), 32, 0), ((50,) + (35,) * 9 + (60,), 35, 0), ((37, 36, 36, 32, 32, 37), 32, 2)],
)
def test_the_base_is_the_leading_primes_wider_than_the_scale(chain, scale, base):
    assert CkksParams(8192, chain, scale, insecure_for_tests=True).base_level == base


@pytest.mark.parametrize(
    "n, chain",
    [(8192, (60, 40, 40, 40, 60)), (16384, (60,) + (40,) * 9 + (60,)), (32768, (60,) + (40,) * 20 + (60,))],
)
def test_chains_beyond_128_bit_security_are_refused(n, chain):
    with pytest.raises(HeAeroError, match="below 128-bit security"):
        CkksParams(n, chain, 40)


def test_insecure_flag_is_test_only():
    p = CkksParams(8192, (60, 40, 40, 40, 60), 40, insecure_for_tests=True)
    assert not p.is_secure
    with pytest.raises(HeAeroError, match="allowed only in tests"):
        p.require_secure()


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"poly_modulus_degree": 3000}, "poly_modulus_degree"),
        ({"coeff_mod_bit_sizes": (60, 60)}, "need"),
        ({"coeff_mod_bit_sizes": (60, 32, 61)}, "20..60"),
        ({"coeff_mod_bit_sizes": (60, 32, 32, 50)}, "special prime"),
        ({"scale_bits": 40}, "scale_bits"),
        ({"coeff_mod_bit_sizes": (30, 32, 32, 60)}, "q0"),
    ],
)
def test_bad_parameters_name_the_field(kwargs, msg):
    base = {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": (60, 32, 32, 60), "scale_bits": 32}
    base.update(kwargs)
    with pytest.raises(HeAeroError, match=msg):
        CkksParams(**base)


def test_default_params_rejects_other_rings():
    with pytest.raises(HeAeroError, match="ring degree"):
        default_params(4096)


def test_the_128_bit_table_is_seals_own():
    """An independent oracle: SEAL's CoeffModulus.MaxBitCount(N, tc128), not a copy of our constant."""
    from he_aero.ckks.backend import seal_max_bits

    for n, bits in SEAL_MAX_BITS.items():
        assert seal_max_bits(n) == bits, n
