"""Does the strictest per-data-set score threshold transfer better than the pooled one?

Leave one data set out on the cached features (``tools/cache_views.py``): train on the other
data sets, then fit the 1 %-FPR threshold on their pooled val pairs (what ``calibrate`` does) or
on each one's val pairs and take the strictest (also at 0.5 %), and measure the held-out set's
unrelated-pair FPR and reuse recall at each. Tried for issue 11 and dropped (docs/model-card.md).

    python benchmarks/threshold_transfer.py --cache /work/cache/bta_views \
        --out benchmarks/threshold_transfer_cpu.json
"""

import argparse
import json
from pathlib import Path

import torch

from bta_core.evaluation.holdout import Scorer, evaluate_heldout
from bta_core.training.features import (
    FeatureTrainConfig,
    calibrate_on_val,
    load_feature_set,
    train_on_features,
)

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--cache", default="/work/cache/bta_views")
p.add_argument("--out", default="benchmarks/threshold_transfer_cpu.json")
args = p.parse_args()
torch.set_num_threads(2)
sets = [load_feature_set(p) for p in sorted(Path(args.cache).glob("*.safetensors"))]
cfg = FeatureTrainConfig()
out = {}
for h, held in enumerate(sets):
    tr = [s for k, s in enumerate(sets) if k != h]
    proj, head, _ = train_on_features(tr, cfg)
    pooled = calibrate_on_val(proj, head, tr, 0.01)["threshold"]
    per = {s.name: calibrate_on_val(proj, head, [s], 0.01)["threshold"] for s in tr}
    per05 = {s.name: calibrate_on_val(proj, head, [s], 0.005)["threshold"] for s in tr}
    row = {"pooled": pooled, "per_set": per, "per_set_0.5%": per05}
    for name, thr in (
        ("pooled", pooled),
        ("worst", max(per.values())),
        ("worst_0.5%", max(per05.values())),
    ):
        r = evaluate_heldout(held, Scorer(proj, head), thr)
        row[name] = {
            "thr": thr,
            "unrelated_fpr": r["unrelated"]["fpr@thr"],
            "reuse_recall": r["reuse_mean"]["recall@thr"],
            "reuse_fpr": r["reuse_mean"]["fpr@thr"],
            "paper": r["paper"],
        }
    out[held.name] = row
    print(held.name, json.dumps(row, indent=1), flush=True)
Path(args.out).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
