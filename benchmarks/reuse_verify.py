"""Reuse suite for the product pipeline: model score OR keypoint-verified overlap.

Per manipulation of ``bta-core eval --protocol reuse`` (test images, 448 px copies), measures:
the model's recall at 1 % FPR on hard negatives (original vs a manipulated copy of another image of
the same data set and modality, other field), the share of true copies whose overlap
``bta_core.match`` verifies, false verifications on a sample of those hard negatives, and the
recall of the union rule ``same = score >= t_1% or verified`` (as ``bta-core score --verify`` and
``bta-core scan --verify`` decide).

    python benchmarks/reuse_verify.py --negatives 40 --out benchmarks/reuse_verify_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bta_core.checkpoint import load_checkpoint
from bta_core.evaluation.datasets import load_eval_data
from bta_core.evaluation.pairs import MANIPULATIONS, manipulate, resize_batch
from bta_core.match import match_images
from bta_core.model import embed_images

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _np(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.permute(1, 2, 0).numpy())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument(
        "--negatives", type=int, default=40, help="hard negatives verified per manipulation"
    )
    ap.add_argument("--manipulations", default=",".join(MANIPULATIONS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = load_checkpoint(None)
    ed = load_eval_data(
        [DATA / "bccd" / "splits.csv", DATA / "dsb2018" / "splits.csv"], "test", 512
    )
    n = len(ed.groups)
    rng = np.random.default_rng(0)
    originals = resize_batch(ed.images, args.size)
    z_orig = embed_images(model, [_np(x) for x in originals])
    hard = (ed.population[:, None] == ed.population[None, :]) & (
        ed.groups[:, None] != ed.groups[None, :]
    )
    neg_i, neg_j = np.nonzero(hard)
    rows = {}
    for k, name in enumerate(args.manipulations.split(",")):
        t0 = time.perf_counter()
        copies = manipulate(ed.images, name, args.size, seed=k)
        z_copy = embed_images(model, [_np(x) for x in copies])
        with torch.no_grad():
            s = model.score_matrix(z_orig, z_copy).numpy()
        pos = np.diag(s)
        neg = s[neg_i, neg_j]
        thr = float(np.quantile(neg, 0.99))
        model_hit = pos > thr
        verified = np.array(
            [match_images(_np(originals[i]), _np(copies[i])).found for i in range(n)]
        )
        sample = rng.choice(len(neg_i), min(args.negatives, len(neg_i)), replace=False)
        false_ver = [
            match_images(_np(originals[neg_i[m]]), _np(copies[neg_j[m]])).found for m in sample
        ]
        rows[name] = {
            "model_recall_at_1pct_fpr": float(model_hit.mean()),
            "verified_share": float(verified.mean()),
            "union_recall": float((model_hit | verified).mean()),
            "false_verifications": int(np.sum(false_ver)),
            "negatives_checked": len(sample),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        r = rows[name]
        print(
            f"{name:<10} model {r['model_recall_at_1pct_fpr']:.3f}  verified {r['verified_share']:.3f}  "
            f"union {r['union_recall']:.3f}  false verified {r['false_verifications']}/{r['negatives_checked']}  "
            f"({r['seconds']} s)",
            flush=True,
        )
    doc = {"images": n, "size": args.size, "date": time.strftime("%Y-%m-%d"), "results": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
