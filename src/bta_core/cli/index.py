"""``bta-core index``: keep a lab archive's embeddings; check new figures against it (scan --index)."""

from __future__ import annotations

import argparse
import json
import sys

from ..device import describe_device, get_device
from ._console import shown
from ._help import DefaultsHelpFormatter, add_device, int_in


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bta-core index", description=__doc__.splitlines()[0], add_help=add_help
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fmt = {"formatter_class": DefaultsHelpFormatter}
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--checkpoint", default=None, help="model; none given = the bundled model")
    add_device(common)
    common.add_argument("--batch-size", type=int_in(1), default=32, help="images per model batch")
    common.add_argument(
        "--workers", type=int_in(0), default=None, help="decoding processes (default: cores - 1)"
    )
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    what = "embed reference images into a new index"
    b = sub.add_parser("build", parents=[common], help=what, description=what, **fmt)
    b.add_argument("paths", nargs="+", metavar="REF", help="reference folders or files")
    b.add_argument("--out", required=True, metavar="INDEX", help="index folder to create")
    what = "add new or changed images to an index (files already in it are skipped)"
    a = sub.add_parser("add", parents=[common], help=what, description=what, **fmt)
    a.add_argument("index", metavar="INDEX", help="index folder to update")
    a.add_argument("paths", nargs="+", metavar="NEW", help="folders or files")
    what = "retire the images whose files were moved or deleted since indexing (no model)"
    r = sub.add_parser("prune", help=what, description=what, **fmt)
    r.add_argument("index", metavar="INDEX", help="index folder to update")
    r.add_argument(
        "--force", action="store_true", help="retire even when more than half the files are missing"
    )
    r.add_argument("--json", action="store_true", help="print one JSON object")
    i = sub.add_parser("info", help="what an index holds", description="what an index holds", **fmt)
    i.add_argument("index", metavar="INDEX", help="index folder")
    i.add_argument(
        "--check-files",
        action="store_true",
        help="also count indexed files that were moved or deleted (one stat per image)",
    )
    i.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


class _Bar:
    """A tqdm bar opened at the first progress call, when the total is known (no empty bar)."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, step: int, total: int, info: dict) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="img", desc="embed", dynamic_ncols=True)
        self.bar.total = total
        self.bar.n = step
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _bar(quiet: bool):
    if quiet:
        return None, None
    bar = _Bar()
    return bar, bar


def interrupted_note(args: argparse.Namespace) -> str:
    """What a Ctrl-C left behind (printed by the CLI's interrupt handler)."""
    if args.action in ("build", "add"):
        from ..index.store import is_index

        target = args.out if args.action == "build" else args.index
        if not is_index(target):
            return "no index was written"
        return (
            f"the images embedded so far are in {target}; 'bta-core index add {target}' with "
            "the same folders resumes"
        )
    return "the index was not changed"


def main(args: argparse.Namespace) -> int:
    from ..index import add_to_index, build_index, index_info, prune_index

    if args.action == "prune":
        res = prune_index(args.index, force=args.force)
        if args.json:
            print(json.dumps(res))
        else:
            for path in res["retired"]:
                print(f"  retired {shown(path)}: file missing")
            print(
                f"{shown(res['index'])}: {len(res['retired'])} retired, {res['images']} images left"
            )
        return 0
    if args.action == "info":
        info = index_info(args.index, check_files=args.check_files)
        if args.json:
            print(json.dumps(info))
        else:
            for k, v in info.items():
                if k == "missing_files" and v is None:
                    v = "not checked (--check-files)"
                print(f"{k:>24}: {shown(v)}")
        return 0
    from pathlib import Path

    from ..checkpoint import load_checkpoint
    from ..index.store import check_not_busy, read_manifest

    for p in args.paths:  # fail before the model loads
        if not Path(p).exists():
            raise FileNotFoundError(f"{p}: not found")
    if args.action == "add":
        read_manifest(args.index)  # a clear error if it is not an index
        check_not_busy(args.index)  # before the model loads: refused at once, not in 10 s
    device = get_device(args.device)
    model = load_checkpoint(args.checkpoint, device=device)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    say(
        f"bta-core index: model {model.checkpoint_path or 'in-memory'} on {describe_device(device)}"
    )
    bar, on_progress = _bar(args.quiet)
    kw = dict(batch_size=args.batch_size, workers=args.workers, on_progress=on_progress)
    try:
        if args.action == "build":
            res = build_index(args.paths, args.out, model, **kw)
        else:
            res = add_to_index(args.index, args.paths, model, **kw)
    finally:
        if bar is not None:
            bar.close()
    tell = (lambda *a: None) if args.quiet else print  # the result: stdout, as prune's
    for path, problem in res["skipped"]:
        tell(f"  skipped {shown(path)}: {shown(problem)}")
    tell(
        f"{shown(res['index'])}: {res['added'] - res['replaced']} new, "
        f"{res['replaced']} changed and re-embedded, "
        f"{res['unchanged']} unchanged, {len(res['skipped'])} skipped ({res['seconds']:.1f} s)"
    )
    return 0
