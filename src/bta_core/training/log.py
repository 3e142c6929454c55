"""Training output of rank 0: progress lines and bars, and the JSON-lines stats file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import TrainConfig


def stats_path(out: str | os.PathLike) -> Path:
    """The per-epoch stats (JSON lines) written next to checkpoint ``out``."""
    return Path(str(out) + ".stats.jsonl")


class TrainLogger:
    """Progress bars and JSON-lines stats of rank 0."""

    def __init__(self, cfg: TrainConfig, verbose: bool, write: bool = True) -> None:
        self.cfg, self.verbose, self.write = cfg, verbose, write

    def info(self, text: str) -> None:
        if self.verbose:
            print(text, flush=True)

    def bar(self, desc: str):
        if not self.verbose:
            return None
        from tqdm import tqdm

        return tqdm(total=None, desc=desc, leave=False, dynamic_ncols=True)

    def forget_after(self, stages: list[str], stage_index: int, epochs_done: int) -> None:
        """Drop the stats rows a resumed run is about to write again: an epoch interrupted just
        after its row was written is run again, and must not be listed twice."""
        path = stats_path(self.cfg.out)
        if not self.write or not path.exists():
            return
        from ..checkpoint import atomic_write_text

        order = {name: k for k, name in enumerate(stages)}
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            k = order.get(row.get("stage"), len(stages))
            if k < stage_index or (k == stage_index and row.get("epoch", 0) <= epochs_done):
                keep.append(line + "\n")
        atomic_write_text(path, "".join(keep))

    def stats(self, row: dict) -> None:
        if not self.write:
            return
        path = stats_path(self.cfg.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": time.time(), **row}) + "\n")
        if self.verbose:
            parts = " ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float))
            print(f"[{row['stage']} {row['epoch']}/{row['epochs']}] {parts}", flush=True)
