"""Build, grow and describe a reference index; look up new images against it.

``build_index`` embeds reference images once; ``add_to_index`` embeds only files that are new or
changed since (a changed file's old row is retired, not rewritten) and adds their vectors to the
existing search structure; nothing is re-embedded or retrained unless the index crosses from
exact to approximate search. A model other than the index's is refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..runtime import ProgressFn, StopFn
from ..scan.loader import embed_files
from . import ann, store
from .store import ModelMismatchError, ReferenceIndex, Row

SEGMENT_ROWS = 4096
"""Images embedded per segment: each is committed on its own, so an interrupted build keeps
what was done and ``index add`` with the same paths resumes."""


def _model_identity(model) -> str:
    from ..scan.cache import model_identity

    return model_identity(model)


def _file_hash(path: str) -> str:
    from ..scan.cache import file_hash

    return file_hash(path)


def list_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files below folders (recursive) and files given directly, resolved, unique."""
    from ..imageio import find_images

    seen: dict[str, Path] = {}
    for p in paths:
        for f in find_images(p):
            seen.setdefault(os.path.realpath(f), Path(os.path.realpath(f)))
    return list(seen.values())


def _check_model(idx: ReferenceIndex, model) -> str:
    mid = _model_identity(model)
    if mid != idx.model_id:
        built_with = str(idx.manifest.get("model_name", "?"))
        now = str(getattr(model, "checkpoint_path", None) or "in-memory model")
        hint = (
            "that model file has changed since (a new bundled model?): build a new index"
            if built_with == now
            else "use the same --checkpoint, or build a new index for this model"
        )
        raise ModelMismatchError(
            f"{idx.root}: the index was built with model {idx.model_id[:12]} "
            f"({built_with}), not with this one ({mid[:12]}); {hint}"
        )
    return mid


def _embed_new(
    model,
    files: list[Path],
    batch_size: int,
    workers: int | None,
    on_progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> tuple[list[Row], np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Embed and fingerprint files; returns rows, z, pHashes and ``(path, problem)`` skipped."""
    rows: list[Row] = []
    zs, phs, skipped = [], [], []
    for batch, z in embed_files(
        model,
        files,
        batch_size=batch_size,
        workers=workers,
        on_progress=on_progress,
        should_stop=should_stop,
    ):
        k = 0
        for position, images, problem in batch:
            path = str(files[position])
            if problem is not None:
                skipped.append((path, problem))
                continue
            fp = images[0][2]
            st = os.stat(path)
            rows.append(Row(path, st.st_size, st.st_mtime_ns, _file_hash(path), fp.pixel_hash))
            zs.append(z[k].numpy())
            phs.append(fp.phash)
            k += 1
    dim = model.embed_dim
    z_all = np.stack(zs).astype(np.float32) if zs else np.zeros((0, dim), np.float32)
    ph_all = np.stack(phs) if phs else np.zeros((0, 8, 32), np.uint8)
    return rows, z_all, ph_all, skipped


def _grow_search(idx: ReferenceIndex, z_new: np.ndarray, first_id: int):
    """Add new vectors; switch to IVF (trained on all live vectors) past ``ann.FLAT_MAX``."""
    n_live = idx.n_live + len(z_new)
    search = idx.search_index
    if search is None:
        search = ann.new_flat(int(idx.manifest["dim"]))
    if ann.kind(search) == "flat" and n_live > ann.FLAT_MAX:
        dead = idx.dead
        old = np.array([i for i in range(len(idx)) if i not in dead], np.int64)
        train = np.concatenate([idx.embeddings(old), z_new]) if len(old) else z_new
        search = ann.new_ivf(train, n_live)
        for s in range(0, len(old), 65536):
            ids = old[s : s + 65536]
            ann.add(search, idx.embeddings(ids), ids)
    ann.add(search, z_new, np.arange(first_id, first_id + len(z_new)))
    return search


def add_to_index(
    index: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    model,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict:
    """Add new and changed image files below ``paths``; returns a summary of what was done:
    ``added`` rows written (new files and changed ones), ``replaced`` (the changed files among
    them, whose old rows were retired), ``unchanged``, ``skipped`` ``[(path, problem)]``.
    Raises ``IndexBusyError`` while another process writes the index."""
    store.read_manifest(index)  # a clear error first if it is not an index
    with store.writer_lock(index):
        return _add_locked(
            index,
            paths,
            model,
            batch_size=batch_size,
            workers=workers,
            on_progress=on_progress,
            should_stop=should_stop,
        )


def _add_locked(
    index: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    model,
    *,
    batch_size: int,
    workers: int | None,
    on_progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> dict:
    t0 = time.perf_counter()
    idx = store.load(index)  # read under the lock: what the last writer committed
    _check_model(idx, model)
    store.clean(idx.root, idx.manifest)  # left-overs of an interrupted write
    live = idx.live_by_path()
    rows_all = idx.rows
    todo: list[Path] = []
    retire: dict[str, int] = {}  # path -> its current row, retired once the new one is in
    unchanged = 0
    for f in list_images(paths):
        rid = live.get(str(f))
        if rid is not None:
            r, st = rows_all[rid], os.stat(f)
            if (r.size, r.mtime_ns) == (st.st_size, st.st_mtime_ns):
                unchanged += 1
                continue
            if r.size == st.st_size and _file_hash(str(f)) == r.content_hash:
                unchanged += 1  # touched but identical bytes
                continue
            retire[str(f)] = rid
        todo.append(f)
    added, replaced, skipped = 0, 0, []
    for start in range(0, len(todo), SEGMENT_ROWS):
        chunk = todo[start : start + SEGMENT_ROWS]

        def chunk_progress(step: int, total: int, info: dict, start=start) -> None:
            if on_progress is not None:
                on_progress(start + step, len(todo), info)

        rows, z, ph, bad = _embed_new(
            model, chunk, batch_size, workers, chunk_progress, should_stop
        )
        skipped += bad
        if not rows:
            continue
        manifest = dict(idx.manifest)
        name = store._next_name(manifest, "seg")
        store.write_segment(idx.root, name, rows, z, ph)
        idx.manifest = manifest
        search = _grow_search(idx, z, len(idx))
        manifest["segments"] = [*manifest["segments"], name]
        # a changed file whose new version failed to decode keeps its old row
        gone = {retire[r.path] for r in rows if r.path in retire}
        manifest["dead"] = sorted(idx.dead | gone)
        idx.manifest = store.commit(idx.root, manifest, search)  # this chunk is now safe
        idx.segments.append(store.Segment(name, rows, z, ph))
        idx.search_index = search
        added += len(rows)
        replaced += len(gone)
    return {
        "index": str(idx.root),
        "added": added,
        "replaced": replaced,
        "unchanged": unchanged,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def build_index(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    model,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict:
    """Create an index at ``out`` over the images below ``paths`` (``out`` must not be one)."""
    root = Path(out)
    files = list_images(paths)  # a missing folder fails here, before anything is written
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, paths))}")
    if store.is_index(root):
        raise ValueError(f"{root}: already an index; use 'bta-core index add' to grow it")
    if root.exists() and (not root.is_dir() or any(e.name != store.LOCK for e in root.iterdir())):
        raise ValueError(f"{root}: exists and is not an empty folder; choose a new --out")
    root.mkdir(parents=True, exist_ok=True)
    with store.writer_lock(root):
        if store.is_index(root):  # another build got there first
            raise ValueError(f"{root}: already an index; use 'bta-core index add' to grow it")
        manifest = {
            "format": store.FORMAT,
            "model_id": _model_identity(model),
            "model_name": str(getattr(model, "checkpoint_path", None) or "in-memory model"),
            "model_config": model.config.to_dict(),
            "dim": int(model.embed_dim),
            "segments": [],
            "dead": [],
            "counter": 0,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        store.commit(root, manifest, ann.new_flat(int(model.embed_dim)))
        return _add_locked(
            root,
            files,
            model,
            batch_size=batch_size,
            workers=workers,
            on_progress=on_progress,
            should_stop=should_stop,
        )


def missing_rows(idx: ReferenceIndex) -> list[int]:
    """Live rows whose file is no longer where it was indexed (moved or deleted)."""
    dead = idx.dead  # a set built per access: once, not per row
    return [i for i, r in enumerate(idx.rows) if i not in dead and not os.path.exists(r.path)]


PRUNE_MAX_SHARE = 0.5
"""``prune_index`` refuses to retire more than this share of an index without ``force``."""


def prune_index(index: str | os.PathLike, force: bool = False) -> dict:
    """Retire the rows of files that are gone (moved or deleted since indexing): a scan no
    longer offers them as references. Their data stay on disk, like any retired row; a moved
    archive is added again with ``add_to_index``. Needs no model.

    More than half of the index missing looks like an archive drive that is not mounted:
    refused unless ``force``."""
    store.read_manifest(index)  # a clear error first if it is not an index
    with store.writer_lock(index):
        return _prune_locked(index, force)


def _prune_locked(index: str | os.PathLike, force: bool) -> dict:
    idx = store.load(index)
    gone = missing_rows(idx)
    rows = idx.rows
    if gone and len(gone) > PRUNE_MAX_SHARE * idx.n_live and not force:
        raise ValueError(
            f"{idx.root}: {len(gone)} of {idx.n_live} indexed files are missing (first: "
            f"{rows[gone[0]].path}); is the archive's drive mounted? Nothing was retired; "
            "pass --force to retire them all"
        )
    if gone:
        store.clean(idx.root, idx.manifest)
        manifest = dict(idx.manifest, dead=sorted(idx.dead | set(gone)))
        idx.manifest = store.commit(idx.root, manifest, None)
    return {"index": str(idx.root), "retired": [rows[i].path for i in gone], "images": idx.n_live}


def index_info(index: str | os.PathLike, check_files: bool = False) -> dict:
    """What an index holds: counts, model, search kind and memory per image; with
    ``check_files``, how many indexed files are no longer where they were (one ``stat`` per
    image: slow for a large archive on a network drive)."""
    idx = store.load(index)
    dim = int(idx.manifest["dim"])
    per_vec = ann.bytes_per_vector(idx.search_index, dim) if idx.search_index else 0
    disk = sum(f.stat().st_size for f in idx.root.rglob("*") if f.is_file())
    return {
        "index": str(idx.root),
        "images": idx.n_live,
        "rows": len(idx),
        "retired": len(idx.dead),
        "missing_files": len(missing_rows(idx)) if check_files else None,
        "segments": len(idx.segments),
        "model_id": idx.model_id,
        "model": idx.manifest.get("model_name"),
        "dim": dim,
        "search": ann.kind(idx.search_index) if idx.search_index else None,
        "search_bytes_per_image": per_vec,
        "stored_bytes_per_image": 4 * dim + 8 * 32 + 200,
        "disk_bytes": disk,
        "created": idx.manifest.get("created"),
        "updated": idx.manifest.get("updated"),
    }
