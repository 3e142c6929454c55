"""``bta-core demo``: scan the bundled real sample images (with planted reuse) and write a report.

The first thing to run after installing: it needs no data, no checkpoint and no GPU.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "scan_demo"


def planted_pairs(folder: Path = SAMPLES) -> list[tuple[str, str, str]]:
    """The planted (a, b, what) pairs of the demo folder."""
    with open(folder / "planted.csv", newline="", encoding="utf-8") as fh:
        return [(r["a"], r["b"], r["what"]) for r in csv.DictReader(fh)]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, add_help=add_help)
    p.add_argument("--out", default="bta-demo", help="folder for report.html, pairs.csv, ...")
    p.add_argument("--checkpoint", default=None, help="model (default: the bundled model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    return p


def main(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..device import describe_device, get_device
    from ..scan import scan

    device = get_device(args.device)
    model = load_checkpoint(args.checkpoint, device=device)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a))
    say(f"scanning {SAMPLES} with {model.checkpoint_path} on {describe_device(device)}")
    result = scan(
        SAMPLES,
        model=model,
        planes=True,
        cache_dir=None,
        out_dir=args.out,
        match_top=6,
        progress_bar=not args.quiet,
    )
    truth = {frozenset((a, b)): what for a, b, what in planted_pairs()}

    def key(p) -> frozenset:
        return frozenset(Path(x).name for x in (p.path_a, p.path_b))

    found = [p for p in result.pairs if p.same and key(p) in truth]
    st = result.stats
    say(
        f"{len(result.pairs)} pairs reported: {st['n_same']} same (decided by "
        f"{', '.join(f'{k} {v}' for k, v in st['decided_by'].items() if k != 'no evidence')}), "
        f"{st['n_suspect']} suspect (model score only, threshold {st['threshold']:.3f}):"
    )
    for rank, p in enumerate(result.pairs[:8], 1):
        tag = truth.get(key(p), "")
        verdict = f"{p.verdict} ({p.decided_by})"
        names = f"{Path(p.path_a).name} <-> {Path(p.path_b).name}"
        say(f"  {rank}. {p.score:.3f}  {verdict:<30} {names}  {tag}")
    say(
        f"planted pairs found: {len(found)}/{len(truth)}; skipped files: {[Path(s.path).name for s in result.skipped]}"
    )
    say(f"open {Path(args.out).resolve() / 'report.html'}")
    return 0 if len(found) == len(truth) else 1
