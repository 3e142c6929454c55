"""Leave-one-data-set-out benchmark (issue 11): prints a table per held-out set, writes JSON.

The protocol lives in ``bta_core.evaluation.holdout``; features come from
``tools/cache_views.py``. Usage::

    python tools/cache_views.py ../shared/data --cache /work/cache/bta_views
    python benchmarks/holdout.py --cache /work/cache/bta_views --out benchmarks/holdout_cpu.json

``--checkpoints DIR`` evaluates the saved fold models ``DIR/without_<name>.safetensors``
(``tools/train_default.py --datasets``) instead of training them again (the recipe options are
then ignored): the figures of a protocol change without retraining. Keys of an existing
``--out`` file that the run does not produce (ablations, earlier recipes) are kept, and listed
under ``carried_over``.
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
    p.add_argument(
        "--projector",
        type=int,
        nargs="+",
        default=None,
        help="projector widths (default: the recipe's, 1280 1280), e.g. 1280 512 256",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--checkpoints",
        default=None,
        help="folder of fold models without_<name>.safetensors to evaluate instead of training",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = replace(
        FeatureTrainConfig(), steps=args.steps, head=args.head, seed=args.seed, ssl=args.ssl
    )
    if args.projector:
        cfg = replace(cfg, projector_sizes=list(args.projector))
    if args.ssl == "nt_xent":  # NT-Xent is about 5 at the start, L_BT / D about 1
        cfg = replace(cfg, lambda_bt=0.5)
    if args.head == "paper":
        cfg = replace(cfg, head_sizes=[512, 256, 64, 16], batch_size=96)
    ckpts = Path(args.checkpoints) if args.checkpoints else None
    res = run_holdout(
        Path(args.cache), cfg, args.only, log=lambda s: print(s, flush=True), checkpoints=ckpts
    )
    if ckpts is not None:  # the fold models' own recipe, as stored in their checkpoints
        from bta_core.checkpoint import read_config

        first = read_config(next(ckpts.glob("without_*.safetensors"))).recipe
        res["recipe"] = {k: first[k] for k in res["recipe"] if k in first}
    res["command"] = "python benchmarks/holdout.py " + " ".join(argv or sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        old = json.loads(out.read_text(encoding="utf-8"))
        kept = [k for k in old if k not in res and k != "carried_over"]
        res.update({k: old[k] for k in kept})
        if kept:
            res["carried_over"] = kept
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1), encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
