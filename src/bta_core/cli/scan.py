"""``bta-core scan``: find reused images in folders of TIFF/PNG/JPEG files."""

from __future__ import annotations

import argparse
import sys

from ..checkpoint import load_checkpoint
from ..device import DEVICE_CHOICES, describe_device, get_device
from ..output_files import check_out_dir
from ..scan import merge, scan
from ..scan.cache import default_cache_dir
from ..scan.candidates import DEFAULT_FAISS_ABOVE, DEFAULT_FAISS_K, DEFAULT_MAX_PAIRS, DEFAULT_TOP_K
from ..scan.pipeline import DEFAULT_VERIFY_PER_IMAGE
from ..verdict import DEFAULT_PHASH_MAX_DISTANCE


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help)
    parser.add_argument("folders", nargs="*", metavar="FOLDER", help="folders to scan (recursive)")
    parser.add_argument(
        "--reference",
        nargs="+",
        action="extend",
        default=[],
        metavar="FOLDER",
        help="reference folders: pair every scanned image with these (never reference x reference)",
    )
    parser.add_argument(
        "--index",
        default=None,
        metavar="INDEX",
        help="reference index (bta-core index build): pair each image with its --faiss-k "
        "nearest indexed images",
    )
    parser.add_argument(
        "--checkpoint", default=None, help="model checkpoint; none given = the bundled model"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="decision threshold; none given = the model's calibrated one",
    )
    parser.add_argument(
        "--top", type=int, default=DEFAULT_TOP_K, help="always list the K best pairs"
    )
    parser.add_argument(
        "--planes", action="store_true", help="each plane/channel of a stack is its own image"
    )
    parser.add_argument("--tta", default=None, choices=["d4"], help="max over 8 rotations/flips")
    parser.add_argument("--out", default="bta-scan", help="output folder")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="threads decoding images")
    parser.add_argument(
        "--cache", default=None, help=f"embedding cache folder; none given = {default_cache_dir()}"
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="do not read or write the embedding cache"
    )
    parser.add_argument(
        "--cross-only", action="store_true", help="only pair FOLDER images with references"
    )
    parser.add_argument(
        "--shard", default=None, metavar="I/N", help="embed shard I of N (0-based) into --out"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="SHARD_DIR",
        help="combine shard folders and score",
    )
    parser.add_argument(
        "--allow-partial", action="store_true", help="merge even if some shards are missing"
    )
    parser.add_argument(
        "--faiss-above",
        type=int,
        default=DEFAULT_FAISS_ABOVE,
        metavar="N",
        help="above N images, take candidate pairs from FAISS nearest neighbours",
    )
    parser.add_argument(
        "--faiss-k", type=int, default=DEFAULT_FAISS_K, help="FAISS neighbours per image"
    )
    parser.add_argument(
        "--max-pairs", type=int, default=DEFAULT_MAX_PAIRS, help="cap on pairs above threshold"
    )
    parser.add_argument("--report-pairs", type=int, default=200, help="pairs shown in report.html")
    parser.add_argument(
        "--match-top", type=int, default=0, metavar="N", help="match overlay for the N best pairs"
    )
    parser.add_argument(
        "--verify-per-image",
        type=int,
        default=DEFAULT_VERIFY_PER_IMAGE,
        metavar="K",
        help="check the K best candidates of every image by keypoint matching; a verified "
        "overlap is 'same' (0: off; about 0.1-0.3 s per pair on a CPU)",
    )
    parser.add_argument(
        "--phash-max-distance",
        type=int,
        default=DEFAULT_PHASH_MAX_DISTANCE,
        metavar="D",
        help="perceptual-hash distance (of 256 bits, best of 8 rotations/flips) still a near copy",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    return parser


def main(args: argparse.Namespace) -> int:
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    check_out_dir(args.out)  # a wrong --out fails before the model is loaded
    device = get_device(args.device)
    model = load_checkpoint(args.checkpoint, device=device)
    say(
        f"bta-core scan: model {model.checkpoint_path or 'in-memory model'} on {describe_device(device)}"
    )
    common = dict(
        threshold=args.threshold,
        top_k=args.top,
        within=not args.cross_only,
        out_dir=args.out,
        faiss_above=args.faiss_above,
        faiss_k=args.faiss_k,
        max_pairs=args.max_pairs,
        report_pairs=args.report_pairs,
        match_top=args.match_top,
        verify_per_image=args.verify_per_image,
        phash_max_distance=args.phash_max_distance,
        progress_bar=not args.quiet,
    )
    if args.merge:
        if args.folders or args.shard:
            raise ValueError("--merge takes shard folders only (no FOLDER, no --shard)")
        result = merge(args.merge, model, allow_partial=args.allow_partial, **common)
    else:
        if not args.folders:
            raise ValueError("give at least one FOLDER to scan (or --merge SHARD_DIR...)")
        cache = None if args.no_cache else (args.cache or "auto")
        result = scan(
            args.folders,
            args.reference,
            model,
            planes=args.planes,
            tta=args.tta,
            cache_dir=cache,
            shard=args.shard,
            batch_size=args.batch_size,
            workers=args.workers,
            index=args.index,
            **common,
        )
    s = result.stats
    if args.shard:
        say(
            f"shard {args.shard}: {s['n_images']} images ({s['n_embedded']} embedded, "
            f"{s['n_cached']} cached), {len(result.skipped)} skipped -> {args.out}"
        )
        return 0
    say(
        f"{s['n_images']} images ({s.get('n_embedded', 0)} embedded, {s.get('n_cached', 0)} from cache), "
        f"{len(result.skipped)} skipped, {s['n_pairs_scored']} pairs scored ({s['method']}), "
        f"{s['n_checked']} verified by keypoints: {s['n_same']} same, {s['n_suspect']} suspect "
        f"(model score >= {s['threshold']:.3f} only)"
    )
    for p in result.pairs[:5]:
        say(f"  {p.verdict:<9} {p.decided_by:<17} {p.score:.4f}  {p.path_a}  <->  {p.path_b}")
    say(f"wrote {args.out}/pairs.csv, pairs.json, report.html, skipped.csv")
    return 0
