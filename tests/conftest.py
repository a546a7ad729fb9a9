"""Shared test fixtures: deterministic seeding and the one tolerance helper (precision in bits)."""

import math
import random

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed_everything(request):
    """Seed every RNG so each test is reproducible on its own (`pytest path::test` reruns it exactly)."""
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    yield


def bits_of_precision(actual, expected) -> float:
    """-log2 of the max absolute difference (inf when equal): the precision figure used across the project."""
    err = float(np.max(np.abs(np.asarray(actual, dtype=float) - np.asarray(expected, dtype=float))))
    return math.inf if err == 0 else -math.log2(err)


def assert_close_bits(actual, expected, bits: float, what: str = "values") -> None:
    """Assert that `actual` matches `expected` to at least `bits` bits of absolute precision."""
    got = bits_of_precision(actual, expected)
    assert got >= bits, f"{what}: {got:.1f} bits of precision, need >= {bits}"
