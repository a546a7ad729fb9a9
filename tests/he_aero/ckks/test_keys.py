"""Keys: the server's context is rebuilt from public bytes; rotation keys exist for exactly the listed steps
and rotate correctly (SEAL's Galois-element binding pitfall); serialisation leaves no file behind."""

import numpy as np
import pytest

from he_aero.ckks.backend import galois_element, public_context, to_bytes
from he_aero.ckks.ciphertext import Evaluator
from he_aero.client.keys import ClientKeys
from he_aero.errors import HeAeroError
from tests.he_aero.ckks.kit import SMALL, STEPS


def test_rotation_keys_cover_exactly_the_listed_steps(kit):
    n = SMALL.poly_modulus_degree
    for step in STEPS:
        assert kit.server.has_rotation(step)
    assert not kit.server.has_rotation(3)
    # the listed steps plus the conjugation key (the server's real projection of client ciphertexts)
    assert kit.server.galois_keys.size() == len({s % SMALL.slots for s in STEPS}) + 1
    assert kit.server.has_conjugation()
    assert galois_element(-1, n) == pow(3, SMALL.slots - 1, 2 * n)


@pytest.mark.parametrize("step", [1, -1, 16, -9, 128])
def test_rotations_with_custom_keys_are_correct(kit, step):
    x = np.random.default_rng(0).uniform(-1, 1, SMALL.slots)
    got = kit.dec(kit.ev.rotate(kit.enc(x), step))
    assert np.abs(got - np.roll(x, -step)).max() < 2**-14


def test_missing_rotation_key_is_a_clear_error(kit):
    with pytest.raises(HeAeroError, match="no rotation key for step 3"):
        kit.ev.rotate(kit.enc(np.ones(4)), 3)


def test_public_keys_size_counts_keys(kit):
    assert kit.server.key_bytes == kit.keys.public_keys().nbytes > 0


def test_evaluator_without_context_is_symbolic():
    ev = Evaluator(SMALL)
    assert ev.symbolic and ev.top == SMALL.levels


def test_a_key_set_without_rotations_round_trips():
    server = public_context(ClientKeys(SMALL).public_keys())
    assert not server.has_rotation(1) and server.galois_keys.size() == 1 and server.has_conjugation()


def test_public_keys_that_do_not_parse_are_a_clear_error():
    keys = ClientKeys(SMALL).public_keys()
    bad = type(keys)(keys.params, keys.public_key[:100], keys.relin_keys, keys.galois_keys, ())
    with pytest.raises(HeAeroError, match="public keys do not load"):
        public_context(bad)


def test_serialisation_leaves_no_file_behind(kit, tmp_path, monkeypatch):
    """Ciphertexts go through an in-memory file: nothing appears in the temp folder, even mid-call."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    blob = to_bytes(kit.enc(np.ones(4)).data)
    assert len(blob) > 1000 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [1e30, float("nan"), float("inf"), -(2.0**31)])
def test_a_value_that_would_corrupt_its_neighbours_is_refused(kit, bad):
    with pytest.raises(HeAeroError, match="would corrupt every other slot"):
        kit.keys.encrypt([bad, 1.0, 0.5])
    x = np.array([2.0**29, 1.0, 0.5])  # at the limit the neighbours keep their precision
    assert np.abs(kit.keys.decrypt(kit.keys.encrypt(x))[1:3] - x[1:]).max() < 2.0**-10
