"""``bta-core`` command line: one thin module per subcommand, each with get_args_parser()/main().

The modules only turn arguments into calls of the library and print the result.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from ..runtime import INPUT_ERRORS
from ._console import shown
from ._help import UsageError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "bta_core.cli.demo",
        "scan the bundled sample images (planted reuse) and write a report",
    ),
    "score": ("bta_core.cli.score", "probability that two images come from the same source image"),
    "train": (
        "bta_core.cli.train",
        "train a BTA model (bta, combined, head-only or simclr recipes)",
    ),
    "eval": ("bta_core.cli.eval", "evaluate models and baselines (paper, reuse, scan protocols)"),
    "calibrate": (
        "bta_core.cli.calibrate",
        "store a calibrated decision threshold in a checkpoint",
    ),
    "scan": ("bta_core.cli.scan", "find reused images across folders of TIFF/PNG/JPEG files"),
    "match": (
        "bta_core.cli.match",
        "locate where two images match and recover the transform; with one image, find its "
        "panels repeated inside it",
    ),
    "index": ("bta_core.cli.index", "build, grow or describe a persistent reference index"),
    "models": ("bta_core.cli.models", "list the bundled and cached models"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``bta-core`` parser; only the module of ``command`` is imported (fast, and one
    subcommand's optional dependencies never break another)."""
    from ._help import EXIT_CODES, DefaultsHelpFormatter

    parser = argparse.ArgumentParser(
        prog="bta-core",
        description="Detect reused, flipped, cropped or retouched microscopy images (BTA).",
        epilog="Run 'bta-core COMMAND --help' for the options of a command.\n" + EXIT_CODES,
        formatter_class=DefaultsHelpFormatter,
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text, description=help_text)
            continue
        module = importlib.import_module(module_name)
        sub.add_parser(
            name,
            parents=[module.get_args_parser(add_help=False)],
            help=help_text,
            description=help_text,
            epilog=EXIT_CODES,
            formatter_class=DefaultsHelpFormatter,
        ).set_defaults(_main=module.main)
    return parser


def _bar_active() -> bool:
    """Whether a tqdm progress bar is open (its line has no newline yet)."""
    tqdm_module = sys.modules.get("tqdm")
    return bool(tqdm_module and getattr(tqdm_module.tqdm, "_instances", None))


def _close_bars() -> None:
    """Close every open progress bar, so none is redrawn after the last message (a bar left
    open is drawn again when it is garbage-collected, after an "interrupted" line)."""
    tqdm_module = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm_module, "tqdm", None), "_instances", None) or ()):
        try:
            bar.close()
        except Exception:  # a half-built bar or a closed stream: nothing left to draw
            pass


def install_warning_printer(quiet: bool = False) -> None:
    """Show Python warnings (e.g. ``ImageReadWarning``) as one line ``warning: MESSAGE`` on
    stderr, once per distinct message, without source file and line; none at all if ``quiet``."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message).strip()
        if quiet or text in seen:
            return
        seen.add(text)
        out = file or sys.stderr
        try:
            # a progress bar is being drawn on this line: in a log file (no terminal to redraw
            # it) the warning starts a line of its own, so it can be read and grepped
            lead = "\n" if _bar_active() and not out.isatty() else ""
            print(f"{lead}warning: {shown(text)}", file=out)
        except (OSError, ValueError):  # stderr closed: nothing useful to do
            pass

    warnings.showwarning = show  # the filters (what is shown at all) stay Python's


BROKEN_PIPE = 141
"""Exit code when stdout's reader went away: 128 + SIGPIPE, as the shell reports such a tool."""


def _quiet_broken_pipe() -> int:
    """stdout's reader went away (``bta-core score A B | head -1``): stop quietly. Python
    flushes stdout again at exit, so point it at devnull first."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if a in SUBCOMMANDS), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    old_show = warnings.showwarning
    install_warning_printer(bool(getattr(args, "quiet", False)))
    try:
        return _run(args)
    finally:
        warnings.showwarning = old_show


def _run(args: argparse.Namespace) -> int:
    try:
        result = args._main(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        _close_bars()
        note = getattr(sys.modules.get(args._main.__module__), "interrupted_note", None)
        # on a line of its own: a progress bar may have the cursor
        print("\ninterrupted" + (f": {shown(note(args))}" if note else ""), file=sys.stderr)
        return 130
    except UsageError as exc:
        _close_bars()
        print(
            f"bta-core {args.command}: error: {shown(exc)} (see bta-core {args.command} --help)",
            file=sys.stderr,
        )
        return 2
    except INPUT_ERRORS as exc:
        _close_bars()
        # Our own errors (ImageReadError, CheckpointError...) carry the file and the problem.
        print(f"bta-core {args.command}: error: {shown(exc)}", file=sys.stderr)
        return 1
    return int(result or 0)
