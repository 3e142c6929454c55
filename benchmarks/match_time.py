"""Keypoint verification, side by side: scikit-image vs OpenCV SIFT + RANSAC in ``match_images``.

The same pairs for every backend, built from real test-split images of ../shared/data (BCCD,
DSB2018, phase_culture), each resized to a 512 px long side:

* ``reuse``: B is a crop of A (25-60 % of the area), rotated/flipped by a random dihedral op and
  rescaled by 0.7, 1.0 or 1.4. Scored: found, dihedral right, box IoU with the truth >= 0.7.
* ``unrelated``: A and B are different images of one data set from different same-source groups
  (hard negatives: same modality). Scored: false positives (a region found).

Each backend runs twice over the pairs: ``cold`` (keypoints detected on first sight of an image:
about 3 detections per pair) and ``cached`` (the per-image keypoint cache is warm, as when a scan
verifies the best k pairs of each image). Prints a table and writes JSON:

    python benchmarks/match_time.py --pairs 24 --out benchmarks/match_cpu.json
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from bta_core import match as M
from bta_core.dihedral import D4_NAMES
from bta_core.imageio import load_image
from bta_core.match import keypoints as KP

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
SIDE = 512
SCALES = (0.7, 1.0, 1.4)


def set_backend(name: str) -> None:
    """Select the keypoint backend of ``bta_core.match`` (this also empties its keypoint cache)."""
    KP.set_backend(name)


def test_images(data: Path, per_set: int, rng: np.random.Generator) -> list[tuple[Path, str]]:
    """``per_set`` random test-split images (>= 256 px) of each data set, with their group."""
    out = []
    for ds in ("bccd", "dsb2018", "phase_culture"):
        with open(data / ds / "splits.csv") as fh:
            rows = [
                r
                for r in csv.DictReader(fh)
                if r["split"] == "test" and min(int(r["width"]), int(r["height"])) >= 256
            ]
        for k in rng.choice(len(rows), min(per_set, len(rows)), replace=False):
            out.append((data / ds / rows[int(k)]["file"], rows[int(k)]["group_id"]))
    return out


def resize_long(img: np.ndarray, side: int = SIDE) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    f = side / max(h, w)
    out = cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out, dtype=np.float32)


def plant(a: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int, tuple]:
    """A crop of ``a`` in a random orientation and scale; returns B, the orientation, the box."""
    import cv2

    h, w = a.shape[:2]
    frac = rng.uniform(0.25, 0.6)
    ch = min(h, round(np.sqrt(frac * h * w)))
    cw = min(w, round(frac * h * w / ch))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = a[y0 : y0 + ch, x0 : x0 + cw]
    orient = int(rng.integers(8))
    b = np.rot90(np.fliplr(crop) if orient >= 4 else crop, orient % 4)
    s = float(rng.choice(SCALES))
    if s != 1.0:
        b = cv2.resize(np.ascontiguousarray(b), None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(b, dtype=np.float32), orient, (x0, y0, x0 + cw, y0 + ch)


def iou(p, q) -> float:
    ix = max(0, min(p[2], q[2]) - max(p[0], q[0]))
    iy = max(0, min(p[3], q[3]) - max(p[1], q[1]))
    inter = ix * iy
    return inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter)


def summarise(times: list[float]) -> dict:
    return {
        "n": len(times),
        "median_s": round(statistics.median(times), 4),
        "mean_s": round(statistics.fmean(times), 4),
        "p90_s": round(float(np.percentile(times, 90)), 4),
    }


def run_backend(name: str, reuse: list, unrelated: list) -> dict:
    set_backend(name)
    out: dict = {}
    for phase in ("cold", "cached"):
        times, found, right, located = [], 0, 0, 0
        for a, b, orient, box in reuse:
            t0 = time.perf_counter()
            r = M.match_images(a, b)
            times.append(time.perf_counter() - t0)
            found += r.found
            if r.found:
                right += r.transform.dihedral == D4_NAMES[orient]
                located += r.box_a is not None and iou(r.box_a, box) >= 0.7
        out[f"reuse_{phase}"] = {
            **summarise(times),
            "found": found,
            "dihedral_right": right,
            "located_iou70": located,
        }
        times, fp = [], 0
        for a, b in unrelated:
            t0 = time.perf_counter()
            r = M.match_images(a, b)
            times.append(time.perf_counter() - t0)
            fp += r.found
        out[f"unrelated_{phase}"] = {**summarise(times), "false_positives": fp}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pairs", type=int, default=24, help="reuse pairs (and unrelated pairs)")
    parser.add_argument("--backends", nargs="+", default=["skimage", "opencv"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import cv2

    cv2.setNumThreads(1)  # one core, comparable with the single-threaded scikit-image path
    rng = np.random.default_rng(args.seed)
    picks = test_images(args.data, -(-args.pairs // 3) + 2, rng)
    images = [(resize_long(load_image(p)), g, p) for p, g in picks]
    reuse = [(a, *plant(a, rng)) for a, _, _ in images[: args.pairs]]
    unrelated = []
    while len(unrelated) < args.pairs:
        i, j = (int(v) for v in rng.choice(len(images), 2, replace=False))
        same_set = images[i][2].parent == images[j][2].parent
        if same_set and images[i][1] != images[j][1]:
            unrelated.append((images[i][0], images[j][0]))
    M.match_images(reuse[0][0], reuse[0][1])  # warm-up (imports, FFT plans)

    results = {b: run_backend(b, reuse, unrelated) for b in args.backends}
    print(f"match_images, real images at {SIDE} px long side, 1 thread ({os.cpu_count()}-core CPU)")
    print(f"{'backend':<9}{'case':<18}{'n':>4}{'median s':>10}{'mean s':>9}{'p90 s':>8}  result")
    for b, res in results.items():
        for case, r in res.items():
            extra = (
                f"found {r['found']}, dihedral {r['dihedral_right']}, IoU>=0.7 {r['located_iou70']}"
                if "found" in r
                else f"false positives {r['false_positives']}"
            )
            print(
                f"{b:<9}{case:<18}{r['n']:>4}{r['median_s']:>10.3f}{r['mean_s']:>9.3f}"
                f"{r['p90_s']:>8.3f}  {extra}"
            )
    if args.out:
        meta = {
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "opencv": cv2.__version__,
            "date": datetime.date.today().isoformat(),
            "side": SIDE,
            "pairs": args.pairs,
            "seed": args.seed,
            "images": [str(p.relative_to(args.data)) for _, _, p in images],
        }
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
