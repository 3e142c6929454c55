"""``bta-core scan``: find reused images in folders of TIFF/PNG/JPEG files."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from functools import partial
from pathlib import Path

from ..checkpoint import load_checkpoint
from ..device import describe_device, get_device
from ..dihedral import describe_d4
from ..distributed import Rank, rank_device, torchrun_rank
from ..fingerprint import PHASH_BITS
from ..output_files import check_out_dir, json_dumps
from ..scan import ScanResult, merge, scan
from ..scan.cache import default_cache_dir
from ..scan.candidates import DEFAULT_FAISS_ABOVE, DEFAULT_FAISS_K, DEFAULT_MAX_PAIRS, DEFAULT_TOP_K
from ..scan.groups import groups_text, listed_groups
from ..scan.outputs import OUTPUT_FILES, pair_dicts
from ..scan.pipeline import DEFAULT_VERIFY_PER_IMAGE
from ..scan.ranks import scan_ranks
from ..scan.report import collection_fact, common_root, display_name, summary_text
from ..verdict import DEFAULT_PHASH_MAX_DISTANCE
from ._console import shown
from ._help import UsageError, add_device, add_quiet, float_in, int_in
from ._progress import StageBars

CONSOLE_PAIRS = 10
"""Pairs worth reviewing listed on the console (all of them are in pairs.csv and the report)."""
CONSOLE_GROUPS = 5
"""Groups of 3+ copies the console lists by name (all are in pairs.csv and the report)."""
CONSOLE_SKIPPED = 10
"""Skipped files named on stderr, each with its problem (all are in skipped.csv)."""
JSON_PAIRS = 20
"""Pairs worth reviewing in the ``--json`` summary."""


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help)
    parser.add_argument(
        "folders",
        nargs="*",
        metavar="FOLDER",
        help="folders (searched recursively) or image files to scan",
    )
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
        type=float_in(0, 1),
        default=None,
        help="model-score threshold of 'suspect'; none given = the model's calibrated one",
    )
    parser.add_argument(
        "--top",
        type=int_in(0),
        default=DEFAULT_TOP_K,
        metavar="K",
        help="always list the K best model scores in pairs.csv",
    )
    parser.add_argument(
        "--planes", action="store_true", help="each plane/channel of a stack is its own image"
    )
    parser.add_argument(
        "--within-files",
        action="store_true",
        help="with --planes, also pair the planes/channels of one file with each other (finds a "
        "plane reused inside one stack; the frames of an ordinary stack look alike, so off, only "
        "planes of different files are paired)",
    )
    parser.add_argument(
        "--tta",
        default=None,
        choices=["d4"],
        help="model score: best over the 8 rotations/flips of either image",
    )
    parser.add_argument("--out", default="bta-scan", help="output folder")
    add_device(parser)
    parser.add_argument("--batch-size", type=int_in(1), default=32, help="images per model batch")
    parser.add_argument(
        "--workers",
        type=int_in(0),
        default=2,
        help="decoding workers (processes for 64 or more files, else threads)",
    )
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
        type=int_in(0),
        default=DEFAULT_FAISS_ABOVE,
        metavar="N",
        help="above N images, take candidate pairs from FAISS nearest neighbours",
    )
    parser.add_argument(
        "--faiss-k", type=int_in(1), default=DEFAULT_FAISS_K, help="FAISS neighbours per image"
    )
    parser.add_argument(
        "--max-pairs",
        type=int_in(1),
        default=DEFAULT_MAX_PAIRS,
        help="cap on pairs above threshold",
    )
    parser.add_argument(
        "--report-pairs",
        type=int_in(0),
        default=0,
        metavar="N",
        help="report.html shows every 'same' and 'suspect' pair; N > 0 also shows the N best "
        "of the other listed pairs ('different')",
    )
    parser.add_argument(
        "--match-top",
        type=int_in(0),
        default=10,
        metavar="N",
        help="report.html shows where the images match (figure of the located region) for the "
        "N best 'same'/'suspect' pairs (0: none; about 1 s per pair on a CPU)",
    )
    parser.add_argument(
        "--verify-per-image",
        type=int_in(0),
        default=DEFAULT_VERIFY_PER_IMAGE,
        metavar="K",
        help="check the K best model candidates of every FOLDER image by keypoint matching, plus "
        "its K partners with the most local-feature votes (reference and index images add no "
        "checks of their own); a verified overlap is 'same' (0: off; about 0.05-0.3 s per pair "
        "on a CPU)",
    )
    parser.add_argument(
        "--collection-threshold",
        type=float_in(-1, 1),
        default=None,
        metavar="T",
        help="collection similarity a model-only pair must also reach to be 'suspect' "
        "(default: the model's calibrated one; see --no-collection)",
    )
    parser.add_argument(
        "--no-collection",
        dest="collection",
        action="store_false",
        help="let the model score alone make a pair 'suspect'; by default (with 16 or more "
        "images and a checkpoint calibrated for it) the pair must also stand out after whitening "
        "the embeddings with the scanned images' own statistics (collection_similarity in "
        "pairs.csv), so that look-alikes of one lab or camera are not flagged",
    )
    parser.add_argument(
        "--no-keypoint-candidates",
        dest="keypoint_candidates",
        action="store_false",
        help="verify only the model's K best candidates; by default each FOLDER image's K "
        "partners with the most local-feature (SIFT) votes are verified too, which finds crops "
        "and heavy edits (about 0.07 s per image on a CPU)",
    )
    parser.add_argument(
        "--phash-max-distance",
        type=int_in(0, PHASH_BITS),
        default=DEFAULT_PHASH_MAX_DISTANCE,
        metavar="D",
        help="perceptual-hash distance (of 256 bits, best of 8 rotations/flips) still a near copy",
    )
    parser.add_argument(
        "--within-figures",
        action="store_true",
        help="also look for panels repeated inside each scanned image (as 'bta-core match FIG'; "
        "about 1 s per figure of 4-6 panels on a CPU): report.html and OUT/within_figures.json",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON summary on stdout: counts, output files, the best pairs with "
        "their verdict and evidence (progress stays on stderr)",
    )
    add_quiet(parser)
    return parser


def _check_folders(folders: list[str]) -> None:
    """A FOLDER that is missing or holds no image file is an error (exit 1), found before the
    model is loaded; unreadable files inside a folder are skipped and reported as usual."""
    from ..imageio import find_images

    for folder in folders:
        if not find_images(folder):
            raise FileNotFoundError(f"no images found in {folder}")


def _torchrun_rank(args: argparse.Namespace) -> Rank | None:
    """This process's rank when run under torchrun (only rank 0 talks); clear errors for the
    options a torchrun scan does not take."""
    rank = torchrun_rank()
    if rank is None:
        return None
    for flag, value in (("--shard", args.shard), ("--merge", args.merge), ("--index", args.index)):
        if value:
            raise ValueError(
                f"{flag} cannot be used under torchrun: each of the {rank.world} ranks already "
                "embeds shard RANK/WORLD_SIZE and rank 0 merges them; drop "
                f"{flag} or run without torchrun"
            )
    if not rank.is_main:
        args.quiet, args.json = True, False
    return rank


def interrupted_note(args: argparse.Namespace) -> str:
    """What a Ctrl-C left behind (printed by the CLI's interrupt handler)."""
    if args.merge:
        kept = "the shard folders are unchanged, so the same command starts again"
    elif args.no_cache:
        kept = "nothing was cached (--no-cache)"
    else:
        kept = "the embeddings and keypoint checks finished so far are cached, so the same command resumes"
    return (
        f"{kept}; {args.out} was not changed (its outputs, if any, are those of the previous run)"
    )


def main(args: argparse.Namespace) -> int:
    if args.merge and (args.folders or args.shard):
        raise UsageError("--merge takes shard folders only (no FOLDER, no --shard)")
    if not args.merge and not args.folders:
        raise UsageError("give at least one FOLDER to scan (or --merge SHARD_DIR...)")
    if args.index and args.tta:
        raise UsageError("--index does not combine with --tta d4 (one embedding per image)")
    if args.index and args.shard:
        raise UsageError(
            "--index does not combine with --shard (a shard only embeds, and --merge has no "
            "index): scan the whole folder with --index, or shard without it"
        )
    if args.index and not Path(args.index).exists():
        raise FileNotFoundError(
            f"{args.index}: not found (build an index with 'bta-core index build')"
        )
    rank = _torchrun_rank(args)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    bars = StageBars(skip=("embed", "score"), enabled=not args.quiet)
    check_out_dir(args.out, create=False)  # a wrong --out fails before the model is loaded
    if not args.merge:
        _check_folders([*args.folders, *args.reference])
    device = get_device(args.device) if rank is None else rank_device(rank, args.device)
    model = load_checkpoint(args.checkpoint, device=device)
    say(
        f"bta-core scan: model {shown(model.checkpoint_path or 'in-memory model')} on "
        f"{describe_device(device)}"
    )
    # --within-figures: the outputs are written once its search is done (_within); a torchrun
    # scan writes them first (its ranks need out_dir) and again then
    later = args.within_figures and rank is None and not args.shard
    common = dict(
        threshold=args.threshold,
        top_k=args.top,
        within=not args.cross_only,
        within_files=args.within_files,
        out_dir=None if later else args.out,
        faiss_above=args.faiss_above,
        faiss_k=args.faiss_k,
        max_pairs=args.max_pairs,
        report_pairs=args.report_pairs,
        match_top=args.match_top,
        verify_per_image=args.verify_per_image,
        keypoint_candidates=args.keypoint_candidates,
        collection=args.collection,
        collection_threshold=args.collection_threshold,
        phash_max_distance=args.phash_max_distance,
        progress_bar=not args.quiet,
    )
    if args.merge:
        result = merge(
            args.merge, model, allow_partial=args.allow_partial, on_progress=bars, **common
        )
    else:
        cache = None if args.no_cache else (args.cache or "auto")
        run = scan if rank is None else partial(scan_ranks, rank=rank)
        result = run(
            args.folders,
            args.reference,
            model,
            planes=args.planes,
            tta=args.tta,
            cache_dir=cache,
            shard=args.shard,
            batch_size=args.batch_size,
            workers=args.workers,
            on_progress=bars,
            **({"index": args.index} if rank is None else {}),
            **common,
        )
    bars.close()
    if result is None:  # a torchrun rank other than 0: its shard is written, rank 0 merged
        return 0
    s = result.stats
    if args.shard:
        say_skipped(say, result.skipped, args.out)
        say(
            f"shard {args.shard}: {s['n_images']} images ({s['n_embedded']} embedded, "
            f"{s['n_cached']} cached{identical_part(s)}), {len(result.skipped)} skipped -> "
            f"{shown(args.out)}"
        )
        if args.json:
            print(json_dumps({"shard": args.shard, "out": args.out, "stats": s}, default=str))
        return 0
    # the summary is the command's result: stdout, unless stdout carries the --json document
    tell = say if args.json else ((lambda *a: None) if args.quiet else print)
    origin = (
        f"from {s['n_shards']} shards"
        if "n_shards" in s
        else f"{s.get('n_embedded', 0)} embedded, {s.get('n_cached', 0)} from cache"
        f"{identical_part(s)}"
    )
    say_skipped(say, result.skipped, args.out)
    tell(
        f"{s['n_images']} image{'' if s['n_images'] == 1 else 's'} ({origin}), "
        f"{len(result.skipped)} skipped{missing_part(s)}, "
        f"{s['n_pairs_scored']} pairs scored ({s['method']}), {s['n_checked']} checked by "
        f"keypoints{cached_checks(s)}; threshold {s['threshold']:.3f}{collection_fact(s)}"
    )
    if s["n_images"] < 2 and not args.index:
        say(
            f"note: {s['n_images']} readable image{'' if s['n_images'] == 1 else 's'}, so "
            "nothing to compare: a scan compares the images of its folders with each other (or "
            "with an --index); to compare two files, use 'bta-core score A B'"
        )
    if s.get("index_missing"):
        n = s["index_missing"]
        say(
            f"warning: {n} indexed image{'s' if n > 1 else ''} nearest to the scanned files "
            f"{'are' if n > 1 else 'is'} missing (moved or deleted since indexing; is the "
            "archive's drive mounted?): compared by the stored embedding and hashes, and by "
            "keypoint checks cached while the files were there (listed in skipped.csv; "
            f"'bta-core index prune {shown(s['index'])}' retires them, 'bta-core index add "
            f"{shown(s['index'])} NEW_FOLDER' indexes them where they are now)"
        )
    root = common_root(result.items)
    items = {it.name: it for it in result.items}
    tell(summary_text(result.pairs) + (f" (paths relative to {shown(root)}):" if root else ":"))
    review = [p for p in result.pairs if p.verdict != "different"]
    for p in review[:CONSOLE_PAIRS]:
        tell(
            f"  {p.verdict:<8} {p.decided_by:<16} score {p.score:.3f}  {console_pair(p, items, root)}"
        )
    if len(review) > CONSOLE_PAIRS:
        tell(f"  ... {len(review) - CONSOLE_PAIRS} more in {shown(args.out)}/pairs.csv")
    listed = listed_groups(result.groups)
    if listed:  # pairs alone say it when every group is a pair
        tell(
            f"{groups_text(result.groups)}; the group column of pairs.csv and the report show all:"
        )
        for g in listed[:CONSOLE_GROUPS]:
            names = [shown(display_name(m, items.get(m), root)) for m in g.members]
            more = f" and {len(names) - 6} more" if len(names) > 6 else ""
            tell(f"  group {g.number}: {', '.join(names[:6])}{more}")
    within = None
    if args.within_figures:
        from ._within import scan_within_figures

        try:
            within = scan_within_figures(result, args, say, tell, on_progress=bars)
        finally:
            bars.close()
    tell(f"wrote {shown(args.out)}/pairs.csv, pairs.json, report.html, skipped.csv")
    if args.json:
        summary = summary_dict(result, args.out)
        if within is not None:
            summary["within_figures"] = within
        print(json_dumps(summary, default=str))
    return 0


def identical_part(stats: dict) -> str:
    """``, N identical to another file`` when byte-identical files were embedded once, so that
    embedded + from cache + identical adds up to the images counted."""
    n = stats.get("n_identical") or 0
    return f", {n} identical to {'another file' if n == 1 else 'other files'}" if n else ""


def say_skipped(say, skipped: list, out: str, limit: int = CONSOLE_SKIPPED) -> None:
    """One line per skipped file with its problem (``docs/cli.md``: a bad file is named on
    stderr), the first ``limit`` of them; skipped.csv lists all."""
    for k in skipped[:limit]:
        say(f"skipped {shown(k.path)}: {shown(k.problem)}")
    if len(skipped) > limit:
        say(f"  and {len(skipped) - limit} more, see {shown(Path(out) / 'skipped.csv')}")


def missing_part(stats: dict) -> str:
    """`` (N of them indexed files that are missing)`` when an index lookup met such files."""
    n = stats.get("index_missing") or 0
    return (
        f" ({n} of them indexed file{'s' if n > 1 else ''} that {'are' if n > 1 else 'is'} missing)"
        if n
        else ""
    )


def cached_checks(stats: dict) -> str:
    """`` (N from the cache)`` when keypoint checks of the same pixels were reused: an earlier
    scan's, or, in a first scan, those of a pixel-identical copy of a file checked before."""
    n = stats.get("n_checked_from_cache") or 0
    return f" ({n} from the cache: the same pixels checked before)" if n else ""


def console_pair(p, items: dict, root: str | None) -> str:
    """``A  <->  B`` with how B relates to A: the verified transform, or the orientation in
    which the perceptual hashes matched."""
    a, b = (shown(display_name(n, items.get(n), root)) for n in (p.path_a, p.path_b))
    detail = ""
    if p.verified and p.transform:
        detail = f"  {p.transform}"
    elif p.decision.hash_orientation not in (None, "identity"):
        detail = f"  {describe_d4(p.decision.hash_orientation)}"
    edits = p.evidence.local_edits
    if edits:  # the retouch is what an editor must not miss in the console either
        detail += (
            f"; B differs locally in {edits} cell{'s' if edits > 1 else ''} (pasted or erased?)"
        )
    return f"{a}  <->  {b}{detail}"


def summary_dict(result: ScanResult, out_dir: str, top: int = JSON_PAIRS) -> dict:
    """The ``--json`` object: counts, output files, the best pairs with verdict and evidence."""
    s = result.stats
    same_by = Counter(p.decided_by for p in result.pairs if p.verdict == "same")
    review = [p for p in result.pairs if p.verdict != "different"]
    return {
        "summary": summary_text(result.pairs),
        "counts": {
            "images": s.get("n_images"),
            "skipped": len(result.skipped),
            "pairs_scored": s.get("n_pairs_scored"),
            "embedded": s.get("n_embedded"),
            "from_cache": s.get("n_cached"),
            "identical_to_another_file": s.get("n_identical"),
            "pairs_checked_by_keypoints": s.get("n_checked"),
            "keypoint_checks_from_cache": s.get("n_checked_from_cache"),
            "pairs_listed": len(result.pairs),
            "same": s.get("n_same"),
            "same_by": dict(same_by),
            "copy_groups": len(result.groups),
            "suspect": s.get("n_suspect"),
        },
        "threshold": s.get("threshold"),
        "checkpoint": s.get("checkpoint"),
        "device": s.get("device"),
        "outputs": {name: str(Path(out_dir).resolve() / name) for name in OUTPUT_FILES},
        "groups": [g.to_dict() for g in result.groups[:top]],
        "top_pairs": pair_dicts(review[:top], result.groups),
        "skipped": [{"path": k.path, "problem": k.problem} for k in result.skipped],
    }
