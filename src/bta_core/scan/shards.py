"""Shards: embed a corpus on n machines (``--shard i/n``), then ``merge`` the shard folders."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..output_files import json_text, output_set, write_text
from .cache import file_hash
from .embed import Embedded
from .outputs import skipped_csv_text
from .records import ScanImage, Skipped

SHARD_FORMAT = "bta-scan-shard/2"
SHARD_FILES = ("embeddings.npy", "phash.npy", "items.json")
"""Version 2 records counts and content hashes of the shard's files, checked by ``merge``."""


def write_shard(emb: Embedded, out_dir: str | os.PathLike, settings: dict) -> None:
    """Save one shard's embeddings (``embeddings.npy``), items and settings for ``merge``.

    ``shard.json`` records the number of items, the embeddings' shape and the content hash of
    ``embeddings.npy`` and ``items.json``; the files are written as one set.
    """
    z = emb.z.numpy().astype(np.float32)
    items = [asdict(it) for it in emb.items]
    if len(items) != z.shape[0]:
        raise ValueError(f"shard has {len(items)} items but {z.shape[0]} embeddings")
    phash = np.ascontiguousarray(emb.phash, dtype=np.uint8)
    if len(phash) != len(items):
        raise ValueError(f"shard has {len(items)} items but {len(phash)} perceptual hashes")
    with output_set(out_dir) as staging:
        with open(staging / "embeddings.npy", "wb") as fh:
            np.save(fh, z)
        with open(staging / "phash.npy", "wb") as fh:
            np.save(fh, phash)
        write_text(staging / "items.json", json_text(items))
        write_text(staging / "skipped.csv", skipped_csv_text(emb.skipped))
        doc = {
            "format": SHARD_FORMAT,
            "settings": settings,
            "stats": emb.stats,
            "n_items": len(items),
            "embedding_shape": list(z.shape),
            "hashes": {name: file_hash(staging / name) for name in SHARD_FILES},
            "skipped": [asdict(sk) for sk in emb.skipped],
        }
        write_text(staging / "shard.json", json_text(doc))


def _read_shard(
    d: Path,
) -> tuple[dict, list[ScanImage], torch.Tensor, np.ndarray, list[Skipped]]:
    """One shard folder, checked: format, content hashes, counts and shapes agree."""
    meta = d / "shard.json"
    if not meta.exists():
        raise FileNotFoundError(f"{d}: not a scan shard (no shard.json)")
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{d}: shard.json cannot be read ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != SHARD_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise ValueError(
            f"{d}: unknown shard format {found!r} (expected {SHARD_FORMAT}; re-run the shard)"
        )
    for name, expected in (doc.get("hashes") or {}).items():
        if not (d / name).exists() or file_hash(d / name) != expected:
            raise ValueError(
                f"{d}: {name} does not match the hash in shard.json (changed or damaged)"
            )
    if set(doc.get("hashes") or {}) != set(SHARD_FILES):
        raise ValueError(f"{d}: shard.json lacks the content hashes of its files")
    try:
        raw_items = json.loads((d / "items.json").read_text(encoding="utf-8"))
        items = [ScanImage(**it) for it in raw_items]
        z = np.load(d / "embeddings.npy", allow_pickle=False)
        phash = np.load(d / "phash.npy", allow_pickle=False)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{d}: shard files cannot be read ({exc})") from exc
    if z.dtype != np.float32 or z.ndim not in (2, 3) or not np.isfinite(z).all():
        raise ValueError(f"{d}: embeddings.npy is not a finite float32 (N, D) array")
    if phash.dtype != np.uint8 or phash.ndim != 3:
        raise ValueError(f"{d}: phash.npy is not a uint8 (N, 8, B) array")
    if not (len(items) == z.shape[0] == len(phash) == doc.get("n_items")) or list(
        z.shape
    ) != doc.get("embedding_shape"):
        raise ValueError(
            f"{d}: {len(items)} items, {z.shape[0]} embeddings, {len(phash)} hashes and n_items "
            f"{doc.get('n_items')} disagree; the shard is inconsistent"
        )
    skipped = [Skipped(sk["path"], sk["problem"]) for sk in doc.get("skipped", [])]
    return doc, items, torch.from_numpy(z), phash, skipped


def read_shards(
    shard_dirs: Sequence[str | os.PathLike], allow_partial: bool = False
) -> tuple[Embedded, dict]:
    """Load and check shard folders: each consistent; same model, settings and folders; every
    shard present once; no image in two shards."""
    if not shard_dirs:
        raise ValueError("merge needs at least one shard folder")
    docs, items, zs, hashes, skipped = [], [], [], [], []
    for d in map(Path, shard_dirs):
        doc, its, z, ph, sk = _read_shard(d)
        docs.append((d, doc))
        items += its
        zs.append(z)
        hashes.append(ph)
        skipped += sk
    first = docs[0][1]["settings"]
    keys = ("model_id", "tta", "planes", "folders", "reference")
    for d, doc in docs[1:]:
        for k in keys:
            if doc["settings"].get(k) != first.get(k):
                raise ValueError(f"{d}: shard setting {k!r} differs from {docs[0][0]}")
    shapes = {tuple(z.shape[1:]) for z in zs}
    if len(shapes) > 1 or len({tuple(ph.shape[1:]) for ph in hashes}) > 1:
        raise ValueError(f"shards hold embeddings or hashes of different sizes {sorted(shapes)}")
    names = [it.name for it in items]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:3]
        raise ValueError(f"images in more than one shard (e.g. {dup}); merge each shard once")
    n = first["shard"][1]
    got = sorted(doc["settings"]["shard"][0] for _, doc in docs)
    if got != list(range(n)) and not allow_partial:
        missing = sorted(set(range(n)) - set(got))
        dup = sorted({g for g in got if got.count(g) > 1})
        raise ValueError(
            f"shards missing {missing} or repeated {dup} (of {n}); pass --allow-partial (allow_partial=True) to merge anyway"
        )
    z = torch.cat(zs)
    order = sorted(range(len(items)), key=lambda k: (items[k].role != "query", items[k].name))
    stats = {
        "n_files": sum(doc["stats"].get("n_files", 0) for _, doc in docs),
        "n_embedded": sum(doc["stats"].get("n_embedded", 0) for _, doc in docs),
        "n_cached": sum(doc["stats"].get("n_cached", 0) for _, doc in docs),
        "n_identical": sum(doc["stats"].get("n_identical", 0) for _, doc in docs),
        "n_images": len(items),
        "n_skipped": len(skipped),
        "model_id": first["model_id"],
        "n_shards": len(docs),
    }
    skipped.sort(key=lambda s: s.path)
    phash = np.concatenate(hashes)
    emb = Embedded([items[k] for k in order], z[order], skipped, stats, phash[order])
    return emb, first
