"""The client's key set on the small test ring: which rotation keys, encryption at the top level and exact
scale, zero padding, decryption of every slot, the public bytes and errors that name what failed."""

import numpy as np
import pytest
import tenseal.sealapi as seal

from he_aero.ckks.backend import chain_tables, is_fresh, public_context, to_bytes
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.client.keys import ClientKeys
from he_aero.errors import HeAeroError
from tests.conftest import assert_close_bits
from tests.he_aero.ckks.kit import BITS, SMALL


@pytest.fixture(scope="module")
def keys():
    return ClientKeys(SMALL, rotation_steps=(0, 1, 1, -1, 1025, 2 * SMALL.slots, 8))


def test_rotation_steps_are_normalised_mod_slots_without_zero_or_duplicates(keys):
    assert keys.rotation_steps == (1, 8, SMALL.slots - 1)
    pub = keys.public_keys()
    assert pub.rotation_steps == (1, 8, SMALL.slots - 1) and pub.params == SMALL
    server = public_context(pub)
    assert [server.has_rotation(s) for s in (1, 8, -1, 2, 0)] == [True, True, True, False, True]


def test_no_rotation_steps_means_no_rotation_keys():
    keys = ClientKeys(SMALL, rotation_steps=(0, SMALL.slots))
    assert keys.rotation_steps == () and keys.public_keys().rotation_steps == ()
    server = public_context(keys.public_keys())
    assert not any(server.has_rotation(s) for s in (1, -1, 8))


def test_encrypt_is_fresh_at_the_top_level_and_its_exact_scale(keys):
    parms_ids, _, scales = chain_tables(keys.seal_context, SMALL)
    assert keys.scale == scales[SMALL.levels]
    ct = keys.encrypt([1.0, 2.0])
    assert is_fresh(ct, parms_ids[SMALL.levels], scales[SMALL.levels])
    assert ct.parms_id() == keys.seal_context.first_parms_id()


def test_values_are_zero_padded_to_all_slots_and_decrypt_back(keys):
    x = np.random.default_rng(1).uniform(-4, 4, (3, 5))  # ravelled: 15 values
    got = keys.decrypt(keys.encrypt(x))
    assert got.shape == (SMALL.slots,)
    assert_close_bits(got[:15], x.ravel(), BITS, "values")
    assert_close_bits(got[15:], np.zeros(SMALL.slots - 15), BITS, "padding")
    full = np.linspace(-1, 1, SMALL.slots)
    assert_close_bits(keys.decrypt(keys.encrypt(full)), full, BITS, "all slots")


def test_too_many_values_name_the_counts(keys):
    with pytest.raises(
        HeAeroError, match=f"^encrypt: {SMALL.slots + 1} values do not fit {SMALL.slots} slots$"
    ):
        keys.encrypt(np.zeros(SMALL.slots + 1))


def test_bytes_round_trip_and_a_bad_blob_names_what(keys):
    x = np.arange(6.0)
    blob = to_bytes(keys.encrypt(x))
    assert isinstance(blob, bytes)
    assert_close_bits(keys.decrypt_bytes(blob)[:6], x, BITS, "bytes")
    with pytest.raises(HeAeroError, match="^logits part 2 does not load under this session's parameters"):
        keys.decrypt_bytes(blob[:50], "logits part 2")
    with pytest.raises(HeAeroError, match="^ciphertext does not load"):
        keys.decrypt_bytes(b"\x00" * 64)


def test_the_public_keys_are_a_working_public_key_relin_key_and_rotation_keys(keys):
    """The server encrypts with the public key, multiplies (relinearisation key) and rotates by 8 and -1;
    the client decrypts the right values."""
    pub = keys.public_keys()
    loaded = public_context(pub)
    assert pub.nbytes == len(pub.public_key) + len(pub.relin_keys) + len(pub.galois_keys)
    assert all(len(b) > 1000 for b in (pub.public_key, pub.relin_keys, pub.galois_keys))
    ev = Evaluator(SMALL, loaded)
    x = np.random.default_rng(2).uniform(-1, 1, SMALL.slots)
    a = Ct(keys.encrypt(x), SMALL.levels)
    sq = ev.mul(a, a)
    assert sq.data.size() == 2  # relinearised
    assert_close_bits(keys.decrypt(sq.data), x * x, BITS, "x^2")
    assert_close_bits(keys.decrypt(ev.rotate(a, 8).data), np.roll(x, -8), BITS, "rot 8")
    assert_close_bits(keys.decrypt(ev.rotate(a, -1).data), np.roll(x, 1), BITS, "rot -1")
    # the server's own encryption under the public key decrypts with the client's secret key
    pt = seal.Plaintext()
    seal.CKKSEncoder(loaded.seal_context).encode([0.5] * SMALL.slots, keys.scale, pt)
    ct = seal.Ciphertext()
    seal.Encryptor(loaded.seal_context, loaded.public_key).encrypt(pt, ct)
    assert_close_bits(
        keys.decrypt_bytes(to_bytes(ct)), np.full(SMALL.slots, 0.5), BITS, "public-key encryption"
    )


def test_two_key_sets_do_not_decrypt_each_other(keys):
    other = ClientKeys(SMALL)
    got = other.decrypt(keys.encrypt(np.ones(8)))
    assert np.abs(got[:8] - 1.0).min() > 1.0  # noise, not the message


def test_complex_values_round_trip_and_the_default_decrypt_keeps_real_parts(keys):
    z = np.array([1 + 2j, -0.5 - 0.25j, 3j])
    ct = keys.encrypt(z)
    full = keys.decrypt(ct, complex_slots=True)
    assert np.iscomplexobj(full) and full.shape == (SMALL.slots,)
    assert_close_bits(full[:3].real, z.real, BITS, "real parts")
    assert_close_bits(full[:3].imag, z.imag, BITS, "imaginary parts")
    assert_close_bits(np.abs(full[3:]), np.zeros(SMALL.slots - 3), BITS, "padding")
    real = keys.decrypt(ct)
    assert real.dtype == np.float64
    assert_close_bits(real[:3], z.real, BITS, "default decrypt")


def test_encrypt_upload_is_a_serialised_fresh_top_level_encryption(keys):
    from he_aero.ckks.backend import load_ciphertext

    blob = keys.encrypt_upload([1.0, -2.0, 0.5])
    assert isinstance(blob, bytes)
    parms_ids, _, scales = chain_tables(keys.seal_context, SMALL)
    ct = load_ciphertext(keys.seal_context, blob, "upload")
    assert is_fresh(ct, parms_ids[SMALL.levels], scales[SMALL.levels])
    assert_close_bits(keys.decrypt(ct)[:3], [1.0, -2.0, 0.5], BITS, "upload")


def test_the_magnitude_limit_is_inclusive_and_named(keys):
    """|value| <= 2^30 is encoded; above, the refusal names both magnitudes and why."""
    from he_aero.client.keys import MAX_ABS_VALUE

    assert MAX_ABS_VALUE == 2.0**30
    got = keys.decrypt(keys.encrypt([MAX_ABS_VALUE, -1.0]))
    assert abs(got[0] / MAX_ABS_VALUE - 1) < 2**-20 and abs(got[1] + 1) < 2**-4
    with pytest.raises(
        HeAeroError,
        match=r"^encrypt: a value of magnitude 1\.07e\+09 exceeds 1\.07e\+09: the encoding \(a double "
        r"precision FFT\) would corrupt every other slot$",
    ):
        keys.encrypt([0.0, -np.nextafter(MAX_ABS_VALUE, np.inf)])


def test_no_values_encrypt_to_zeros(keys):
    assert_close_bits(keys.decrypt(keys.encrypt([])), np.zeros(SMALL.slots), BITS, "empty")
