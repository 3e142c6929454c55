"""Decode images in worker processes while the main process runs the model.

Decoding and resizing (PIL / tifffile, an antialiased resize, the fingerprints) is what bounds
embedding from files, not the network: Python threads share one interpreter, so the decode of
the next batch and the forward pass of this one compete for it. A
``torch.utils.data.DataLoader`` with worker processes runs ``discover.decode_file`` on each
file in its own interpreter and hands the results over in order; the main process only stacks
them and runs the model. ``workers=0`` decodes in the calling process (small jobs, tests),
as does any call inside a Qt application (napari), where starting processes is unsafe.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import torch

from ..imageio import ImageReadError
from ..runtime import ProgressFn, StopFn, check_cancel
from .discover import decode_file

PREFETCH = 8
"""Files each worker decodes ahead of the model."""


def capture_problem(fn: Callable, *args) -> tuple[object, str | None]:
    """Run ``fn``; a failure becomes a problem string instead of an exception."""
    try:
        return fn(*args), None
    except ImageReadError as exc:
        return None, one_line(exc.problem)
    except Exception as exc:  # any odd file: list it, never stop the scan
        return None, one_line(f"{type(exc).__name__}: {exc}")


def one_line(text: str, limit: int = 300) -> str:
    """A problem message on one line (CSV- and log-friendly), shortened if very long."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def default_workers() -> int:
    """Decode processes: all cores but one, at least 1, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _identity(x):
    return x


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # the workers decode; the main process owns the math threads


class _Map(torch.utils.data.Dataset):
    def __init__(self, fn: Callable, items: Sequence) -> None:
        self.fn, self.items = fn, list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, object, str | None]:
        result, problem = capture_problem(self.fn, self.items[i])
        return i, result, problem


def _in_gui() -> bool:
    """A Qt application (napari) runs in this process: forking it is unsafe, and spawned
    workers would import its main module again, so decoding stays in the calling process."""
    for binding in ("PyQt5", "PyQt6", "PySide2", "PySide6"):
        core = sys.modules.get(f"{binding}.QtCore")
        if core is not None and core.QCoreApplication.instance() is not None:
            return True
    return False


def map_in_workers(
    fn: Callable, items: Sequence, workers: int | None = None, prefetch: int = PREFETCH
) -> Iterator[tuple[int, object, str | None]]:
    """``(position, fn(item) or None, problem or None)`` per item, in input order, computed in
    ``workers`` processes (0: here). ``fn`` must be picklable (a module-level function or a
    ``functools.partial`` of one); a failing item gives its problem and the rest goes on."""
    workers = default_workers() if workers is None else max(0, int(workers))
    if workers == 0 or len(items) < 2 or _in_gui():
        here = _Map(fn, items)
        for i in range(len(here)):
            yield here[i]
        return
    loader = torch.utils.data.DataLoader(
        _Map(fn, items),
        batch_size=None,
        collate_fn=_identity,  # keep numpy arrays as they are
        num_workers=min(workers, len(items)),
        worker_init_fn=_worker_init,
        prefetch_factor=prefetch,
    )
    yield from loader


def decode_stream(
    paths: Sequence[str | os.PathLike], planes: bool, image_size: int, workers: int | None = None
) -> Iterator[tuple[int, object, str | None]]:
    """``discover.decode_file`` of every path, in order, decoded in worker processes."""
    fn = partial(decode_file, planes=planes, image_size=image_size)
    return map_in_workers(fn, [Path(p) for p in paths], workers)


@torch.inference_mode()
def embed_files(
    model,
    paths: Sequence[str | os.PathLike],
    *,
    batch_size: int = 32,
    workers: int | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> Iterator[tuple[list[tuple[int, object, str | None]], torch.Tensor]]:
    """Per batch of files: ``(decoded, z)``. ``decoded`` holds ``(position, images, problem)``
    (``images`` as ``decode_file`` returns them: first image of each file only); ``z`` has one row
    per file that decoded, in order, on the CPU."""
    from ..device import autocast

    model.eval()
    device = model.device
    stream = decode_stream(paths, False, model.config.image_size, workers)
    done = 0
    try:
        while True:
            batch = [d for _, d in zip(range(max(1, batch_size)), stream, strict=False)]
            if not batch:
                return
            check_cancel(should_stop, "embedding")
            batch = [
                (i, imgs, p or (None if imgs else "file holds no image")) for i, imgs, p in batch
            ]
            xs = [
                torch.from_numpy(imgs[0][1]).permute(2, 0, 1) for _, imgs, p in batch if p is None
            ]
            if xs:
                x = torch.stack(xs)
                if device.type == "cuda":
                    x = x.pin_memory()
                with autocast(device):
                    z = model(x.to(device, non_blocking=True)).float().cpu()
            else:
                z = torch.empty(0, model.embed_dim)
            done += len(batch)
            if on_progress is not None:
                on_progress(done, len(paths), {"stage": "embed"})
            yield batch, z
    finally:
        stream.close()  # stops the worker processes when the caller stops early
