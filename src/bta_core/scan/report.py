"""The self-contained HTML report of a scan: thumbnails side by side, score, verdict."""

from __future__ import annotations

import base64
import html
import io
import os
from importlib import resources

import numpy as np

from ..imageio import to_uint8
from ..model import BTAModel
from ..runtime import ProgressFn
from ..verdict import rank_key
from .records import Pair, ScanResult
from .verify import load_scan_image

THUMB_SIZE = 192


def _asset(name: str) -> str:
    """The report's stylesheet or script, shipped as package data beside this module."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail_uri(rgb: np.ndarray, size: int = THUMB_SIZE) -> str:
    """A small JPEG of an RGB float image as a ``data:`` URI (keeps the report self-contained)."""
    from PIL import Image

    im = Image.fromarray(to_uint8(rgb))
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _verdict_html(p: Pair) -> str:
    """The verdict and the evidence that decided it (``verdict.decide``), e.g. same / perceptual hash."""
    text = f"<b>{html.escape(p.verdict)}</b><br><small>{html.escape(p.decided_by)}</small>"
    if p.verified:
        detail = html.escape(p.transform or "")
        text += f'<br><span class="verified" title="{detail}">&#10003; overlap verified</span>'
        text += f"<br><small>{detail}</small>" if detail else ""
    elif p.verified is False:
        text += "<br><small>no geometric match</small>"
    return text


def render_report(
    result: ScanResult,
    max_pairs: int = 200,
    match_top: int = 0,
    model: BTAModel | None = None,
    on_progress: ProgressFn | None = None,
) -> str:
    """The self-contained HTML page: side-by-side thumbnails, score, verdict; sortable columns.

    ``match_top`` adds the localisation overlay of ``bta_core.match`` for the best pairs when
    that module is installed.
    """
    items = {it.name: it for it in result.items}
    thumbs: dict[str, str] = {}
    matcher = None
    if match_top:
        try:
            from .. import match as matcher  # optional: the localisation module
        except ImportError:
            matcher = None

    def load(name: str) -> np.ndarray | None:
        it = items.get(name)
        if it is None:
            return None
        try:
            return load_scan_image(it)
        except Exception:  # the file changed or vanished since the scan
            return None

    def thumb(name: str) -> str:
        if name not in thumbs:
            rgb = load(name)
            thumbs[name] = "" if rgb is None else thumbnail_uri(rgb)
        return thumbs[name]

    shown = result.pairs[:max_pairs]
    rows = []
    for rank, p in enumerate(shown, 1):
        ta, tb = thumb(p.path_a), thumb(p.path_b)
        overlay = ""
        if matcher is not None and rank <= match_top:
            rgb_a, rgb_b = load(p.path_a), load(p.path_b)
            if rgb_a is not None and rgb_b is not None:
                overlay = _match_overlay(matcher, rgb_a, rgb_b, model)
        cells = [
            (str(rank), str(rank)),
            (f"{p.score:.4f}", f'<td class="score" data-v="{p.score:.6f}">{p.score:.4f}</td>'),
            (f"{rank_key(p.decision)[0]}", _verdict_html(p)),
            (p.path_a, f'<img src="{ta}" alt="">' if ta else "(unreadable)"),
            (p.path_b, f'<img src="{tb}" alt="">' if tb else "(unreadable)"),
        ]
        html_cells = []
        for v, content in cells:
            if content.startswith("<td"):
                html_cells.append(content)
            else:
                html_cells.append(f'<td data-v="{html.escape(v, quote=True)}">{content}</td>')
        html_cells.append(
            f'<td class="path" data-v="{html.escape(p.path_a, quote=True)}">{html.escape(p.path_a)}</td>'
        )
        html_cells.append(
            f'<td class="path" data-v="{html.escape(p.path_b, quote=True)}">{html.escape(p.path_b)}</td>'
        )
        orient = p.orientation or ""
        html_cells.append(f'<td data-v="{html.escape(orient)}">{html.escape(orient)}</td>')
        if match_top:
            html_cells.append(f'<td data-v="">{overlay}</td>')
        cls = f' class="{html.escape(p.verdict)}"'
        rows.append(f"<tr{cls}>" + "".join(html_cells) + "</tr>")
        if on_progress is not None:
            on_progress(rank, len(shown), {"stage": "report"})
    headers = ["#", "score", "verdict", "image a", "image b", "path a", "path b", "orientation"]
    if match_top:
        headers.append("match")
    s = result.stats
    meta = (
        f"{s.get('n_images', 0)} images, {len(result.skipped)} skipped, "
        f"{s.get('n_pairs_scored', 0)} pairs scored ({s.get('method', '')}), "
        f"{len(result.pairs)} listed (threshold {s.get('threshold', float('nan')):.3f}, "
        f"top {s.get('top_k', '')}); showing {len(shown)}. Model {s.get('model_id', '')[:12]}."
    )
    skipped_html = ""
    if result.skipped:
        items_html = "".join(
            f"<li><code>{html.escape(k.path)}</code>: {html.escape(k.problem)}</li>"
            for k in result.skipped
        )
        skipped_html = f"<h2>Skipped files ({len(result.skipped)})</h2><ul>{items_html}</ul>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>bta-core scan report</title>"
        f"<style>{_asset('report.css')}</style></head><body>"
        "<h1>bta-core scan report</h1>"
        f'<p class="meta">{html.escape(meta)} Click a column header to sort.</p>'
        "<table><thead><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + f"</tbody></table>{skipped_html}<script>{_asset('report.js')}</script></body></html>\n"
    )


def _match_overlay(matcher, rgb_a: np.ndarray, rgb_b: np.ndarray, model: BTAModel | None) -> str:
    """The localisation overlay as an inline PNG, or a short note when it fails."""
    import tempfile

    try:
        res = matcher.match_images(rgb_a, rgb_b, model=model)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "match.png")
            matcher.render_match_png(rgb_a, rgb_b, res, path, dpi=80)
            with open(path, "rb") as fh:
                return f'<img class="match" src="{_png_data_uri(fh.read())}" alt="match">'
    except Exception as exc:  # the overlay is a bonus: never fail the report for it
        return html.escape(f"(match failed: {type(exc).__name__})")
