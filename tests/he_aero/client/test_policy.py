"""The client's security policy on hand-made offers: every requirement, its boundary, and the message."""

import dataclasses

import pytest

from he_aero.ckks.params import HIDING_BITS, CkksParams
from he_aero.client.policy import ClientPolicy
from he_aero.errors import HeAeroError
from he_aero.protocol import RuntimeOffer

SHA = "ab" * 32
SECURE = dict(poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 32, 32, 32, 60), scale_bits=32)  # 216 bits
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
        hiding_bits=HIDING_BITS,
        model_sha256=SHA,
        plan_sha256="cd" * 32,
        decode_rows=True,
    )
    return RuntimeOffer(**{**fields, **kw})


def test_a_secure_offer_gives_its_parameters():
    assert ClientPolicy().accept(offer()) == CkksParams(8192, (60, 32, 32, 32, 60), 32)


def test_the_default_requires_the_default_hiding_and_no_model():
    p = ClientPolicy()
    assert (p.min_hiding_bits, p.expect_model_sha256, p.allow_insecure_for_tests) == (
        HIDING_BITS,
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


@pytest.mark.parametrize("hiding, ok", [(HIDING_BITS - 1, False), (HIDING_BITS, True), (40, True)])
def test_hiding_below_the_minimum_is_refused(hiding, ok):
    if ok:
        assert ClientPolicy().accept(offer(hiding_bits=hiding)).poly_modulus_degree == 8192
    else:
        with pytest.raises(
            HeAeroError,
            match=REFUSE + rf"refresh masks hide {hiding} bits per slot, this client requires >= 20$",
        ):
            ClientPolicy().accept(offer(hiding_bits=hiding))


def test_a_stricter_client_refuses_the_default_hiding():
    with pytest.raises(HeAeroError, match=r"hide 20 bits per slot, this client requires >= 24$"):
        ClientPolicy(min_hiding_bits=24).accept(offer())
    assert ClientPolicy(min_hiding_bits=24).accept(offer(hiding_bits=24)).slots == 4096


def test_the_expected_weights_are_compared_without_case():
    assert ClientPolicy(expect_model_sha256=SHA.upper()).accept(offer()).levels == 3
    assert ClientPolicy(expect_model_sha256=SHA).accept(offer(model_sha256=SHA.upper())).levels == 3
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
        ({"min_hiding_bits": True}, "min_hiding_bits must be an integer, got True"),
        ({"min_hiding_bits": 20.0}, "min_hiding_bits must be an integer, got 20.0"),
        ({"min_hiding_bits": "20"}, "min_hiding_bits must be an integer, got '20'"),
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
        assert ClientPolicy(expect_model_sha256=sha, min_hiding_bits=0).expect_model_sha256 == sha


def test_the_policy_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ClientPolicy().min_hiding_bits = 1  # type: ignore[misc]
