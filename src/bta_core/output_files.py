"""Result files written safely: spreadsheet-safe CSV, any file name, output sets as a whole.

* CSV: a cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is prefixed
  with ``'`` (what spreadsheet programs expect), so a file named ``=HYPERLINK(...).png`` is shown
  as text and never run as a formula (``csv_cell``, the one rule for every CSV the tool writes).
  A cell holding a line break (``ok\r=1+1.jpg``) is quoted, so every CSV reader keeps it one
  cell, and each line inside it gets the same guard (``csv_text``).
* File names that are not valid UTF-8 (Python holds their bytes as lone surrogates) survive:
  CSV keeps the original bytes, JSON writes ``\\udcXX`` escapes that read back to the same name,
  HTML writes character references (``write_text``).
* An output set (``pairs.csv``, ``pairs.json``, ``skipped.csv``, ``report.html``, or a shard's
  files) is written into a staging folder inside the output folder and moved into place under
  a lock (``output_set``): a full disk or a crash while writing leaves the previous set as it
  was, and two runs writing one folder at once leave the whole set of one of them.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import numbers
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_INNER_FORMULA = re.compile(r"(?<=[\r\n])(?=[=+\-@\t])")
"""A line start inside a cell (after a CR or LF) followed by a formula character."""
STAGING_PREFIX = ".bta-staging-"
JOURNAL = ".bta-commit.json"
LOCK = ".bta-lock"
_ERRORS = {".csv": "surrogateescape", ".json": "backslashreplace", ".html": "xmlcharrefreplace"}


_PLAIN_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def csv_cell(value: object) -> object:
    """``value`` made safe for spreadsheets: text that would start a formula gets a leading
    ``'`` (a plain negative number such as ``-0.25`` is left as it is: it is no formula); so
    does every line inside the text that would start one."""
    if isinstance(value, str) and ("\r" in value or "\n" in value):
        value = _INNER_FORMULA.sub("'", value)
    if (
        isinstance(value, str)
        and value.startswith(FORMULA_START)
        and not _PLAIN_NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """CSV text with every cell passed through ``csv_cell``, rows ending in ``\n``.

    Python's writer quotes only cells holding a character of its line terminator, so a row is
    written with ``\r\n`` (a cell with a CR or an LF is then quoted: one cell for every reader)
    and that terminator is swapped for ``\n``.
    """
    out = []
    for row in [header, *rows]:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n").writerow([csv_cell(c) for c in row])
        out.append(buf.getvalue()[:-2] + "\n")
    return "".join(out)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text; characters of undecodable file names are kept as the suffix allows."""
    errors = _ERRORS.get(Path(path).suffix.lower(), "surrogateescape")
    with open(path, "w", encoding="utf-8", errors=errors, newline="") as fh:
        fh.write(text)


JSON_DIGITS = 6
"""Decimals of every number in the JSON the tool writes (probabilities, scores, seconds)."""


def json_ready(obj: object, digits: int = JSON_DIGITS) -> object:
    """``obj`` with every float rounded to ``digits`` decimals and ``-0.0`` written as ``0.0``
    (dicts, lists and tuples walked; the one rule for the tool's JSON outputs)."""
    if isinstance(obj, dict):
        return {k: json_ready(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v, digits) for v in obj]
    if isinstance(obj, numbers.Integral):  # bool and int (numpy's too) stay as they are
        return obj
    if isinstance(obj, numbers.Real):
        value = float(obj)
        return round(value, digits) + 0.0 if math.isfinite(value) else value
    return obj


def json_dumps(obj: object, **kwargs) -> str:
    """``json.dumps`` of :func:`json_ready` (for ``--json`` output on stdout)."""
    return json.dumps(json_ready(obj), **kwargs)


def json_text(obj: object) -> str:
    """Readable JSON (non-ASCII kept as is, numbers as :func:`json_ready`); write it with
    ``write_text`` to a ``.json`` file."""
    return json.dumps(json_ready(obj), indent=1, ensure_ascii=False)


def short_name(*parts: str, limit: int = 120) -> str:
    """``parts`` joined by ``__``, shortened (with a hash of the whole) to fit file systems.

    File names are limited to 255 bytes; two long image names joined would not fit.
    """
    name = "__".join(parts)
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return name
    digest = hashlib.blake2b(raw, digest_size=5).hexdigest()
    keep = max(8, (limit - 12) // max(1, len(parts)) - 2)
    short = "__".join(
        p.encode("utf-8", "surrogateescape")[:keep].decode("utf-8", "ignore") for p in parts
    )
    return f"{short}-{digest}"


def free_stem(out: Path, base: str, owns: Callable[[dict], bool]) -> str:
    """The file name (no suffix) for a result in ``out``: ``base``, or ``base-2``, ``-3``...
    when that name holds another input's result. ``owns(doc)`` says whether a stored JSON is
    this input's own (a rerun replaces it); a name whose JSON cannot be read is never taken."""
    for k in range(1, 10_000):
        stem = base if k == 1 else f"{base}-{k}"
        json_path, png_path = out / f"{stem}.json", out / f"{stem}.png"
        if not json_path.exists() and not png_path.exists():
            return stem
        try:
            doc = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and owns(doc):
            return stem
    raise ValueError(f"{out}: too many results named {base}; use another --out")


def check_out_dir(path: str | os.PathLike, flag: str = "--out", create: bool = True) -> Path:
    """Make sure ``path`` is (or can become) a writable folder; raise ``ValueError`` otherwise.

    Called before a run starts its work, so a wrong ``--out`` fails in a second, not after
    an hour of embedding. ``create=False`` only checks (the nearest existing parent must be a
    writable folder), so a run that then fails on its inputs leaves no empty folder behind.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: {flag} must be a folder, but a file of that name exists")
    if not create and not out.exists():
        parent = out.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise ValueError(f"{out}: cannot create the {flag} folder ({parent} is a file)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"{out}: cannot create the {flag} folder ({parent} is not writable)")
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{out}: cannot create the {flag} folder ({exc.strerror or exc})") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"{out}: the {flag} folder is not writable")
    return out


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory lock, renames still whole
        yield
        return
    with open(out / LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pid_of(staging: Path) -> int | None:
    text = staging.name[len(STAGING_PREFIX) :].split("-", 1)[0]
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _roll_forward(out: Path) -> None:
    """Finish a commit that a crash interrupted (its journal is still there)."""
    journal = out / JOURNAL
    if not journal.exists():
        return
    try:
        doc = json.loads(journal.read_text(encoding="utf-8"))
        staging = out / doc["staging"]
        for name in doc["files"]:
            if (staging / name).exists():
                os.replace(staging / name, out / name)
        shutil.rmtree(staging, ignore_errors=True)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    journal.unlink(missing_ok=True)


def _remove_stale(out: Path) -> None:
    for staging in out.glob(f"{STAGING_PREFIX}*"):
        pid = _pid_of(staging)
        if pid is not None and pid != os.getpid() and not _alive(pid):
            shutil.rmtree(staging, ignore_errors=True)


def _commit(out: Path, staging: Path) -> None:
    names = sorted(p.name for p in staging.iterdir())
    for name in names:
        with open(staging / name, "rb") as fh:
            os.fsync(fh.fileno())
    with _locked(out):
        _roll_forward(out)
        journal = out / JOURNAL
        tmp = staging / JOURNAL
        tmp.write_text(json.dumps({"staging": staging.name, "files": names}), encoding="utf-8")
        os.replace(tmp, journal)
        try:
            for name in names:
                os.replace(staging / name, out / name)
        except BaseException:  # interrupted half-way: finish the move, then stop
            _roll_forward(out)  # (after a kill -9 the journal makes the next run do it)
            raise
        journal.unlink()
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def output_set(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Stage a set of files and move them into ``out_dir`` together.

    Write every file of the set into the folder this yields; when the block ends without an
    error they replace the old ones in ``out_dir`` (other files there are left alone). On an
    error (a full disk, a cancel) nothing in ``out_dir`` changes.
    """
    out = check_out_dir(out_dir)
    with _locked(out):
        _roll_forward(out)  # first: a journal may name a dead process's staging folder
        _remove_stale(out)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _commit(out, staging)
