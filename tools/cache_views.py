"""Cache frozen-backbone features of many views of every image, once, for CPU training.

Thin command line over ``bta_core.training.view_cache`` (see there for the file layout). Data sets
already cached are skipped, so the job resumes.

Usage: ``python tools/cache_views.py ../shared/data --cache /work/cache/bta_views --views 4``
"""

from __future__ import annotations

import argparse
import sys

import torch

from bta_core.training.view_cache import build_caches


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="folder of data sets (each with splits.csv)")
    p.add_argument("--cache", default="/work/cache/bta_views")
    p.add_argument("--views", type=int, default=4, help="random reuse views per train/val image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-train", type=int, default=0, help="cap train images per data set")
    p.add_argument("--max-test", type=int, default=0, help="cap test images per data set")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    caps = {"train": args.max_train, "test": args.max_test}
    build_caches(
        args.root, args.cache, args.views, args.seed, caps, log=lambda s: print(s, flush=True)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
