"""The scan report an editor reads, ``bta-core scan --json`` and the CLI's help text."""

from __future__ import annotations

import argparse
import html.parser
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from bta_core.cli import SUBCOMMANDS, build_parser
from bta_core.cli import main as cli_main
from bta_core.cli._progress import StageBars
from bta_core.imageio import load_image, to_uint8
from bta_core.scan.records import Pair, ScanImage, ScanResult, Skipped
from bta_core.scan.report import render_report, summary_text
from bta_core.verdict import Evidence, Policy, decide


class _Page(html.parser.HTMLParser):
    """Cards (``section``) with their verdict class, titles and images of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[str] = []
        self.titles: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        a = dict(attrs)
        if tag == "section":
            self.cards.append(a["class"])
        if "title" in a:
            self.titles.append(a["title"])
        if tag == "img":
            self.images.append(a["src"])


def _pair(a: str, b: str, policy: Policy, **evidence) -> Pair:
    return Pair(a, b, decide(Evidence(**evidence), policy))


@pytest.fixture()
def result(tmp_path, bccd_images) -> ScanResult:
    """Three real smears (one mirrored copy, one with a hostile name) in nested folders."""
    root = tmp_path / "figures"
    (root / "fig 2").mkdir(parents=True)
    names = [root / "fig 2" / "a.jpg", root / "b <i>&amp.jpg", root / "c.jpg"]
    for src, dst in zip(bccd_images[:3], names, strict=True):
        shutil.copy(src, dst)
    items = [ScanImage(str(p), str(p), "query", "h") for p in names]
    policy = Policy(threshold=0.5)
    a, b, c = (str(p) for p in names)
    pairs = [
        _pair(a, b, policy, model_score=0.2, phash_distance=3, phash_orientation="flip"),
        _pair(a, c, policy, model_score=0.7, verified=False),
        _pair(b, c, policy, model_score=0.1),
    ]
    stats = {"n_images": 3, "n_pairs_scored": 3, "threshold": 0.5, "n_checked": 1}
    return ScanResult(pairs, [Skipped(str(root / "bad.png"), "truncated")], items, stats)


def test_report_tells_the_editor_what_was_found(result):
    a, b = result.pairs[0].path_a, result.pairs[0].path_b
    page = render_report(result, notes={frozenset((a, b)): "planted <mirror>"})
    parsed = _Page()
    parsed.feed(page)
    # only the pairs worth reviewing, coloured by verdict
    assert [c.split()[1] for c in parsed.cards] == ["v-same", "v-suspect"]
    assert "<h1>1 same (1 by perceptual hash), 1 suspect (model score only)</h1>" in page
    assert "How to read this report" in page and "identical pixels" in page
    # paths relative to the scanned folders, the full path on hover, every name escaped
    assert "fig 2/a.jpg" in page and a in parsed.titles
    assert "<i>" not in page and "b &lt;i&gt;&amp;amp.jpg" in page
    assert "Known: planted &lt;mirror&gt;" in page
    assert "3 of 256 bits differ (B is A mirrored left-right)" in page
    assert "keypoint check: no shared region located" in page
    assert 'id="skipped"' in page and "truncated" in page
    assert len(parsed.images) == 4 and all(s.startswith("data:image/jpeg") for s in parsed.images)


def test_report_pairs_adds_the_best_different_pairs(result):
    parsed = _Page()
    parsed.feed(render_report(result, extra_pairs=5))
    assert [c.split()[1] for c in parsed.cards] == ["v-same", "v-suspect", "v-different"]


def test_report_match_figure_replaces_thumbnails(tmp_path, dsb_images):
    """A verified pair gets a click-to-enlarge figure of where the two images match."""
    rgb = load_image(dsb_images[0])
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(to_uint8(rgb)).save(a)
    Image.fromarray(to_uint8(np.rot90(rgb[20:, 10:]))).save(b)
    items = [ScanImage(str(p), str(p), "query", "h") for p in (a, b)]
    pair = _pair(str(a), str(b), Policy(0.5), model_score=0.9, verified=True, transform="rot90")
    page = render_report(ScanResult([pair], [], items, {"threshold": 0.5}), match_top=1)
    parsed = _Page()
    parsed.feed(page)
    assert parsed.cards == ["pair v-same with-figure"]
    assert len(parsed.images) == 1 and parsed.images[0].startswith("data:image/jpeg")
    assert 'class="zoom"' in page and "click to enlarge" in page


def test_summary_counts_each_kind_of_evidence():
    p = Policy(0.5)
    pairs = [
        _pair("a", "b", p, identical_pixels=True),
        _pair("a", "c", p, phash_distance=0),
        _pair("b", "c", p, verified=True),
        _pair("c", "d", p, verified=True),
        _pair("a", "d", p, model_score=0.6),
        _pair("b", "d", p, model_score=0.1),
    ]
    assert summary_text(pairs) == (
        "4 same (1 by identical pixels, 1 by perceptual hash, 2 by verified overlap), "
        "1 suspect (model score only)"
    )


def test_scan_json_prints_one_summary_object(tmp_path, bccd_images, capsys):
    folder = tmp_path / "q"
    folder.mkdir()
    for src in bccd_images[:3]:
        shutil.copy(src, folder / src.name)
    Image.open(bccd_images[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "copy.png")
    out = tmp_path / "out"
    argv = ["scan", str(folder), "--out", str(out), "--json", "--quiet", "--no-cache"]
    assert cli_main([*argv, "--match-top", "0", "--device", "cpu"]) == 0
    doc = json.loads(capsys.readouterr().out)  # stdout holds exactly one JSON object
    assert doc["counts"]["images"] == 4 and doc["counts"]["skipped"] == 0
    assert doc["counts"]["same"] == sum(doc["counts"]["same_by"].values()) >= 1
    top = doc["top_pairs"][0]
    assert top["verdict"] == "same" and top["decided_by"] and "phash_distance" in top
    assert {frozenset(p.split("/")[-1] for p in (top["path_a"], top["path_b"]))} == {
        frozenset((bccd_images[0].name, "copy.png"))
    }
    assert all((out / name).is_file() for name in ("pairs.csv", "report.html"))
    assert doc["outputs"]["report.html"] == str((out / "report.html").resolve())


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser(name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_option_has_help_and_shows_its_default(command):
    sub = _subparser(command)
    text = sub.format_help()
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "exit codes" in text
    for action in sub._actions:
        if isinstance(action, argparse._SubParsersAction) or action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings or action.dest}: no help text"
        d = action.default
        real_default = not (d is None or d is False or d is argparse.SUPPRESS or d == [])
        if action.option_strings and real_default:
            shown = sub._get_formatter()._get_help_string(action)
            assert "default" in shown.lower(), f"{command} {action.option_strings}: no default"


def test_stage_bars_draw_stages_without_their_own_bar(capsys):
    bars = StageBars(skip=("embed",))
    bars(1, 4, {"stage": "embed"})
    for step in range(1, 4):
        bars(step, 3, {"stage": "verify"})
    bars.close()
    err = capsys.readouterr().err
    assert "keypoint check" in err and "3/3" in err and "embed" not in err


def test_stage_bars_rate_counts_only_work_done_while_shown(capsys):
    """A resumed stage first reported at 280/300 shows no rate yet, not 280 steps in 0 s."""
    bars = StageBars()
    bars(280, 300, {"stage": "verify"})
    bars.close()
    shown = [line for line in capsys.readouterr().err.split("\r") if "280/300" in line]
    assert shown and all("?pair/s" in line for line in shown), shown


def test_stage_bars_in_a_log_file_draw_a_few_states_not_one_per_step(capsys):
    """stderr redirected to a file: 200 quick steps leave the opening and closing states only."""
    bars = StageBars()
    for step in range(1, 201):
        bars(step, 200, {"stage": "verify"})
    err = capsys.readouterr().err
    assert "200/200" in err and err.count("keypoint check") <= 4, err.count("keypoint check")


def test_console_line_names_a_local_retouch():
    """A copy with a patch pasted or erased: the console line must say so, as the report does."""
    from bta_core.cli.scan import console_pair

    p = Policy(0.5)
    edited = _pair("fig1.png", "fig8.png", p, verified=True, local_edits=13)
    clean = _pair("fig1.png", "fig2.png", p, verified=True)
    assert "differs locally in 13 cells" in console_pair(edited, {}, None)
    assert "differs locally" not in console_pair(clean, {}, None)


def test_many_groups_are_counted_by_size_not_cut_to_the_first_three():
    """Eight groups (six of 3 images, two of 2): the console line must say how many of each,
    not 'the largest: 3, 3, 3' while six are that large."""
    from bta_core.scan.groups import copy_groups, groups_text

    p = Policy(0.5)
    pairs = []
    for g in range(6):
        pairs += [_pair(f"g{g}a", f"g{g}b", p, identical_pixels=True)]
        pairs += [_pair(f"g{g}b", f"g{g}c", p, identical_pixels=True)]
    pairs += [_pair(f"h{g}a", f"h{g}b", p, phash_distance=0) for g in range(2)]
    groups = copy_groups(pairs)
    assert groups_text(groups) == "8 groups of copies (6 of 3 images, 2 of 2)"
    assert groups_text(groups[:3]) == "3 groups of copies (3, 3 and 3 images)"
