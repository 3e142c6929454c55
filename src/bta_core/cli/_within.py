"""``bta-core match FIG``: panels repeated inside one figure (``match.within``), printed,
as JSON, and with ``--out`` a PNG of the figure with each repeated pair boxed, plus the JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..assess import pair_scorer, policy_for
from ..match.within import (
    FigureSearch,
    describe_counts,
    describe_pair,
    find_repeated_panels,
    render_repeats_png,
)
from ..output_files import free_stem, json_dumps, json_text, output_set, short_name, write_text
from ..verdict import Policy
from ._console import shown

if TYPE_CHECKING:
    from ..scan import ScanResult


def _resolved(name: object) -> str:
    return str(Path(str(name)).resolve())


def _base_stem(args: argparse.Namespace) -> str:
    return "within_" + short_name(Path(args.image_a).stem)


def result_stem(out: Path, args: argparse.Namespace) -> str:
    """``within_FIG``, or ``within_FIG-2``, ``-3``... when that name holds the result of another
    file of the same name; a rerun on the same file replaces its own result, and a name whose
    JSON cannot be read is never overwritten."""
    mine = _resolved(args.image_a)
    return free_stem(out, _base_stem(args), lambda doc: doc.get("resolved") == mine)


def _write(out: Path, args: argparse.Namespace, image, search: FigureSearch, data: dict) -> None:
    """The PNG and the JSON, staged and moved into ``out`` together (``output_set``)."""
    stem = result_stem(out, args)
    if stem != _base_stem(args) and not args.quiet:
        print(
            f"note: {shown(out / _base_stem(args))}.json holds the result of another file "
            f"with this name; writing {shown(out / stem)}.png and .json instead",
            file=sys.stderr,
        )
    data["png"] = str(out / f"{stem}.png")
    data["json"] = str(out / f"{stem}.json")
    with output_set(out) as staging:
        render_repeats_png(image, search, staging / f"{stem}.png")
        write_text(staging / f"{stem}.json", json_text(data))


def main_within(args: argparse.Namespace, load_model) -> int:
    """The one-image form of ``bta-core match``; ``load_model(args)`` as the two-image form
    (the model is used only with ``--checkpoint``: see docs/match.md)."""
    from ..imageio import load_named
    from ..output_files import check_out_dir

    if args.out:
        check_out_dir(args.out, create=False)
    image = load_named(args.image_a)
    from ._progress import StepBar

    bar = StepBar(total=2, enabled=not args.quiet)
    try:
        model = None
        if args.checkpoint is not None and not args.no_model:
            bar.stage("loading model")
            model = load_model(args)
        bar.stage("panel pairs", 1)
        policy, scorer = Policy(), None
        if model is not None:
            policy, scorer = policy_for(model), pair_scorer(model, args.tta)
        search = find_repeated_panels(
            image,
            scorer=scorer,
            policy=policy,
            max_side=args.max_side,
            on_progress=bar,
        )
    except ValueError as exc:  # "image: ..." names the array; the user knows the file
        message = str(exc)
        if message.startswith("image:"):
            message = f"{args.image_a}:{message[len('image:') :]}"
        raise ValueError(message) from None
    finally:
        bar.close()
    data = {"image": str(args.image_a), "resolved": _resolved(args.image_a), **search.to_dict()}
    if model is not None:
        data["checkpoint"] = model.checkpoint_path
        data["threshold"] = float(model.config.threshold)
    if args.out:
        _write(Path(args.out), args, image, search, data)
    if args.json:
        print(json_dumps(data))
        return 0
    for k, pair in enumerate(search.repeated, 1):
        print(describe_pair(pair, k))
    if search.note:
        print(f"{shown(args.image_a)}: {search.note}")
    print(f"{describe_counts(search)} ({search.seconds:.1f} s)")
    if args.out:
        print(f"wrote {shown(data['png'])} and {shown(data['json'])}")
    return 0


def scan_within_figures(
    result: ScanResult, args: argparse.Namespace, say, tell, on_progress=None
) -> list[dict]:
    """``scan --within-figures``: panels repeated inside each scanned (not reference) image,
    one console line per repeated pair; then the scan's outputs are written with them
    (``write_outputs(within=...)``: their section of report.html and
    ``OUT/within_figures.json``, one object per image as ``match FIG --json``, in one set).
    Unreadable images are noted. ``on_progress(done, total, {"stage": "repeated panels"})``
    after each image, and for the report's pairs as the scan reports them."""
    from ..imageio import load_named
    from ..scan.outputs import WITHIN_FILE, write_outputs

    queries = [it for it in result.items if it.role == "query"]
    say(f"looking for panels repeated inside {len(queries)} scanned images")
    found: list[tuple[str, FigureSearch]] = []
    header = False
    for done, it in enumerate(queries, 1):
        try:
            search = find_repeated_panels(load_named(it.name))
        except (OSError, ValueError) as exc:  # gone or changed since it was scanned
            say(f"note: {shown(it.name)} not searched for repeated panels: {shown(exc)}")
            continue
        finally:
            if on_progress is not None:
                on_progress(done, len(queries), {"stage": "repeated panels"})
        found.append((it.name, search))
        for k, pair in enumerate(search.repeated, 1):
            if not header:
                tell("panels repeated inside one image (files named as scanned):")
                header = True
            tell(f"  inside {shown(it.name)}: {describe_pair(pair, k)}")
    out = args.out
    write_outputs(
        result,
        out,
        report_pairs=args.report_pairs,
        match_top=args.match_top,
        on_progress=on_progress,
        within=found,
    )
    docs = [{"image": name, **search.to_dict()} for name, search in found]
    figures = sum(bool(d["repeated"]) for d in docs)
    pairs = sum(d["pairs_checked"] for d in docs)
    tell(
        f"panels repeated inside one image: {sum(len(d['repeated']) for d in docs)} pairs in "
        f"{figures} of {len(docs)} images ({pairs} pairs of panels checked; "
        f"{shown(out)}/{WITHIN_FILE} and report.html)"
    )
    return docs
