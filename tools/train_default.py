"""Retrain the bundled default model on CPU from cached backbone features (issue 11, part 6).

Trains the projector and the symmetric head with ``bta_core.training.features`` on the train
splits of *all* cached data sets, calibrates the threshold on their val splits (FPR <= 1%),
and writes an fp16 checkpoint whose config carries the recipe, the calibration and the
leave-one-data-set-out figures of ``benchmarks/holdout.py`` (when its JSON is given).

Usage::

    python tools/cache_views.py ../shared/data --cache /work/cache/bta_views
    python tools/train_default.py --cache /work/cache/bta_views \\
        --holdout benchmarks/holdout_cpu.json --out src/bta_core/models/default.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from bta_core.checkpoint import save_checkpoint
from bta_core.model import BTAModel, ModelConfig
from bta_core.training.features import (
    FeatureTrainConfig,
    calibrate_on_val,
    load_feature_set,
    recipe_dict,
    train_on_features,
)


def holdout_summary(path: Path) -> dict:
    """Headline leave-one-data-set-out figures per held-out set."""
    res = json.loads(path.read_text(encoding="utf-8"))
    out = {"protocol": res["protocol"], "date": res["date"], "heldout": {}}
    for name, r in res["heldout"].items():
        m = r["model"]
        out["heldout"][name] = {
            "paper_accuracy": m["paper"]["accuracy"],
            "paper_f1": m["paper"]["f1"],
            "paper_auc": m["paper"]["auc"],
            "reuse_auc": m["reuse_mean"]["auc"],
            "reuse_recall@1%fpr": m["reuse_mean"]["recall@1%fpr"],
            "identity_min": m["identity"]["min"],
            "unrelated_fpr@thr": m["unrelated"]["fpr@thr"],
            "ece": m.get("ece"),
        }
        gated = r.get("model_in_collection")
        if gated:  # the scan's rule: score and collection similarity (verdict.Policy)
            out["heldout"][name]["unrelated_fpr@thr_in_scan"] = gated["unrelated"]["fpr@thr"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default="/work/cache/bta_views")
    p.add_argument("--out", default="src/bta_core/models/default.safetensors")
    p.add_argument("--holdout", default=None, help="JSON of benchmarks/holdout.py")
    p.add_argument("--steps", type=int, default=FeatureTrainConfig.steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        help="train on these cached data sets only (default: all), e.g. to hold one out",
    )
    p.add_argument(
        "--metrics-only",
        action="store_true",
        help="only store the --holdout figures in the existing --out checkpoint",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.metrics_only:
        from bta_core.checkpoint import load_checkpoint

        model = load_checkpoint(args.out)
        model.config.metrics = holdout_summary(Path(args.holdout))
        save_checkpoint(model, args.out, half=True)
        print(f"stored the leave-one-out figures in {args.out}")
        return 0
    paths = sorted(Path(args.cache).glob("*.safetensors"))
    if args.datasets:
        paths = [q for q in paths if q.stem in args.datasets]
        missing = sorted(set(args.datasets) - {q.stem for q in paths})
        if missing:
            p.error(f"no feature cache for {', '.join(missing)} in {args.cache}")
    sets = [load_feature_set(q) for q in paths]
    cfg = replace(FeatureTrainConfig(), steps=args.steps, seed=args.seed)
    t0 = time.time()
    proj, head, log = train_on_features(
        sets,
        cfg,
        on_progress=lambda s, n, row: print(f"step {s}/{n} loss {row['loss']:.4f}", flush=True),
    )
    cal = calibrate_on_val(proj, head, sets)
    cal["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    recipe = recipe_dict(cfg, sets)
    recipe.update(
        mode="cpu-features",
        views="reuse (cached: clean + 4 random views per image)",
        split="train",
        note=f"CPU-trained ({time.time() - t0:.0f}s, 2 shared cores) on cached features",
        last_log=log[-1],
    )
    mcfg = ModelConfig(
        backbone="efficientnet-lite0",
        projector_sizes=list(cfg.projector_sizes),
        head=cfg.head,
        head_sizes=list(cfg.head_sizes),
        image_size=224,
        threshold=float(cal["threshold"]),
        calibration=cal,
        recipe=recipe,
        metrics=holdout_summary(Path(args.holdout)) if args.holdout else {},
    )
    model = BTAModel(mcfg)
    model.projector.load_state_dict(proj.state_dict())
    model.head.load_state_dict(head.state_dict())
    path = save_checkpoint(model, args.out, half=True)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), threshold {cal['threshold']:.4f}")
    print(json.dumps(cal, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
