"""Panels repeated inside one figure (bta_core.match.within, ``bta-core match FIG``), on figures
built from real BCCD and DSB2018 pictures."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bta_core import cli
from bta_core.imageio import load_image, load_named
from bta_core.match.within import (
    NO_PANELS,
    describe_counts,
    describe_pair,
    find_repeated_panels,
    render_repeats_png,
)

SIDE, GUTTER = 240, 8

# four fluorescence test fields (different groups) whose hashes, each panel with a white letter
# box and scale bar at the same places, come within 36-40 bits of each other: a `same` by the
# perceptual hash unless the labels are set aside
DARK_FIELDS = ["2349e95e", "573e1480", "16c3d593", "072ff14c"]


def split_files(shared_data: Path, dataset: str, modality: str) -> list[Path]:
    """One file per group of the ``test`` split of one modality, sorted."""
    seen, out = set(), []
    with open(shared_data / dataset / "splits.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == "test" and row["modality"] == modality:
                if row["group_id"] not in seen:
                    seen.add(row["group_id"])
                    out.append(shared_data / dataset / row["file"])
    return sorted(out)


def square(path: Path) -> np.ndarray:
    """The picture's centre square at ``SIDE`` pixels, uint8 RGB."""
    im = Image.open(path).convert("RGB")
    s = min(im.size)
    left, top = (im.size[0] - s) // 2, (im.size[1] - s) // 2
    return np.asarray(im.crop((left, top, left + s, top + s)).resize((SIDE, SIDE), Image.LANCZOS))


def figure(panels: list[np.ndarray], cols: int, path: Path, labels: bool = True) -> list[tuple]:
    """Panels on a white figure with gutters, letter boxes, scale bars and a caption, saved
    as ``path`` (JPEG q85 or PNG by suffix). Returns the panel boxes ``(x0, y0, x1, y1)``."""
    rows = -(-len(panels) // cols)
    w = cols * SIDE + (cols + 1) * GUTTER
    h = rows * SIDE + (rows + 1) * GUTTER + 40
    fig = np.full((h, w, 3), 255, np.uint8)
    boxes = []
    for k, p in enumerate(panels):
        r, c = divmod(k, cols)
        x0, y0 = GUTTER + c * (SIDE + GUTTER), GUTTER + r * (SIDE + GUTTER)
        fig[y0 : y0 + p.shape[0], x0 : x0 + p.shape[1]] = p
        boxes.append((x0, y0, x0 + p.shape[1], y0 + p.shape[0]))
    im = Image.fromarray(fig)
    draw = ImageDraw.Draw(im)
    if labels:
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            draw.rectangle((x0, y0, x0 + 22, y0 + 24), fill=(255, 255, 255))
            draw.text((x0 + 7, y0 + 6), "ABCDEF"[k], fill=(0, 0, 0))
            draw.rectangle((x1 - 56, y1 - 14, x1 - 12, y1 - 10), fill=(255, 255, 255))
    draw.text((GUTTER, h - 24), "Figure 2. Blood smears of four donors.", fill=(0, 0, 0))
    im.save(path, quality=85) if path.suffix == ".jpg" else im.save(path)
    return boxes


def iou(p, q) -> float:
    ix = max(0, min(p[2], q[2]) - max(p[0], q[0]))
    iy = max(0, min(p[3], q[3]) - max(p[1], q[1]))
    inter = ix * iy
    return inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter)


def same_panels(found: tuple, truth: tuple) -> bool:
    return iou(found, truth) >= 0.8


def bccd_with_copy(shared_data: Path, tmp_path: Path, how: str) -> tuple[Path, list[tuple]]:
    """Four BCCD test fields in two rows; panel D (index 3) shows panel A again, ``how``."""
    files = split_files(shared_data, "bccd", "brightfield-smear")[:4]
    panels = [square(f) for f in files]
    if how == "flip":
        panels[3] = panels[0][:, ::-1]
    else:  # "rot90 crop": 70 % of A's area, turned and enlarged to a whole panel
        crop = panels[0][20:221, 30:231]
        big = np.asarray(Image.fromarray(crop).resize((SIDE, SIDE), Image.LANCZOS))
        panels[3] = np.rot90(big)
    path = tmp_path / "figure.jpg"
    return path, figure(panels, 2, path)


@pytest.mark.parametrize(
    ("how", "decided_by", "orientation"),
    [("flip", "perceptual hash", "flip"), ("rot90 crop", "verified overlap", "rot90")],
)
def test_a_repeated_panel_is_found_with_its_panels_and_orientation(
    shared_data, tmp_path, how, decided_by, orientation
):
    path, boxes = bccd_with_copy(shared_data, tmp_path, how)
    search = find_repeated_panels(load_image(path))
    assert len(search.panels) == 4 and len(search.pairs) == 6 and search.note is None
    assert [p.decision.verdict for p in search.pairs].count("same") == 1
    (pair,) = search.repeated
    assert pair is search.pairs[0]  # ranked first
    assert same_panels(pair.panel_a, boxes[0]) and same_panels(pair.panel_b, boxes[3])
    assert pair.decision.decided_by == decided_by
    assert pair.orientation == orientation  # panel D is panel A turned this way
    assert pair.transform is not None and pair.region_a is not None
    if how == "rot90 crop":  # the region of A that D shows: the crop, in figure pixels
        x0, y0 = boxes[0][:2]
        assert iou(pair.region_a, (x0 + 30, y0 + 20, x0 + 231, y0 + 221)) >= 0.8
        assert pair.transform.scale == pytest.approx(201 / SIDE, abs=0.03)
        # the panels' different letters are no retouching
        assert pair.decision.evidence.local_edits == 0


def test_all_different_dark_fields_with_shared_labels_are_not_same(shared_data, tmp_path):
    folder = shared_data / "dsb2018" / "images"
    files = [next(folder.glob(f"{stem}*.png")) for stem in DARK_FIELDS]
    path = tmp_path / "fluorescence.png"
    figure([square(f) for f in files], 2, path)
    search = find_repeated_panels(load_image(path))
    assert len(search.panels) == 4 and len(search.pairs) == 6
    assert not search.repeated, [p.decision.explain() for p in search.repeated]
    # set aside for the hash only: each pair is still told apart by more than 40 bits
    assert min(p.decision.evidence.phash_distance for p in search.pairs) > 40


def test_all_different_smears_give_no_same(shared_data, tmp_path):
    files = split_files(shared_data, "bccd", "brightfield-smear")[4:10]
    path = tmp_path / "smears.jpg"
    figure([square(f) for f in files], 3, path)
    search = find_repeated_panels(load_image(path))
    assert len(search.panels) == 6 and len(search.pairs) == 15
    assert not search.repeated, [p.decision.explain() for p in search.repeated]


def test_one_picture_or_one_panel_gives_nothing_and_says_why(bccd_images, tmp_path):
    image = load_image(bccd_images[0])
    search = find_repeated_panels(image)
    assert search.panels == [] and search.pairs == [] and search.note == NO_PANELS
    one = find_repeated_panels(image, panels=[(0, 0, 320, 240)])
    assert one.pairs == [] and "one panel" in one.note
    with pytest.raises(ValueError, match="not inside"):
        find_repeated_panels(image, panels=[(0, 0, 320, 240), (320, 0, 700, 240)])
    assert render_repeats_png(image, search, tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_one_figure_prints_and_writes_png_and_json(shared_data, tmp_path, capsys):
    path, boxes = bccd_with_copy(shared_data, tmp_path, "flip")
    out = tmp_path / "out"
    assert cli.main(["match", str(path), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("#1 panel 1 ") and "same: perceptual hash" in text[0]
    # said with the panels' numbers: "B is A" would read as the figure's own letters
    assert "panel 4 is panel 1 mirrored" in text[0] and "B is A" not in text[0]
    assert text[1].startswith("4 panels, 6 pairs checked, 1 repeated")
    png, doc = out / "within_figure.png", json.loads((out / "within_figure.json").read_text())
    assert Image.open(png).size == Image.open(path).size
    assert doc["pairs_checked"] == 6 and len(doc["repeated"]) == 1
    assert doc["repeated"][0]["orientation"] == "flip"
    assert doc["resolved"] == str(path.resolve())
    # the drawn box: panel A's outline in the pair's colour (#1: red)
    x0, y0, x1, y1 = doc["repeated"][0]["region_a"]
    assert tuple(np.asarray(Image.open(png))[(y0 + y1) // 2, x0 + 1]) == (230, 25, 75)

    # a rerun replaces its own result; a figure of the same name elsewhere gets -2
    assert cli.main(["match", str(path), "--out", str(out), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["png"] == str(png)
    other = tmp_path / "other"
    other.mkdir()
    single = other / "figure.jpg"
    Image.open(path).crop((0, 0, SIDE, SIDE)).save(single)
    assert cli.main(["match", str(single), "--out", str(out), "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["png"] == str(out / "within_figure-2.png") and data["repeated"] == []
    assert data["note"] == NO_PANELS
    assert json.loads((out / "within_figure.json").read_text())["resolved"] == str(path.resolve())


def test_cli_one_figure_bad_input_names_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.png"
    assert cli.main(["match", str(missing)]) == 1
    assert "nope.png" in capsys.readouterr().err
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a picture")
    assert cli.main(["match", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bta-core match: error: ") and "broken.png" in err
    assert len(err.strip().splitlines()) == 1


def test_a_model_score_is_evidence_decided_by_the_one_rule(shared_data, tmp_path):
    from bta_core.verdict import MODEL_SCORE, Policy

    files = split_files(shared_data, "bccd", "brightfield-smear")[4:7]
    path = tmp_path / "smears.png"
    figure([square(f) for f in files], 3, path)
    calls = []

    def scorer(a, b):
        calls.append((a.shape, b.shape))
        return 0.9, 0.8

    search = find_repeated_panels(load_image(path), scorer=scorer, policy=Policy(threshold=0.5))
    assert len(calls) == 3 and calls[0] == ((SIDE, SIDE, 3), (SIDE, SIDE, 3))
    assert [p.decision.verdict for p in search.repeated] == ["suspect"] * 3
    assert all(p.decision.decided_by == MODEL_SCORE for p in search.pairs)
    assert search.pairs[0].decision.probability == pytest.approx(0.8)


def test_cli_one_figure_with_a_checkpoint_scores_the_pairs(
    shared_data, tmp_path, capsys, trained_checkpoint
):
    path, _ = bccd_with_copy(shared_data, tmp_path, "flip")
    args = ["match", str(path), "--checkpoint", str(trained_checkpoint), "--json", "--quiet"]
    assert cli.main([*args, "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["checkpoint"] and data["pairs_checked"] == 6
    top = data["repeated"][0]
    assert top["decision"]["verdict"] == "same" and top["decision"]["model_score"] is not None


def test_scan_within_figures_lists_the_repeated_panels_of_each_file(
    shared_data, tmp_path, capsys, trained_checkpoint
):
    folder = tmp_path / "figures"
    folder.mkdir()
    path, _ = bccd_with_copy(shared_data, folder, "flip")  # panel D is A mirrored
    fig = path.rename(folder / "fig <&> 'A'.jpg")  # a name the report must escape
    Image.open(split_files(shared_data, "bccd", "brightfield-smear")[9]).save(folder / "one.png")
    out = tmp_path / "scan"
    argv = ["scan", str(folder), "--checkpoint", str(trained_checkpoint), "--device", "cpu"]
    argv += ["--no-cache", "--out", str(out), "--within-figures", "--json", "--quiet"]
    assert cli.main(argv) == 0
    docs = {Path(d["image"]).name: d for d in json.loads(capsys.readouterr().out)["within_figures"]}
    assert set(docs) == {fig.name, "one.png"}
    assert len(docs[fig.name]["repeated"]) == 1 and docs["one.png"]["note"] == NO_PANELS
    assert docs[fig.name]["repeated"][0]["orientation"] == "flip"
    stored = json.loads((out / "within_figures.json").read_text())
    assert [d["image"] for d in stored] == [d["image"] for d in docs.values()]
    # report.html: the figure with its pair boxed, its line, the counts; one.png only counted
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Panels repeated inside one figure" in page
    section = page[page.index("Panels repeated inside one figure") :]
    assert "<b>fig &lt;&amp;&gt; &#x27;A&#x27;.jpg</b>" in section and "one.png" not in section
    search = find_repeated_panels(load_named(str(fig)))
    assert html.escape(describe_pair(search.repeated[0], 1)) in section
    assert html.escape(describe_counts(search)) in section
    assert "1 repeated pair in 1 of 2 images searched" in section and "1 with none" in section
    assert section.count('src="data:image/jpeg;base64,') == 1
    # without the flag: no search, no file, no section
    out2 = tmp_path / "scan2"
    argv = [a if a != str(out) else str(out2) for a in argv if a != "--within-figures"]
    assert cli.main(argv) == 0
    assert "within_figures" not in json.loads(capsys.readouterr().out)
    assert not (out2 / "within_figures.json").exists()
    assert "Panels repeated inside one figure" not in (out2 / "report.html").read_text("utf-8")


def test_labels_are_drawn_rectangles_and_corner_type_not_a_pictures_white(shared_data):
    from bta_core.imageio import to_float_rgb
    from bta_core.match.graphics import WHITE
    from bta_core.match.within import label_mask

    # phase-contrast cells: their halos are saturated white, content to keep
    for path in split_files(shared_data, "phase_culture", "phase-contrast-cells")[:4]:
        picture = load_image(path)
        white = (picture >= WHITE).all(axis=-1)
        assert white.sum() > 1000
        assert (white & label_mask(picture)).sum() < 0.5 * white.sum()
    # a dark fluorescence panel: a letter box, a scale bar, a white letter in another corner
    folder = shared_data / "dsb2018" / "images"
    im = Image.fromarray(square(next(folder.glob(f"{DARK_FIELDS[0]}*.png"))))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, 22, 24), fill=(255, 255, 255))
    draw.rectangle((180, 225, 226, 229), fill=(255, 255, 255))
    draw.text((210, 6), "B", fill=(255, 255, 255))
    mask = label_mask(to_float_rgb(np.asarray(im)))
    assert mask[:25, :23].all() and mask[225:230, 180:227].all()
    assert mask[6:16, 210:218].any() and mask[60:180, 60:180].mean() < 0.01
