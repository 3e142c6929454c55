"""On-disk layout of a reference index: a manifest, append-only segments and one FAISS file.

``INDEX/manifest.json`` names everything that belongs to the index; a segment
(``seg-000003/``: ``z.npy`` embeddings, ``phash.npy`` D4 perceptual hashes, ``rows.json`` file
identities) is never changed once written. Adding images writes a new segment and a new FAISS
file under fresh names, then replaces the manifest atomically: a reader (or a crash) sees the
old index or the new one, never a mix. Files no manifest names are left-overs of an interrupted
write and are removed by the next writer. One writer at a time: ``writer_lock`` holds an OS
file lock on ``INDEX/.lock`` (released by the OS when the process ends, so it never goes stale).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write, atomic_write_text
from . import ann

FORMAT = "bta-index/1"
MANIFEST = "manifest.json"
LOCK = ".lock"


class IndexFormatError(ValueError):
    """The folder is not a reference index, or not one this version reads."""


class ModelMismatchError(ValueError):
    """The index was built with another model than the one given."""


class IndexBusyError(RuntimeError):
    """Another process is writing the index."""


_WIN_LOCK_OFFSET = 1 << 20
"""Windows locks a byte range: one byte far past the holder text, so that text stays readable."""


def _lock(fd: int) -> bool | None:
    """Exclusive, non-blocking lock on ``fd``: True when taken, False when another process
    holds it, None when this file system cannot lock (some network mounts)."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP: no locks on this mount
        return None
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


def _holder(fd: int) -> str:
    """The text the lock's holder wrote (its pid and start time), if it can be read."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 200).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def check_not_busy(root: str | os.PathLike) -> None:
    """Raise ``IndexBusyError`` now if another process holds the writer lock (a quick look
    before a long setup such as loading a model; ``writer_lock`` still decides)."""
    path = Path(root) / LOCK
    if not path.exists():
        return
    with writer_lock(root):
        pass


@contextmanager
def writer_lock(root: str | os.PathLike) -> Iterator[None]:
    """Hold the index's writer lock for the ``with`` block, or raise ``IndexBusyError`` at once.

    Two writers at once (an ``add`` and a ``prune``, two ``add`` runs) would remove each
    other's half-written segments and overwrite each other's manifest. On a file system that
    cannot lock, the block runs unlocked after a warning."""
    path = Path(root) / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ValueError(
            f"{path}: cannot open the index's lock file ({exc.strerror or exc})"
        ) from exc
    locked = None
    try:
        locked = _lock(fd)
        if locked is False:
            holder = _holder(fd) or "another process"
            raise IndexBusyError(
                f"{root}: another bta-core command is writing this index ({holder}); "
                "wait for it to finish, then run this command again"
            )
        if locked is None:
            warnings.warn(
                f"{root}: this file system cannot lock files; make sure no other bta-core "
                "command writes this index at the same time",
                stacklevel=3,
            )
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        text = f"pid {os.getpid()}, since {stamp}".encode()
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, text)
        os.ftruncate(fd, len(text))
        yield
    finally:
        if locked:
            _unlock(fd)
        os.close(fd)


@dataclass
class Row:
    """One indexed image: where its file was and what it was when embedded."""

    path: str
    size: int
    mtime_ns: int
    content_hash: str
    pixel_hash: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Segment:
    name: str
    rows: list[Row]
    z: np.ndarray  # (n, D) float32, memory-mapped
    phash: np.ndarray  # (n, 8, B) uint8


@dataclass
class ReferenceIndex:
    """A loaded index: rows (global id = position over the segments), embeddings, search."""

    root: Path
    manifest: dict
    segments: list[Segment] = field(default_factory=list)
    search_index: object = None

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def dead(self) -> set[int]:
        """Row ids retired because their file changed (kept on disk, never returned)."""
        return set(self.manifest.get("dead", []))

    @property
    def rows(self) -> list[Row]:
        return [r for s in self.segments for r in s.rows]

    def __len__(self) -> int:
        return sum(len(s.rows) for s in self.segments)

    @property
    def n_live(self) -> int:
        return len(self) - len(self.dead)

    def embeddings(self, ids: np.ndarray) -> np.ndarray:
        """Embeddings of the given row ids, ``(len(ids), D)`` float32."""
        return self._gather(np.asarray(ids, np.int64), "z")

    def phashes(self, ids: np.ndarray) -> np.ndarray:
        return self._gather(np.asarray(ids, np.int64), "phash")

    def _gather(self, ids: np.ndarray, attr: str) -> np.ndarray:
        starts = np.cumsum([0] + [len(s.rows) for s in self.segments])
        seg = np.searchsorted(starts, ids, side="right") - 1
        first = getattr(self.segments[0], attr)
        out = np.empty((len(ids), *first.shape[1:]), first.dtype)
        for k in np.unique(seg):
            sel = seg == k
            out[sel] = getattr(self.segments[k], attr)[ids[sel] - starts[k]]
        return out

    def live_by_path(self) -> dict[str, int]:
        """Resolved path -> row id of its current (live) row."""
        dead = self.dead
        return {r.path: i for i, r in enumerate(self.rows) if i not in dead}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine top-``k`` live rows of each query embedding."""
        return ann.search(self.search_index, queries, k, self.dead)


def is_index(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of the index folder ``path``; a clear error if it is not an index this
    version reads (a cheap check: no segment or search file is opened)."""
    root = Path(path)
    mpath = root / MANIFEST
    if not root.exists():
        raise IndexFormatError(f"{root}: not found (build an index with 'bta-core index build')")
    if not mpath.is_file():
        raise IndexFormatError(f"{root}: not a reference index (no {MANIFEST}); build one first")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{mpath}: unreadable manifest ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{mpath}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def load(path: str | os.PathLike, mmap: bool = True) -> ReferenceIndex:
    """Open an index folder (embeddings memory-mapped); clear errors for anything else."""
    root = Path(path)
    manifest = read_manifest(root)
    idx = ReferenceIndex(root, manifest)
    for name in manifest["segments"]:
        sdir = root / name
        try:
            rows = [Row(**r) for r in json.loads((sdir / "rows.json").read_text("utf-8"))]
            z = np.load(sdir / "z.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
            ph = np.load(sdir / "phash.npy", allow_pickle=False)
        except (OSError, ValueError, TypeError) as exc:
            raise IndexFormatError(f"{sdir}: damaged segment ({exc})") from exc
        if len(z) != len(rows) or len(ph) != len(rows):
            raise IndexFormatError(f"{sdir}: damaged segment (row counts differ)")
        idx.segments.append(Segment(name, rows, z, ph))
    if manifest.get("ann"):
        idx.search_index = ann.read(str(root / manifest["ann"]))
    return idx


def _next_name(manifest: dict, prefix: str) -> str:
    n = manifest.get("counter", 0) + 1
    manifest["counter"] = n
    return f"{prefix}-{n:06d}"


def write_segment(root: Path, name: str, rows: list[Row], z: np.ndarray, ph: np.ndarray) -> None:
    """Write a segment folder under a temporary name, then rename it into place."""
    tmp = root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    np.save(tmp / "z.npy", np.ascontiguousarray(z, np.float32), allow_pickle=False)
    np.save(tmp / "phash.npy", np.ascontiguousarray(ph, np.uint8), allow_pickle=False)
    (tmp / "rows.json").write_text(json.dumps([r.to_dict() for r in rows]), encoding="utf-8")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, root / name)


def commit(root: Path, manifest: dict, search_index) -> dict:
    """Write the search structure under a new name and switch the manifest to it atomically."""
    manifest = dict(manifest)
    if search_index is not None:
        ann_name = _next_name(manifest, "ann") + ".faiss"
        atomic_write(root / ann_name, lambda tmp: ann.write(search_index, tmp))
        manifest["ann"] = ann_name
        manifest["ann_kind"] = ann.kind(search_index)
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1))
    clean(root, manifest)
    return manifest


def clean(root: Path, manifest: dict) -> None:
    """Remove what the manifest does not name (left-overs of an interrupted write)."""
    keep = set(manifest.get("segments", [])) | {manifest.get("ann"), MANIFEST}
    for entry in root.iterdir():
        if entry.name in keep:
            continue
        if entry.name.startswith((".seg-", "seg-", ".ann-", "ann-", ".manifest")):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
