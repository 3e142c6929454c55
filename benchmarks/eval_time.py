"""Time of ``bta-core eval`` (paper + reuse protocols): the current code vs the pre-change one.

The new path runs on N images (``--limit`` per data set, default: all splits, ~700 images). The
reference is the evaluation package as committed at ``--ref`` (default: the commit before the
view cache; read with ``git show``, imported in this process as ``bta_core._evaluation_ref``). It is too slow for N
images on a small CPU (measured > 25 min for the paper protocol alone), so it runs on
``--old-limit`` images per data set and every stage is extrapolated linearly: decode, paper and
reuse by the number of evaluated images, calibration by the number of calibration images (all
of its cost is per image: backbone forward passes and hashes of every view). The new path is
also timed on that small set, so one ratio is measured without extrapolation.

    python benchmarks/eval_time.py --json benchmarks/eval_time_cpu.json

Prints one line per run and stage, then the ratios; writes everything to ``--json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PRE_CHANGE = "b39b3cb"  # the last commit before the view cache (issue 16, part 4)
EVAL_FILES = ("__init__", "metrics", "pairs", "methods", "datasets", "report", "calibrate")


def load_reference(ref: str, tmp: Path):
    """The evaluation package of git revision ``ref`` as ``bta_core._evaluation_ref``."""
    pkg = tmp / "_evaluation_ref"
    pkg.mkdir()
    for name in (*EVAL_FILES, "protocols"):
        src = f"{ref}:src/bta_core/evaluation/{name}.py"
        text = subprocess.run(
            ["git", "show", src], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        (pkg / f"{name}.py").write_text(text)
    spec = importlib.util.spec_from_file_location(
        "bta_core._evaluation_ref", pkg / "__init__.py", submodule_search_locations=[str(pkg)]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bta_core._evaluation_ref"] = mod
    spec.loader.exec_module(mod)
    return importlib.import_module("bta_core._evaluation_ref.protocols")


def timed(fn, *args, **kwargs):
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - w, time.process_time() - c


def run_stages(proto, data, args, limit: int, seeds) -> dict:
    """decode / calibration / paper / reuse of one evaluation package, timed stage by stage."""
    methods = proto.build_methods([args.checkpoint], args.baselines.split(","), "cpu")
    size = 224
    split = args.split or None
    stages, n_cal = {}, 0

    def note(name: str, w: float, c: float) -> None:
        stages[name] = (w, c)
        print(f"  {proto.__name__} {name}: {w:.1f} s wall, {c:.1f} s CPU", flush=True)

    ed, w, c = timed(proto.load_eval_data, data, split, decode_size=2 * size, limit=limit)
    note("decode", w, c)
    cal = proto.load_eval_data(data, "val", decode_size=2 * size, limit=limit)
    n_cal = len(cal.groups)
    del cal
    quiet = {"log": lambda _m: None}
    _, w, c = timed(proto.calibrate_methods, methods, data, "val", size, limit, **quiet)
    note("calibration", w, c)
    _, w, c = timed(proto.run_paper, ed, methods, size, seeds, **quiet)
    note("paper", w, c)
    _, w, c = timed(proto.run_reuse, ed, methods, size, **quiet)
    note("reuse", w, c)
    return {
        "n_images": len(ed.groups),
        "n_calibration_images": n_cal,
        "wall_s": {k: round(v[0], 2) for k, v in stages.items()},
        "cpu_s": {k: round(v[1], 2) for k, v in stages.items()},
    }


def extrapolate(small: dict, n: int, n_cal: int) -> dict:
    scale = {
        "decode": n / small["n_images"],
        "paper": n / small["n_images"],
        "reuse": n / small["n_images"],
        "calibration": n_cal / small["n_calibration_images"],
    }
    return {
        kind: {k: round(v * scale[k], 1) for k, v in small[kind].items()}
        for kind in ("wall_s", "cpu_s")
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=sorted(str(f) for f in DATA.glob("*/splits.csv")))
    p.add_argument("--split", default="", help="'' = all rows of splits.csv")
    p.add_argument("--limit", type=int, default=234, help="images per data set, new path")
    p.add_argument("--old-limit", type=int, default=4, help="images per data set, old path")
    p.add_argument("--resamples", type=int, default=10)
    p.add_argument("--checkpoint", default=str(ROOT / "src/bta_core/models/default.safetensors"))
    p.add_argument("--baselines", default="phash,crhash,backbone-cosine")
    p.add_argument("--ref", default=PRE_CHANGE, help="git revision of the old evaluation code")
    p.add_argument("--skip-old", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    seeds = tuple(range(args.resamples))
    from bta_core.evaluation import protocols as new

    res: dict = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "data": args.data,
        "split": args.split or "all",
        "methods": ["default checkpoint", *args.baselines.split(",")],
        "protocols": ["paper", "reuse"],
        "resamples": args.resamples,
        "old_path": f"git {args.ref} evaluation package, run on --old-limit images per data set, "
        "stages extrapolated linearly",
    }

    def show(label: str, r: dict) -> None:
        st = ", ".join(f"{k} {v:.1f}" for k, v in r["wall_s"].items())
        total = sum(r["wall_s"].values())
        print(f"{label}: {r.get('n_images', '')} images, {total:.1f} s wall ({st})", flush=True)

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n")

    if not args.skip_old:
        with tempfile.TemporaryDirectory() as tmp:
            old = load_reference(args.ref, Path(tmp))
            res["new_small"] = run_stages(new, args.data, args, args.old_limit, seeds)
            show("new, small", res["new_small"])
            save()
            res["old_small"] = run_stages(old, args.data, args, args.old_limit, seeds)
            show("old, small", res["old_small"])
            save()
    res["new"] = run_stages(new, args.data, args, args.limit, seeds)
    show("new", res["new"])
    for kind in ("wall_s", "cpu_s"):
        res["new"][f"total_{kind}"] = round(sum(res["new"][kind].values()), 1)
    if not args.skip_old:
        small_ratio = sum(res["old_small"]["wall_s"].values()) / sum(
            res["new_small"]["wall_s"].values()
        )
        est = extrapolate(
            res["old_small"], res["new"]["n_images"], res["new"]["n_calibration_images"]
        )
        res["old_extrapolated"] = {
            **est,
            "n_images": res["new"]["n_images"],
            "total_wall_s": round(sum(est["wall_s"].values()), 1),
            "total_cpu_s": round(sum(est["cpu_s"].values()), 1),
        }
        show("old, extrapolated", res["old_extrapolated"])
        res["ratio_small_measured"] = round(small_ratio, 2)
        res["ratio_wall"] = round(
            res["old_extrapolated"]["total_wall_s"] / res["new"]["total_wall_s"], 1
        )
        res["ratio_cpu"] = round(
            res["old_extrapolated"]["total_cpu_s"] / res["new"]["total_cpu_s"], 1
        )
        print(
            f"ratio old/new: {res['ratio_wall']}x wall, {res['ratio_cpu']}x CPU "
            f"({res['ratio_small_measured']}x measured at {res['new_small']['n_images']} images)"
        )
    save()
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
