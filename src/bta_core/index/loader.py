"""Decode images in worker processes and embed them in batches on the model's device.

Decoding and resizing (Python + PIL/tifffile + an antialiased resize) is what bounds embedding
from files, not the network: one process cannot decode as fast as even a CPU runs the forward
pass. A ``torch.utils.data.DataLoader`` with worker processes decodes each file once, into the
model's input and the image's fingerprint (pixel hash + D4 pHash), and hands over whole batches
(pinned memory when the model is on CUDA); the main process only runs the model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..runtime import ProgressFn, StopFn, check_cancel


@dataclass
class Decoded:
    """One file after decoding: its model input, fingerprint, or the problem it had."""

    position: int
    x: torch.Tensor | None  # (3, S, S) float32
    pixel_hash: str = ""
    phash: np.ndarray | None = None
    problem: str | None = None


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[str | os.PathLike], image_size: int, fingerprints: bool):
        self.paths = [str(p) for p in paths]
        self.size = image_size
        self.fingerprints = fingerprints

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Decoded:
        from ..fingerprint import d4_phash, pixel_hash
        from ..imageio import ImageReadError, load_image
        from ..model import to_model_input

        try:
            rgb = load_image(self.paths[i])
            x = to_model_input([rgb], self.size)[0]
            if not self.fingerprints:
                return Decoded(i, x)
            return Decoded(i, x, pixel_hash(rgb), d4_phash(rgb))
        except ImageReadError as exc:
            return Decoded(i, None, problem=" ".join(str(exc.problem).split()))
        except Exception as exc:  # an odd file is reported and skipped, never fatal
            return Decoded(i, None, problem=f"{type(exc).__name__}: {exc}"[:300])


def _collate(batch: list[Decoded]) -> list[Decoded]:
    return batch


def _identity(x):
    return x


class _Map(torch.utils.data.Dataset):
    def __init__(self, fn: Callable, items: Sequence) -> None:
        self.fn, self.items = fn, list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, object, str | None]:
        from ..imageio import ImageReadError

        try:
            return i, self.fn(self.items[i]), None
        except ImageReadError as exc:
            return i, None, " ".join(str(exc.problem).split())
        except Exception as exc:  # an odd file is reported and skipped, never fatal
            return i, None, " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def map_in_workers(
    fn: Callable, items: Sequence, workers: int | None = None, prefetch: int = 8
) -> Iterator[tuple[int, object, str | None]]:
    """``(position, fn(item) or None, problem or None)`` for each item, in order, computed in
    ``workers`` processes (0: here). ``fn`` must be a module-level function (or a partial)."""
    workers = default_workers() if workers is None else max(0, int(workers))
    loader = torch.utils.data.DataLoader(
        _Map(fn, items),
        batch_size=None,
        collate_fn=_identity,  # keep numpy arrays as they are
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=prefetch if workers else None,
    )
    yield from loader


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # the workers decode; the main process owns the BLAS threads


def default_workers() -> int:
    """Decode processes: all cores but one, at least 1, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def decoded_batches(
    paths: Sequence[str | os.PathLike],
    image_size: int,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    fingerprints: bool = True,
    pin_memory: bool = False,
) -> Iterator[list[Decoded]]:
    """Batches of decoded files in input order (``workers=0``: decode in this process)."""
    workers = default_workers() if workers is None else max(0, int(workers))
    loader = torch.utils.data.DataLoader(
        _Files(paths, image_size, fingerprints),
        batch_size=max(1, batch_size),
        num_workers=workers,
        collate_fn=_collate,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        pin_memory=False,
    )
    for batch in loader:
        if pin_memory:
            for d in batch:
                if d.x is not None:
                    d.x = d.x.pin_memory()
        yield batch


@torch.inference_mode()
def embed_files(
    model,
    paths: Sequence[str | os.PathLike],
    *,
    batch_size: int = 32,
    workers: int | None = None,
    fingerprints: bool = True,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> Iterator[tuple[list[Decoded], torch.Tensor]]:
    """Yield ``(decoded files, embeddings (n_ok, D) on the CPU)`` per batch, in input order.

    Files that fail to decode are in the list with ``problem`` set and no embedding row.
    """
    from ..device import autocast

    model.eval()
    device = model.device
    done = 0
    for batch in decoded_batches(
        paths,
        model.config.image_size,
        batch_size=batch_size,
        workers=workers,
        fingerprints=fingerprints,
        pin_memory=device.type == "cuda",
    ):
        check_cancel(should_stop, "embedding")
        ok = [d.x for d in batch if d.x is not None]
        if ok:
            x = torch.stack(ok).to(device, non_blocking=True)
            with autocast(device):
                z = model(x).float().cpu()
        else:
            z = torch.empty(0, model.embed_dim)
        done += len(batch)
        if on_progress is not None:
            on_progress(done, len(paths), {"stage": "embed"})
        yield batch, z
