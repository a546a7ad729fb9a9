"""The corpus and its tokens: CPython 3.11.7's standard library, split by file, as byte-level tokens.

The snapshot (`models/data/cpython-3.11.7-lib.tar.xz`, PSF licence beside it) is read directly with
`tarfile`; every machine sees identical bytes whatever Python it runs. Each file goes to train, validation or
test by a hash of its path, so the split does not depend on file order or on the number of files.
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from models.errors import ModelError

CORPUS = Path(__file__).parent / "data" / "cpython-3.11.7-lib.tar.xz"
SPLITS = ("train", "val", "test")
# Per mille of files: [0, 900) train, [900, 950) val, [950, 1000) test.
_SPLIT_BOUNDS = (900, 950)
FILE_SEPARATOR = b"\n\n"  # files are concatenated with a blank line between them


def split_of(path: str) -> str:
    """The split a corpus file belongs to, from the SHA-256 of its path inside the archive."""
    bucket = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big") % 1000
    if bucket < _SPLIT_BOUNDS[0]:
        return "train"
    return "val" if bucket < _SPLIT_BOUNDS[1] else "test"


@lru_cache(maxsize=2)
def _read_corpus(archive: str) -> dict[str, bytes]:
    """All splits of an archive as concatenated bytes, files in sorted path order."""
    try:
        with tarfile.open(archive, "r:xz") as tar:
            members = sorted((m for m in tar if m.isfile() and m.name.endswith(".py")), key=lambda m: m.name)
            parts: dict[str, list[bytes]] = {s: [] for s in SPLITS}
            for m in members:
                parts[split_of(m.name)].append(tar.extractfile(m).read())
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ModelError(f"corpus {archive}: cannot read ({exc})") from exc
    return {s: FILE_SEPARATOR.join(p) for s, p in parts.items()}


def load_split(split: str, archive: Path | str = CORPUS) -> bytes:
    """The bytes of one split ("train", "val" or "test")."""
    if split not in SPLITS:
        raise ModelError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    return _read_corpus(str(archive))[split]


def encode(text: str | bytes) -> list[int]:
    """Byte-level tokens: UTF-8 bytes of a str, or the bytes themselves (any bytes, valid UTF-8 or not)."""
    return list(text.encode("utf-8") if isinstance(text, str) else bytes(text))


def decode(tokens) -> bytes:
    """Tokens back to bytes (the exact inverse of `encode` on bytes)."""
    try:
        return bytes(int(t) for t in tokens)
    except ValueError as exc:
        raise ModelError(f"tokens must be integers in [0, 255]: {exc}") from exc


def to_text(data: bytes) -> str:
    """Bytes for display: invalid UTF-8 shown as replacement characters, never an exception."""
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Batches:
    """Random training windows from one byte stream: (x, y) pairs with y shifted by one."""

    data: np.ndarray  # (N,) uint8
    block_size: int
    batch_size: int

    @classmethod
    def from_bytes(cls, data: bytes, block_size: int, batch_size: int) -> Batches:
        if len(data) <= block_size + 1:
            raise ModelError(f"need more than {block_size + 1} bytes of data, got {len(data)}")
        return cls(np.frombuffer(data, dtype=np.uint8), block_size, batch_size)

    def sample(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y (batch, block) int64 from a seeded generator."""
        starts = torch.randint(len(self.data) - self.block_size - 1, (self.batch_size,), generator=gen)
        rows = np.stack([self.data[s : s + self.block_size + 1] for s in starts.tolist()])
        t = torch.from_numpy(rows.astype(np.int64))
        return t[:, :-1], t[:, 1:]


def eval_windows(
    data: bytes, block_size: int, max_bytes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows covering `data` (every byte after the first predicted exactly once).

    Returns x, y (n, block) int64; positions past the end are padding with y = -1 (ignored by the loss).
    `max_bytes` keeps an evenly spaced subset of windows (deterministic) when the data is large.
    """
    arr = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    n = (len(arr) - 1 + block_size - 1) // block_size
    if n < 1:
        raise ModelError("need at least 2 bytes to evaluate")
    idx = np.arange(n)
    if max_bytes is not None and n * block_size > max_bytes:
        keep = max(1, max_bytes // block_size)
        idx = np.unique(np.linspace(0, n - 1, keep).round().astype(np.int64))
    x = np.zeros((len(idx), block_size), dtype=np.int64)
    y = np.full((len(idx), block_size), -1, dtype=np.int64)
    for r, w in enumerate(idx):
        chunk = arr[w * block_size : w * block_size + block_size + 1]
        x[r, : len(chunk) - 1] = chunk[:-1]
        y[r, : len(chunk) - 1] = chunk[1:]
    return torch.from_numpy(x), torch.from_numpy(y)
