"""Find the image files of a scan and decode them to model-sized pixels."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..fingerprint import Fingerprint, fingerprint
from ..imageio import find_images, iter_images, load_image
from ..model import to_model_input


def parse_shard(spec: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"i/n"`` (0 <= i < n) -> ``(i, n)``; e.g. ``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``."""
    if spec is None:
        return None
    if isinstance(spec, str):
        try:
            i_text, n_text = spec.split("/")
            i, n = int(i_text), int(n_text)
        except ValueError as exc:
            raise ValueError(f"shard {spec!r}: expected 'i/n', e.g. '0/4'") from exc
    else:
        i, n = (int(v) for v in spec)
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need 0 <= i < n")
    return i, n


def shard_of(path: Path, root: Path, n: int) -> int:
    """Stable shard of a file: CRC32 of its path relative to its folder, modulo ``n``."""
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = path.as_posix()
    return zlib.crc32(rel.encode("utf-8", "surrogatepass")) % n


def discover(
    folders: Sequence[str | os.PathLike],
    reference: Sequence[str | os.PathLike] = (),
    shard: tuple[int, int] | None = None,
    on_skip: Callable[[Path, str], None] | None = None,
) -> list[tuple[Path, str]]:
    """``(path, role)`` of every image file below the folders; a file in both counts as query.

    Folders that cannot be listed, symbolic link loops, broken links and pipes named like
    images go to ``on_skip(path, problem)`` (in a shard scan: only in the path's own shard).
    """
    seen: set[str] = set()
    out: list[tuple[Path, str]] = []
    for role, roots in (("query", folders), ("reference", reference or ())):
        for root in roots:
            root = Path(root)

            def skip(path: Path, problem: str, root: Path = root) -> None:
                if on_skip is not None and (
                    shard is None or shard_of(path, root, shard[1]) == shard[0]
                ):
                    on_skip(path, problem)

            for path in find_images(root, on_skip=skip):
                key = os.path.realpath(path)
                if key in seen:
                    continue
                seen.add(key)
                if shard is not None and shard_of(path, root, shard[1]) != shard[0]:
                    continue
                out.append((path, role))
    return out


def decode_file(
    path: Path, planes: bool, image_size: int
) -> list[tuple[str, np.ndarray, Fingerprint]]:
    """The images of one file: plane tag, pixels resized to the model's input size (saves
    memory) and the fingerprints of the full-size decoded pixels."""
    if planes:
        images = [(info.name[len(info.path) :], rgb) for info, rgb in iter_images(path, True)]
    else:
        images = [("", load_image(path))]
    out = []
    for tag, rgb in images:
        x = to_model_input([rgb], image_size)[0].permute(1, 2, 0).numpy()
        out.append((tag, x, fingerprint(rgb)))
    return out
