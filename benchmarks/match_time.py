"""Time per pair of ``bta_core.match.match_images`` on 512x512 crops of real DSB2018 images.

Cases (``--pairs`` each):

* ``reuse``: two 512x512 crops of one image, shifted by 64-192 px, the second rotated/flipped by
  a random dihedral op (the keypoint path; the usual case for a flagged pair).
* ``unrelated``: crops of two different images (keypoints fail, so the 8-orientation
  correlation search runs too: the slowest path without a model).
* with ``--model``, efficientnet-lite0 at 224 px with a random head (speed does not depend on
  training): ``reuse+model`` adds the pair score (B in 8 orientations); ``unrelated+model``
  also the model tile heatmaps (computed when no region is found: ~150 crops embedded).

Prints a table and writes JSON:

    python benchmarks/match_time.py --out benchmarks/match_cpu.json [--model]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from bta_core.imageio import load_image
from bta_core.match import D4_NAMES, match_images

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "dsb2018"
SIDE = 512


def big_images(data: Path) -> list[Path]:
    """DSB images with both sides >= 512 + 64 px of room (brightfield and large fluorescence)."""
    with open(data / "splits.csv") as fh:
        rows = list(csv.DictReader(fh))
    return sorted(
        data / r["file"] for r in rows if int(r["width"]) >= SIDE + 64 and int(r["height"]) >= SIDE
    )


def crop(img: np.ndarray, y: int, x: int) -> np.ndarray:
    return np.ascontiguousarray(img[y : y + SIDE, x : x + SIDE])


def reuse_pair(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    h, w = img.shape[:2]
    dy_max, dx_max = min(192, h - SIDE), min(192, w - SIDE)
    dy = int(rng.integers(0, dy_max + 1)) if dy_max > 0 else 0
    dx = int(rng.integers(max(0, 64 - dy), dx_max + 1)) if dx_max > 0 else 0
    a = crop(img, 0, 0)
    orient = int(rng.integers(8))
    b = crop(img, dy, dx)
    b = np.rot90(np.fliplr(b) if orient >= 4 else b, orient % 4)
    return a, np.ascontiguousarray(b), orient


def summarise(times: list[float]) -> dict:
    return {
        "n": len(times),
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "p90_s": float(np.percentile(times, 90)),
        "max_s": max(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--model", action="store_true", help="also time with a 224 px lite0 model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    files = big_images(args.data)
    picks = [files[int(i)] for i in rng.choice(len(files), 2 * args.pairs, replace=False)]
    images = [load_image(p) for p in picks]
    match_images(crop(images[0], 0, 0), crop(images[1], 0, 0))  # warm-up (imports, FFT plans)

    results: dict[str, dict] = {}
    times, found, right = [], 0, 0
    for img in images[: args.pairs]:
        a, b, orient = reuse_pair(img, rng)
        t0 = time.perf_counter()
        r = match_images(a, b)
        times.append(time.perf_counter() - t0)
        found += r.found
        right += r.found and r.transform.dihedral == D4_NAMES[orient]
    results["reuse"] = {**summarise(times), "found": found, "dihedral_right": right}

    times, found = [], 0
    for i in range(args.pairs):
        a, b = crop(images[i], 0, 0), crop(images[args.pairs + i], 0, 0)
        t0 = time.perf_counter()
        r = match_images(a, b)
        times.append(time.perf_counter() - t0)
        found += r.found
    results["unrelated"] = {**summarise(times), "found": found}

    if args.model:
        import torch

        from bta_core.model import BTAModel, ModelConfig

        torch.manual_seed(0)
        model = BTAModel(ModelConfig.for_backbone("efficientnet-lite0", image_size=224)).eval()
        a, b, _ = reuse_pair(images[0], rng)
        match_images(a, b, model=model)  # warm-up
        n_model = max(3, args.pairs // 3)
        times = []
        for img in images[:n_model]:
            a, b, _ = reuse_pair(img, rng)
            t0 = time.perf_counter()
            match_images(a, b, model=model)
            times.append(time.perf_counter() - t0)
        results["reuse+model"] = summarise(times)
        times = []
        for i in range(n_model):
            a, b = crop(images[i], 0, 0), crop(images[args.pairs + i], 0, 0)
            t0 = time.perf_counter()
            match_images(a, b, model=model)
            times.append(time.perf_counter() - t0)
        results["unrelated+model"] = summarise(times)
        results["unrelated+model"]["threads"] = torch.get_num_threads()

    print(f"match_images, {SIDE}x{SIDE} crops of real DSB2018 images, CPU ({os.cpu_count()} cores)")
    print(f"{'case':<17}{'n':>4}{'median s':>10}{'mean s':>9}{'p90 s':>8}{'max s':>8}  found")
    for case, r in results.items():
        extra = f"{r.get('found', '')}" + (
            f" (dihedral right {r['dihedral_right']})" if "dihedral_right" in r else ""
        )
        print(
            f"{case:<17}{r['n']:>4}{r['median_s']:>10.3f}{r['mean_s']:>9.3f}{r['p90_s']:>8.3f}"
            f"{r['max_s']:>8.3f}  {extra}"
        )
    if args.out:
        meta = {
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "side": SIDE,
            "pairs": args.pairs,
            "seed": args.seed,
            "images": [p.name for p in picks],
        }
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
