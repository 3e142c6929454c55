"""``bta-core demo``: scan the bundled real sample images (with planted reuse) and write a report.

The first thing to run after installing: it needs no data, no checkpoint and no GPU.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from ._console import shown
from ._help import add_device, add_quiet

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "scan_demo"


def planted_pairs(folder: Path = SAMPLES) -> list[tuple[str, str, str]]:
    """The planted (a, b, what) pairs of the demo folder."""
    with open(folder / "planted.csv", newline="", encoding="utf-8") as fh:
        return [(r["a"], r["b"], r["what"]) for r in csv.DictReader(fh)]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, add_help=add_help)
    p.add_argument("--out", default="bta-demo", help="folder for report.html, pairs.csv, ...")
    p.add_argument(
        "--checkpoint", default=None, help="model checkpoint; none given = the bundled model"
    )
    add_device(p)
    add_quiet(p, "no progress bars or listing")
    return p


def main(args: argparse.Namespace) -> int:
    """Scan the samples, write the report with the planted descriptions, list what was found.

    Exit code 0 when every planted pair is ``same``, 1 otherwise.
    """
    from ..checkpoint import load_checkpoint
    from ..device import describe_device, get_device
    from ..output_files import check_out_dir
    from ..scan import scan
    from ..scan.outputs import write_outputs
    from ..scan.report import summary_text
    from ._progress import StageBars

    check_out_dir(args.out, create=False)
    device = get_device(args.device)
    model = load_checkpoint(args.checkpoint, device=device)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a))
    say(f"scanning {SAMPLES} with {model.checkpoint_path} on {describe_device(device)}")
    bars = StageBars(skip=("embed", "score"), enabled=not args.quiet)
    result = scan(
        SAMPLES,
        model=model,
        planes=True,
        cache_dir=None,
        progress_bar=not args.quiet,
        on_progress=bars,
    )
    truth = {frozenset((a, b)): what for a, b, what in planted_pairs()}

    def key(p) -> frozenset:
        return frozenset(Path(x).name for x in (p.path_a, p.path_b))

    notes = {
        frozenset((p.path_a, p.path_b)): truth[key(p)] for p in result.pairs if key(p) in truth
    }
    write_outputs(result, args.out, match_top=8, notes=notes, on_progress=bars)
    bars.close()
    found = [p for p in result.pairs if p.same and key(p) in truth]
    review = [p for p in result.pairs if p.verdict in ("same", "suspect")]
    say(
        f"{summary_text(result.pairs)}; threshold {result.stats['threshold']:.3f}, "
        f"{result.stats['n_pairs_scored']} pairs scored:"
    )
    for rank, p in enumerate(review, 1):
        verdict = f"{p.verdict} ({p.decided_by})"
        names = f"{shown(Path(p.path_a).name)} <-> {shown(Path(p.path_b).name)}"
        say(f"  {rank}. {verdict:<26} score {p.score:.3f}  {names}  {truth.get(key(p), '')}")
    skipped = ", ".join(shown(Path(s.path).name) for s in result.skipped) or "none"
    say(f"planted pairs found: {len(found)}/{len(truth)}; skipped files: {skipped}")
    say(f"open {Path(args.out).resolve() / 'report.html'}")
    return 0 if len(found) == len(truth) else 1
