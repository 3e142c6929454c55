"""Hash, decode and embed every image of a scan (or read it from the cache), in batches."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..fingerprint import PHASH_SIZE
from ..model import BTAModel, embed_images
from ..runtime import ProgressFn, StopFn, check_cancel
from .cache import CacheEntry, EmbeddingCache, file_hash, model_identity
from .discover import discover
from .loader import capture_problem, decode_stream
from .records import ScanImage, Skipped


def chunks(seq: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


PHASH_BYTES = PHASH_SIZE * PHASH_SIZE // 8
IN_PROCESS_BELOW = 64
"""Fewer files than this are decoded in this process (starting worker processes costs more)."""


@dataclass
class Embedded:
    """Images, their embeddings (``(N, D)`` or ``(N, 8, D)``) and perceptual hashes
    (``(N, 8, B)``), before scoring; each image's pixel hash is on its record."""

    items: list[ScanImage]
    z: torch.Tensor
    skipped: list[Skipped]
    stats: dict
    phash: np.ndarray
    fit_rows: int | None = None
    """The scanned collection is the first ``fit_rows`` images (None: all). Nearest
    neighbours appended from an index are not a sample of it (``scan.collection``)."""
    background: torch.Tensor | None = None
    """Embeddings of a sample of a reference index: what a folder too small to describe
    itself is whitened with besides its own images (``scan.collection``)."""
    in_background: np.ndarray | None = None
    """Per row after ``fit_rows``: the index neighbour is in ``background`` too (so fitted)."""

    def fitted(self) -> np.ndarray:
        """One bool per row: its image is among those the collection whitening is fitted on."""
        n = len(self.z)
        mask = np.arange(n) < (n if self.fit_rows is None else self.fit_rows)
        if self.in_background is not None:
            mask[n - len(self.in_background) :] |= self.in_background
        return mask


def embed_folders(
    model: BTAModel,
    folders: Sequence[str | os.PathLike],
    reference: Sequence[str | os.PathLike] = (),
    *,
    planes: bool = False,
    tta: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    shard: tuple[int, int] | None = None,
    batch_size: int = 32,
    workers: int = 2,
    progress_bar: bool = False,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> Embedded:
    """Discover, hash and embed (or read from the cache) every image below the folders."""
    t0 = time.perf_counter()
    skipped: list[Skipped] = []
    files = discover(
        folders, reference, shard, on_skip=lambda p, why: skipped.append(Skipped(str(p), why))
    )
    model_id = model_identity(model)
    mode = f"{'d4' if tta == 'd4' else 'id'}-{'planes' if planes else 'first'}"
    cache = EmbeddingCache(cache_dir, model_id, mode)
    stats = {
        "n_files": len(files),
        "model_id": model_id,
        "cache_dir": str(cache.dir) if cache.dir else None,
    }

    def report(step: int, total: int, stage: str) -> None:
        if on_progress is not None:
            on_progress(step, total, {"stage": stage})

    workers = max(1, int(workers))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        hashes = []
        for k, (res, problem) in enumerate(
            pool.map(lambda p: capture_problem(file_hash, p[0]), files)
        ):
            hashes.append(res)
            if problem:
                skipped.append(Skipped(str(files[k][0]), f"cannot read file ({problem})"))
            if k % 256 == 0:
                check_cancel(should_stop, "scan")
        t_hash = time.perf_counter()
        usable = [(p, role, h) for (p, role), h in zip(files, hashes, strict=True) if h is not None]

        entries: dict[str, CacheEntry] = {}
        todo: dict[str, Path] = {}
        for path, _, h in usable:
            if h in entries or h in todo:
                continue
            hit = cache.get(h)
            if hit is not None:
                entries[h] = hit
            else:
                todo[h] = path
        n_cached_files = len(entries)
        problems: dict[str, str] = {}
        n_embedded = 0
        bar = None
        if progress_bar and todo:  # no empty bar when everything comes from the cache
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), unit="file", desc="embed", dynamic_ncols=True)
        todo_list = list(todo.items())
        size = model.config.image_size
        groups = list(chunks(todo_list, max(1, batch_size)))
        # decode in worker processes (scan.loader); small jobs in this process
        procs = workers if len(todo_list) >= IN_PROCESS_BELOW else 0
        stream = decode_stream([p for _, p in todo_list], planes, size, procs)
        done_files = 0
        report(0, len(todo_list), "embed")
        try:
            for group in groups:
                check_cancel(should_stop, "scan")
                decoded = [next(stream)[1:] for _ in group]
                flat, owners, prints = [], [], []
                for (h, _), (images, problem) in zip(group, decoded, strict=True):
                    if problem is not None:
                        problems[h] = problem
                        continue
                    for tag, x, fp in images:
                        flat.append(x)
                        owners.append((h, tag))
                        prints.append(fp)
                if flat:
                    z = embed_images(model, flat, batch_size=batch_size, tta=tta)
                    n_embedded += len(flat)
                    by_file: dict[str, list[int]] = {}
                    for k, (h, _) in enumerate(owners):
                        by_file.setdefault(h, []).append(k)
                    for h, ks in by_file.items():
                        entry = CacheEntry(
                            [owners[k][1] for k in ks],
                            z[ks],
                            [prints[k].pixel_hash for k in ks],
                            np.stack([prints[k].phash for k in ks]),
                        )
                        cache.put(h, entry)
                        entries[h] = entry
                done_files += len(group)
                if bar is not None:
                    bar.update(len(group))
                report(done_files, len(todo_list), "embed")
        finally:
            stream.close()  # stops the decoding processes
            if bar is not None:
                bar.close()

    items: list[ScanImage] = []
    vectors: list[torch.Tensor] = []
    hashes_p: list[np.ndarray] = []
    for path, role, h in usable:
        if h in problems:
            skipped.append(Skipped(str(path), problems[h]))
            continue
        entry = entries[h]
        if not entry.tags:
            skipped.append(Skipped(str(path), "file holds no image"))
            continue
        for k, tag in enumerate(entry.tags):
            items.append(ScanImage(f"{path}{tag}", str(path), role, h, k, entry.pixel_hashes[k]))
        vectors.append(entry.z)
        hashes_p.append(entry.phash)
    order = sorted(range(len(items)), key=lambda k: (items[k].role != "query", items[k].name))
    items = [items[k] for k in order]
    dim = model.embed_dim
    empty = torch.empty(0, 8, dim) if tta == "d4" else torch.empty(0, dim)
    z_all = torch.cat(vectors)[order] if vectors else empty
    phash = np.concatenate(hashes_p)[order] if hashes_p else np.zeros((0, 8, PHASH_BYTES), np.uint8)
    t_end = time.perf_counter()
    stats.update(
        n_images=len(items),
        n_skipped=len(skipped),
        n_files_embedded=len(todo_list) - len(problems),
        n_files_cached=n_cached_files,
        n_embedded=n_embedded,
        n_cached=sum(len(e.tags) for e in entries.values()) - n_embedded,
        # images of files byte-identical to another scanned file: embedded once for all
        n_identical=len(items) - sum(len(e.tags) for e in entries.values()),
        seconds_hash=round(t_hash - t0, 3),
        seconds_embed=round(t_end - t_hash, 3),
    )
    skipped.sort(key=lambda s: s.path)
    return Embedded(items, z_all, skipped, stats, phash)
