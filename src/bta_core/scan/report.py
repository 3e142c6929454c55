"""The self-contained HTML report of a scan, written for an editor who must act on it.

At the top: one summary line (how many pairs are ``same`` and by which evidence, how many are
``suspect``), the scan's facts, and a legend of verdicts, evidence and the match figure. Then one
card per pair worth reviewing (``same`` or ``suspect``, best first by ``verdict.rank_key``):
verdict and evidence, both thumbnails with their path relative to the scanned folders (full path
on hover), a known description when the caller has one (the demo's planted pairs), and for the
best pairs a full-width figure of where the two images match (click to enlarge). ``different``
pairs appear only when asked for (``extra_pairs``). With ``within`` (``scan --within-figures``)
a section lists the panels repeated inside one figure. Every file name is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from ..dihedral import describe_d4
from ..imageio import to_uint8
from ..runtime import ProgressFn
from ..verdict import (
    COLLECTION_LOOK_ALIKE,
    DEFAULT_PHASH_MAX_DISTANCE,
    DIFFERENT,
    IDENTICAL_PIXELS,
    PERCEPTUAL_HASH,
    SAME,
    SUSPECT,
    VERIFIED_OVERLAP,
)
from .groups import CopyGroup, group_numbers, groups_text, listed_groups
from .records import Pair, ScanImage, ScanResult
from .verify import load_scan_image

if TYPE_CHECKING:
    from ..match.within import FigureSearch

THUMB_SIZE = 220
REVIEW_CAP = 1000
"""At most this many same/suspect cards in one page (the CSV and JSON list every pair)."""
MATCH_DPI = 100
GROUPS_SHOWN = 50
GROUP_MEMBERS_SHOWN = 24
"""Thumbnails per group (2,000 identical blank frames must not make a 50 MB page)."""
WITHIN_SIZE = 640
"""Longest side of a figure with its repeated panels boxed (its boxes and numbers must show)."""

SAME_KINDS = (IDENTICAL_PIXELS, PERCEPTUAL_HASH, VERIFIED_OVERLAP)


def _asset(name: str) -> str:
    """The report's stylesheet or script, shipped as package data beside this module."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def thumbnail_uri(rgb: np.ndarray, size: int = THUMB_SIZE) -> str:
    """A small JPEG of an RGB float image as a ``data:`` URI (keeps the report self-contained)."""
    from PIL import Image

    im = Image.fromarray(to_uint8(rgb))
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def summary_text(pairs: Sequence[Pair]) -> str:
    """``"6 same (4 by perceptual hash, 2 by verified overlap), 3 suspect"``: the one phrase
    the report, ``bta-core scan`` and ``bta-core demo`` print."""
    same = Counter(p.decided_by for p in pairs if p.verdict == SAME)
    n_same = sum(same.values())
    n_suspect = sum(p.verdict == SUSPECT for p in pairs)
    parts = [f"{same[k]} by {k}" for k in SAME_KINDS if same[k]]
    text = f"{n_same} same" + (f" ({', '.join(parts)})" if parts else "")
    text += f", {n_suspect} suspect (model score only)"
    n_look = sum(p.decided_by == COLLECTION_LOOK_ALIKE for p in pairs)
    if n_look:
        text += f", {n_look} high-scoring look-alike{'s' if n_look > 1 else ''} set aside"
    return text


def common_root(items: Sequence[ScanImage]) -> str:
    """The deepest folder holding every scanned file ("" when there is none)."""
    dirs = [os.path.dirname(os.path.abspath(it.path)) for it in items]
    if not dirs:
        return ""
    try:
        root = os.path.commonpath(dirs)
    except ValueError:  # different drives
        return ""
    return "" if root in ("", os.sep) else root


def display_name(name: str, item: ScanImage | None, root: str) -> str:
    """A scanned image's name relative to ``root``, keeping a plane suffix like ``[c=1]``."""
    if item is None or not root:
        return name
    suffix = name[len(item.path) :] if name.startswith(item.path) else ""
    return os.path.relpath(os.path.abspath(item.path), root) + suffix


def select_pairs(pairs: Sequence[Pair], extra_pairs: int = 0) -> list[Pair]:
    """The pairs worth reviewing (same, suspect; at most ``REVIEW_CAP``), then the best
    ``extra_pairs`` of the others."""
    review = [p for p in pairs if p.verdict != DIFFERENT][:REVIEW_CAP]
    others = [p for p in pairs if p.verdict == DIFFERENT][: max(0, extra_pairs)]
    return review + others


def evidence_lines(p: Pair, threshold: float | None) -> list[str]:
    """What is known about a pair, one short HTML line per kind of evidence."""
    ev = p.evidence
    lines = []
    if ev.identical_pixels:
        lines.append("<b>identical pixels</b>")
    if ev.phash_distance is not None and p.decided_by == PERCEPTUAL_HASH:
        lines.append(
            f"<b>perceptual hash</b>: {ev.phash_distance} of 256 bits differ "
            f"({_esc(describe_d4(ev.phash_orientation))})"
        )
    if ev.verified:
        conf = f", confidence {ev.match_confidence:.2f}" if ev.match_confidence is not None else ""
        lines.append(f"<b>overlap verified</b>: {_esc(ev.transform or 'located')}{conf}")
        if ev.local_edits:
            lines.append(
                f"<b>local difference</b>: B differs from A in {ev.local_edits} grid "
                f"cell{'s' if ev.local_edits > 1 else ''} of the overlap (pasted or erased "
                "content?), boxed in red on A and B in the match figure"
            )
    elif ev.not_checked:
        lines.append(f"<b>not keypoint-checked</b>: {_esc(ev.not_checked)}")
    elif ev.verified is False:
        lines.append("keypoint check: no shared region located")
    if ev.model_score is not None:
        thr = f" (threshold {threshold:.3f})" if threshold is not None else ""
        lines.append(f"model score {ev.model_score:.3f}{thr}")
    if ev.collection_similarity is not None:
        lines.append(f"collection similarity {ev.collection_similarity:.2f}")
    if p.orientation:
        lines.append(f"model score best with: {_esc(describe_d4(p.orientation))}")
    return lines


def _match_figure(rgb_a: np.ndarray, rgb_b: np.ndarray) -> str:
    """The located region as an inline PNG figure, or a note when none is found."""
    import tempfile

    from ..match import match_images, render_match_png

    try:
        res = match_images(rgb_a, rgb_b, model=None)
        if not res.found:
            return '<p class="note">Where they match: no shared region located.</p>'
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "match.png")
            render_match_png(rgb_a, rgb_b, res, path, dpi=MATCH_DPI)
            uri = _jpeg_uri(path)
    except Exception as exc:  # the figure is a bonus: never fail the report for it
        return f'<p class="note">Match figure failed: {_esc(type(exc).__name__)}</p>'
    return (
        '<figure class="match"><img class="zoom" alt="where A and B match" '
        f'title="click to enlarge" src="{uri}"></figure>'
    )


def shown_groups(groups: Sequence[CopyGroup]) -> list[CopyGroup]:
    """The groups the report shows in their own section: the largest listed ones."""
    return listed_groups(groups)[:GROUPS_SHOWN]


def _groups_section(groups: Sequence[CopyGroup], figure) -> str:
    """Each listed group of copies (``groups.LISTED_MIN`` or more): its images side by side."""
    big = shown_groups(groups)
    if not big:
        return ""
    blocks = []
    for g in big:
        how = ", ".join(f"{n} by {_esc(kind)}" for kind, n in g.decided_by.items())
        blocks.append(
            f'<div class="copy-group" id="group-{g.number}"><b>Group {g.number}</b>: '
            f"{len(g.members)} images of one source, joined by {g.n_same_pairs} same pairs "
            f'({how})<div class="members">{"".join(figure(m) for m in g.members[:GROUP_MEMBERS_SHOWN])}'
            + (
                f"<p>and {len(g.members) - GROUP_MEMBERS_SHOWN} more (group {g.number} in pairs.csv)</p>"
                if len(g.members) > GROUP_MEMBERS_SHOWN
                else ""
            )
            + "</div></div>"
        )
    rest = len(groups) - len(big)
    noun = "group" if rest == 1 else "groups"
    tail = f"<p>{rest} more {noun}, of two images each or beyond the first {GROUPS_SHOWN}: the group column of pairs.csv numbers them all.</p>"
    title = groups_text(groups)
    return (
        f'<section class="groups"><h2>{_esc(title[:1].upper() + title[1:])}</h2>'
        f"{''.join(blocks)}{tail if rest else ''}</section>"
    )


def _jpeg_uri(png_path: str, quality: int = 88, size: int | None = None) -> str:
    """A rendered figure as an inline JPEG (at most ``size`` pixels a side when given): a fifth
    of the PNG's size, so a report of many pairs stays small enough to open and mail."""
    from PIL import Image

    buf = io.BytesIO()
    with Image.open(png_path) as im:
        rgb = im.convert("RGB")
        if size is not None:
            rgb.thumbnail((size, size))
        rgb.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _repeats_uri(name: str, search: FigureSearch) -> str:
    """The figure with its repeated pairs boxed (``render_repeats_png``) as an inline JPEG of
    at most ``WITHIN_SIZE`` pixels a side; "" when the file cannot be read any more."""
    import tempfile

    from ..imageio import load_named
    from ..match.within import render_repeats_png

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = render_repeats_png(load_named(name), search, os.path.join(tmp, "repeats.png"))
            return _jpeg_uri(str(path), size=WITHIN_SIZE)
    except Exception:  # changed or gone since the search: the lines below still say it
        return ""


def _within_section(within: Sequence[tuple[str, FigureSearch]], shown_name, full_name) -> str:
    """Panels repeated inside one figure (``scan --within-figures``): per figure with repeats
    its boxed image, its counts and one line per pair; figures without are only counted."""
    from ..match.within import describe_counts, describe_pair

    cards = []
    for name, search in within:
        if not search.repeated:
            continue
        uri = _repeats_uri(name, search)
        img = (
            f'<figure class="match"><img class="zoom" style="width:auto;max-width:100%" '
            f'alt="{shown_name(name)}" title="click to enlarge" src="{uri}"></figure>'
            if uri
            else '<p class="note">(unreadable)</p>'
        )
        lines = "".join(
            f"<li>{_esc(describe_pair(p, k))}</li>" for k, p in enumerate(search.repeated, 1)
        )
        cards.append(
            f'<section class="pair with-figure"><div class="head">'
            f'<div class="path" title="{full_name(name)}"><b>{shown_name(name)}</b></div>'
            f'{_esc(describe_counts(search))}<ul class="evidence">{lines}</ul></div>{img}</section>'
        )
    n_pairs = sum(len(s.repeated) for _, s in within)
    checked = sum(len(s.pairs) for _, s in within)
    rest = len(within) - len(cards)
    counts = (
        f"{_count(n_pairs, 'repeated pair')} in {len(cards)} of {_count(len(within), 'image')} "
        f"searched ({_count(checked, 'pair')} of panels checked)"
        + (f"; {rest} with none" if rest else "")
        + ". Boxes of one colour and number: one pair (thick: same, thin: suspect)."
    )
    return (
        '<section class="within"><h2>Panels repeated inside one figure</h2>'
        f'<p class="meta">{counts}</p>{"".join(cards)}</section>'
    )


def _legend(phash_max: int) -> str:
    return f"""<details class="legend" open><summary>How to read this report</summary>
<dl>
<dt><span class="badge v-same">same</span></dt><dd>Evidence of reuse, the strongest decides:
<b>identical pixels</b> (as decoded: 16-bit and float images after each channel's intensity
scaling, so a linearly rescaled copy counts); <b>perceptual hash</b> (a near-exact copy, also rotated, mirrored,
re-compressed or recoloured: at most {phash_max} of 256 hash bits differ);
<b>verified overlap</b> (keypoints and pixel agreement locate a shared region: crops,
rotations, partial retouching).</dd>
<dt><span class="badge v-suspect">suspect</span></dt><dd>The model score is at or above the
model's threshold, with none of that evidence, and the pair stands out among the scanned images
(collection similarity at or above the model's collection threshold). Look at the pair: the
model sees reuse where keypoints fail (strong blur, flat texture), and look-alike images can
fool it.</dd>
<dt><span class="badge v-different">different</span></dt><dd>No evidence of reuse (shown only
with <code>--report-pairs N</code>).</dd>
<dt>model score</dt><dd>The BTA similarity head's raw score: it ranks the pairs and is
compared with the model's threshold; pairs.csv also gives its calibrated probability.</dd>
<dt>group</dt><dd>Images joined by "same" pairs are one group of copies of one source;
groups of three or more images are shown once at the top.</dd>
<dt>collection similarity</dt><dd>How alike the pair is once what all scanned images share
(stain, camera, modality) is taken out: the cosine of the two embeddings after whitening them
with this scan's own images. Look-alikes of one lab score near 0; copies score high.</dd>
<dt>match figure</dt><dd>(1) A with the shared region outlined in cyan and matched keypoints in
yellow; (2) B with the same region; (3) B warped onto A: grey where they agree, magenta (A only)
or green (B only) where they differ; (4) how well each tile of A agrees (bright: agrees).
Click a figure to enlarge it.</dd>
</dl></details>"""


def _count(n: int, noun: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def collection_fact(stats: dict) -> str:
    """Whether the collection evidence gated the model-only pairs, in a few words (report and
    console summary)."""
    t = stats.get("collection_threshold")
    if stats.get("collection_whitening") and t is not None:
        borrowed = stats.get("index_background")
        whence = f" (with {borrowed} indexed images: few scanned)" if borrowed else ""
        return f", collection threshold {float(t):.3f}{whence}"
    if "collection_whitening" in stats:
        few = "fewer than 16 images" + (", even with the index" if stats.get("index") else "")
        return f", no collection evidence ({few}, switched off or not calibrated)"
    return ""


def render_report(
    result: ScanResult,
    extra_pairs: int = 0,
    match_top: int = 0,
    notes: dict[frozenset[str], str] | None = None,
    on_progress: ProgressFn | None = None,
    within: Sequence[tuple[str, FigureSearch]] | None = None,
) -> str:
    """The report page. ``match_top``: match figures for the best N same/suspect pairs;
    ``notes``: known descriptions keyed by ``frozenset({name_a, name_b})``; ``within``: each
    searched image's name and its ``FigureSearch`` (``scan --within-figures``)."""
    items = {it.name: it for it in result.items}
    root = common_root(result.items)
    thumbs: dict[str, str] = {}
    stats = result.stats
    threshold = stats.get("threshold")

    def load(name: str) -> np.ndarray | None:
        item = items.get(name)
        try:
            return None if item is None else load_scan_image(item)
        except Exception:  # the file changed or vanished since the scan
            return None

    def path_line(name: str, label: str) -> str:
        shown = display_name(name, items.get(name), root)
        full = os.path.abspath(items[name].path) if name in items else name
        return f'<div class="path" title="{_esc(full)}"><b>{label}</b> {_esc(shown)}</div>'

    def image_cell(name: str, label: str) -> str:
        if name not in thumbs:
            rgb = load(name)
            thumbs[name] = "" if rgb is None else thumbnail_uri(rgb)
        alt = _esc(display_name(name, items.get(name), root))
        img = f'<img src="{thumbs[name]}" alt="{alt}">' if thumbs[name] else "(unreadable)"
        return f'<div class="img">{img}{path_line(name, label)}</div>'

    def image_cell_small(name: str) -> str:
        if name not in thumbs:  # decoded once: the pair cards below use the same thumbnail
            rgb = load(name)
            thumbs[name] = "" if rgb is None else thumbnail_uri(rgb)
        uri = thumbs[name]
        shown_name = _esc(display_name(name, items.get(name), root))
        img = f'<img src="{uri}" alt="{shown_name}">' if uri else "(unreadable)"
        full = _esc(os.path.abspath(items[name].path) if name in items else name)
        return f'<figure title="{full}">{img}<figcaption>{shown_name}</figcaption></figure>'

    groups = result.groups
    group_of = group_numbers(groups)
    linked = {g.number for g in shown_groups(groups)}
    shown = select_pairs(result.pairs, extra_pairs)
    cards = []
    n_figures = 0
    for rank, p in enumerate(shown, 1):
        note = (notes or {}).get(frozenset((p.path_a, p.path_b)))
        verdict_by = "" if p.verdict == DIFFERENT else f" by {_esc(p.decided_by)}"
        if p.verdict == SAME and p.path_a in group_of:
            n = group_of[p.path_a]
            if n in linked:  # a group of 3 or more: its section above shows all its images
                verdict_by += f' <a class="group-tag" href="#group-{n}">group {n}</a>'
        ev = "".join(f"<li>{line}</li>" for line in evidence_lines(p, threshold))
        known = f'<p class="known">Known: {_esc(note)}</p>' if note else ""
        figure = ""
        # a pair whose keypoint check found no region gets no figure (its evidence says so)
        if n_figures < match_top and p.verdict != DIFFERENT and p.verified is not False:
            n_figures += 1
            a, b = load(p.path_a), load(p.path_b)
            if a is not None and b is not None:
                figure = _match_figure(a, b)
        head = (
            f'<div class="head"><span class="rank">{rank}</span>'
            f'<span class="badge v-{p.verdict}">{p.verdict}</span>{verdict_by}'
            f'<ul class="evidence">{ev}</ul>{known}'
        )
        if figure.startswith("<figure"):  # the figure shows both images large
            body = f"{path_line(p.path_a, 'A')}{path_line(p.path_b, 'B')}</div>{figure}"
            layout = "with-figure"
        else:
            body = f"</div>{image_cell(p.path_a, 'A')}{image_cell(p.path_b, 'B')}{figure}"
            layout = "with-thumbs"
        cards.append(f'<section class="pair v-{p.verdict} {layout}">{head}{body}</section>')
        if on_progress is not None:
            on_progress(rank, len(shown), {"stage": "report"})

    n_review = sum(p.verdict != DIFFERENT for p in result.pairs)
    more = ""
    if n_review > REVIEW_CAP:
        more = f" Showing the first {REVIEW_CAP} of {n_review}; pairs.csv lists them all."
    model_name = os.path.basename(str(stats.get("checkpoint") or "in-memory model"))
    facts = (
        _count(int(stats.get("n_images", len(result.items))), "image")
        + (f' in <code title="{_esc(root)}">{_esc(root)}</code>' if root else "")
        + f", {len(result.skipped)} skipped"
        + (' (<a href="#skipped">list</a>)' if result.skipped else "")
        + f"; {stats.get('n_pairs_scored', 0)} pairs scored ({_esc(stats.get('method', ''))}),"
        f" {stats.get('n_checked', 0)} checked by keypoints. Model {_esc(model_name)}"
        + (f", threshold {threshold:.3f}" if threshold is not None else "")
        + collection_fact(stats)
        + f". Paths are relative to that folder; hover for the full path.{more}"
    )
    skipped_html = ""
    if result.skipped:

        def rel(path: str) -> str:
            full = os.path.abspath(path)
            inside = root and full.startswith(root + os.sep)
            return os.path.relpath(full, root) if inside else path

        rows = "".join(
            f'<li><code title="{_esc(os.path.abspath(k.path))}">{_esc(rel(k.path))}</code>: '
            f"{_esc(k.problem)}</li>"
            for k in result.skipped
        )
        skipped_html = f'<h2 id="skipped">Skipped files ({len(result.skipped)})</h2><ul>{rows}</ul>'
    empty = "" if cards else '<p class="none">No pair is same or suspect.</p>'
    groups_html = _groups_section(groups, image_cell_small)
    within_html = ""
    if within is not None:
        within_html = _within_section(
            within,
            lambda n: _esc(display_name(n, items.get(n), root)),
            lambda n: _esc(os.path.abspath(items[n].path) if n in items else n),
        )
    filters = "".join(
        f'<label><input type="checkbox" data-verdict="{v}" checked> {v}</label>'
        for v in (SAME, SUSPECT, DIFFERENT)
        if any(p.verdict == v for p in shown)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>bta-core scan report</title>"
        f"<style>{_asset('report.css')}</style></head><body>"
        f'<header><h1>{_esc(summary_text(result.pairs))}</h1><p class="meta">{facts}</p>'
        f"{_legend(int(stats.get('phash_max_distance', DEFAULT_PHASH_MAX_DISTANCE)))}"
        f'<p class="filters">Show: {filters}</p></header>'
        f"<main>{groups_html}{''.join(cards)}{empty}{within_html}</main>{skipped_html}"
        f"<script>{_asset('report.js')}</script></body></html>\n"
    )
