"""``bta-core match A B``: locate where two images match and recover the transform from B to A.

``bta-core match FIG`` (one image): find panels repeated inside one figure (``cli._within``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..match import match_images, render_match_png, summary
from ..match.params import MAX_SIDE
from ..output_files import json_dumps
from ..verdict import Decision, Policy, decide
from ._console import shown
from ._help import add_device, int_in


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, add_help=add_help)
    parser.add_argument(
        "image_a",
        help="first image file (the reference frame), or a plane of a stack: f.tif[c=1]; "
        "alone: a figure whose panels are compared with each other",
    )
    parser.add_argument(
        "image_b",
        nargs="?",
        default=None,
        help="second image file or plane (mapped onto the first); leave out to look for "
        "panels repeated inside the first",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="model checkpoint for the pair score and tile heatmaps (default: the bundled model "
        "if installed, else keypoints only; one figure: no model unless given)",
    )
    parser.add_argument("--no-model", action="store_true", help="skip the model (keypoints only)")
    add_device(parser)
    parser.add_argument(
        "--tta",
        default=None,
        choices=["d4"],
        help="model score: best over the 8 rotations/flips of either image (as score and scan)",
    )
    parser.add_argument(
        "--max-side", type=int_in(64), default=MAX_SIDE, help="working size for keypoints"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", default=None, metavar="DIR", help="write a PNG (and JSON) here")
    parser.add_argument("--quiet", action="store_true", help="no notes or progress bar on stderr")
    return parser


def _load_model(args: argparse.Namespace):
    if args.no_model:
        return None
    from ..checkpoint import DEFAULT_MODEL_PATH, load_checkpoint
    from ..device import get_device

    if args.checkpoint is None and not DEFAULT_MODEL_PATH.exists():
        if not args.quiet:
            print("note: no bundled model installed; matching with keypoints only", file=sys.stderr)
        return None
    return load_checkpoint(args.checkpoint, device=get_device(args.device))


def _decide(model, image_a, image_b, found) -> Decision:
    """The pair's verdict from the same evidence and rule as ``bta-core score`` and ``scan``;
    the model score is the matcher's (``scoring.score_arrays`` with the same ``--tta``)."""
    from ..assess import add_match, fingerprint_evidence, policy_for, set_model_score

    evidence = fingerprint_evidence(image_a, image_b)
    set_model_score(evidence, model, found.score)
    add_match(evidence, found)
    return decide(evidence, policy_for(model) if model is not None else Policy())


def _name_files(message: str, args: argparse.Namespace) -> str:
    """``message`` with a leading ``image_a:``/``image_b:`` replaced by that file's path."""
    for tag, path in (("image_a:", args.image_a), ("image_b:", args.image_b)):
        if message.startswith(tag):
            return f"{path}:{message[len(tag) :]}"
    return message


def _same_inputs(doc: object, args: argparse.Namespace) -> bool:
    """Whether an earlier result's JSON ``doc`` was made from the files of this run."""
    if not isinstance(doc, dict):
        return False
    for key, given in (("resolved_a", args.image_a), ("resolved_b", args.image_b)):
        stored = doc.get(key)  # absolute: the same relative name from another folder differs
        if not isinstance(stored, str) or stored != _resolved(given):
            return False
    return True


def _resolved(name: object) -> str:
    return str(Path(str(name)).resolve())


def _base_stem(args: argparse.Namespace) -> str:
    from ..output_files import short_name

    return "match_" + short_name(Path(args.image_a).stem, Path(args.image_b).stem)


def result_stem(out: Path, args: argparse.Namespace) -> str:
    """The file name (without suffix) of this pair's result in ``out``: ``match_A__B``, or
    ``match_A__B-2``, ``-3``... when that name holds the result of other files of the same
    names (``supp/figure1.png`` and ``Fig 3/figure1.png`` against one B). A rerun of the same
    pair replaces its own result; a name whose JSON cannot be read is never overwritten."""
    from ..output_files import free_stem

    return free_stem(out, _base_stem(args), lambda doc: _same_inputs(doc, args))


def main(args: argparse.Namespace) -> int:
    from ..imageio import load_named
    from ..output_files import check_out_dir

    if args.image_b is None:
        from ._within import main_within

        return main_within(args, _load_model)

    if args.out:
        check_out_dir(args.out, create=False)
    a = load_named(args.image_a)
    b = load_named(args.image_b)
    from ._progress import StepBar

    bar = StepBar(total=2, enabled=not args.quiet)  # drawn on a terminal only, then cleared
    try:
        bar.stage("loading model")
        model = _load_model(args)
        bar.stage("matching", 1)
        result = match_images(
            a, b, model=model, max_side=args.max_side, tta=args.tta, on_progress=bar
        )
    except ValueError as exc:  # the matcher names its arguments; the user knows the files
        raise ValueError(_name_files(str(exc), args)) from None
    finally:
        bar.close()
    decision = _decide(model, a, b, result)
    data = {
        "image_a": str(args.image_a),
        "image_b": str(args.image_b),
        "resolved_a": _resolved(args.image_a),
        "resolved_b": _resolved(args.image_b),
        **result.to_dict(),
    }
    data["decision"] = decision.to_dict()
    if model is not None:
        data["checkpoint"] = model.checkpoint_path
        data["threshold"] = float(model.config.threshold)
    if args.out:
        from ..checkpoint import atomic_write_text

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = result_stem(out, args)
        if stem != _base_stem(args) and not args.quiet:
            print(
                f"note: {shown(out / _base_stem(args))}.json holds the result of other files "
                f"with these names; writing {shown(out / stem)}.png and .json instead",
                file=sys.stderr,
            )
        png = render_match_png(a, b, result, out / f"{stem}.png")
        data["png"] = str(png)
        data["json"] = str(out / f"{stem}.json")
        atomic_write_text(out / f"{stem}.json", json_dumps(data, indent=1))
    if args.json:
        print(json_dumps(data))
    else:
        print(summary(result))
        print(decision.explain())
        if result.box_a is not None:
            print(f"box_a {result.box_a}  box_b {result.box_b}")
        if args.out:
            print(f"wrote {shown(data['png'])} and {shown(data['json'])}")
    return 0
