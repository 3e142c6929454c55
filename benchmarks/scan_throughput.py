"""Scan throughput: embedding images/s from files, and all-pairs scoring pairs/s.

Two measurements in one run, on the auto-picked device (``--device``):

1. **Folder scan**: ``bta_core.scan.scan`` on ``--n-images`` real image files (no cache):
   decode + preprocess + model (images/s), then all pairs scored and the outputs written; the
   wall time is the issue's "200-image folder scanned in under 60 s" figure.
2. **Pair scoring**: ``--n-embeddings`` random embeddings of size ``--dim`` through the paper's
   head (512-256-64-16-1): ours (split first layer, ``score_matrix``, one direction and
   symmetric) vs the concatenated-pairs head (``concat_score_matrix``, the paper code's
   ``forward_all_pairs``), fed in row blocks so memory stays bounded. The concatenated head is
   timed on ``--concat-rows`` rows (all columns) and reported per pair.

bf16 autocast on CUDA; CUDA is synchronised around every timed region. Prints a table and
writes JSON (``--out``).

    python benchmarks/scan_throughput.py --out benchmarks/scan_cpu.json
    python benchmarks/scan_throughput.py --n-embeddings 4096 --dim 4096 --out scan_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from bta_core.device import autocast, describe_device, get_device
from bta_core.heads import PAPER_HEAD_SIZES, SimilarityHead, symmetric_score_matrix
from bta_core.imageio import find_images

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "bccd" / "images"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (after one warm-up call)."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_folder_scan(args: argparse.Namespace, device: torch.device) -> dict:
    """Scan a folder of ``n_images`` real files end to end (no cache): embed, score, write."""
    from bta_core.checkpoint import load_checkpoint
    from bta_core.model import BTAModel, ModelConfig
    from bta_core.scan import scan

    files = find_images(args.images)[: args.n_images]
    if not files:
        raise SystemExit(f"no images found in {args.images}")
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint, device=device)
    else:
        cfg = ModelConfig.for_backbone(
            args.backbone, projector_dim=args.projector_dim, image_size=args.image_size
        )
        cfg.backbone_weights = args.backbone_weights
        model = BTAModel(cfg).to(device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for f in files:
            os.symlink(os.path.abspath(f), folder / f.name)
        # warm-up on a few files so one-off start-up costs (kernels, threads) are not counted
        warm = Path(tmp) / "warm"
        warm.mkdir()
        for f in files[:4]:
            os.symlink(os.path.abspath(f), warm / f.name)
        scan(
            warm,
            model=model,
            cache_dir=None,
            batch_size=args.batch_size,
            workers=args.workers,
            verify_per_image=0,
        )
        _sync(device)
        t0 = time.perf_counter()
        result = scan(
            folder,
            model=model,
            cache_dir=None,
            out_dir=Path(tmp) / "out",
            batch_size=args.batch_size,
            workers=args.workers,
            tta=args.tta,
            verify_per_image=0,  # keypoint verification is timed by scan_quality.py
        )
        _sync(device)
        wall = time.perf_counter() - t0
    s = result.stats
    return {
        "n_images": s["n_images"],
        "backbone": model.config.backbone,
        "image_size": model.config.image_size,
        "embed_dim": model.embed_dim,
        "tta": args.tta,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "seconds_total": round(wall, 3),
        "seconds_hash": s["seconds_hash"],
        "seconds_embed": s["seconds_embed"],
        "seconds_score": s["seconds_score"],
        "seconds_write": s.get("seconds_write"),
        "images_per_s": round(s["n_images"] / max(s["seconds_embed"], 1e-9), 2),
        "n_pairs": s["n_pairs_scored"],
    }


def bench_pair_scoring(args: argparse.Namespace, device: torch.device) -> dict:
    """pairs/s of our split head vs the concatenated head on the same random embeddings."""
    torch.manual_seed(0)
    n, d = args.n_embeddings, args.dim
    head = SimilarityHead(d, PAPER_HEAD_SIZES).to(device).eval()
    z = torch.randn(n, d, device=device)
    amp = autocast(device)
    chunk = args.chunk_pairs

    def ours_one() -> None:
        with torch.inference_mode(), amp:
            head.score_matrix(z, z, chunk_pairs=chunk)

    def ours_sym() -> None:
        with torch.inference_mode(), amp:
            symmetric_score_matrix(head, z, z, chunk_pairs=chunk)

    rows = min(args.concat_rows or n, n)
    block = max(1, args.concat_block_pairs // n)

    def concat() -> None:
        with torch.inference_mode(), amp:
            for i in range(0, rows, block):
                head.concat_score_matrix(z[i : min(rows, i + block)], z)

    t_one = _timed(ours_one, device, args.repeats)
    t_sym = _timed(ours_sym, device, args.repeats)
    t_cat = _timed(concat, device, args.repeats)
    with torch.inference_mode(), amp:  # the two ways agree
        a = head.score_matrix(z[:64], z[:64]).float()
        b = head.concat_score_matrix(z[:64], z[:64]).float()
    max_diff = float((a - b).abs().max())
    ours = n * n / t_one
    cat = rows * n / t_cat
    return {
        "n_embeddings": n,
        "dim": d,
        "head": list(PAPER_HEAD_SIZES),
        "chunk_pairs": chunk,
        "concat_block_pairs": args.concat_block_pairs,
        "ours_pairs_per_s": ours,
        "ours_symmetric_pairs_per_s": n * n / t_sym,
        "concat_pairs_per_s": cat,
        "concat_rows_timed": rows,
        "speedup": ours / cat,
        "max_abs_diff_64x64": max_diff,
        "seconds_ours": t_one,
        "seconds_ours_symmetric": t_sym,
        "seconds_concat": t_cat,
    }


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder of real images")
    p.add_argument("--n-images", type=int, default=200)
    p.add_argument("--checkpoint", default=None, help="model to scan with (default: random head)")
    p.add_argument("--backbone", default="efficientnet-lite0")
    p.add_argument("--backbone-weights", default=None, help="local weights file for the backbone")
    p.add_argument("--projector-dim", type=int, default=2048)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tta", default=None, choices=["d4"])
    p.add_argument(
        "--n-embeddings", type=int, default=None, help="default 4096 on CUDA, 1024 on CPU"
    )
    p.add_argument("--dim", type=int, default=None, help="default 4096 on CUDA, 2048 on CPU")
    p.add_argument("--concat-rows", type=int, default=None, help="rows timed for the concat head")
    p.add_argument("--chunk-pairs", type=int, default=1 << 21, help="pairs per chunk (ours)")
    p.add_argument(
        "--concat-block-pairs", type=int, default=1 << 18, help="pairs per block (concat head)"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-scan", action="store_true")
    p.add_argument("--skip-pairs", action="store_true")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    device = get_device(args.device)
    cuda = device.type == "cuda"
    args.n_embeddings = args.n_embeddings or (4096 if cuda else 1024)
    args.dim = args.dim or (4096 if cuda else 2048)
    if args.concat_rows is None:
        args.concat_rows = args.n_embeddings if cuda else 64
    out = {
        "device": describe_device(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "command": " ".join(
            [Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])
        ),
    }
    if not args.skip_scan:
        out["folder_scan"] = r = bench_folder_scan(args, device)
        print(
            f"folder scan ({r['n_images']} images, {r['backbone']} @ {r['image_size']} px): "
            f"{r['seconds_total']:.1f} s total, embed {r['images_per_s']:.1f} images/s, "
            f"score {r['n_pairs']} pairs in {r['seconds_score']:.2f} s"
        )
    if not args.skip_pairs:
        out["pair_scoring"] = r = bench_pair_scoring(args, device)
        print(f"pair scoring, {r['n_embeddings']} embeddings of size {r['dim']} on {out['device']}")
        print(f"  {'method':<28}{'pairs/s':>14}")
        print(f"  {'ours (split head)':<28}{r['ours_pairs_per_s']:>14,.0f}")
        print(f"  {'ours, symmetric (within a set)':<28}{r['ours_symmetric_pairs_per_s']:>14,.0f}")
        print(f"  {'concatenated head':<28}{r['concat_pairs_per_s']:>14,.0f}")
        print(f"  speedup {r['speedup']:.1f}x (max |diff| {r['max_abs_diff_64x64']:.2e})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
