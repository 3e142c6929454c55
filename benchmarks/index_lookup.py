"""A few images against a reference index: false suspects with and without borrowed statistics.

The editor's case: a new manuscript's handful of figures is looked up in an index of published
images (``bta-core scan FOLDER --index INDEX``). A folder of fewer than 16 images cannot whiten
itself, so before, its model-only pairs were ``suspect`` on the score alone; now it borrows a
sample of the index's embeddings (``scan.collection``). For each data set, the index holds its
``test`` images; each "manuscript" folder holds planted copies of indexed images (every reuse
manipulation in turn) and as many ``val`` images of the same data set, which are in no index.
Pairs of a copy and another photo of its source's field of view are left out, as in
``scan_quality.py``. Each scan's pairs are decided with the collection evidence (now) and again without it (the
earlier rule, ``verdict.decide`` on the same evidence), so both columns see the same pairs.

With ``--heldout DIR``, the model for data set X is ``DIR/without_X.safetensors`` (trained on
the other data sets: ``tools/train_default.py --datasets``), so X is new to it.

    python benchmarks/index_lookup.py --heldout /work/cache/heldout --out benchmarks/index_lookup_cpu.json
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from skimage.io import imsave

from bta_core.checkpoint import load_checkpoint
from bta_core.evaluation.datasets import load_eval_data
from bta_core.evaluation.pairs import MANIPULATIONS, manipulate, resize_batch
from bta_core.index import build_index
from bta_core.scan import scan
from bta_core.verdict import SAME, SUSPECT, decide

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DATASETS = ("bccd", "dsb2018", "phase_culture")


def _save(path: Path, img: torch.Tensor) -> None:
    arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    imsave(path, arr, check_contrast=False)


def _split_files(name: str, split: str) -> list[str]:
    with open(DATA / name / "splits.csv", newline="", encoding="utf-8") as fh:
        return [r["file"] for r in csv.DictReader(fh) if r["split"] == split]


def run_dataset(name: str, model, work: Path, n_folders: int, per_folder: int, size: int) -> dict:
    """Index the test images, scan ``n_folders`` manuscripts against it; verdict counts."""
    refs = load_eval_data([DATA / name / "splits.csv"], "test", size)
    news = load_eval_data([DATA / name / "splits.csv"], "val", size)
    ref_dir = work / name / "index_images"
    ref_dir.mkdir(parents=True)
    originals = resize_batch(refs.images, size)
    ref_names = [f"ref_{i:03d}.png" for i in range(len(originals))]
    for fname, img in zip(ref_names, originals, strict=True):
        _save(ref_dir / fname, img)
    index = work / name / "index"
    build_index([ref_dir], index, model)
    rng = np.random.default_rng(0)
    new_originals = resize_batch(news.images, size)
    new_pick = rng.permutation(len(new_originals))
    counts = {
        rule: {
            "copies": 0,
            "copy_same": 0,
            "copy_flagged": 0,
            "unrelated_pairs": 0,
            "unrelated_same": 0,
            "unrelated_suspect": 0,
        }
        for rule in ("with_index_statistics", "without_collection")
    }
    kind = 0
    for f in range(n_folders):
        folder = work / name / f"manuscript_{f}"
        folder.mkdir()
        truth: dict[str, str] = {}  # copy file -> its indexed source
        same_field: set[tuple[str, str]] = set()  # another photo of the source's field: left out
        for j in range(per_folder):
            src = int(rng.integers(len(originals)))
            manip = MANIPULATIONS[kind % len(MANIPULATIONS)]
            kind += 1
            img = manipulate(refs.images[src : src + 1], manip, size, 1000 * f + j)[0]
            fname = f"copy_{j}_{manip}.png"
            _save(folder / fname, img)
            truth[fname] = ref_names[src]
            for r in np.flatnonzero(refs.groups == refs.groups[src]):
                if r != src:
                    same_field.add((fname, ref_names[r]))
        for j in range(per_folder):
            k = int(new_pick[(f * per_folder + j) % len(new_pick)])
            _save(folder / f"new_{j}.png", new_originals[k])
        result = scan([folder], model=model, index=index, cache_dir=None, within=False)
        if not result.stats.get("collection_whitening"):
            raise RuntimeError(f"{folder}: no collection statistics were borrowed from the index")
        for rule, c in counts.items():
            c["copies"] += len(truth)
            c["unrelated_pairs"] += per_folder * 2 * len(originals) - len(truth) - len(same_field)
            for p in result.pairs:
                ev = p.evidence
                if rule == "without_collection":
                    ev = dataclasses.replace(ev, collection_similarity=None)
                verdict = decide(ev, result_policy(model, result)).verdict
                a, b = Path(p.path_a).name, Path(p.path_b).name
                q, r = (a, b) if a.startswith(("copy_", "new_")) else (b, a)
                if (q, r) in same_field:
                    continue
                if truth.get(q) == r:
                    c["copy_same"] += verdict == SAME
                    c["copy_flagged"] += verdict in (SAME, SUSPECT)
                else:
                    c["unrelated_same"] += verdict == SAME
                    c["unrelated_suspect"] += verdict == SUSPECT
    for c in counts.values():
        c["copy_recall_same"] = c["copy_same"] / c["copies"]
        c["copy_recall_flagged"] = c["copy_flagged"] / c["copies"]
        c["unrelated_suspect_per_folder"] = c["unrelated_suspect"] / n_folders
        c["unrelated_suspect_rate"] = c["unrelated_suspect"] / c["unrelated_pairs"]
    return {
        "index_images": len(originals),
        "folders": n_folders,
        "per_folder": 2 * per_folder,
        **counts,
    }


def result_policy(model, result):
    """The policy the scan decided with (its threshold and collection threshold)."""
    from bta_core.assess import policy_for

    return dataclasses.replace(
        policy_for(model),
        threshold=float(result.stats["threshold"]),
        collection_threshold=result.stats.get("collection_threshold"),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heldout", default=None, help="folder of without_X.safetensors models")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--folders", type=int, default=6, help="manuscripts per data set")
    p.add_argument("--per-folder", type=int, default=4, help="copies (and new images) each")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    res = {
        "benchmark": "index_lookup",
        "machine": f"{platform.node()} {platform.machine()}, CPU, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "models": "held out (trained without the data set)" if args.heldout else "bundled default",
        "datasets": {},
    }
    for name in args.datasets:
        ckpt = Path(args.heldout) / f"without_{name}.safetensors" if args.heldout else None
        model = load_checkpoint(ckpt)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            r = run_dataset(name, model, Path(tmp), args.folders, args.per_folder, args.size)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        res["datasets"][name] = r
        for rule in ("without_collection", "with_index_statistics"):
            c = r[rule]
            print(
                f"{name:14s} {rule:22s} copies same {c['copy_recall_same']:.3f} flagged "
                f"{c['copy_recall_flagged']:.3f} | unrelated same {c['unrelated_same']} suspect "
                f"{c['unrelated_suspect']} ({c['unrelated_suspect_per_folder']:.1f} per folder)",
                flush=True,
            )
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
