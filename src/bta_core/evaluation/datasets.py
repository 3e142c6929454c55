"""The images an evaluation runs on: decoded splits with groups, populations, same-field pairs."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import ImageRecord, decode_records, list_records
from ..runtime import ProgressFn


@dataclass
class EvalData:
    """Decoded images of one split with their groups, populations and same-field pairs."""

    images: torch.Tensor
    records: list[ImageRecord]
    groups: np.ndarray
    population: np.ndarray
    population_names: list[str]
    same_field: np.ndarray  # (K, 2) index pairs from same_source_edges.csv
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(path, problem)`` of every file that could not be read (left out, not fatal)."""


def describe_selection(data: Sequence[str | os.PathLike], split: str | None) -> str:
    """Which images ``data`` gives for ``split``, in words: only ``splits.csv`` files have
    splits; a folder gives every image it holds."""
    n_csv = sum(Path(d).suffix.lower() == ".csv" for d in data)
    csv_part = f"the {split} split" if split else "every image"
    if n_csv == len(data):
        return csv_part
    if n_csv == 0:
        return "every image of the folder" + ("s" if len(data) > 1 else "") + " (no split)"
    return f"{csv_part} of the split files and every image of the folders"


def report_skipped(skipped: Sequence[tuple[str, str]], quiet: bool = False) -> None:
    """One warning line on stderr per file left out (unless ``quiet``)."""
    if quiet:
        return
    for path, problem in skipped:
        print(f"warning: skipped {path}: {problem}", file=sys.stderr)


def load_eval_data(
    data: Sequence[str | os.PathLike],
    split: str | None,
    decode_size: int,
    limit: int | None = None,
    on_progress: ProgressFn | None = None,
    decoded: dict[tuple[str, int], torch.Tensor] | None = None,
) -> EvalData:
    """Read and decode the images of ``split`` from folders / ``splits.csv`` files.

    ``limit`` keeps at most that many images per source (so every data set stays present).
    ``decoded`` maps ``(path, decode_size)`` to images already decoded (filled in here), so
    an image needed by two splits or calls is decoded once.
    """
    import csv

    records: list[ImageRecord] = []
    datasets: list[str] = []
    edges: list[tuple[str, str]] = []
    for src in data:
        src = Path(src)
        recs = list_records([src], split=split or None)
        if limit:
            recs = recs[: int(limit)]
        name = src.parent.name if src.suffix.lower() == ".csv" else src.name
        records += recs
        datasets += [name] * len(recs)
        edge_file = (src.parent if src.suffix.lower() == ".csv" else src) / "same_source_edges.csv"
        if edge_file.exists():
            base = edge_file.parent / "images"
            with open(edge_file, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    edges.append((str(base / row["a"]), str(base / row["b"])))
    skipped: list[tuple[str, str]] = []
    images, kept = _decode(records, decode_size, on_progress, decoded, skipped)
    dataset_of = {r.path: d for r, d in zip(records, datasets, strict=True)}
    groups_map: dict[str, int] = {}
    groups = np.array([groups_map.setdefault(r.group, len(groups_map)) for r in kept])
    pops = [f"{dataset_of[r.path]}/{r.modality or 'any'}" for r in kept]
    names = sorted(set(pops))
    population = np.array([names.index(p) for p in pops])
    index = {os.path.normpath(r.path): i for i, r in enumerate(kept)}
    pairs = [
        (index[os.path.normpath(a)], index[os.path.normpath(b)])
        for a, b in edges
        if os.path.normpath(a) in index and os.path.normpath(b) in index
    ]
    same_field = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return EvalData(images, kept, groups, population, names, same_field, skipped)


def _decode(
    records: list[ImageRecord],
    size: int,
    on_progress: ProgressFn | None,
    decoded: dict[tuple[str, int], torch.Tensor] | None,
    skipped: list[tuple[str, str]],
) -> tuple[torch.Tensor, list[ImageRecord]]:
    def skip(rec: ImageRecord, problem: str) -> None:
        skipped.append((rec.path, problem))

    if decoded is None:
        return decode_records(records, size, on_progress=on_progress, on_skip=skip)
    todo = [r for r in records if (r.path, size) not in decoded]
    if todo:
        images, kept = decode_records(todo, size, on_progress=on_progress, on_skip=skip)
        decoded.update({(r.path, size): im for r, im in zip(kept, images, strict=True)})
        if len(todo) == len(records):  # nothing was decoded before: no copy
            return images, kept
    kept = [r for r in records if (r.path, size) in decoded]
    if not kept:
        raise ValueError("none of the images could be read")
    return torch.stack([decoded[(r.path, size)] for r in kept]), kept
