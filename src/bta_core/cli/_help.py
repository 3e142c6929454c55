"""What every ``bta-core`` command shares in its ``--help``: defaults shown, common options.

``DefaultsHelpFormatter`` works like ``argparse.ArgumentDefaultsHelpFormatter`` but never prints
``(default: None)`` or ``(default: False)``: an option whose default means "not given" says in
its own help what happens then, and an option whose help already names its default is left
alone. ``tests/test_cli_help.py`` checks that every option of every command has help text.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ..device import DEVICE_CHOICES

DEVICE_HELP = "where the model runs; auto: CUDA, then Apple MPS, then CPU"
QUIET_HELP = "no progress bars or summary"

EXIT_CODES = """\
exit codes: 0 done; 1 an error (a file, folder or checkpoint that cannot be used, a bad value;
one line on stderr names it); 2 wrong command-line usage; 130 interrupted (Ctrl-C); 141 the
reader of the output went away (| head)."""


class UsageError(ValueError):
    """Options that do not fit together (or a missing argument): exit 2, before any work."""


def _bounds(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"between {low:g} and {high:g}"
    return f"at least {low:g}" if low is not None else f"at most {high:g}"


def int_in(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number within ``[low, high]``; anything else is a usage
    error (exit 2) naming the option, before any work starts."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {_bounds(low, high)}, got {value}")
        return value

    return parse


def float_in(low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    """An argparse ``type``: a finite number within ``[low, high]`` (NaN and inf refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {_bounds(low, high)}, got {value:g}")
        return value

    return parse


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Append ``(default: X)`` to each option's help when X is a real value."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default" in text.lower():
            return text
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS:
            return text
        if isinstance(default, list) and not default:
            return text
        if not action.option_strings and action.nargs in ("*", "+", "?"):
            return text
        return f"{text} (default: %(default)s)"


def add_device(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--device auto|cpu|cuda|mps`` with the same help everywhere."""
    parser.add_argument("--device", default=default, choices=DEVICE_CHOICES, help=DEVICE_HELP)


def add_quiet(parser: argparse.ArgumentParser, text: str = QUIET_HELP) -> None:
    """``--quiet``: no progress bars (scripts, logs)."""
    parser.add_argument("--quiet", action="store_true", help=text)
