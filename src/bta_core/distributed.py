"""``torchrun`` in one place: this process's rank and its device (scan shards, DDP training)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .device import get_device


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
            f"WORLD_SIZE={env.get('WORLD_SIZE')!r} asks for a multi-process job, but RANK / "
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
