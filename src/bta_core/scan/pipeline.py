"""The scan: embed every image, gather the evidence cascade for candidate pairs, decide, report.

``scan`` embeds the folders (or one shard of them) and ``merge`` combines shard folders; both
end in :func:`score_and_report`, which takes its settings as one :class:`ScanOptions`. Every
verdict comes from ``bta_core.verdict.decide``; the ranking is ``verdict.rank_key``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch

from ..assess import policy_for, set_model_score
from ..checkpoint import load_checkpoint
from ..device import describe_device, get_device
from ..fingerprint import PHASH_BITS
from ..model import BTAModel
from ..output_files import check_out_dir
from ..runtime import ProgressFn, StopFn
from ..verdict import DEFAULT_PHASH_MAX_DISTANCE, SAME, SUSPECT, decide, rank_key
from .cache import default_cache_dir, model_identity
from .candidates import (
    DEFAULT_BLOCK_PAIRS,
    DEFAULT_FAISS_ABOVE,
    DEFAULT_FAISS_K,
    DEFAULT_MAX_PAIRS,
    DEFAULT_TOP_K,
    orientation_name,
    pair_scores,
    score_all,
)
from .collection import collection_similarities, collection_whitening
from .discover import parse_shard
from .embed import Embedded, embed_folders
from .evidence import (
    PairKey,
    file_numbers,
    fingerprint_evidence,
    identical_pixel_pairs,
    near_copy_pairs,
)
from .keypoint_votes import keypoint_candidates
from .outputs import write_outputs
from .records import Pair, ScanResult
from .shards import read_shards, write_shard
from .verify import iter_scan_images, verify_pairs
from .verify_cache import VerifyCache

DEFAULT_VERIFY_PER_IMAGE = 3
"""Candidates per image checked by keypoint matching (about 0.1-0.3 s per pair on a CPU)."""


@dataclass
class ScanOptions:
    """How pairs are gathered, verified, decided and reported (everything after embedding)."""

    threshold: float | None = None
    """Model threshold of the decision; None = the model's calibrated one."""
    phash_max_distance: int = DEFAULT_PHASH_MAX_DISTANCE
    """Largest perceptual-hash distance still called a near-exact copy."""
    top_k: int = DEFAULT_TOP_K
    """Always list the ``top_k`` best model scores, besides every pair above the threshold."""
    tta: str | None = None
    within: bool = True
    """Pair query images with each other (False: only with the references)."""
    within_files: bool = True
    """Pair the planes/channels of one file with each other (``planes=True``). The command
    line turns this off unless ``--within-files`` is given: an ordinary stack's frames look
    alike and would all be called ``same``. On here, as the napari Scan panel documents it
    (a channel or plane reused inside one stack is found)."""
    faiss_above: int = DEFAULT_FAISS_ABOVE
    faiss_k: int = DEFAULT_FAISS_K
    block_pairs: int = DEFAULT_BLOCK_PAIRS
    max_pairs: int = DEFAULT_MAX_PAIRS
    verify_per_image: int = DEFAULT_VERIFY_PER_IMAGE
    """Keypoint-verify the best ``verify_per_image`` candidates of every query image (0: none)."""
    collection_threshold: float | None = None
    """Collection threshold of the decision; None = the checkpoint's calibrated one."""
    collection: bool = True
    """Whiten the embeddings with the scanned images' own statistics and require model-only
    ``suspect`` pairs to stand out in the collection too (``verdict.Policy``); needs the
    checkpoint's collection calibration and at least ``whitening.MIN_IMAGES`` images."""
    keypoint_candidates: bool = True
    """Also verify each query image's ``verify_per_image`` partners with the most local-feature
    (SIFT) votes (``scan.keypoint_votes``): finds crops and heavy edits the model ranks low."""
    out_dir: str | os.PathLike | None = None
    report_pairs: int = 0
    """report.html shows every same/suspect pair plus this many of the best 'different' ones."""
    match_top: int = 0
    progress_bar: bool = False

    def __post_init__(self) -> None:
        """Values out of range are refused here, for the CLI, napari and Python alike."""
        import math

        def bad(name: str, value, rule: str) -> ValueError:
            return ValueError(f"scan option {name}={value!r}: {rule}")

        if self.threshold is not None and not math.isfinite(float(self.threshold)):
            raise bad("threshold", self.threshold, "must be a finite number")
        if not 0 <= int(self.phash_max_distance) <= PHASH_BITS:
            raise bad("phash_max_distance", self.phash_max_distance, f"must be 0..{PHASH_BITS}")
        ct = self.collection_threshold
        if ct is not None and not (math.isfinite(float(ct)) and -1 <= float(ct) <= 1):
            raise bad("collection_threshold", ct, "must be between -1 and 1")
        for name in ("top_k", "verify_per_image", "report_pairs", "match_top", "faiss_above"):
            if int(getattr(self, name)) < 0:
                raise bad(name, getattr(self, name), "must be 0 or more")
        for name in ("faiss_k", "max_pairs", "block_pairs"):
            if int(getattr(self, name)) < 1:
                raise bad(name, getattr(self, name), "must be 1 or more")
        if self.tta not in (None, "d4"):
            raise bad("tta", self.tta, "must be None or 'd4'")


_OPTION_NAMES = {f.name for f in fields(ScanOptions)}


def _model_scores(
    model: BTAModel, emb: Embedded, keys: list[PairKey], tta: str | None
) -> dict[PairKey, tuple[float, int]]:
    """Model score and orientation code of pairs the candidate search did not list."""
    out: dict[PairKey, tuple[float, int]] = {}
    for start in range(0, len(keys), 4096):
        chunk = keys[start : start + 4096]
        a = torch.tensor([i for i, _ in chunk])
        b = torch.tensor([j for _, j in chunk])
        s, code = pair_scores(model, emb.z[a].to(model.device), emb.z[b].to(model.device), tta)
        for key, sv, cv in zip(chunk, s.tolist(), code.tolist(), strict=True):
            out[key] = (float(sv), int(cv))
    return out


def score_and_report(
    model: BTAModel,
    emb: Embedded,
    options: ScanOptions,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ScanResult:
    """Gather the evidence cascade for the candidate pairs, decide each, write the outputs.

    ``cache_dir``: where keypoint-check results are kept between scans (None: not kept)."""
    o = options
    thr = float(model.config.threshold if o.threshold is None else o.threshold)
    hashes = [it.pixel_hash for it in emb.items]
    whitening = (
        collection_whitening(emb.z, emb.fit_rows, emb.background, hashes) if o.collection else None
    )
    policy = replace(policy_for(model), threshold=thr, phash_max_distance=o.phash_max_distance)
    if o.collection_threshold is not None:
        policy = replace(policy, collection_threshold=float(o.collection_threshold))
    roles = [it.role for it in emb.items]
    files = None if o.within_files else file_numbers(emb.items)
    if files is not None and len(set(files)) == len(files):
        files = None  # one image per file: nothing to leave out, no per-block masks
    t0 = time.perf_counter()
    identical = identical_pixel_pairs(emb.items, o.within, files)
    near = near_copy_pairs(
        emb.phash, roles, policy.phash_max_distance, o.within, on_progress, should_stop, files
    )
    t_hash = time.perf_counter()
    rows, sstats = score_all(
        model,
        emb.z,
        roles,
        threshold=thr,
        top_k=o.top_k,
        tta=o.tta,
        within=o.within,
        faiss_above=o.faiss_above,
        faiss_k=o.faiss_k,
        block_pairs=o.block_pairs,
        max_pairs=o.max_pairs,
        per_image=o.verify_per_image,
        progress_bar=o.progress_bar,
        on_progress=on_progress,
        should_stop=should_stop,
        files=files,
    )
    scores = {(int(i), int(j)): (float(s), int(c)) for s, i, j, c in rows.tolist()}
    local: dict[PairKey, int] = {}
    if o.keypoint_candidates and o.verify_per_image > 0:
        local = keypoint_candidates(
            emb.items,
            o.within,
            o.verify_per_image,
            iter_scan_images,
            on_progress,
            should_stop,
            files,
        )
    extra = (identical | near | local.keys()) - scores.keys()
    scores.update(_model_scores(model, emb, sorted(extra), o.tta))
    t_score = time.perf_counter()
    keys = sorted(scores)
    collection = collection_similarities(whitening, emb.z, keys, emb.fitted(), hashes)
    pairs = []
    evidences = fingerprint_evidence(keys, emb.items, emb.phash)
    for k, (key, evidence) in enumerate(zip(keys, evidences, strict=True)):
        score, code = scores[key]
        set_model_score(evidence, model, score)
        if collection is not None:
            evidence.collection_similarity = round(float(collection[k]), 3)
        i, j = key
        pairs.append(
            Pair(
                emb.items[i].name,
                emb.items[j].name,
                decide(evidence, policy),
                orientation_name(code),
            )
        )
    checks = VerifyCache(cache_dir) if cache_dir is not None else None
    n_checked = verify_pairs(
        pairs, keys, emb.items, o.verify_per_image, policy, on_progress, should_stop, local, checks
    )
    t_verify = time.perf_counter()
    pairs.sort(key=lambda p: (*(-v for v in rank_key(p.decision)), p.path_a, p.path_b))
    by = Counter(p.decided_by for p in pairs)
    stats = dict(emb.stats)
    stats.update(sstats)
    stats.update(
        threshold=thr,
        phash_max_distance=policy.phash_max_distance,
        top_k=o.top_k,
        tta=o.tta,
        within=o.within,
        within_files=o.within_files,
        verify_per_image=o.verify_per_image,
        keypoint_candidates=o.keypoint_candidates,
        collection_whitening=whitening is not None,
        collection_images=whitening.n_images if whitening is not None else 0,
        index_background=stats.get("index_background") if whitening is not None else None,
        collection_threshold=policy.collection_threshold,
        n_keypoint_candidates=len(local),
        n_pairs_out=len(pairs),
        n_same=sum(p.verdict == SAME for p in pairs),
        n_suspect=sum(p.verdict == SUSPECT for p in pairs),
        n_verified=sum(bool(p.verified) for p in pairs),
        n_checked=n_checked,
        n_checked_from_cache=checks.hits if checks is not None else 0,
        decided_by={k: by[k] for k in sorted(by)},
        seconds_fingerprints=round(t_hash - t0, 3),
        seconds_score=round(t_score - t_hash, 3),
        seconds_verify=round(t_verify - t_score, 3),
        device=describe_device(model.device),
        checkpoint=model.checkpoint_path,
    )
    result = ScanResult(pairs, emb.skipped, emb.items, stats)
    if o.out_dir is not None:
        write_outputs(
            result,
            o.out_dir,
            report_pairs=o.report_pairs,
            match_top=o.match_top,
            model=model,
            on_progress=on_progress,
        )
        stats["seconds_write"] = round(time.perf_counter() - t_verify, 3)
    return result


def _options(**kwargs) -> ScanOptions:
    unknown = sorted(set(kwargs) - _OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown scan option(s) {unknown}")
    return ScanOptions(**kwargs)


def scan(
    folders: Sequence[str | os.PathLike] | str | os.PathLike,
    reference: Sequence[str | os.PathLike] | None = None,
    model: BTAModel | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str = "auto",
    planes: bool = False,
    cache_dir: str | os.PathLike | None = "auto",
    shard: str | tuple[int, int] | None = None,
    batch_size: int = 32,
    workers: int = 2,
    index: str | os.PathLike | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    **options,
) -> ScanResult:
    """Find reused images: embed every image below ``folders`` (and ``reference``) and score pairs.

    Pairs are every query x query pair (unless ``within=False``) and every query x reference
    pair; never reference x reference. The result lists all pairs scoring at least ``threshold``
    (default: the model's calibrated threshold) and the ``top_k`` best, whichever is more.

    Args:
        model: a loaded model; else ``checkpoint`` (None: the bundled default) on ``device``.
        cache_dir: embedding cache folder, also keeping keypoint-check results (``verify/``);
            ``"auto"`` = ``default_cache_dir()``, None = no cache.
        shard: ``"i/n"``: only embed shard i of n and write it to ``out_dir`` (no scoring);
            combine the shard folders with ``merge``.
        index: a reference index (``bta_core.index``): also pair each query with its
            ``faiss_k`` nearest indexed images (docs/index.md).
        on_progress: ``on_progress(step, total, {"stage": "embed" | "score" | "keypoints" |
            "verify"})``.
        should_stop: polled between batches; when it returns True, ``runtime.Cancelled`` is
            raised (cache entries written so far are kept, so the next scan resumes).
        options: the fields of :class:`ScanOptions` (``tta="d4"`` scores a pair as the max
            over the 8 rotations/flips of either side; ``faiss_above``: above this many images
            candidate pairs come from FAISS; ``verify``: pairs checked by keypoint matching).
    """
    opts = _options(**options)
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    reference = list(reference or [])
    if opts.tta not in (None, "d4"):
        raise ValueError(f"tta must be None or 'd4', got {opts.tta!r}")
    if not folders:
        raise ValueError("scan needs at least one folder")
    shard_t = parse_shard(shard)
    if opts.out_dir is not None:
        check_out_dir(opts.out_dir, create=False)  # a wrong --out fails now, not later
    if shard_t is not None and opts.out_dir is None:
        raise ValueError("a shard scan needs out_dir to write its embeddings to")
    if model is None:
        model = load_checkpoint(checkpoint, device=get_device(device))
    ref_index = None
    if index is not None and shard_t is None:
        from ..index import open_for_scan

        ref_index = open_for_scan(index, model, opts.tta)  # missing / other model: fail now
    if cache_dir == "auto":
        cache_dir = default_cache_dir()
    emb = embed_folders(
        model,
        folders,
        reference,
        planes=planes,
        tta=opts.tta,
        cache_dir=cache_dir,
        shard=shard_t,
        batch_size=batch_size,
        workers=workers,
        progress_bar=opts.progress_bar,
        on_progress=on_progress,
        should_stop=should_stop,
    )
    if shard_t is not None:
        settings = {
            "model_id": emb.stats["model_id"],
            "tta": opts.tta,
            "planes": planes,
            "folders": [str(f) for f in folders],
            "reference": [str(f) for f in reference],
            "shard": list(shard_t),
        }
        write_shard(emb, opts.out_dir, settings)
        stats = dict(emb.stats, shard=list(shard_t), tta=opts.tta)
        return ScanResult([], emb.skipped, emb.items, stats, str(opts.out_dir))
    if ref_index is not None:
        from ..index import attach_index

        emb = attach_index(emb, ref_index, model, k=opts.faiss_k)
    return score_and_report(model, emb, opts, on_progress, should_stop, cache_dir)


def merge(
    shard_dirs: Sequence[str | os.PathLike],
    model: BTAModel | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str = "auto",
    allow_partial: bool = False,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    **options,
) -> ScanResult:
    """Combine shard folders written by ``scan(..., shard="i/n")`` and score all their pairs.

    The model must be the one that embedded the shards (checked by its identity hash);
    ``options`` are the fields of :class:`ScanOptions` (``tta`` comes from the shards).
    """
    if options.get("out_dir") is not None:
        check_out_dir(options["out_dir"], create=False)
    emb, settings = read_shards(shard_dirs, allow_partial=allow_partial)
    opts = _options(**{**options, "tta": settings.get("tta")})
    if model is None:
        model = load_checkpoint(checkpoint, device=get_device(device))
    mid = model_identity(model)
    if mid != settings["model_id"]:
        raise ValueError(
            f"the shards were embedded with model {settings['model_id'][:12]}, not this one "
            f"({mid[:12]}); pass the same --checkpoint"
        )
    result = score_and_report(model, emb, opts, on_progress, should_stop)
    result.stats["merged_from"] = [str(d) for d in shard_dirs]
    return result
