"""Local edits in a verified overlap: how often a cloned patch is reported, and a clean copy is not.

For real ``val`` images of each data set in ../shared/data (the detector's two thresholds were
chosen on ``test`` images, so these are new to it), B is the image under one manipulation, once
as it is and once with a square patch (1/8 of the shorter side) cloned from elsewhere in the
image pasted at a random place first. ``match_images(A, B)`` must verify the overlap; then
``MatchResult.local_edits`` either reports cells (``flagged``) or not. A flagged retouched copy
counts as ``localised`` when the reported box meets the pasted patch. Background pasted on
background changes nothing visible, so not every paste can be found.

    python benchmarks/local_edits.py --per-dataset 20 --out benchmarks/local_edits_cpu.json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bta_core.dihedral import D4_NAMES, apply_d4
from bta_core.imageio import load_image
from bta_core.match import match_images

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = ("bccd", "dsb2018", "phase_culture")


def _jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray((a * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf)).astype(np.float32) / 255


def _half(a: np.ndarray) -> np.ndarray:
    img = Image.fromarray((a * 255).round().astype(np.uint8))
    return np.asarray(img.resize((a.shape[1] // 2, a.shape[0] // 2), Image.BILINEAR)) / 255.0


def manipulations(rng: np.random.Generator) -> dict:
    return {
        "re-save": lambda a: a,
        "jpeg50": lambda a: _jpeg(a, 50),
        "jpeg30": lambda a: _jpeg(a, 30),
        "noise": lambda a: np.clip(a + rng.normal(0, 0.02, a.shape), 0, 1),
        "gamma0.7": lambda a: a**0.7,
        "half size": _half,
        "rot90": lambda a: apply_d4(a, D4_NAMES.index("rot90")),
        "crop": lambda a: a[a.shape[0] // 8 :, a.shape[1] // 6 :],
    }


def paste_patch(a: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple]:
    """``a`` with a square of itself pasted elsewhere; returns it and the pasted box in A."""
    h, w = a.shape[:2]
    s = max(16, min(h, w) // 8)
    y0, x0 = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
    y1, x1 = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
    b = a.copy()
    b[y1 : y1 + s, x1 : x1 + s] = a[y0 : y0 + s, x0 : x0 + s]
    return b, (x1, y1, x1 + s, y1 + s)


def _meets(box: tuple, patch: tuple) -> bool:
    return box[0] < patch[2] and box[2] > patch[0] and box[1] < patch[3] and box[3] > patch[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-dataset", type=int, default=20)
    p.add_argument("--split", default="val")
    p.add_argument("--out", default=None)
    p.add_argument(
        "--min-difference",
        type=float,
        default=None,
        help="try another EDIT_MIN_DIFFERENCE (tuning on the test split only)",
    )
    args = p.parse_args(argv)
    if args.min_difference is not None:
        import bta_core.match.edits as edits

        edits.EDIT_MIN_DIFFERENCE = args.min_difference
    rng = np.random.default_rng(0)
    manips = manipulations(rng)
    rows: dict[str, dict] = {
        m: {
            "copies": 0,
            "clean_flagged": 0,
            "retouched": 0,
            "retouched_flagged": 0,
            "localised": 0,
            "not_verified": 0,
        }
        for m in manips
    }
    per_ds: dict[str, dict] = {
        d: {"retouched": 0, "flagged": 0, "clean": 0, "clean_flagged": 0} for d in DATASETS
    }
    t0, n_match = time.perf_counter(), 0
    for ds in DATASETS:
        with open(DATA / ds / "splits.csv", newline="", encoding="utf-8") as fh:
            files = [r["file"] for r in csv.DictReader(fh) if r["split"] == args.split]
        for f in files[: args.per_dataset]:
            a = load_image(DATA / ds / f)
            for name, fn in manips.items():
                for retouched in (False, True):
                    src, patch = paste_patch(a, rng) if retouched else (a, None)
                    r = match_images(a, np.ascontiguousarray(fn(src), dtype=np.float32))
                    n_match += 1
                    row = rows[name]
                    if not r.found or r.local_edits is None:
                        row["not_verified"] += 1
                        continue
                    flagged = bool(r.local_edits.cells)
                    if retouched:
                        row["retouched"] += 1
                        row["retouched_flagged"] += flagged
                        row["localised"] += flagged and _meets(r.local_edits.box_a, patch)
                        per_ds[ds]["retouched"] += 1
                        per_ds[ds]["flagged"] += flagged
                    else:
                        row["copies"] += 1
                        row["clean_flagged"] += flagged
                        per_ds[ds]["clean"] += 1
                        per_ds[ds]["clean_flagged"] += flagged
    seconds = time.perf_counter() - t0
    total = {k: sum(r[k] for r in rows.values()) for k in next(iter(rows.values()))}
    for name, r in {**rows, "all": total}.items():
        print(
            f"{name:10s} clean copies flagged {r['clean_flagged']}/{r['copies']}  retouched "
            f"flagged {r['retouched_flagged']}/{r['retouched']} (localised {r['localised']})"
            f"  not verified {r['not_verified']}"
        )
    print({d: v for d, v in per_ds.items()}, f"{seconds / max(n_match, 1):.3f} s per match")
    if args.out:
        doc = {
            "benchmark": "local_edits",
            "machine": f"{platform.node()} {platform.machine()}, CPU",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "split": args.split,
            "min_difference": args.min_difference,
            "per_dataset": args.per_dataset,
            "manipulations": rows,
            "all": total,
            "by_dataset": per_ds,
            "seconds_per_match": round(seconds / max(n_match, 1), 3),
        }
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
