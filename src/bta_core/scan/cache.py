"""The embedding cache: one safetensors file per image file, keyed by content and model.

A re-scan, or a folder with new files, only embeds what is new; an interrupted scan resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import atomic_write
from ..model import BTAModel

CACHE_FORMAT = "bta-scan-cache/2"
"""Version 2 adds the fingerprints (pixel hash, D4 perceptual hash) of every image."""


def default_cache_dir() -> Path:
    """``$BTA_CACHE_DIR``, else ``$XDG_CACHE_HOME/bta/embeddings`` (``~/.cache/bta/embeddings``)."""
    if os.environ.get("BTA_CACHE_DIR"):
        return Path(os.environ["BTA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bta" / "embeddings"


def model_identity(model: BTAModel) -> str:
    """Hash of the model's weights (backbone, projector, head) and config: the cache key.

    Hashing the tensors rather than a checkpoint file also tells apart backbones loaded from
    different weight files and models built in memory.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_hash(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """Content hash of a file (blake2b, 128 bits)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class CacheEntry:
    """What a scan keeps of one image file: per image, its plane tag, embedding and fingerprints."""

    tags: list[str]
    z: torch.Tensor
    """``(P, D)``, or ``(P, 8, D)`` with TTA."""
    pixel_hashes: list[str]
    phash: np.ndarray
    """``(P, 8, B)`` packed perceptual hashes of the 8 orientations (``fingerprint.d4_phash``)."""


class EmbeddingCache:
    """One safetensors file per image file: ``ROOT/MODEL/MODE/ab/abcdef....safetensors``.

    Each entry is a :class:`CacheEntry` for the P images of the file. ``root=None`` keeps
    nothing on disk. Entries of an older format are ignored (recomputed).
    """

    def __init__(self, root: str | os.PathLike | None, model_id: str, mode: str) -> None:
        self.dir = None if root is None else Path(root) / model_id / mode
        self.problem: str | None = None
        """Why the cache stopped being written (read-only, full disk...), else None."""

    def _path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> CacheEntry | None:
        if self.dir is None:
            return None
        from safetensors import safe_open

        try:
            path = self._path(key)
            if not path.is_file():
                return None
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                if meta.get("format") != CACHE_FORMAT:
                    return None
                z = fh.get_tensor("z")
                phash = fh.get_tensor("phash").numpy()
            tags, hashes = json.loads(meta["tags"]), json.loads(meta["pixel_hashes"])
            if not len(tags) == len(hashes) == len(z) == len(phash):
                return None
            return CacheEntry(tags, z, hashes, phash)
        except Exception:  # a damaged entry is recomputed, never fatal
            return None

    def put(self, key: str, entry: CacheEntry) -> None:
        """Store an entry; a cache that cannot be written (read-only, full) warns once and is
        left alone for the rest of the run: it only saves time, the scan goes on without it."""
        if self.dir is None or self.problem is not None:
            return
        from safetensors.torch import save_file

        meta = {
            "format": CACHE_FORMAT,
            "tags": json.dumps(entry.tags),
            "pixel_hashes": json.dumps(entry.pixel_hashes),
        }
        tensors = {
            "z": entry.z.detach().to("cpu", torch.float32).contiguous(),
            "phash": torch.from_numpy(np.ascontiguousarray(entry.phash, dtype=np.uint8)),
        }
        try:
            atomic_write(self._path(key), lambda tmp: save_file(tensors, tmp, metadata=meta))
        except Exception as exc:  # OSError, or safetensors' own error for a failed write
            self.problem = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            warnings.warn(
                f"embedding cache {self.dir} cannot be written ({self.problem}); going on "
                "without it (results are not affected, only the next scan is slower)",
                CacheWarning,
                stacklevel=2,
            )


class CacheWarning(UserWarning):
    """The embedding cache could not be written; the scan went on without it."""
