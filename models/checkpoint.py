"""Checkpoints: safetensors weights + a self-describing `config.json`; nothing is ever unpickled.

Layout of a checkpoint directory (docs/design.md section 1)::

    model.safetensors   weights (float32)
    config.json         {"format_version", "config", "weights_sha256", "config_sha256", "metadata"}
    train_log.jsonl     training log (written by training, optional here)
    metrics.json        final metrics (optional here)

`load_checkpoint` checks that both files exist, that the weights' SHA-256 matches, that the config is valid
and unedited (`config_sha256`: a field that keeps tensor shapes, e.g. `temperature_max`, would otherwise
change the output silently), and that the tensor names and shapes match the model the config describes; each
failure is a one-line `ModelError` naming the file and what to do.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.decoder import Decoder, DecoderConfig
from models.errors import ModelError

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "default"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def config_sha256(config: dict) -> str:
    """SHA-256 of the canonical JSON of a model config (sorted keys, compact separators)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_checkpoint(model: Decoder, out_dir: Path | str, metadata: dict | None = None) -> Path:
    """Write `model.safetensors` and `config.json` into `out_dir` (created if needed); returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(out / WEIGHTS)  # atomic: a reader never sees a half-written weights file
    header = {
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "weights_sha256": sha256_file(out / WEIGHTS),
        "config_sha256": config_sha256(model.cfg.to_dict()),
        "metadata": metadata or {},
    }
    (out / CONFIG).write_text(json.dumps(header, indent=2) + "\n")
    return out


def read_header(ckpt_dir: Path | str) -> dict:
    """The validated `config.json` of a checkpoint directory."""
    ckpt = Path(ckpt_dir)
    if not ckpt.is_dir():
        raise ModelError(f"checkpoint {ckpt}: no such directory (train one with `he-aero train --out DIR`)")
    path = ckpt / CONFIG
    if not path.is_file():
        raise ModelError(f"checkpoint {ckpt}: missing {CONFIG}")
    try:
        header = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"checkpoint {path}: not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ModelError(f"checkpoint {path}: expected a JSON object")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(
            f"checkpoint {path}: format_version {version!r}, this code reads {FORMAT_VERSION} "
            "(retrain, or use the he-aero version that wrote it)"
        )
    for key in ("config", "weights_sha256"):
        if key not in header:
            raise ModelError(f"checkpoint {path}: missing field {key!r}")
    return header


def load_checkpoint(ckpt_dir: Path | str | None = None) -> tuple[Decoder, dict]:
    """Load (model in eval mode, header dict) from a checkpoint directory (default: the shipped one)."""
    ckpt = Path(ckpt_dir) if ckpt_dir is not None else DEFAULT_CHECKPOINT
    header = read_header(ckpt)
    where = ckpt / CONFIG
    if "config_sha256" in header and config_sha256(header["config"]) != header["config_sha256"]:
        raise ModelError(
            f"checkpoint {where}: the config does not match its config_sha256: it was edited after training "
            "(an edited field can change the model's output silently); restore it or retrain"
        )
    try:
        cfg = DecoderConfig.from_dict(header["config"])
    except (ModelError, TypeError, ValueError) as exc:
        raise ModelError(f"checkpoint {where}: {exc}") from exc
    weights = ckpt / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"checkpoint {ckpt}: missing {WEIGHTS}")
    digest = sha256_file(weights)
    if digest != header["weights_sha256"]:
        raise ModelError(
            f"checkpoint {weights}: SHA-256 {digest[:12]}... does not match config.json "
            f"({str(header['weights_sha256'])[:12]}...): the file is corrupt or from another checkpoint"
        )
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"checkpoint {weights}: unreadable safetensors file ({exc})") from exc
    model = Decoder(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ModelError(
            f"checkpoint {weights}: tensors do not match the config (missing {missing}, extra {extra})"
        )
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise ModelError(
                f"checkpoint {weights}: tensor {name} has shape {tuple(t.shape)}, "
                f"config needs {tuple(expected[name].shape)}"
            )
    model.load_state_dict(tensors)
    model.eval()
    return model, header
