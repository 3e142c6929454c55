"""Scan outputs written atomically: pairs.csv, pairs.json, skipped.csv and report.html.

pairs.csv and pairs.json also say which group of copies each ``same`` pair belongs to."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoint import atomic_write
from ..model import BTAModel
from ..output_files import csv_text, json_text, output_set, write_text
from ..runtime import ProgressFn
from ..verdict import SAME
from .groups import CopyGroup, copy_groups, group_numbers
from .records import Pair, ScanResult, Skipped
from .report import render_report

if TYPE_CHECKING:
    from ..match.within import FigureSearch

PAIR_COLUMNS = (
    "path_a",
    "path_b",
    "verdict",
    "decided_by",
    "probability",
    "score",
    "identical_pixels",
    "phash_distance",
    "phash_orientation",
    "verified",
    "match_confidence",
    "transform",
    "collection_similarity",
    "local_edits",
    "not_checked",
    "group",
)
"""Columns of pairs.csv (plus ``orientation`` with TTA): the decision, its evidence, and the
number of the group of copies a ``same`` pair belongs to (``groups.copy_groups``)."""


def _cell(value) -> str | int:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return f"{value:.6f}"
    return value


def pairs_csv_text(
    pairs: Sequence[Pair], tta: str | None = None, groups: Sequence[CopyGroup] | None = None
) -> str:
    """One row per pair, best first (``verdict.rank_key``); empty cells: evidence not checked."""
    header = list(PAIR_COLUMNS) + (["orientation"] if tta else [])
    group = group_numbers(copy_groups(pairs) if groups is None else groups)
    rows = []
    for p in pairs:
        ev = p.evidence
        row = [p.path_a, p.path_b, p.verdict, p.decided_by, f"{p.probability:.6f}"]
        row += [f"{p.score:.6f}", _cell(ev.identical_pixels), _cell(ev.phash_distance)]
        row += [_cell(p.decision.hash_orientation), _cell(ev.verified)]
        row += ["" if ev.match_confidence is None else f"{ev.match_confidence:.4f}"]
        row += [_cell(ev.transform)]
        row += ["" if ev.collection_similarity is None else f"{ev.collection_similarity:.3f}"]
        row += [_cell(ev.local_edits), _cell(ev.not_checked)]
        row += [group.get(p.path_a, "") if p.verdict == SAME else ""]
        row += [p.orientation or ""] if tta else []
        rows.append(row)
    return csv_text(header, rows)


def pair_dicts(pairs: Sequence[Pair], groups: Sequence[CopyGroup]) -> list[dict]:
    """pairs.json's pairs: each pair's dict plus its ``group`` (as pairs.csv; None unless same).
    ``groups``: those of the whole scan, so a list of its best pairs keeps their numbers."""
    group = group_numbers(groups)
    return [
        {**p.to_dict(), "group": group.get(p.path_a) if p.verdict == SAME else None} for p in pairs
    ]


def skipped_csv_text(skipped: Sequence[Skipped]) -> str:
    """``path, problem`` for every file that could not be used."""
    return csv_text(["path", "problem"], [[s.path, s.problem] for s in skipped])


def write_pairs_csv(path: str | os.PathLike, pairs: Sequence[Pair], tta: str | None = None) -> None:
    """Write ``pairs_csv_text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: write_text(tmp, pairs_csv_text(pairs, tta)))


def write_skipped_csv(path: str | os.PathLike, skipped: Sequence[Skipped]) -> None:
    """Write ``skipped_csv_text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: write_text(tmp, skipped_csv_text(skipped)))


def write_outputs(
    result: ScanResult,
    out_dir: str | os.PathLike,
    *,
    report_pairs: int = 0,
    match_top: int = 0,
    model: BTAModel | None = None,
    notes: dict[frozenset[str], str] | None = None,
    on_progress: ProgressFn | None = None,
    within: Sequence[tuple[str, FigureSearch]] | None = None,
) -> dict[str, str]:
    """Write pairs.csv, pairs.json, skipped.csv and report.html into ``out_dir`` as one set.

    The four files are staged and moved in together (``output_files.output_set``): an error
    while writing leaves the previous set untouched, concurrent runs never mix their files.
    ``within`` (``scan --within-figures``: each image's name and ``FigureSearch``) adds its
    section to the report and ``within_figures.json`` to the set.
    """
    out = Path(out_dir)
    tta = result.stats.get("tta")
    doc = {
        "stats": result.stats,
        "pairs": pair_dicts(result.pairs, result.groups),
        "groups": [g.to_dict() for g in result.groups],
        "skipped": [asdict(s) for s in result.skipped],
    }
    page = render_report(
        result,
        extra_pairs=report_pairs,
        match_top=match_top,
        notes=notes,
        on_progress=on_progress,
        within=within,
    )
    with output_set(out) as staging:
        if within is not None:
            docs = [{"image": name, **search.to_dict()} for name, search in within]
            write_text(staging / WITHIN_FILE, json_text(docs))
        write_text(staging / "pairs.csv", pairs_csv_text(result.pairs, tta, result.groups))
        write_text(staging / "skipped.csv", skipped_csv_text(result.skipped))
        write_text(staging / "pairs.json", json_text(doc))
        write_text(staging / "report.html", page)
    result.out_dir = str(out)
    return {name: str(out / name) for name in OUTPUT_FILES}


OUTPUT_FILES = ("pairs.csv", "pairs.json", "skipped.csv", "report.html")
WITHIN_FILE = "within_figures.json"
"""Written with the set by ``scan --within-figures`` (``within``)."""
