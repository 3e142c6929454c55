"""``bta-core eval``: BTA models and baselines scored on the very same image pairs.

Protocols (``--protocol``, several may be given comma-separated):

* ``paper``: section 4 of the paper. Every image x_i gives x_i^A through the paper's first view
  pipeline; with p_same = 0.4 its partner is x_i through the second pipeline, otherwise another
  image through it. Accuracy, precision, recall, F1 at the fixed threshold (0.5 for models)
  and at the calibrated one, and ROC AUC, as mean and std over 10 resamples with fixed seeds.
  Each image has one view A and one view B, drawn once; the resamples redraw the partners.
  Fix against the paper's code: a "different" partner is drawn among images of *other*
  field-of-view groups, so an image is never its own negative, nor is another photo of the
  same field.
* ``reuse``: one positive pair per image and named manipulation (original vs manipulated copy);
  negatives are the original against the manipulated copy of *another* image of the same data
  set and modality (hard negatives). Per manipulation: recall at the threshold giving 1% FPR
  on those negatives, and ROC AUC. Pairs from ``same_source_edges.csv`` ("same field, other
  photo") are reported separately, against the unmanipulated hard negatives.
* ``holdout``: leave one data set out (``bta_core.evaluation.holdout``): DATA is the folder
  of data sets; for each, train on the others' cached features, calibrate on their val
  splits, test on its test split (paper, reuse, identity, unrelated-pair FPR, ECE).
* ``scan``: the images plus planted manipulated copies of a subset; every pair is ranked;
  average precision and recall@k of the planted pairs (other photos of one field are left out
  of the ranking: they are neither planted nor independent).

Speed: every view of an image (resized original, the paper's view A and view B, each
manipulation) is decoded, augmented and represented once per method, then reused by every
resample, pair and protocol; methods sharing a frozen backbone share its forward pass. Progress
bars per stage; metrics.json records the seconds per stage.

Methods: every ``--checkpoint`` (labelled by its file name; none given: the bundled model) and
the training-free baselines
``phash``, ``crhash`` (imagehash's crop-resistant hash) and ``backbone-cosine`` (cosine of the
frozen backbone's pooled features). Checkpoints sharing a frozen backbone share its features,
so adding a method costs only its projector and head.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation.methods import BASELINES
from ..evaluation.protocols import PAPER_SEEDS, PROTOCOLS, evaluate
from ._help import UsageError, add_device, int_in


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__,
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("data", nargs="+", help="image folders and/or splits.csv files")
    p.add_argument(
        "--protocol",
        default="paper",
        help=f"comma-separated, from {', '.join(PROTOCOLS)}; or holdout (leave one data set out, alone)",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        help="checkpoint to evaluate (repeatable); none given = the bundled model "
        "(--checkpoint none: the baselines only)",
    )
    p.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help=f"comma-separated from {', '.join(BASELINES)} ('' for none)",
    )
    p.add_argument("--split", default="test", help="split of splits.csv rows ('' for all)")
    p.add_argument("--out", default="eval", help="output folder")
    p.add_argument(
        "--image-size", type=int_in(32), default=None, help="view size (default: models')"
    )
    p.add_argument("--resamples", type=int_in(1), default=len(PAPER_SEEDS), help="paper protocol")
    p.add_argument("--limit", type=int_in(1), default=None, help="at most N images per source")
    p.add_argument(
        "--calibration-split",
        default="val",
        help="split to fit thresholds of uncalibrated methods on ('' for none)",
    )
    p.add_argument("--negatives-per-image", type=int_in(1), default=32, help="reuse protocol")
    add_device(p)
    p.add_argument(
        "--cache",
        default=None,
        help="holdout protocol: folder of cached backbone features (DATA: the data sets' root; "
        "default: 'views' beside the scan's embedding cache, ~/.cache/bta/views)",
    )
    p.add_argument(
        "--no-view-cache",
        action="store_true",
        help="recompute every pair batch (slow reference path; same metrics)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(args: argparse.Namespace) -> int:
    protocols = [p.strip() for p in args.protocol.split(",") if p.strip()]
    unknown = sorted(set(protocols) - {*PROTOCOLS, "holdout"})
    if unknown:
        raise UsageError(
            f"unknown --protocol {', '.join(unknown)}: choose from {', '.join(PROTOCOLS)} or holdout"
        )
    if "holdout" in protocols:  # leave one data set out: train, calibrate, test per data set
        from ..evaluation.holdout import evaluate_holdout

        log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
        from ..scan.cache import default_cache_dir

        cache = args.cache or default_cache_dir().parent / "views"
        evaluate_holdout(args.data[0], cache, args.out, log=log)
        protocols.remove("holdout")
        if not protocols:
            return 0
    evaluate(
        args.data,
        protocols=protocols,
        checkpoints=[c for c in args.checkpoint or ["default"] if c.lower() != "none"],
        baselines=[b.strip() for b in args.baselines.split(",") if b.strip()],
        split=args.split or None,
        out=args.out,
        image_size=args.image_size,
        seeds=tuple(range(args.resamples)),
        limit=args.limit,
        calibration_split=args.calibration_split or None,
        device=args.device,
        negatives_per_image=args.negatives_per_image,
        quiet=args.quiet,
        cache=not args.no_view_cache,
    )
    if not args.quiet:
        print(f"wrote {Path(args.out) / 'metrics.json'}, metrics.md and PNGs")
    return 0
