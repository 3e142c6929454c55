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
