"""``bta-core scan``: find reused images in folders of TIFF/PNG/JPEG files.

Pipeline (see docs/scan.md):

1. **Discover** image files below each folder (recursive). With ``planes`` every Z/T plane and
   channel of a stack is its own image, named ``file.tif[c=1,z=3]``.
2. **Hash** every file's content. The embedding cache is keyed by that hash and by the model's
   identity (a hash of its weights and config), so a re-scan, or a folder with new files, only
   embeds what is new, and an interrupted scan resumes where it stopped.
3. **Embed** the new files once, in batches (decoding runs in a few threads while the model
   works). One cache file per image file, written atomically.
4. **Score** every pair within the folders (and every folder x reference pair) with the model's
   symmetric split-head ``score_matrix``, in blocks of bounded size. Above ``faiss_above`` images,
   candidate pairs come from FAISS k-nearest-neighbours on the projected embeddings and only those
   are scored by the head.
5. **Write** ``pairs.csv``, ``pairs.json``, ``report.html`` and ``skipped.csv`` (atomically).

``shard=(i, n)`` embeds one shard of the files and writes it to ``out_dir``; ``merge`` combines
shard folders and scores them, so n machines (e.g. a Slurm job array) can share a corpus.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import html
import io
import json
import math
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write, atomic_write_text, load_checkpoint
from .device import DEVICE_CHOICES, describe_device, get_device
from .imageio import ImageReadError, find_images, iter_images, load_image, to_uint8
from .model import D4_NAMES, BTAModel, embed_images, to_model_input

ProgressFn = Callable[[int, int, dict], None]
StopFn = Callable[[], bool]

CACHE_FORMAT = "bta-scan-cache/1"
SHARD_FORMAT = "bta-scan-shard/1"
DEFAULT_TOP_K = 50
DEFAULT_FAISS_ABOVE = 20_000
DEFAULT_FAISS_K = 32
DEFAULT_BLOCK_PAIRS = 1 << 22
DEFAULT_MAX_PAIRS = 1_000_000
IVF_ABOVE = 200_000
THUMB_SIZE = 192


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class ImageItem:
    """One image of the scan: a file, or one plane/channel of a stack."""

    name: str
    """Display name: the path, plus ``[c=1,z=3]`` for a plane of a stack."""
    path: str
    role: str
    """``"query"`` (a scanned folder) or ``"reference"``."""
    content_hash: str
    index: int = 0
    """Position of this plane among the images the file yields."""


@dataclass
class Pair:
    """A scored pair; ``orientation`` names the D4 transform that matched best (with TTA)."""

    path_a: str
    path_b: str
    score: float
    same: bool
    orientation: str | None = None
    verified: bool | None = None
    """True when keypoint matching found a geometric transform between the two (None: not checked)."""
    match_confidence: float | None = None
    transform: str | None = None


@dataclass
class Skipped:
    """A file that could not be used and why."""

    path: str
    problem: str


@dataclass
class ScanResult:
    """What a scan found: pairs sorted by score (best first), skipped files and statistics."""

    pairs: list[Pair] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    items: list[ImageItem] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    out_dir: str | None = None


class ScanCancelled(InterruptedError):
    """Raised when ``should_stop()`` returns True; cache entries written so far are kept."""


# --------------------------------------------------------------------------------------------
# Model identity and the embedding cache


def default_cache_dir() -> Path:
    """``$BTA_CACHE_DIR``, else ``$XDG_CACHE_HOME/bta/embeddings`` (``~/.cache/bta/embeddings``)."""
    if os.environ.get("BTA_CACHE_DIR"):
        return Path(os.environ["BTA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bta" / "embeddings"


def model_identity(model: BTAModel) -> str:
    """Hash of the model's weights (backbone, projector, head) and config: the cache key.

    Hashing the tensors rather than a checkpoint file also tells apart backbones loaded from
    different weight files and models built in memory.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_hash(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """Content hash of a file (blake2b, 128 bits)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


class EmbeddingCache:
    """One safetensors file per image file: ``ROOT/MODEL/MODE/ab/abcdef....safetensors``.

    Each entry holds ``z`` (``(P, D)`` or ``(P, 8, D)`` with TTA) for the P images of the file
    and their plane tags. ``root=None`` keeps nothing on disk.
    """

    def __init__(self, root: str | os.PathLike | None, model_id: str, mode: str) -> None:
        self.dir = None if root is None else Path(root) / model_id / mode

    def _path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> tuple[list[str], torch.Tensor] | None:
        if self.dir is None:
            return None
        path = self._path(key)
        if not path.exists():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                z = fh.get_tensor("z")
            if meta.get("format") != CACHE_FORMAT:
                return None
            return json.loads(meta["tags"]), z
        except Exception:  # a damaged entry is recomputed, never fatal
            return None

    def put(self, key: str, tags: list[str], z: torch.Tensor) -> None:
        if self.dir is None:
            return
        from safetensors.torch import save_file

        meta = {"format": CACHE_FORMAT, "tags": json.dumps(tags)}
        tensors = {"z": z.detach().to("cpu", torch.float32).contiguous()}
        atomic_write(self._path(key), lambda tmp: save_file(tensors, tmp, metadata=meta))


# --------------------------------------------------------------------------------------------
# Discovery, decoding, embedding


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
) -> list[tuple[Path, str]]:
    """``(path, role)`` of every image file below the folders; a file in both counts as query."""
    seen: set[str] = set()
    out: list[tuple[Path, str]] = []
    for role, roots in (("query", folders), ("reference", reference or ())):
        for root in roots:
            root = Path(root)
            for path in find_images(root):
                key = os.path.realpath(path)
                if key in seen:
                    continue
                seen.add(key)
                if shard is not None and shard_of(path, root, shard[1]) != shard[0]:
                    continue
                out.append((path, role))
    return out


def _decode(path: Path, planes: bool, image_size: int) -> list[tuple[str, np.ndarray]]:
    """The images of one file, already resized to the model's input size (saves memory)."""
    if planes:
        images = [(info.name[len(info.path) :], rgb) for info, rgb in iter_images(path, True)]
    else:
        images = [("", load_image(path))]
    out = []
    for tag, rgb in images:
        x = to_model_input([rgb], image_size)[0].permute(1, 2, 0).numpy()
        out.append((tag, x))
    return out


def _safe(fn: Callable, *args) -> tuple[object, str | None]:
    """Run ``fn``; a failure becomes a problem string instead of an exception."""
    try:
        return fn(*args), None
    except ImageReadError as exc:
        return None, _one_line(exc.problem)
    except Exception as exc:  # any odd file: list it, never stop the scan
        return None, _one_line(f"{type(exc).__name__}: {exc}")


def _one_line(text: str, limit: int = 300) -> str:
    """A problem message on one line (CSV- and log-friendly), shortened if very long."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _chunks(seq: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


@dataclass
class Embedded:
    """Items and their embeddings (``(N, D)`` or ``(N, 8, D)``), before scoring."""

    items: list[ImageItem]
    z: torch.Tensor
    skipped: list[Skipped]
    stats: dict


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
    files = discover(folders, reference, shard)
    model_id = model_identity(model)
    mode = f"{'d4' if tta == 'd4' else 'id'}-{'planes' if planes else 'first'}"
    cache = EmbeddingCache(cache_dir, model_id, mode)
    skipped: list[Skipped] = []
    stats = {
        "n_files": len(files),
        "model_id": model_id,
        "cache_dir": str(cache.dir) if cache.dir else None,
    }

    def report(step: int, total: int, stage: str) -> None:
        if on_progress is not None:
            on_progress(step, total, {"stage": stage})

    def stop() -> None:
        if should_stop is not None and should_stop():
            raise ScanCancelled("scan cancelled")

    workers = max(1, int(workers))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        hashes = []
        for k, (res, problem) in enumerate(pool.map(lambda p: _safe(file_hash, p[0]), files)):
            hashes.append(res)
            if problem:
                skipped.append(Skipped(str(files[k][0]), f"cannot read file ({problem})"))
            if k % 256 == 0:
                stop()
        t_hash = time.perf_counter()
        usable = [(p, role, h) for (p, role), h in zip(files, hashes, strict=True) if h is not None]

        entries: dict[str, tuple[list[str], torch.Tensor]] = {}
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
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), unit="file", desc="embed", dynamic_ncols=True)
        todo_list = list(todo.items())
        size = model.config.image_size
        groups = list(_chunks(todo_list, max(1, batch_size)))
        decode = lambda kv: _safe(_decode, kv[1], planes, size)  # noqa: E731
        pending = [[pool.submit(decode, kv) for kv in g] for g in groups[:1]]
        done_files = 0
        report(0, len(todo_list), "embed")
        try:
            for gi, group in enumerate(groups):
                stop()
                decoded = [fut.result() for fut in pending.pop(0)]
                if gi + 1 < len(groups):  # decode the next group while the model works
                    pending.append([pool.submit(decode, kv) for kv in groups[gi + 1]])
                flat, owners = [], []
                for (h, _), (images, problem) in zip(group, decoded, strict=True):
                    if problem is not None:
                        problems[h] = problem
                        continue
                    for tag, x in images:
                        flat.append(x)
                        owners.append((h, tag))
                if flat:
                    z = embed_images(model, flat, batch_size=batch_size, tta=tta)
                    n_embedded += len(flat)
                    by_file: dict[str, list[int]] = {}
                    for k, (h, _) in enumerate(owners):
                        by_file.setdefault(h, []).append(k)
                    for h, ks in by_file.items():
                        tags = [owners[k][1] for k in ks]
                        zf = z[ks]
                        cache.put(h, tags, zf)
                        entries[h] = (tags, zf)
                done_files += len(group)
                if bar is not None:
                    bar.update(len(group))
                report(done_files, len(todo_list), "embed")
        finally:
            for futs in pending:
                for fut in futs:
                    fut.cancel()
            if bar is not None:
                bar.close()

    items: list[ImageItem] = []
    vectors: list[torch.Tensor] = []
    for path, role, h in usable:
        if h in problems:
            skipped.append(Skipped(str(path), problems[h]))
            continue
        tags, z = entries[h]
        if not tags:
            skipped.append(Skipped(str(path), "file holds no image"))
            continue
        for k, tag in enumerate(tags):
            items.append(ImageItem(f"{path}{tag}", str(path), role, h, k))
        vectors.append(z)
    order = sorted(range(len(items)), key=lambda k: (items[k].role != "query", items[k].name))
    items = [items[k] for k in order]
    dim = model.embed_dim
    empty = torch.empty(0, 8, dim) if tta == "d4" else torch.empty(0, dim)
    z_all = torch.cat(vectors)[order] if vectors else empty
    t_end = time.perf_counter()
    stats.update(
        n_images=len(items),
        n_skipped=len(skipped),
        n_files_embedded=len(todo_list) - len(problems),
        n_files_cached=n_cached_files,
        n_embedded=n_embedded,
        n_cached=sum(len(entries[h][0]) for h in entries) - n_embedded,
        seconds_hash=round(t_hash - t0, 3),
        seconds_embed=round(t_end - t_hash, 3),
    )
    skipped.sort(key=lambda s: s.path)
    return Embedded(items, z_all, skipped, stats)


# --------------------------------------------------------------------------------------------
# Scoring


class _Collector:
    """Keeps every pair at or above the threshold (up to ``max_pairs``) and the top K overall."""

    def __init__(self, threshold: float, top_k: int, max_pairs: int) -> None:
        self.threshold = threshold
        self.top_k = max(0, int(top_k))
        self.max_pairs = max(1, int(max_pairs))
        self.above: list[torch.Tensor] = []  # rows of (score, i, j, orient) as float64
        self.n_above = 0
        self.top = torch.empty(0, 4, dtype=torch.float64)
        self.truncated = False
        self.n_scored = 0

    @staticmethod
    def _best(rows: torch.Tensor, k: int) -> torch.Tensor:
        if rows.shape[0] <= k:
            return rows
        return rows[torch.topk(rows[:, 0], k).indices]

    def add(self, s: torch.Tensor, i: torch.Tensor, j: torch.Tensor, o: torch.Tensor) -> None:
        s = s.reshape(-1).double().cpu()
        self.n_scored += s.numel()
        if s.numel() == 0:
            return
        rows = torch.stack(
            [
                s,
                i.reshape(-1).double().cpu(),
                j.reshape(-1).double().cpu(),
                o.reshape(-1).double().cpu(),
            ],
            1,
        )
        if self.top_k:
            self.top = self._best(torch.cat([self.top, self._best(rows, self.top_k)]), self.top_k)
        keep = rows[rows[:, 0] >= self.threshold]
        if keep.shape[0]:
            self.above.append(keep)
            self.n_above += keep.shape[0]
            if self.n_above > 2 * self.max_pairs:
                self._shrink()

    def _shrink(self) -> None:
        merged = torch.cat(self.above)
        if merged.shape[0] > self.max_pairs:
            self.truncated = True
            merged = self._best(merged, self.max_pairs)
        self.above = [merged]
        self.n_above = merged.shape[0]

    def result(self) -> torch.Tensor:
        if self.above:
            self._shrink()
        rows = torch.cat(self.above + [self.top]) if self.above else self.top
        if rows.shape[0] == 0:
            return rows
        key = rows[:, 1].long() * (1 << 32) + rows[:, 2].long()
        _, first = np.unique(key.numpy(), return_index=True)
        rows = rows[torch.from_numpy(first)]
        # best first; ties broken by the item indices so the order is reproducible
        order = np.lexsort((rows[:, 2].numpy(), rows[:, 1].numpy(), -rows[:, 0].numpy()))
        return rows[torch.from_numpy(order)]


def _orientation_name(code: int) -> str | None:
    if code < 0:
        return None
    if code < 8:
        return f"b:{D4_NAMES[code]}"
    return f"a:{D4_NAMES[code - 8]}"


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def block_scores(
    model: BTAModel, za: torch.Tensor, zb: torch.Tensor, tta: str | None, chunk_pairs: int = 1 << 21
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric scores of every ``(za[i], zb[j])`` and the best orientation code (-1 without TTA).

    With TTA (``za``/``zb`` of shape ``(n, 8, D)``) a pair scores the max over the 8 orientations
    of either side: codes 0-7 name the orientation of b, 8-15 that of a.
    """
    with torch.no_grad(), _autocast(za.device):
        if tta != "d4":
            s = model.score_matrix(za, zb, symmetric=True, chunk_pairs=chunk_pairs).float()
            return s, torch.full(s.shape, -1, dtype=torch.int8, device=s.device)
        best = None
        code = None
        for o in range(8):
            for side in (0, 1):
                if side == 1 and o == 0:
                    continue  # identity x identity is already scored
                a = za[:, 0] if side == 0 else za[:, o]
                b = zb[:, o] if side == 0 else zb[:, 0]
                s = model.score_matrix(a, b, symmetric=True, chunk_pairs=chunk_pairs).float()
                c = o + 8 * side
                if best is None:
                    best, code = s, torch.full(s.shape, c, dtype=torch.int8, device=s.device)
                else:
                    better = s > best
                    best = torch.where(better, s, best)
                    code[better] = c
        return best, code


def _pair_scores(
    model: BTAModel, za: torch.Tensor, zb: torch.Tensor, tta: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise version of ``block_scores`` for candidate pairs ``(za[k], zb[k])``."""
    with torch.no_grad(), _autocast(za.device):
        if tta != "d4":
            s = model.score_pairs(za, zb, symmetric=True).float()
            return s, torch.full(s.shape, -1, dtype=torch.int8, device=s.device)
        best, code = None, None
        for o in range(8):
            for side in (0, 1):
                if side == 1 and o == 0:
                    continue
                a = za[:, 0] if side == 0 else za[:, o]
                b = zb[:, o] if side == 0 else zb[:, 0]
                s = model.score_pairs(a, b, symmetric=True).float()
                c = o + 8 * side
                if best is None:
                    best, code = s, torch.full(s.shape, c, dtype=torch.int8, device=s.device)
                else:
                    better = s > best
                    best = torch.where(better, s, best)
                    code[better] = c
        return best, code


def _faiss_neighbours(
    queries: torch.Tensor, base: torch.Tensor, k: int, ivf_above: int = IVF_ABOVE
) -> np.ndarray:
    """Indices ``(nq, k)`` of the nearest rows of ``base`` by cosine (FAISS; IVF when large)."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "candidate search above the size limit needs FAISS: pip install faiss-cpu "
            "(or napari-bta[faiss]), or raise --faiss-above to score all pairs exactly"
        ) from exc
    xb = torch.nn.functional.normalize(base.float(), dim=1).numpy().astype(np.float32)
    xq = torch.nn.functional.normalize(queries.float(), dim=1).numpy().astype(np.float32)
    d = xb.shape[1]
    k = min(k, xb.shape[0])
    if xb.shape[0] > ivf_above:
        nlist = int(4 * math.sqrt(xb.shape[0]))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = xb[rng.choice(xb.shape[0], min(xb.shape[0], 64 * nlist), replace=False)]
        index.train(sample)
        index.nprobe = 16
    else:
        index = faiss.IndexFlatIP(d)
    index.add(xb)
    _, idx = index.search(xq, k)
    return idx


def verify_pairs(
    pairs: list[Pair],
    items: Sequence[ImageItem],
    n: int,
    threshold: float,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> list[Pair]:
    """Check the ``n`` best pairs with keypoint matching (``bta_core.match``) and re-rank.

    A pair whose overlap is confirmed by a geometric transform is ``verified`` and counts as
    ``same`` whatever its score; verified pairs come first (by score), then the others. This
    turns the model's recall into precision on look-alike images (e.g. blood smears).
    """
    from .match import match_images

    by_name = {it.name: it for it in items}
    cache: dict[str, np.ndarray] = {}

    def image(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = _load_item_image(by_name[name])
        return cache[name]

    head = pairs[:n]
    for k, p in enumerate(head):
        if should_stop is not None and should_stop():
            raise ScanCancelled("scan cancelled")
        try:
            res = match_images(image(p.path_a), image(p.path_b))
        except Exception:  # unreadable now or degenerate: leave unverified
            p.verified = False
        else:
            p.verified = bool(res.found)
            p.match_confidence = round(float(res.confidence), 4)
            if res.found and res.transform is not None:
                t = res.transform
                p.transform = f"{t.dihedral}, scale {t.scale:.2f}"
        p.same = bool(p.score >= threshold or p.verified)
        if on_progress is not None:
            on_progress(k + 1, len(head), {"stage": "verify"})
    head.sort(key=lambda p: (not p.verified, -p.score))
    return head + pairs[n:]


def score_all(
    model: BTAModel,
    z: torch.Tensor,
    roles: Sequence[str],
    *,
    threshold: float,
    top_k: int = DEFAULT_TOP_K,
    tta: str | None = None,
    within: bool = True,
    faiss_above: int = DEFAULT_FAISS_ABOVE,
    faiss_k: int = DEFAULT_FAISS_K,
    block_pairs: int = DEFAULT_BLOCK_PAIRS,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    progress_bar: bool = False,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> tuple[torch.Tensor, dict]:
    """Score query x query (``within``) and query x reference pairs of the embeddings ``z``.

    Returns rows ``(score, i, j, orientation_code)`` sorted best first (i, j index ``z``, with
    i < j inside the queries and i a query, j a reference across), and statistics.
    """
    device = model.device
    q_idx = torch.tensor([k for k, r in enumerate(roles) if r == "query"], dtype=torch.long)
    r_idx = torch.tensor([k for k, r in enumerate(roles) if r == "reference"], dtype=torch.long)
    nq, nr = len(q_idx), len(r_idx)
    n_total = (nq * (nq - 1) // 2 if within else 0) + nq * nr
    collector = _Collector(threshold, top_k, max_pairs)
    use_faiss = len(roles) > faiss_above
    stats = {"method": "faiss" if use_faiss else "exact", "n_pairs_total": n_total}

    def stop() -> None:
        if should_stop is not None and should_stop():
            raise ScanCancelled("scan cancelled")

    if nq == 0 or n_total == 0:
        stats["n_pairs_scored"] = 0
        return collector.result(), stats
    zq = z[q_idx]
    zr = z[r_idx]
    ident = (lambda t: t[:, 0]) if tta == "d4" else (lambda t: t)
    bar = None
    if use_faiss:
        cand = []
        if within and nq > 1:
            base = zq.reshape(-1, zq.shape[-1]) if tta == "d4" else zq
            nb = _faiss_neighbours(ident(zq), base, faiss_k * (8 if tta == "d4" else 1) + 1)
            if tta == "d4":
                nb = np.where(nb >= 0, nb // 8, -1)
            ii = np.repeat(np.arange(nq), nb.shape[1])
            jj = nb.reshape(-1)
            ok = (jj >= 0) & (jj != ii)
            a, b = np.minimum(ii[ok], jj[ok]), np.maximum(ii[ok], jj[ok])
            pairs = np.unique(np.stack([a, b], 1), axis=0)
            cand.append((q_idx[pairs[:, 0]], q_idx[pairs[:, 1]]))
        if nr:
            base = zr.reshape(-1, zr.shape[-1]) if tta == "d4" else zr
            nb = _faiss_neighbours(ident(zq), base, faiss_k * (8 if tta == "d4" else 1))
            if tta == "d4":
                nb = np.where(nb >= 0, nb // 8, -1)
            ii = np.repeat(np.arange(nq), nb.shape[1])
            jj = nb.reshape(-1)
            ok = jj >= 0
            pairs = np.unique(np.stack([ii[ok], jj[ok]], 1), axis=0)
            cand.append((q_idx[pairs[:, 0]], r_idx[pairs[:, 1]]))
        total = sum(len(a) for a, _ in cand)
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="pair", unit_scale=True, desc="score", dynamic_ncols=True)
        step = max(1, block_pairs // 64)
        done = 0
        for ia, ib in cand:
            for s0 in range(0, len(ia), step):
                stop()
                a, b = ia[s0 : s0 + step], ib[s0 : s0 + step]
                s, o = _pair_scores(model, z[a].to(device), z[b].to(device), tta)
                collector.add(s, a, b, o)
                done += len(a)
                if bar is not None:
                    bar.update(len(a))
                if on_progress is not None:
                    on_progress(done, total, {"stage": "score"})
    else:
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=n_total, unit="pair", unit_scale=True, desc="score", dynamic_ncols=True
            )
        zq_d = zq.to(device)
        zr_d = zr.to(device) if nr else None
        cols = (nq if within else 0) + nr
        rows = max(1, block_pairs // max(cols, 1))
        done = 0
        for i0 in range(0, nq, rows):
            stop()
            i1 = min(nq, i0 + rows)
            if within and i0 + 1 < nq:
                s, o = block_scores(model, zq_d[i0:i1], zq_d[i0:], tta)
                a = torch.arange(i0, i1)[:, None].expand(-1, nq - i0)
                b = torch.arange(i0, nq)[None, :].expand(i1 - i0, -1)
                keep = (b > a).to(s.device)
                collector.add(s[keep], q_idx[a[keep.cpu()]], q_idx[b[keep.cpu()]], o[keep])
                done += int(keep.sum())
            if nr:
                s, o = block_scores(model, zq_d[i0:i1], zr_d, tta)
                a = torch.arange(i0, i1)[:, None].expand(-1, nr)
                b = torch.arange(nr)[None, :].expand(i1 - i0, -1)
                collector.add(s, q_idx[a], r_idx[b], o)
                done += s.numel()
            if bar is not None:
                bar.update(done - bar.n)
            if on_progress is not None:
                on_progress(done, n_total, {"stage": "score"})
    if bar is not None:
        bar.close()
    stats["n_pairs_scored"] = collector.n_scored
    stats["truncated"] = collector.truncated
    return collector.result(), stats


# --------------------------------------------------------------------------------------------
# Outputs


def write_pairs_csv(path: str | os.PathLike, pairs: Sequence[Pair], tta: str | None = None) -> None:
    """``path_a, path_b, score, same`` (plus ``orientation`` with TTA), best first."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    verify = any(p.verified is not None for p in pairs)
    header = ["path_a", "path_b", "score", "same"] + (["orientation"] if tta else [])
    header += ["verified", "match_confidence", "transform"] if verify else []
    w.writerow(header)
    for p in pairs:
        row = [p.path_a, p.path_b, f"{p.score:.6f}", int(p.same)]
        row += [p.orientation or ""] if tta else []
        if verify:
            conf = "" if p.match_confidence is None else f"{p.match_confidence:.4f}"
            row += ["" if p.verified is None else int(p.verified), conf, p.transform or ""]
        w.writerow(row)
    atomic_write_text(path, buf.getvalue())


def write_skipped_csv(path: str | os.PathLike, skipped: Sequence[Skipped]) -> None:
    """``path, problem`` for every file that could not be used."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "problem"])
    for s in skipped:
        w.writerow([s.path, s.problem])
    atomic_write_text(path, buf.getvalue())


def _load_item_image(item: ImageItem) -> np.ndarray:
    if item.name == item.path and item.index == 0:
        return load_image(item.path)
    for info, rgb in iter_images(item.path, split_channels=True):
        if info.name == item.name:
            return rgb
    raise ImageReadError(item.path, f"plane {item.name} not found")


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail_uri(rgb: np.ndarray, size: int = THUMB_SIZE) -> str:
    """A small JPEG of an RGB float image as a ``data:`` URI (keeps the report self-contained)."""
    from PIL import Image

    im = Image.fromarray(to_uint8(rgb))
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_REPORT_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:6px;text-align:left;vertical-align:middle}
th{cursor:pointer;background:#f4f4f4;position:sticky;top:0;user-select:none}
th:after{content:" \\2195";color:#aaa}
td img{max-width:192px;max-height:192px;display:block}
td img.match{max-width:480px;max-height:none}
td.path{font-family:monospace;font-size:12px;word-break:break-all;max-width:22em}
tr.same td.score{color:#b00;font-weight:bold}
.meta{color:#555;font-size:13px}
"""

_REPORT_JS = """
document.querySelectorAll('th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var body = th.closest('table').tBodies[0];
    var asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
    var rows = Array.from(body.rows);
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
"""


def _verdict_html(p: Pair) -> str:
    text = "same" if p.same else ""
    if p.verified:
        detail = html.escape(p.transform or "")
        text += f'<br><span class="verified" title="{detail}">&#10003; overlap verified</span>'
        text += f"<br><small>{detail}</small>" if detail else ""
    elif p.verified is False:
        text += "<br><small>no geometric match</small>"
    return text


def render_report(
    result: ScanResult,
    max_pairs: int = 200,
    match_top: int = 0,
    model: BTAModel | None = None,
    on_progress: ProgressFn | None = None,
) -> str:
    """The self-contained HTML page: side-by-side thumbnails, score, verdict; sortable columns.

    ``match_top`` adds the localisation overlay of ``bta_core.match`` for the best pairs when
    that module is installed.
    """
    items = {it.name: it for it in result.items}
    thumbs: dict[str, str] = {}
    matcher = None
    if match_top:
        try:
            from . import match as matcher  # optional: the localisation module
        except ImportError:
            matcher = None

    def load(name: str) -> np.ndarray | None:
        it = items.get(name)
        if it is None:
            return None
        try:
            return _load_item_image(it)
        except Exception:  # the file changed or vanished since the scan
            return None

    def thumb(name: str) -> str:
        if name not in thumbs:
            rgb = load(name)
            thumbs[name] = "" if rgb is None else thumbnail_uri(rgb)
        return thumbs[name]

    shown = result.pairs[:max_pairs]
    rows = []
    for rank, p in enumerate(shown, 1):
        ta, tb = thumb(p.path_a), thumb(p.path_b)
        overlay = ""
        if matcher is not None and rank <= match_top:
            rgb_a, rgb_b = load(p.path_a), load(p.path_b)
            if rgb_a is not None and rgb_b is not None:
                overlay = _match_overlay(matcher, rgb_a, rgb_b, model)
        cells = [
            (str(rank), str(rank)),
            (f"{p.score:.4f}", f'<td class="score" data-v="{p.score:.6f}">{p.score:.4f}</td>'),
            ("1" if p.same else "0", _verdict_html(p)),
            (p.path_a, f'<img src="{ta}" alt="">' if ta else "(unreadable)"),
            (p.path_b, f'<img src="{tb}" alt="">' if tb else "(unreadable)"),
        ]
        html_cells = []
        for v, content in cells:
            if content.startswith("<td"):
                html_cells.append(content)
            else:
                html_cells.append(f'<td data-v="{html.escape(v, quote=True)}">{content}</td>')
        html_cells.append(
            f'<td class="path" data-v="{html.escape(p.path_a, quote=True)}">{html.escape(p.path_a)}</td>'
        )
        html_cells.append(
            f'<td class="path" data-v="{html.escape(p.path_b, quote=True)}">{html.escape(p.path_b)}</td>'
        )
        orient = p.orientation or ""
        html_cells.append(f'<td data-v="{html.escape(orient)}">{html.escape(orient)}</td>')
        if match_top:
            html_cells.append(f'<td data-v="">{overlay}</td>')
        cls = ' class="same"' if p.same else ""
        rows.append(f"<tr{cls}>" + "".join(html_cells) + "</tr>")
        if on_progress is not None:
            on_progress(rank, len(shown), {"stage": "report"})
    headers = ["#", "score", "same", "image a", "image b", "path a", "path b", "orientation"]
    if match_top:
        headers.append("match")
    s = result.stats
    meta = (
        f"{s.get('n_images', 0)} images, {len(result.skipped)} skipped, "
        f"{s.get('n_pairs_scored', 0)} pairs scored ({s.get('method', '')}), "
        f"{len(result.pairs)} listed (threshold {s.get('threshold', float('nan')):.3f}, "
        f"top {s.get('top_k', '')}); showing {len(shown)}. Model {s.get('model_id', '')[:12]}."
    )
    skipped_html = ""
    if result.skipped:
        items_html = "".join(
            f"<li><code>{html.escape(k.path)}</code>: {html.escape(k.problem)}</li>"
            for k in result.skipped
        )
        skipped_html = f"<h2>Skipped files ({len(result.skipped)})</h2><ul>{items_html}</ul>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>bta-core scan report</title>"
        f"<style>{_REPORT_CSS}</style></head><body>"
        "<h1>bta-core scan report</h1>"
        f'<p class="meta">{html.escape(meta)} Click a column header to sort.</p>'
        "<table><thead><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + f"</tbody></table>{skipped_html}<script>{_REPORT_JS}</script></body></html>\n"
    )


def _match_overlay(matcher, rgb_a: np.ndarray, rgb_b: np.ndarray, model: BTAModel | None) -> str:
    """The localisation overlay as an inline PNG, or a short note when it fails."""
    import tempfile

    try:
        res = matcher.match_images(rgb_a, rgb_b, model=model)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "match.png")
            matcher.render_match_png(rgb_a, rgb_b, res, path, dpi=80)
            with open(path, "rb") as fh:
                return f'<img class="match" src="{_png_data_uri(fh.read())}" alt="match">'
    except Exception as exc:  # the overlay is a bonus: never fail the report for it
        return html.escape(f"(match failed: {type(exc).__name__})")


def write_outputs(
    result: ScanResult,
    out_dir: str | os.PathLike,
    *,
    report_pairs: int = 200,
    match_top: int = 0,
    model: BTAModel | None = None,
) -> dict[str, str]:
    """Write pairs.csv, pairs.json, skipped.csv and report.html into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tta = result.stats.get("tta")
    paths = {
        name: str(out / name) for name in ("pairs.csv", "pairs.json", "skipped.csv", "report.html")
    }
    write_pairs_csv(paths["pairs.csv"], result.pairs, tta=tta)
    write_skipped_csv(paths["skipped.csv"], result.skipped)
    doc = {
        "stats": result.stats,
        "pairs": [asdict(p) for p in result.pairs],
        "skipped": [asdict(s) for s in result.skipped],
    }
    atomic_write_text(paths["pairs.json"], json.dumps(doc, indent=1, ensure_ascii=False))
    page = render_report(result, max_pairs=report_pairs, match_top=match_top, model=model)
    atomic_write_text(paths["report.html"], page)
    result.out_dir = str(out)
    return paths


# --------------------------------------------------------------------------------------------
# Shards


def write_shard(emb: Embedded, out_dir: str | os.PathLike, settings: dict) -> None:
    """Save one shard's embeddings (``embeddings.npy``), items and settings for ``merge``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def save_npy(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, emb.z.numpy().astype(np.float32))

    atomic_write(out / "embeddings.npy", save_npy)
    atomic_write_text(
        out / "items.json", json.dumps([asdict(it) for it in emb.items], ensure_ascii=False)
    )
    write_skipped_csv(out / "skipped.csv", emb.skipped)
    doc = {"format": SHARD_FORMAT, "settings": settings, "stats": emb.stats}
    atomic_write_text(out / "shard.json", json.dumps(doc, indent=1, ensure_ascii=False))


def read_shards(
    shard_dirs: Sequence[str | os.PathLike], allow_partial: bool = False
) -> tuple[Embedded, dict]:
    """Load and check shard folders: same model, settings and folders; every shard present."""
    if not shard_dirs:
        raise ValueError("merge needs at least one shard folder")
    docs, items, zs, skipped = [], [], [], []
    for d in shard_dirs:
        d = Path(d)
        meta = d / "shard.json"
        if not meta.exists():
            raise FileNotFoundError(f"{d}: not a scan shard (no shard.json)")
        doc = json.loads(meta.read_text(encoding="utf-8"))
        if doc.get("format") != SHARD_FORMAT:
            raise ValueError(f"{d}: unknown shard format {doc.get('format')!r}")
        docs.append((d, doc))
        items += [
            ImageItem(**it) for it in json.loads((d / "items.json").read_text(encoding="utf-8"))
        ]
        zs.append(torch.from_numpy(np.load(d / "embeddings.npy")))
        with open(d / "skipped.csv", encoding="utf-8", newline="") as fh:
            skipped += [Skipped(r["path"], r["problem"]) for r in csv.DictReader(fh)]
    first = docs[0][1]["settings"]
    keys = ("model_id", "tta", "planes", "folders", "reference")
    for d, doc in docs[1:]:
        for k in keys:
            if doc["settings"].get(k) != first.get(k):
                raise ValueError(f"{d}: shard setting {k!r} differs from {docs[0][0]}")
    n = first["shard"][1]
    got = sorted(doc["settings"]["shard"][0] for _, doc in docs)
    if got != list(range(n)) and not allow_partial:
        missing = sorted(set(range(n)) - set(got))
        dup = sorted({g for g in got if got.count(g) > 1})
        raise ValueError(
            f"shards missing {missing} or repeated {dup} (of {n}); pass allow_partial to merge anyway"
        )
    z = torch.cat(zs)
    order = sorted(range(len(items)), key=lambda k: (items[k].role != "query", items[k].name))
    stats = {
        "n_files": sum(doc["stats"].get("n_files", 0) for _, doc in docs),
        "n_embedded": sum(doc["stats"].get("n_embedded", 0) for _, doc in docs),
        "n_cached": sum(doc["stats"].get("n_cached", 0) for _, doc in docs),
        "n_images": len(items),
        "n_skipped": len(skipped),
        "model_id": first["model_id"],
        "n_shards": len(docs),
    }
    skipped.sort(key=lambda s: s.path)
    return Embedded([items[k] for k in order], z[order], skipped, stats), first


# --------------------------------------------------------------------------------------------
# The scan


def _finish(
    model: BTAModel,
    emb: Embedded,
    *,
    threshold: float | None,
    top_k: int,
    tta: str | None,
    within: bool,
    faiss_above: int,
    faiss_k: int,
    block_pairs: int,
    max_pairs: int,
    out_dir: str | os.PathLike | None,
    report_pairs: int,
    match_top: int,
    verify: int,
    progress_bar: bool,
    on_progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> ScanResult:
    thr = float(model.config.threshold if threshold is None else threshold)
    t0 = time.perf_counter()
    rows, sstats = score_all(
        model,
        emb.z,
        [it.role for it in emb.items],
        threshold=thr,
        top_k=top_k,
        tta=tta,
        within=within,
        faiss_above=faiss_above,
        faiss_k=faiss_k,
        block_pairs=block_pairs,
        max_pairs=max_pairs,
        progress_bar=progress_bar,
        on_progress=on_progress,
        should_stop=should_stop,
    )
    t1 = time.perf_counter()
    pairs = [
        Pair(
            emb.items[int(i)].name,
            emb.items[int(j)].name,
            float(s),
            bool(s >= thr),
            _orientation_name(int(o)),
        )
        for s, i, j, o in rows.tolist()
    ]
    if verify:
        pairs = verify_pairs(pairs, emb.items, verify, thr, on_progress, should_stop)
    stats = dict(emb.stats)
    stats.update(sstats)
    stats.update(
        threshold=thr,
        top_k=top_k,
        tta=tta,
        within=within,
        n_pairs_out=len(pairs),
        n_same=sum(p.same for p in pairs),
        n_verified=sum(bool(p.verified) for p in pairs),
        seconds_score=round(t1 - t0, 3),
        device=describe_device(model.device),
        checkpoint=getattr(model, "checkpoint_path", None),
    )
    result = ScanResult(pairs, emb.skipped, emb.items, stats)
    if out_dir is not None:
        write_outputs(result, out_dir, report_pairs=report_pairs, match_top=match_top, model=model)
        stats["seconds_write"] = round(time.perf_counter() - t1, 3)
    return result


def scan(
    folders: Sequence[str | os.PathLike] | str | os.PathLike,
    reference: Sequence[str | os.PathLike] | None = None,
    model: BTAModel | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str = "auto",
    threshold: float | None = None,
    top_k: int = DEFAULT_TOP_K,
    planes: bool = False,
    tta: str | None = None,
    within: bool = True,
    out_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = "auto",
    shard: str | tuple[int, int] | None = None,
    batch_size: int = 32,
    workers: int = 2,
    faiss_above: int = DEFAULT_FAISS_ABOVE,
    faiss_k: int = DEFAULT_FAISS_K,
    block_pairs: int = DEFAULT_BLOCK_PAIRS,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    report_pairs: int = 200,
    match_top: int = 0,
    verify: int = 0,
    progress_bar: bool = False,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> ScanResult:
    """Find reused images: embed every image below ``folders`` (and ``reference``) and score pairs.

    Pairs are every query x query pair (unless ``within=False``) and every query x reference
    pair; never reference x reference. The result lists all pairs scoring at least ``threshold``
    (default: the model's calibrated threshold) and the ``top_k`` best, whichever is more.

    Args:
        model: a loaded model; else ``checkpoint`` (None: the bundled default) on ``device``.
        tta: ``"d4"`` scores a pair as the max over the 8 rotations/flips of either side.
        cache_dir: embedding cache folder; ``"auto"`` = ``default_cache_dir()``, None = no cache.
        shard: ``"i/n"``: only embed shard i of n and write it to ``out_dir`` (no scoring);
            combine the shard folders with ``merge``.
        faiss_above: above this many images, candidate pairs come from FAISS (``faiss_k``
            neighbours per image) instead of scoring all pairs.
        on_progress: ``on_progress(step, total, {"stage": "embed" | "score" | "report"})``.
        should_stop: polled between batches; when it returns True, ``ScanCancelled`` is raised
            (cache entries written so far are kept, so the next scan resumes).
    """
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    reference = list(reference or [])
    if tta not in (None, "d4"):
        raise ValueError(f"tta must be None or 'd4', got {tta!r}")
    if not folders:
        raise ValueError("scan needs at least one folder")
    shard_t = parse_shard(shard)
    if shard_t is not None and out_dir is None:
        raise ValueError("a shard scan needs out_dir to write its embeddings to")
    if model is None:
        model = load_checkpoint(checkpoint, device=get_device(device))
    if cache_dir == "auto":
        cache_dir = default_cache_dir()
    emb = embed_folders(
        model,
        folders,
        reference,
        planes=planes,
        tta=tta,
        cache_dir=cache_dir,
        shard=shard_t,
        batch_size=batch_size,
        workers=workers,
        progress_bar=progress_bar,
        on_progress=on_progress,
        should_stop=should_stop,
    )
    if shard_t is not None:
        settings = {
            "model_id": emb.stats["model_id"],
            "tta": tta,
            "planes": planes,
            "folders": [str(f) for f in folders],
            "reference": [str(f) for f in reference],
            "shard": list(shard_t),
        }
        write_shard(emb, out_dir, settings)
        stats = dict(emb.stats, shard=list(shard_t), tta=tta)
        return ScanResult([], emb.skipped, emb.items, stats, str(out_dir))
    return _finish(
        model,
        emb,
        threshold=threshold,
        top_k=top_k,
        tta=tta,
        within=within,
        faiss_above=faiss_above,
        faiss_k=faiss_k,
        block_pairs=block_pairs,
        max_pairs=max_pairs,
        out_dir=out_dir,
        report_pairs=report_pairs,
        match_top=match_top,
        verify=verify,
        progress_bar=progress_bar,
        on_progress=on_progress,
        should_stop=should_stop,
    )


def merge(
    shard_dirs: Sequence[str | os.PathLike],
    model: BTAModel | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str = "auto",
    threshold: float | None = None,
    top_k: int = DEFAULT_TOP_K,
    within: bool = True,
    out_dir: str | os.PathLike | None = None,
    faiss_above: int = DEFAULT_FAISS_ABOVE,
    faiss_k: int = DEFAULT_FAISS_K,
    block_pairs: int = DEFAULT_BLOCK_PAIRS,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    report_pairs: int = 200,
    match_top: int = 0,
    verify: int = 0,
    allow_partial: bool = False,
    progress_bar: bool = False,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> ScanResult:
    """Combine shard folders written by ``scan(..., shard="i/n")`` and score all their pairs.

    The model must be the one that embedded the shards (checked by its identity hash).
    """
    emb, settings = read_shards(shard_dirs, allow_partial=allow_partial)
    if model is None:
        model = load_checkpoint(checkpoint, device=get_device(device))
    mid = model_identity(model)
    if mid != settings["model_id"]:
        raise ValueError(
            f"the shards were embedded with model {settings['model_id'][:12]}, not this one ({mid[:12]}); "
            "pass the same --checkpoint"
        )
    result = _finish(
        model,
        emb,
        threshold=threshold,
        top_k=top_k,
        tta=settings.get("tta"),
        within=within,
        faiss_above=faiss_above,
        faiss_k=faiss_k,
        block_pairs=block_pairs,
        max_pairs=max_pairs,
        out_dir=out_dir,
        report_pairs=report_pairs,
        match_top=match_top,
        verify=verify,
        progress_bar=progress_bar,
        on_progress=on_progress,
        should_stop=should_stop,
    )
    result.stats["merged_from"] = [str(d) for d in shard_dirs]
    return result


# --------------------------------------------------------------------------------------------
# CLI


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help)
    parser.add_argument("folders", nargs="*", metavar="FOLDER", help="folders to scan (recursive)")
    parser.add_argument(
        "--reference",
        nargs="+",
        action="extend",
        default=[],
        metavar="FOLDER",
        help="reference folders: pair every scanned image with these (never reference x reference)",
    )
    parser.add_argument(
        "--checkpoint", default=None, help="model checkpoint; none given = the bundled model"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="decision threshold; none given = the model's calibrated one",
    )
    parser.add_argument(
        "--top", type=int, default=DEFAULT_TOP_K, help="always list the K best pairs"
    )
    parser.add_argument(
        "--planes", action="store_true", help="each plane/channel of a stack is its own image"
    )
    parser.add_argument("--tta", default=None, choices=["d4"], help="max over 8 rotations/flips")
    parser.add_argument("--out", default="bta-scan", help="output folder")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="threads decoding images")
    parser.add_argument(
        "--cache", default=None, help=f"embedding cache folder; none given = {default_cache_dir()}"
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="do not read or write the embedding cache"
    )
    parser.add_argument(
        "--cross-only", action="store_true", help="only pair FOLDER images with references"
    )
    parser.add_argument(
        "--shard", default=None, metavar="I/N", help="embed shard I of N (0-based) into --out"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="SHARD_DIR",
        help="combine shard folders and score",
    )
    parser.add_argument(
        "--allow-partial", action="store_true", help="merge even if some shards are missing"
    )
    parser.add_argument(
        "--faiss-above",
        type=int,
        default=DEFAULT_FAISS_ABOVE,
        metavar="N",
        help="above N images, take candidate pairs from FAISS nearest neighbours",
    )
    parser.add_argument(
        "--faiss-k", type=int, default=DEFAULT_FAISS_K, help="FAISS neighbours per image"
    )
    parser.add_argument(
        "--max-pairs", type=int, default=DEFAULT_MAX_PAIRS, help="cap on pairs above threshold"
    )
    parser.add_argument("--report-pairs", type=int, default=200, help="pairs shown in report.html")
    parser.add_argument(
        "--match-top", type=int, default=0, metavar="N", help="match overlay for the N best pairs"
    )
    parser.add_argument(
        "--verify",
        type=int,
        default=100,
        metavar="N",
        help="check the N best pairs by keypoint matching; confirmed overlaps rank first "
        "(0: off; about 0.1-0.3 s per pair on a CPU; several per image finds nearly all reuse)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    return parser


def main(args: argparse.Namespace) -> int:
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    device = get_device(args.device)
    model = load_checkpoint(args.checkpoint, device=device)
    say(
        f"bta-core scan: model {getattr(model, 'checkpoint_path', '?')} on {describe_device(device)}"
    )
    common = dict(
        threshold=args.threshold,
        top_k=args.top,
        within=not args.cross_only,
        out_dir=args.out,
        faiss_above=args.faiss_above,
        faiss_k=args.faiss_k,
        max_pairs=args.max_pairs,
        report_pairs=args.report_pairs,
        match_top=args.match_top,
        verify=args.verify,
        progress_bar=not args.quiet,
    )
    if args.merge:
        if args.folders or args.shard:
            raise ValueError("--merge takes shard folders only (no FOLDER, no --shard)")
        result = merge(args.merge, model, allow_partial=args.allow_partial, **common)
    else:
        if not args.folders:
            raise ValueError("give at least one FOLDER to scan (or --merge SHARD_DIR...)")
        cache = None if args.no_cache else (args.cache or "auto")
        result = scan(
            args.folders,
            args.reference,
            model,
            planes=args.planes,
            tta=args.tta,
            cache_dir=cache,
            shard=args.shard,
            batch_size=args.batch_size,
            workers=args.workers,
            **common,
        )
    s = result.stats
    if args.shard:
        say(
            f"shard {args.shard}: {s['n_images']} images ({s['n_embedded']} embedded, "
            f"{s['n_cached']} cached), {len(result.skipped)} skipped -> {args.out}"
        )
        return 0
    say(
        f"{s['n_images']} images ({s.get('n_embedded', 0)} embedded, {s.get('n_cached', 0)} from cache), "
        f"{len(result.skipped)} skipped, {s['n_pairs_scored']} pairs scored ({s['method']}), "
        f"{s['n_same']} at or above threshold {s['threshold']:.3f}"
    )
    for p in result.pairs[:5]:
        say(f"  {p.score:.4f}  {p.path_a}  <->  {p.path_b}")
    say(f"wrote {args.out}/pairs.csv, pairs.json, report.html, skipped.csv")
    return 0
