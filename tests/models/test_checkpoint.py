"""Checkpoints: round trip, and clear errors on missing, corrupt or mismatched files."""

import json

import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.decoder import Decoder, DecoderConfig
from models.errors import ModelError

CFG = DecoderConfig(n_layer=1, n_head=2, d_model=16, block_size=8)


@pytest.fixture
def ckpt(tmp_path):
    model = Decoder(CFG)
    save_checkpoint(model, tmp_path / "ck", {"note": "test"})
    return tmp_path / "ck", model


def test_round_trip(ckpt):
    path, model = ckpt
    loaded, header = load_checkpoint(path)
    assert loaded.cfg == CFG and header["metadata"] == {"note": "test"} and header["format_version"] == 1
    idx = torch.randint(0, 256, (2, 8))
    torch.testing.assert_close(loaded.logits(idx), model.eval().logits(idx), rtol=0, atol=0)


def test_missing_directory_and_files(tmp_path, ckpt):
    path, _ = ckpt
    with pytest.raises(ModelError, match="no such directory"):
        load_checkpoint(tmp_path / "nope")
    (path / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="missing model.safetensors"):
        load_checkpoint(path)


def test_corrupt_weights(ckpt):
    path, _ = ckpt
    raw = bytearray((path / "model.safetensors").read_bytes())
    raw[-3] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="SHA-256"):
        load_checkpoint(path)


def test_corrupt_or_mismatched_config(ckpt):
    path, _ = ckpt
    header = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_checkpoint(path)
    (path / "config.json").write_text(json.dumps({**header, "format_version": 99}))
    with pytest.raises(ModelError, match="format_version"):
        load_checkpoint(path)
    wrong = {**header, "config": {**header["config"], "d_model": 32, "n_head": 2}}
    (path / "config.json").write_text(json.dumps(wrong))
    with pytest.raises(ModelError, match="config.json: the config does not match its config_sha256"):
        load_checkpoint(path)
    del wrong["config_sha256"]  # an older checkpoint (no config hash): the tensor shapes still catch this
    (path / "config.json").write_text(json.dumps(wrong))
    with pytest.raises(ModelError, match="shape"):
        load_checkpoint(path)


def test_an_edited_config_field_that_keeps_shapes_is_refused(ckpt):
    """temperature_max 2.0 -> 1.0 keeps every tensor shape but changes the output: the config hash refuses
    it."""
    path, _ = ckpt
    header = json.loads((path / "config.json").read_text())
    header["config"]["temperature_max"] = header["config"]["temperature_max"] / 2
    (path / "config.json").write_text(json.dumps(header))
    with pytest.raises(ModelError, match="edited after training"):
        load_checkpoint(path)
