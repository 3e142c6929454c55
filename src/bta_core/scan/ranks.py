"""One node, several GPUs: a scan whose embedding shards are the ranks of one ``torchrun`` job.

Under ``torchrun --nproc_per_node=N`` every rank embeds shard ``RANK/WORLD_SIZE`` of the files
(the ``--shard`` rule) on ``cuda:LOCAL_RANK`` (or the CPU) and writes it to
``OUT/shards/rank-R``; the ranks then exchange their status (a collective, so it is also the
barrier) and rank 0 merges the shards as ``merge`` does and writes the outputs. Other ranks
return None and write nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import torch

from ..distributed import Rank, rank_device, torchrun_rank  # noqa: F401 (re-exported)
from ..model import BTAModel
from ..runtime import ProgressFn, StopFn
from .pipeline import merge, scan
from .records import ScanResult

WAIT_TIMEOUT = timedelta(hours=12)
"""How long a finished rank waits for the slowest one (shards can differ in cache hits)."""


def shard_dir(out_dir: str | os.PathLike, rank: int) -> Path:
    """Where rank ``rank`` writes its shard: ``OUT/shards/rank-R``."""
    return Path(out_dir) / "shards" / f"rank-{rank}"


def _exchange(rank: Rank, device: torch.device, status: str | None) -> list[str | None]:
    """Every rank's status (None = shard written, else its error); waits for all ranks."""
    import torch.distributed as dist

    own = not dist.is_initialized()
    if own:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=WAIT_TIMEOUT)
    try:
        statuses: list[str | None] = [None] * rank.world
        dist.all_gather_object(statuses, status)
        return statuses
    finally:
        if own:
            dist.destroy_process_group()


def scan_ranks(
    folders: Sequence[str | os.PathLike],
    reference: Sequence[str | os.PathLike] | None,
    model: BTAModel,
    rank: Rank,
    *,
    out_dir: str | os.PathLike,
    planes: bool = False,
    cache_dir: str | os.PathLike | None = "auto",
    shard: None = None,
    batch_size: int = 32,
    workers: int = 2,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    **options,
) -> ScanResult | None:
    """Embed this rank's shard, wait for every rank, and on rank 0 merge all shards.

    ``options`` are the fields of ``ScanOptions`` (``out_dir`` is required; ``shard`` is only
    accepted as None, the signature matching ``scan``); progress goes to rank 0 only. Returns the
    merged result on rank 0 and None on the other ranks; a rank that failed makes rank 0 raise
    ``RuntimeError`` naming it.
    """
    if shard is not None:
        raise ValueError("a torchrun scan takes no shard: rank R embeds shard R/WORLD_SIZE")
    bar = bool(options.pop("progress_bar", False)) and rank.is_main
    status: str | None = None
    try:
        scan(
            folders,
            reference,
            model,
            planes=planes,
            cache_dir=cache_dir,
            shard=(rank.rank, rank.world),
            batch_size=batch_size,
            workers=workers,
            on_progress=on_progress if rank.is_main else None,
            should_stop=should_stop,
            out_dir=shard_dir(out_dir, rank.rank),
            tta=options.get("tta"),
            progress_bar=bar,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        status = f"{type(exc).__name__}: {exc}"
    statuses = _exchange(rank, model.device, status)
    failed = [f"rank {r}: {s}" for r, s in enumerate(statuses) if s is not None]
    if rank.is_main and failed:
        raise RuntimeError("shards failed, nothing merged; " + "; ".join(failed))
    if status is not None:
        raise RuntimeError(f"rank {rank.rank}: {status}")
    if not rank.is_main:
        return None
    merge_options = {k: v for k, v in options.items() if k != "tta"}
    return merge(
        [shard_dir(out_dir, r) for r in range(rank.world)],
        model,
        on_progress=on_progress,
        should_stop=should_stop,
        out_dir=out_dir,
        progress_bar=bar,
        **merge_options,
    )
