"""The client's security policy on hand-made offers: every requirement, its boundary, and the message."""

import dataclasses
import math

import pytest

from he_aero.ckks.hiding import MASK_BITS, SESSION_HIDING_BITS, RefreshHiding
from he_aero.ckks.params import CkksParams
from he_aero.client.policy import ClientPolicy
from he_aero.errors import HeAeroError
from he_aero.protocol import RuntimeOffer

SHA = "ab" * 32
SECURE = dict(
    poly_modulus_degree=8192, coeff_mod_bit_sizes=(37, 36, 36, 32, 32, 37), scale_bits=32
)  # 210 bits
SMALL = dict(poly_modulus_degree=2048, coeff_mod_bit_sizes=(60, 32, 32, 60), scale_bits=32)  # 184 > 54 bits
REFUSE = r"^client: refusing the server's offer: "


def offer(**kw) -> RuntimeOffer:
    fields = dict(
        SECURE,
        rotation_steps=(1, 2),
        block=64,
        context=64,
        vocab=256,
        d_model=128,
        logit_domain=(-20.0, 20.0),
        refresh_bound=64.0,
        mask_bits=MASK_BITS,
        max_refresh_polynomials=8192,
        model_sha256=SHA,
        plan_sha256="cd" * 32,
        decode_rows=True,
    )
    return RuntimeOffer(**{**fields, **kw})


def test_a_secure_offer_gives_its_parameters():
    assert ClientPolicy().accept(offer()) == CkksParams(8192, (37, 36, 36, 32, 32, 37), 32)


def test_the_default_requires_the_default_hiding_and_no_model():
    p = ClientPolicy()
    assert (p.min_session_hiding_bits, p.expect_model_sha256, p.allow_insecure_for_tests) == (
        SESSION_HIDING_BITS,
        None,
        False,
    )


def test_an_insecure_ring_is_refused_unless_allowed_for_tests():
    with pytest.raises(
        HeAeroError, match=REFUSE + r"parameters below 128-bit security: N=2048 allows at most 54"
    ):
        ClientPolicy().accept(offer(**SMALL))
    params = ClientPolicy(allow_insecure_for_tests=True).accept(offer(**SMALL))
    assert params == CkksParams(2048, (60, 32, 32, 60), 32, insecure_for_tests=True) and not params.is_secure


def test_malformed_parameters_are_refused_with_the_reason():
    with pytest.raises(HeAeroError, match=REFUSE + r"poly_modulus_degree: must be one of"):
        ClientPolicy(allow_insecure_for_tests=True).accept(offer(poly_modulus_degree=3000))


def _session_bits(**kw) -> float:
    """The session hiding computed by hand from the offer's fields (hiding.py's formula):
    k + 1 - log2 N - (s + 2 + log2 B) - log2(cap)."""
    o = offer(**kw)
    return o.mask_bits + 1 - 13 - (32 + 2 + math.log2(o.refresh_bound)) - math.log2(o.max_refresh_polynomials)


def test_the_offer_hides_what_the_formula_says():
    assert ClientPolicy.session_hiding(offer(), CkksParams(**SECURE)) == pytest.approx(_session_bits())
    h = RefreshHiding(8192, MASK_BITS, 32, 64.0)
    assert _session_bits() == pytest.approx(h.session_bits(8192))


@pytest.mark.parametrize("cap, ok", [(2**14, True), (2**15, True), (2**15 + 1, False), (2**17, False)])
def test_a_session_cap_that_drops_hiding_below_the_minimum_is_refused(cap, ok):
    """k = 107, B = 64: 55 bits per polynomial, so 2^15 polynomials keep 40 bits and one more does not."""
    bits = _session_bits(max_refresh_polynomials=cap, mask_bits=107)
    if ok:
        assert bits >= 40
        assert ClientPolicy().accept(offer(max_refresh_polynomials=cap, mask_bits=107)).slots == 4096
    else:
        assert bits < 40
        with pytest.raises(
            HeAeroError,
            match=REFUSE + rf"its refresh hides {bits:.1f} bits over a session \(masks of 2\^107, up to "
            rf"{cap} polynomials\), this client requires >= 40$",
        ):
            ClientPolicy().accept(offer(max_refresh_polynomials=cap, mask_bits=107))


def test_narrow_masks_or_a_wide_bound_are_refused():
    with pytest.raises(HeAeroError, match=REFUSE + "its refresh hides"):
        ClientPolicy().accept(offer(mask_bits=80))
    with pytest.raises(HeAeroError, match=REFUSE + "its refresh hides"):
        ClientPolicy().accept(offer(refresh_bound=2.0**30))
    with pytest.raises(HeAeroError, match=REFUSE + "refresh bound -1.0 is not a calibrated activation bound"):
        ClientPolicy().accept(offer(refresh_bound=-1.0))


def test_a_stricter_client_refuses_the_default_hiding():
    with pytest.raises(HeAeroError, match=r"this client requires >= 50$"):
        ClientPolicy(min_session_hiding_bits=50).accept(offer())
    assert ClientPolicy(min_session_hiding_bits=50).accept(offer(max_refresh_polynomials=16)).slots == 4096


def test_the_expected_weights_are_compared_without_case():
    assert ClientPolicy(expect_model_sha256=SHA.upper()).accept(offer()).levels == 4
    assert ClientPolicy(expect_model_sha256=SHA).accept(offer(model_sha256=SHA.upper())).levels == 4
    with pytest.raises(
        HeAeroError,
        match=REFUSE + r"it serves weights abababababab\.\.\., this client expects 000000000000\.\.\.$",
    ):
        ClientPolicy(expect_model_sha256="0" * 64).accept(offer())


@pytest.mark.parametrize("block", [1, 2, 64, 4096])
def test_power_of_two_blocks_up_to_the_slot_count_are_valid_layouts(block):
    assert ClientPolicy().accept(offer(block=block)).slots == 4096


@pytest.mark.parametrize("block", [0, -64, 3, 48, 8192])
def test_other_blocks_are_refused(block):
    with pytest.raises(HeAeroError, match=REFUSE + rf"block {block} is not a valid layout$"):
        ClientPolicy().accept(offer(block=block))


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"min_session_hiding_bits": True}, "min_session_hiding_bits must be an integer, got True"),
        ({"min_session_hiding_bits": 20.0}, "min_session_hiding_bits must be an integer, got 20.0"),
        ({"min_session_hiding_bits": "20"}, "min_session_hiding_bits must be an integer, got '20'"),
        ({"expect_model_sha256": "ab" * 31}, "expect_model_sha256 must be a SHA-256 hex digest, got 'abab"),
        ({"expect_model_sha256": "ab" * 33}, "expect_model_sha256 must be a SHA-256 hex digest"),
        (
            {"expect_model_sha256": "g" + "0" * 63},
            "expect_model_sha256 must be a SHA-256 hex digest, got 'g000",
        ),
        ({"expect_model_sha256": "0" * 63 + "-"}, "expect_model_sha256 must be a SHA-256 hex digest"),
    ],
)
def test_a_malformed_policy_is_refused_at_construction(kw, message):
    with pytest.raises(HeAeroError, match=r"^client policy: " + message):
        ClientPolicy(**kw)


def test_a_valid_policy_in_any_case_is_accepted():
    for sha in (None, "0123456789abcdef" * 4, "0123456789ABCDEF" * 4):
        assert ClientPolicy(expect_model_sha256=sha, min_session_hiding_bits=0).expect_model_sha256 == sha


def test_the_policy_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ClientPolicy().min_session_hiding_bits = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "kw, why",
    [
        ({"max_refresh_polynomials": 0}, "a cap of 0 refreshed polynomials"),
        ({"max_refresh_polynomials": -5}, "a cap of -5 refreshed polynomials"),
        ({"refresh_bound": 1e-300, "mask_bits": 1}, "refresh bound 1e-300 is not a calibrated"),
        ({"refresh_bound": 0.5}, "refresh bound 0.5 is not a calibrated activation bound"),
        ({"mask_bits": 300}, r"mask bits 300 outside \[1, 127\]"),
        ({"mask_bits": 5000}, r"mask bits 5000 outside \[1, 127\]"),
    ],
)
def test_crafted_hiding_settings_are_refused(kw, why):
    """Found by review: each of these made the client's computed hiding meaningless (inf, 938 bits, a
    disabled level check, an OverflowError)."""
    with pytest.raises(HeAeroError, match=REFUSE + why):
        ClientPolicy().accept(offer(**kw))


def test_a_chain_with_no_level_for_the_mask_is_refused():
    """The small test chain's largest modulus (124 bits) cannot hold a 2^127 mask: refused (it used to switch
    the client's refresh-level check off)."""
    with pytest.raises(HeAeroError, match=REFUSE + r"no level of N=2048 .* holds a 2\^127 mask"):
        ClientPolicy(allow_insecure_for_tests=True).accept(offer(**SMALL, mask_bits=127))


@pytest.mark.parametrize(
    "kw",
    [
        {"refresh_bound": 1.0},
        {"mask_bits": 127, "max_refresh_polynomials": 1},
        {"max_refresh_polynomials": 1},
    ],
)
def test_settings_at_their_limits_are_accepted(kw):
    """A bound of exactly 1, the widest mask, a cap of one polynomial: all honest settings."""
    assert ClientPolicy().accept(offer(**kw)).poly_modulus_degree == 8192


@pytest.mark.parametrize(
    "kw, why",
    [
        ({"refresh_bound": 2.0**40}, r"refresh bound 1099511627776.0 is not a calibrated activation bound"),
        ({"mask_bits": 128}, r"mask bits 128 outside \[1, 127\]"),
        ({"mask_bits": 1}, r"its refresh hides -?[0-9.]+ bits over a session \(masks of 2\^1,"),
        ({"mask_bits": True}, r"refresh hiding: mask_bits must be a positive integer, got True$"),
    ],
)
def test_settings_just_past_their_limits_are_refused_with_their_reason(kw, why):
    with pytest.raises(HeAeroError, match=REFUSE + why):
        ClientPolicy().accept(offer(**kw))
