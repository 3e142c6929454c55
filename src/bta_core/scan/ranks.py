"""One node, several GPUs: a scan whose embedding shards are the ranks of one ``torchrun`` job.

Under ``torchrun --nproc_per_node=N`` every rank embeds shard ``RANK/WORLD_SIZE`` of the files
(the ``--shard`` rule) on ``cuda:LOCAL_RANK`` (or the CPU) and writes it to
``OUT/shards/rank-R``; the ranks then exchange their status (a collective, so it is also the
barrier) and rank 0 merges the shards as ``merge`` does and writes the outputs. Other ranks
return None and write nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from ..device import get_device
from ..model import BTAModel
from ..runtime import ProgressFn, StopFn
from .pipeline import merge, scan
from .records import ScanResult

WAIT_TIMEOUT = timedelta(hours=12)
"""How long a finished rank waits for the slowest one (shards can differ in cache hits)."""


@dataclass(frozen=True)
class Rank:
    """This process's place in a ``torchrun`` job."""

    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def torchrun_rank(environ: Mapping[str, str] | None = None) -> Rank | None:
    """The rank set by ``torchrun`` (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``), else None."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        rank = int(env["RANK"])
        local = int(env.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as exc:
        raise ValueError(
            f"WORLD_SIZE={env.get('WORLD_SIZE')!r} asks for a multi-process scan, but RANK / "
            "LOCAL_RANK are missing or not numbers; start it with torchrun"
        ) from exc
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    return Rank(rank, world, local)


def rank_device(rank: Rank, name: str = "auto") -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is there and ``name`` is auto/cuda; else ``get_device(name)``
    (the CPU when ``auto`` finds no GPU)."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        if rank.local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {rank.local_rank} but only {torch.cuda.device_count()} CUDA "
                "device(s); use --nproc_per_node <= the number of GPUs"
            )
        torch.cuda.set_device(rank.local_rank)
        return torch.device("cuda", rank.local_rank)
    return get_device(name)


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
