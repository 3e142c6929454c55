"""Keypoint-check results kept between scans: a re-scan, or a scan resumed after Ctrl-C, checks
only the pairs it has not checked before.

A result depends only on the two images' decoded pixels and on the matcher, so an entry is
keyed by both pixel hashes (``ScanImage.pixel_hash``, in order) and a fingerprint of the
matcher's source code: any change to the matcher starts a new set of entries. Each entry is one
small JSON file, written atomically, under ``CACHE/verify/``.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from ..checkpoint import atomic_write_text
from ..verdict import Evidence

FIELDS = ("verified", "match_confidence", "inliers", "transform", "local_edits")
"""The evidence a keypoint check sets (``assess.add_match``)."""


@lru_cache(maxsize=1)
def matcher_fingerprint() -> str:
    """Hash of the source of everything that shapes a check's result."""
    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "match").glob("*.py")) + [
        root / "assess.py",
        root / "dihedral.py",
        root / "imageio.py",
        root / "decode.py",
        Path(__file__),
    ]
    h = hashlib.blake2b(digest_size=8)
    for f in files:
        if f.exists():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


class VerifyCache:
    """Stored keypoint-check evidence of image pairs, under ``root``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root) / "verify" / matcher_fingerprint()
        self.hits = 0

    def _path(self, pixel_a: str, pixel_b: str) -> Path | None:
        if not pixel_a or not pixel_b:
            return None
        key = hashlib.blake2b(f"{pixel_a}|{pixel_b}".encode(), digest_size=16).hexdigest()
        return self.root / key[:2] / f"{key}.json"

    def load(self, pixel_a: str, pixel_b: str, evidence: Evidence) -> bool:
        """Fill ``evidence`` from a stored check; False when there is none (or it is unusable)."""
        path = self._path(pixel_a, pixel_b)
        if path is None or not path.exists():
            return False
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            values = {k: stored[k] for k in FIELDS}
        except (OSError, ValueError, KeyError, TypeError):
            return False  # damaged: check again (and overwrite it)
        for k, v in values.items():
            setattr(evidence, k, v)
        self.hits += 1
        return True

    def store(self, pixel_a: str, pixel_b: str, evidence: Evidence) -> None:
        path = self._path(pixel_a, pixel_b)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({k: getattr(evidence, k) for k in FIELDS}))
        except OSError:  # a read-only or full cache only costs the next scan time
            pass
