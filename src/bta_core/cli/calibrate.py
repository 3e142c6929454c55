"""``bta-core calibrate``: fit a checkpoint's decision threshold and probability mapping
(Platt scaling, 0.5 at the threshold) on validation pairs and store them in the checkpoint."""

from __future__ import annotations

import argparse

from ..evaluation.calibrate import calibrate
from ._help import add_device, float_in, int_in


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__,
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint to calibrate")
    p.add_argument("data", nargs="+", help="image folders and/or splits.csv files")
    p.add_argument("--split", default="val", help="split of splits.csv rows ('' for all)")
    p.add_argument(
        "--target-fpr",
        type=float_in(0, 1),
        default=None,
        help="meet this FPR instead of maximising F1",
    )
    p.add_argument(
        "--out",
        default=None,
        help="write here; none given = rewrite CHECKPOINT in place (refused for the bundled model)",
    )
    p.add_argument(
        "--keep-threshold",
        action="store_true",
        help="keep the stored threshold, fit only the probability mapping",
    )
    p.add_argument("--limit", type=int_in(1), default=None, help="at most N images per source")
    p.add_argument("--repeats", type=int_in(1), default=3, help="pairs per image")
    add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(args: argparse.Namespace) -> int:
    calibrate(
        args.checkpoint,
        args.data,
        split=args.split,
        target_fpr=args.target_fpr,
        out=args.out,
        limit=args.limit,
        repeats=args.repeats,
        device=args.device,
        quiet=args.quiet,
        keep_threshold=args.keep_threshold,
    )
    return 0
