"""``bta-core score A B``: do two images come from one source? The verdict, the evidence that
decided it and one probability (``assess.assess_pair``, the rule every tool uses)."""

from __future__ import annotations

import argparse

from ..assess import assess_pair
from ..calibration import probability_mapping
from ..checkpoint import load_checkpoint
from ..device import describe_device, get_device
from ..imageio import load_named
from ..output_files import json_dumps
from ..verdict import COLLECTION_LOOK_ALIKE, MODEL_SCORE, NO_EVIDENCE
from ._console import shown
from ._help import add_device, add_quiet
from ._progress import StepBar


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, add_help=add_help)
    parser.add_argument(
        "image_a", help="first image file, or one plane of a stack as a scan names it: f.tif[c=1]"
    )
    parser.add_argument("image_b", help="second image file (or plane)")
    parser.add_argument(
        "--checkpoint", default=None, help="model checkpoint (default: bundled model)"
    )
    add_device(parser)
    parser.add_argument(
        "--tta",
        default=None,
        choices=["d4"],
        help="model score: best over the 8 rotations/flips of either image (as scan)",
    )
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="look for the overlap with keypoint matching (as bta-core scan does for each "
        "image's best candidates); a verified overlap makes the verdict 'same'",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_quiet(parser, "no progress bar on stderr")
    return parser


def main(args: argparse.Namespace) -> int:
    image_a, image_b = load_named(args.image_a), load_named(args.image_b)  # bad files fail first
    bar = StepBar(total=(4 if args.verify else 3) + 1, enabled=not args.quiet)
    try:
        bar.stage("loading model")
        device = get_device(args.device)
        model = load_checkpoint(args.checkpoint, device=device)
        bar.stage("comparing", 1)
        found = assess_pair(
            model,
            image_a,
            image_b,
            verify=args.verify,
            tta=args.tta,
            on_progress=bar,
            names=(str(args.image_a), str(args.image_b)),
        )
    finally:
        bar.close()
    decision = found.decision
    result = {
        "image_a": str(args.image_a),
        "image_b": str(args.image_b),
        "verdict": decision.verdict,
        "decided_by": decision.decided_by,
        "probability": decision.probability,
        "same": decision.is_same,
        "score": decision.evidence.model_score,
        "threshold": float(model.config.threshold),
        "calibrated": probability_mapping(model.config.calibration) is not None,
        "decision": decision.to_dict(),
        "checkpoint": model.checkpoint_path,
        "device": describe_device(device),
        "tta": args.tta,
        "note": found.note,
    }
    result["transform"] = None
    if found.match is not None:
        from ..match import summary

        result["match"] = summary(found.match)
        if found.match.transform is not None:
            result["transform"] = found.match.transform.to_dict()
    if args.json:
        print(json_dumps(result))
    else:
        print(decision.explain())
        if found.note:
            print(f"note: {shown(found.note)}")
        from_model = decision.decided_by in (MODEL_SCORE, NO_EVIDENCE, COLLECTION_LOOK_ALIKE)
        raw = ""
        if from_model and not result["calibrated"]:
            raw = " (the raw score: no calibrated mapping stored)"
        print(
            f"probability {decision.probability:.4f}{raw}; model score {result['score']:.4f} "
            f"(threshold {result['threshold']:.3f})"
        )
        if "match" in result:
            print(result["match"])
    return 0
