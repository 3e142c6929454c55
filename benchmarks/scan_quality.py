"""Scan quality of the evidence cascade, with and without keypoint verification, as files.

The test images of ../shared/data plus planted manipulated copies of a quarter of them (the same
planting as ``bta-core eval --protocol scan``: every manipulation in turn, fixed seed) are written
to a folder as PNG files; ``bta_core.scan.scan`` ranks all pairs with the bundled model (identical
pixels, perceptual hash, verified overlap, then model score: ``verdict.rank_key``), once for each
``--verify-per-image`` K (the K best candidates of every image checked by keypoint matching),
with and without the candidates by local-feature votes (``scan.keypoint_votes``).
Pairs of two different photos of one field are left out, as in the eval. Prints average
precision and recall@k of the planted pairs, the precision and recall of ``same``, and writes JSON.

    python benchmarks/scan_quality.py --verify-per-image 0 3 --out benchmarks/scan_quality_cpu.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from skimage.io import imsave

from bta_core.checkpoint import load_checkpoint
from bta_core.evaluation.datasets import load_eval_data
from bta_core.evaluation.metrics import average_precision, recall_at_k
from bta_core.evaluation.pairs import MANIPULATIONS, manipulate, resize_batch
from bta_core.scan import scan

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DATASETS = ("bccd", "dsb2018", "phase_culture")


def build_corpus(
    folder: Path, size: int, split: str, seed: int = 0, datasets: tuple[str, ...] = DATASETS
) -> tuple[dict, np.ndarray]:
    """Write originals and planted copies; returns file -> (owner, group, source file name)
    and the number of planted copies."""
    ed = load_eval_data([DATA / name / "splits.csv" for name in datasets], split, size)
    rng = np.random.default_rng(seed)
    n = len(ed.groups)
    n_plant = max(1, round(0.25 * n))
    src = np.sort(rng.choice(n, n_plant, replace=False))
    kinds = [MANIPULATIONS[k % len(MANIPULATIONS)] for k in range(n_plant)]
    meta: dict[str, tuple[int, int, str]] = {}
    originals = resize_batch(ed.images, size)
    for i in range(n):
        name = f"img_{i:03d}.png"
        imsave(
            folder / name,
            (originals[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
            check_contrast=False,
        )
        meta[name] = (i, int(ed.groups[i]), Path(ed.records[i].path).name)
    for k, name in enumerate(MANIPULATIONS):
        sel = [j for j, kind in enumerate(kinds) if kind == name]
        if not sel:
            continue
        copies = manipulate(ed.images[torch.as_tensor(src[sel])], name, size, seed + k)
        for j, img in zip(sel, copies, strict=True):
            fname = f"copy_{j:03d}_{name}.png"
            imsave(
                folder / fname,
                (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
                check_contrast=False,
            )
            meta[fname] = (int(src[j]), int(ed.groups[src[j]]), Path(ed.records[src[j]].path).name)
    return meta, n_plant


def quality(result, meta: dict, n_plant: int) -> dict:
    """AP / recall@k of planted pairs in the scan's final order, and how good ``same`` is."""
    y, rank_score, same, wrong = [], [], [], []
    by: dict[str, list[int]] = {}
    per_kind: dict[str, list[int]] = {}
    suspects = [0, 0]  # planted, other
    total = len(result.pairs)
    for r, p in enumerate(result.pairs):
        a, b = meta[Path(p.path_a).name], meta[Path(p.path_b).name]
        planted = a[0] == b[0]
        if not planted and a[1] == b[1]:
            continue  # another photo of the same field: neither positive nor negative
        y.append(int(planted))
        if planted:
            copy = next((n for n in (p.path_a, p.path_b) if Path(n).name.startswith("copy_")), "")
            kind = Path(copy).stem.split("_", 2)[-1] if copy else "identical file"
            per_kind.setdefault(kind, [0, 0])
            per_kind[kind][0] += p.verdict == "same"
            per_kind[kind][1] += 1
        rank_score.append(total - r)  # the scan's order, as a score
        same.append(p.verdict == "same")
        if p.verdict == "suspect":
            suspects[0 if planted else 1] += 1
        if p.verdict == "same":
            by.setdefault(p.decided_by, [0, 0])[0 if planted else 1] += 1
            if not planted:
                wrong.append([a[2], b[2], p.decided_by, p.transform])
    y, s, same = np.array(y), np.array(rank_score, dtype=float), np.array(same)
    return {
        "average_precision": average_precision(y, s),
        "recall@k": recall_at_k(y, s, n_plant),
        "recall@2k": recall_at_k(y, s, 2 * n_plant),
        "same_precision": float(y[same].mean()) if same.any() else float("nan"),
        "same_recall": float(same[y == 1].sum() / n_plant),
        "same_by": {k: {"planted": v[0], "other": v[1]} for k, v in sorted(by.items())},
        "same_not_planted": wrong,
        "same_fpr": float(same[y == 0].mean()) if (y == 0).any() else float("nan"),
        "suspect": {"planted": suspects[0], "other": suspects[1]},
        "same_recall_by_manipulation": {k: v[0] / v[1] for k, v in sorted(per_kind.items())},
        "planted_in_ranking": int(y.sum()),
        "n_planted": n_plant,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=448, help="side of the written images")
    ap.add_argument("--split", default="test")
    ap.add_argument("--verify-per-image", type=int, nargs="+", default=[0, 3])
    ap.add_argument(
        "--keypoint-candidates",
        choices=("on", "off", "both"),
        default="both",
        help="verify the partners with the most local-feature votes too (scan's default)",
    )
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument(
        "--datasets",
        nargs="+",
        default=list(DATASETS),
        help="data sets whose test images are scanned (a held-out one with a model trained "
        "without it: a scan result on a data set the model never saw)",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = load_checkpoint(args.checkpoint)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        meta, n_plant = build_corpus(folder, args.size, args.split, datasets=tuple(args.datasets))
        n = len(meta)
        choices = {"on": [True], "off": [False], "both": [False, True]}[args.keypoint_candidates]
        runs = [(v, a) for v in args.verify_per_image for a in (choices if v > 0 else [False])]
        for v, votes in runs:
            # each run does its own keypoint checks (the embeddings are shared)
            shutil.rmtree(folder / ".cache" / "verify", ignore_errors=True)
            t0 = time.perf_counter()
            result = scan(
                folder,
                model=model,
                cache_dir=folder / ".cache",
                verify_per_image=v,
                keypoint_candidates=votes,
                top_k=n * n,
            )
            key = f"{v}+keypoint-votes" if votes else str(v)
            rows[key] = {
                **quality(result, meta, n_plant),
                "n_checked": result.stats["n_checked"],
                "n_checked_from_cache": result.stats.get("n_checked_from_cache", 0),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            r = rows[key]
            print(
                f"verify {key:>17}: AP {r['average_precision']:.3f}  recall@k {r['recall@k']:.3f}  "
                f"recall@2k {r['recall@2k']:.3f}  same: precision "
                f"{r['same_precision']:.3f} recall {r['same_recall']:.3f} "
                f"{r['same_by']}  ({r['n_checked']} checked, {r['seconds']} s)",
                flush=True,
            )
    doc = {
        "images": n,
        "planted": n_plant,
        "size": args.size,
        "split": args.split,
        "checkpoint": model.checkpoint_path,
        "datasets": list(args.datasets),
        "model_trained_on": model.config.recipe.get("data"),
        "date": time.strftime("%Y-%m-%d"),
        "results": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
