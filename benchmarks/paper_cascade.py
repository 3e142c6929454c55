"""The paper's protocol decided by the product's evidence cascade, on held-out data sets (issue 11).

`bta-core eval --protocol paper` scores the paper's pairs with a model alone. A user's verdict
comes from the cascade instead (``assess.assess_pair``, what ``bta-core score`` runs): identical
pixels, the D4 perceptual hash, keypoint verification, then the model score against its
threshold. This benchmark runs that cascade on the paper protocol's pairs (one view A and one
view B per test image through the paper's two pipelines, p_same = 0.4, 10 resamples, partners
from other field-of-view groups) of each data set, with the leave-one-data-set-out model that
never saw it (``/work/cache/heldout/without_<name>.safetensors`` from benchmarks/holdout.py, or
``--models``), and reports, beside the model alone on the same pairs:

* ``same``: the verdict ``same`` counts as "same source" (certain evidence only);
* ``same or suspect``: a model-only ``suspect`` counts too (what a reviewer would look at);
* ROC AUC of the cascade's ranking (``verdict.rank_key`` order).

    python benchmarks/paper_cascade.py --out benchmarks/paper_cascade_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bta_core.assess import add_match, fingerprint_evidence, policy_for, set_model_score
from bta_core.checkpoint import load_checkpoint
from bta_core.evaluation.datasets import load_eval_data
from bta_core.evaluation.methods import BackboneFeatures, ModelMethod
from bta_core.evaluation.metrics import roc_auc, threshold_metrics
from bta_core.evaluation.pairs import sample_partners
from bta_core.evaluation.protocols import PAPER_SEEDS, paper_views
from bta_core.match import match_images
from bta_core.verdict import SAME, SUSPECT, decide, rank_key

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _rgb(view: torch.Tensor) -> np.ndarray:
    """A view tensor (3, H, W), uint8 or float in [0, 1], as float32 (H, W, 3) in [0, 1]."""
    x = view.permute(1, 2, 0).float().numpy()
    return (x / 255.0 if view.dtype == torch.uint8 else x).astype(np.float32)


def _metrics(label: np.ndarray, positive: np.ndarray) -> dict:
    return {k: float(v) for k, v in threshold_metrics(label, positive.astype(float), 0.5).items()}


def run_dataset(name: str, data: Path, checkpoint: Path, size: int, seeds) -> dict:
    t0 = time.perf_counter()
    model = load_checkpoint(checkpoint, torch.device("cpu"))
    ev = load_eval_data([data / name / "splits.csv"], "test", decode_size=2 * size)
    view_a, view_b = paper_views(ev.images, size)
    method = ModelMethod(name, model, str(checkpoint))
    rep_a = method.represent(BackboneFeatures(view_a))
    rep_b = method.represent(BackboneFeatures(view_b))
    n = len(ev.groups)
    a_rgb = [_rgb(v) for v in view_a]
    b_rgb = [_rgb(v) for v in view_b]
    policy = policy_for(model)
    decisions: dict[tuple[int, int], object] = {}  # a pair repeats across resamples: decided once

    def decide_pair(i: int, j: int, score: float):
        if (i, j) not in decisions:
            evidence = fingerprint_evidence(a_rgb[i], b_rgb[j])
            set_model_score(evidence, model, score)
            if not evidence.identical_pixels:
                try:
                    add_match(evidence, match_images(a_rgb[i], b_rgb[j]))
                except ValueError:
                    pass  # too small to match: the other evidence decides, as in score
            decisions[(i, j)] = decide(evidence, policy)
        return decisions[(i, j)]

    rows = {"model": [], "same": [], "same_or_suspect": []}
    aucs = {"model": [], "cascade": []}
    idx = np.arange(n)
    for seed in seeds:
        partner, label = sample_partners(ev.groups, np.random.default_rng(seed))
        scores = method.score(rep_a, rep_b, idx, partner)
        ds = [
            decide_pair(i, int(j), float(s)) for i, j, s in zip(idx, partner, scores, strict=True)
        ]
        verdicts = np.array([d.verdict for d in ds])
        order = sorted(range(n), key=lambda k: rank_key(ds[k]))
        rank = np.empty(n)
        rank[order] = np.arange(n)
        rows["model"].append(_metrics(label, scores >= model.config.threshold))
        rows["same"].append(_metrics(label, verdicts == SAME))
        rows["same_or_suspect"].append(_metrics(label, np.isin(verdicts, [SAME, SUSPECT])))
        aucs["model"].append(roc_auc(label, scores))
        aucs["cascade"].append(roc_auc(label, rank))
    out: dict = {"n_pairs_per_resample": n, "threshold": float(model.config.threshold)}
    for key, per_seed in rows.items():
        out[key] = {m: float(np.mean([r[m] for r in per_seed])) for m in per_seed[0]}
    out["model"] = {**out.pop("model"), "auc": float(np.mean(aucs["model"]))}
    out["checkpoint"] = str(checkpoint)
    out["cascade_auc"] = float(np.mean(aucs["cascade"]))
    out["decided_by"] = {
        k: int(sum(d.decided_by == k for d in decisions.values()))
        for k in sorted({d.decided_by for d in decisions.values()})
    }
    out["distinct_pairs_checked"] = len(decisions)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--models", default="/work/cache/heldout", help="without_<name>.safetensors")
    p.add_argument("--datasets", default="bccd,dsb2018,phase_culture")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--out", default="benchmarks/paper_cascade_cpu.json")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    res = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} {platform.machine()}, torch {torch.__version__}",
        "seeds": list(PAPER_SEEDS),
        "datasets": {},
    }
    for name in args.datasets.split(","):
        ckpt = Path(args.models) / f"without_{name}.safetensors"
        res["datasets"][name] = r = run_dataset(name, Path(args.data), ckpt, args.size, PAPER_SEEDS)
        print(
            f"{name}: model alone acc {r['model']['accuracy']:.3f} F1 {r['model']['f1']:.3f} "
            f"AUC {r['model']['auc']:.3f} | cascade 'same' acc {r['same']['accuracy']:.3f} "
            f"F1 {r['same']['f1']:.3f} | same-or-suspect acc {r['same_or_suspect']['accuracy']:.3f}"
            f" F1 {r['same_or_suspect']['f1']:.3f} | cascade AUC {r['cascade_auc']:.3f} "
            f"({r['seconds']:.0f} s)",
            flush=True,
        )
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
