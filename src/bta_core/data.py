"""Training/evaluation image sets: folders or ``splits.csv`` files, decoded once to uint8."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .imageio import ImageReadError, find_images, load_image, to_uint8
from .model import to_model_input
from .runtime import ProgressFn


@dataclass(frozen=True)
class ImageRecord:
    """One image of a data set: its file, field-of-view group, split and modality."""

    path: str
    group: str
    split: str | None = None
    modality: str | None = None


def read_splits_csv(path: str | os.PathLike, split: str | None = None) -> list[ImageRecord]:
    """Rows of a ``splits.csv`` (file, group_id, split, modality, ...), optionally one split."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"file"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: splits file needs a 'file' column (has {reader.fieldnames})")
        rows = list(reader)
    out = []
    for row in rows:
        if split and row.get("split") != split:
            continue
        file = path.parent / row["file"]
        out.append(
            ImageRecord(
                str(file), row.get("group_id") or str(file), row.get("split"), row.get("modality")
            )
        )
    return out


def list_records(
    sources: Sequence[str | os.PathLike], split: str | None = None, limit: int | None = None
) -> list[ImageRecord]:
    """Images of folders (every image its own group) and ``.csv`` split files, in order.

    ``split`` filters csv rows (folders have no split); ``limit`` keeps the first N images.
    """
    records: list[ImageRecord] = []
    for source in sources:
        source = Path(source)
        if source.suffix.lower() == ".csv":
            records += read_splits_csv(source, split)
        else:
            records += [ImageRecord(str(p), str(p)) for p in find_images(source)]
    if limit:
        records = records[: int(limit)]
    if not records:
        raise ValueError(
            f"no images found in {', '.join(map(str, sources))}"
            + (f" (split {split!r})" if split else "")
        )
    return records


def decode_records(
    records: Sequence[ImageRecord],
    size: int,
    on_progress: ProgressFn | None = None,
    on_skip: Callable[[ImageRecord, str], None] | None = None,
) -> tuple[torch.Tensor, list[ImageRecord]]:
    """Decode every image once into a uint8 tensor ``(N, 3, size, size)``.

    Unreadable files are skipped (reported through ``on_skip``); returns the tensor and the
    records that were kept.
    """
    kept, arrays = [], []
    for i, rec in enumerate(records):
        try:
            rgb = load_image(rec.path)
        except ImageReadError as exc:
            if on_skip is not None:
                on_skip(rec, exc.problem)
            continue
        arrays.append(to_uint8(to_model_input([rgb], size)[0].permute(1, 2, 0).numpy()))
        kept.append(rec)
        if on_progress is not None:
            on_progress(i + 1, len(records), {"stage": "decode"})
    if not arrays:
        raise ValueError("none of the images could be read")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), kept


def group_ids(records: Sequence[ImageRecord]) -> torch.Tensor:
    """Integer field-of-view group per record (images of one group are never negatives)."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(r.group, len(ids)) for r in records], dtype=torch.long)
