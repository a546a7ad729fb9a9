"""Key separation: the server's context is rebuilt from public bytes, cannot decrypt or make keys; rotation
keys exist for exactly the listed steps and rotate correctly (SEAL's Galois-element binding pitfall)."""

import numpy as np
import pytest
import tenseal.sealapi as seal

from he_aero.ckks.ciphertext import Evaluator
from he_aero.ckks.keys import galois_element
from he_aero.errors import HeAeroError
from tests.he_aero.ckks.kit import SMALL, STEPS


def _attributes(obj):
    return [getattr(obj, name) for name in vars(obj)]


def test_server_context_holds_no_secret_key(kit):
    assert not any(isinstance(v, seal.SecretKey) for v in _attributes(kit.server))
    with pytest.raises(HeAeroError, match="cannot decrypt"):
        kit.server.decrypt(None)
    with pytest.raises(HeAeroError, match="only be created by the client"):
        kit.server.create_rotation_keys([1])


def test_a_key_the_server_could_make_does_not_decrypt(kit):
    x = np.linspace(-1, 1, SMALL.slots)
    ct = kit.enc(x)
    rogue = seal.KeyGenerator(kit.server.seal_context).secret_key()  # all a public context allows
    pt = seal.Plaintext()
    seal.Decryptor(kit.server.seal_context, rogue).decrypt(ct.data, pt)
    got = np.asarray(seal.CKKSEncoder(kit.server.seal_context).decode_double(pt))
    assert np.abs(got - x).max() > 1e3  # noise, not the message


def test_rotation_keys_cover_exactly_the_listed_steps(kit):
    n = SMALL.poly_modulus_degree
    for step in STEPS:
        assert kit.server.has_rotation(step)
    assert not kit.server.has_rotation(3)
    assert kit.server.galois_keys.size() == len({s % SMALL.slots for s in STEPS})
    assert galois_element(-1, n) == pow(3, SMALL.slots - 1, 2 * n)


@pytest.mark.parametrize("step", [1, -1, 16, -9, 128])
def test_rotations_with_custom_keys_are_correct(kit, step):
    x = np.random.default_rng(0).uniform(-1, 1, SMALL.slots)
    got = kit.dec(kit.ev.rotate(kit.enc(x), step))
    assert np.abs(got - np.roll(x, -step)).max() < 2**-14


def test_missing_rotation_key_is_a_clear_error(kit):
    with pytest.raises(HeAeroError, match="no rotation key for step 3"):
        kit.ev.rotate(kit.enc(np.ones(4)), 3)


def test_public_bundle_size_counts_keys(kit):
    assert kit.server.key_bytes == kit.keys.public_bundle().nbytes > 0


def test_evaluator_without_context_is_symbolic():
    ev = Evaluator(SMALL)
    assert ev.symbolic and ev.top == SMALL.levels


def test_a_key_set_without_rotations_round_trips():
    from he_aero.ckks.keys import ClientKeys

    server = ClientKeys(SMALL).public_context()  # SEAL cannot load an empty Galois key blob
    assert not server.has_rotation(1) and server.galois_keys.size() == 0
