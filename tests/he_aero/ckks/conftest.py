"""Fixtures of the kernel tests: one small insecure context (tests only) shared by the session."""

import pytest

from tests.he_aero.ckks.kit import SMALL, STEPS, Kit


@pytest.fixture(scope="session")
def kit():
    return Kit(SMALL, STEPS)
