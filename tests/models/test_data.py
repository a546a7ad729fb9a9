"""Corpus split, byte tokenizer and evaluation windows."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.data import Batches, decode, encode, eval_windows, split_of, to_text
from models.errors import ModelError


@given(st.binary(max_size=300))
@settings(max_examples=50, deadline=None)
def test_tokenizer_round_trips_arbitrary_bytes(data):
    tokens = encode(data)
    assert all(0 <= t < 256 for t in tokens) and len(tokens) == len(data)
    assert decode(tokens) == data


def test_tokenizer_invalid_utf8_and_text():
    raw = b"def f():\n\xff\xfe\xc3(\x80 return 1"
    assert decode(encode(raw)) == raw
    assert "\ufffd" in to_text(raw)  # shown, never raised
    assert decode(encode("é")) == "é".encode()
    with pytest.raises(ModelError):
        decode([256])


def test_split_is_deterministic_and_by_path():
    paths = [f"./pkg/mod{i}.py" for i in range(2000)]
    splits = [split_of(p) for p in paths]
    assert splits == [split_of(p) for p in paths]
    counts = {s: splits.count(s) for s in ("train", "val", "test")}
    assert 1700 < counts["train"] < 1900 and counts["val"] > 50 and counts["test"] > 50


def test_eval_windows_cover_every_byte_once():
    data = bytes(range(100))
    x, y = eval_windows(data, 8)
    targets = y[y >= 0].tolist()
    assert targets == list(range(1, 100))  # each byte after the first predicted exactly once, in order
    assert x[0, 0] == 0 and y[0, 0] == 1
    xs, _ = eval_windows(data, 8, max_bytes=32)
    assert len(xs) == 4


def test_batches_are_seeded_and_shifted():
    import torch

    b = Batches.from_bytes(bytes(range(200)), 16, 4)
    x1, y1 = b.sample(torch.Generator().manual_seed(1))
    x2, _ = b.sample(torch.Generator().manual_seed(1))
    assert torch.equal(x1, x2) and torch.equal(x1[:, 1:], y1[:, :-1])
    with pytest.raises(ModelError):
        Batches.from_bytes(b"short", 16, 4)
