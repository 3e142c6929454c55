"""Leave-one-data-set-out benchmark (issue 11): prints a table per held-out set, writes JSON.

The protocol lives in ``bta_core.evaluation.holdout``; features come from
``tools/cache_views.py``. Usage::

    python tools/cache_views.py ../shared/data --cache /work/cache/bta_views
    python benchmarks/holdout.py --cache /work/cache/bta_views --out benchmarks/holdout_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from bta_core.evaluation.holdout import run_holdout
from bta_core.training.features import FeatureTrainConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default="/work/cache/bta_views")
    p.add_argument("--out", default="benchmarks/holdout_cpu.json")
    p.add_argument("--only", nargs="*", help="held-out data sets to run (default: all)")
    p.add_argument("--steps", type=int, default=FeatureTrainConfig.steps)
    p.add_argument("--head", default="symmetric", choices=["symmetric", "paper"])
    p.add_argument("--ssl", default="barlow_twins", choices=["barlow_twins", "nt_xent"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = replace(
        FeatureTrainConfig(), steps=args.steps, head=args.head, seed=args.seed, ssl=args.ssl
    )
    if args.ssl == "nt_xent":  # NT-Xent is about 5 at the start, L_BT / D about 1
        cfg = replace(cfg, lambda_bt=0.5)
    if args.head == "paper":
        cfg = replace(cfg, head_sizes=[512, 256, 64, 16], batch_size=96)
    res = run_holdout(Path(args.cache), cfg, args.only, log=lambda s: print(s, flush=True))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1), encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
