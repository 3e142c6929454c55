"""``bta-core score A B``: probability that two images come from the same source image."""

from __future__ import annotations

import argparse
import json

import torch

from .checkpoint import load_checkpoint
from .device import DEVICE_CHOICES, describe_device, get_device
from .imageio import load_image
from .model import BTAModel, embed_images


def score_arrays(model: BTAModel, image_a, image_b, tta: str | None = None) -> float:
    """Symmetric score of two float RGB arrays; with ``tta="d4"`` the max over B's 8 orientations."""
    if tta == "d4":
        z = embed_images(model, [image_a, image_b], tta="d4").to(model.device)
        with torch.no_grad():
            return float(model.score_matrix(z[0, :1], z[1]).max())
    z = embed_images(model, [image_a, image_b]).to(model.device)
    with torch.no_grad():
        return float(model.score_pairs(z[:1], z[1:2])[0])


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, add_help=add_help)
    parser.add_argument("image_a", help="first image file")
    parser.add_argument("image_b", help="second image file")
    parser.add_argument(
        "--checkpoint", default=None, help="model checkpoint (default: bundled model)"
    )
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument(
        "--tta", default=None, choices=["d4"], help="max over 8 rotations/flips of B"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also look for the overlap with keypoint matching (bta-core match); a verified "
        "overlap makes the verdict 'same' whatever the score",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(args: argparse.Namespace) -> int:
    device = get_device(args.device)
    model = load_checkpoint(args.checkpoint, device=device)
    image_a, image_b = load_image(args.image_a), load_image(args.image_b)
    score = score_arrays(model, image_a, image_b, tta=args.tta)
    threshold = float(model.config.threshold)
    result = {
        "image_a": str(args.image_a),
        "image_b": str(args.image_b),
        "score": score,
        "threshold": threshold,
        "same": bool(score >= threshold),
        "checkpoint": getattr(model, "checkpoint_path", None),
        "device": describe_device(device),
        "tta": args.tta,
    }
    if args.verify:
        from .match import match_images, summary

        found = match_images(image_a, image_b)
        result.update(
            verified=bool(found.found),
            match_confidence=float(found.confidence),
            transform=found.transform.to_dict() if found.found and found.transform else None,
            same=bool(result["same"] or found.found),
        )
        result["match"] = summary(found)
    if args.json:
        print(json.dumps(result))
    else:
        verdict = "SAME source" if result["same"] else "different sources"
        print(f"{score:.4f}  ({verdict} at threshold {threshold:.3f})")
        if args.verify:
            print(result["match"])
    return 0
