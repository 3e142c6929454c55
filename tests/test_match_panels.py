"""Panels of composite figures (bta_core.match.panels) on real BCCD and DSB2018 images."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import resize

from bta_core.imageio import load_image
from bta_core.match import match_images
from bta_core.match.panels import find_panels


def _fit(image: np.ndarray, h: int) -> np.ndarray:
    w = round(image.shape[1] * h / image.shape[0])
    return resize(image[..., :3], (h, w), anti_aliasing=True).astype(np.float32)


def composite(
    left: np.ndarray, right: np.ndarray, gutter: int = 10, caption: int = 40, mark: int = 40
) -> np.ndarray:
    """Two panels side by side on a white figure with a white gutter and a caption strip
    holding a black mark ``mark`` px wide (a "label": too small to be a panel)."""
    h = max(left.shape[0], right.shape[0])
    fig = np.ones((h + caption, left.shape[1] + gutter + right.shape[1], 3), np.float32)
    fig[: left.shape[0], : left.shape[1]] = left[..., :3]
    fig[: right.shape[0], left.shape[1] + gutter :] = right[..., :3]
    fig[h + caption // 3 : h + 2 * caption // 3, 20 : 20 + mark] = 0.0
    return fig


def dark_fluorescence(dsb_images) -> np.ndarray:
    """The darkest sparse fluorescence tile among the first DSB images (grey, 256x256)."""
    tiles = [load_image(p) for p in dsb_images[:60]]
    tiles = [t for t in tiles if t.shape[:2] == (256, 256)]
    return min(tiles, key=lambda t: float(t.mean()))


def test_a_composite_splits_into_its_panels_and_single_images_do_not(bccd_images, dsb_images):
    smear = _fit(load_image(bccd_images[3]), 256)
    nuclei = dark_fluorescence(dsb_images)
    fig = composite(smear, nuclei)
    x1 = smear.shape[1]
    assert find_panels(fig) == [(0, 256, 0, x1), (0, 256, x1 + 10, x1 + 266)]
    singles = [*bccd_images[::40], *dsb_images[::60]]
    assert [p for p in singles if find_panels(load_image(p))] == []


def test_a_dark_panel_beside_a_bright_one_is_found_where_it_is(bccd_images, dsb_images):
    """Matched as a whole, the dark panel's grey range, keypoints and correlation were those of
    the bright figure and it went unmatched; on its own it matches, and the transform puts it
    where it is in the figure."""
    smear = _fit(load_image(bccd_images[3]), 256)
    nuclei = dark_fluorescence(dsb_images)
    fig = composite(smear, nuclei)
    r = match_images(nuclei, fig, heatmaps=False)
    assert r.transform is not None, r.info
    x0 = smear.shape[1] + 10
    assert r.info["panel"] == {"image": "b", "box": [x0, 0, x0 + 256, 256]}
    np.testing.assert_allclose(r.transform.translation, (-x0, 0), atol=1.0)
    assert r.box_b == pytest.approx((x0, 0, x0 + 256, 256), abs=2)
    swapped = match_images(fig, nuclei, heatmaps=False)  # the figure as A: A's panels tried
    assert swapped.transform is not None and swapped.info["panel"]["image"] == "a"
    np.testing.assert_allclose(swapped.transform.translation, (x0, 0), atol=1.0)


def test_panels_of_unrelated_figures_do_not_match(bccd_images, dsb_images):
    for k in range(3):
        left = _fit(load_image(dsb_images[100 + 7 * k]), 256)
        right = _fit(load_image(bccd_images[50 + 9 * k]), 256)
        other = load_image(bccd_images[200 + 11 * k])
        r = match_images(other, composite(left, right), heatmaps=False)
        assert r.transform is None, (k, r.info)


def _lettered(panel: np.ndarray, letter: str) -> np.ndarray:
    """A panel with its letter in a white box in the top-left corner, as journals print them."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray((np.clip(panel, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.rectangle([4, 4, 34, 38], fill=(255, 255, 255))
    draw.text((8, 6), letter, fill=(0, 0, 0), font=ImageFont.load_default(size=28))
    return np.asarray(img).astype(np.float32) / 255


def test_panel_letters_shared_by_unrelated_figures_do_not_match(dsb_images):
    """Two figures of unrelated dark nuclei tiles, each panel lettered A and B in the same
    corner: a panel matched against the other figure lined up its letter with the other's (13
    keypoints on the letter box) and called them `same`."""
    for k in (64, 72, 80):  # four unrelated DSB tiles each (different field-of-view groups)
        p = [_lettered(_fit(load_image(dsb_images[k + i]), 256), "AB"[i % 2]) for i in range(4)]
        r = match_images(composite(p[0], p[1]), composite(p[2], p[3]), heatmaps=False)
        assert r.transform is None or "panel" not in r.info, (k, r.info)


def test_a_panel_match_keeps_the_rest_of_the_figure_out_of_its_masks_and_edits(bccd_images):
    """B is a crop of A beside an unrelated panel: the gutter, the other panel and the caption
    must count neither as overlap nor as local edits."""
    a = load_image(bccd_images[10])
    crop = a[100:400, 150:450]
    other = _fit(load_image(bccd_images[120]), 300)
    fig = composite(crop, other)
    r = match_images(a, fig, heatmaps=False)
    assert r.transform is not None and r.info["panel"]["box"] == [0, 0, 300, 300]
    assert r.box_a == pytest.approx((150, 100, 450, 400), abs=2)
    assert r.box_b == pytest.approx((0, 0, 300, 300), abs=2)
    assert r.local_edits is None or not r.local_edits.cells


def test_a_jpeg_figure_keeps_its_panels(bccd_images, dsb_images):
    """Saved as JPEG (quality 75), the gutter's edges ring: the lines beside it are neither flat
    nor unlike it. The panels must still be found where they are, and the dark one matched."""
    import io

    from PIL import Image

    smear = _fit(load_image(bccd_images[3]), 256)
    nuclei = dark_fluorescence(dsb_images)
    buf = io.BytesIO()
    Image.fromarray((composite(smear, nuclei) * 255).round().astype(np.uint8)).save(
        buf, "JPEG", quality=75
    )
    fig = np.asarray(Image.open(buf).convert("RGB")).astype(np.float32) / 255
    x1 = smear.shape[1]
    assert find_panels(fig) == [(0, 256, 0, x1), (0, 256, x1 + 10, x1 + 266)]
    r = match_images(nuclei, fig, heatmaps=False)
    assert r.transform is not None and r.info["panel"]["box"] == [x1 + 10, 0, x1 + 266, 256]


def test_figures_laid_out_alike_do_not_match_on_their_gutters_and_caption(bccd_images, dsb_images):
    """Two figures of unrelated images with the same layout (panels of one size, a white
    gutter, a caption mark at one place) lined up their gutters' edges and caption under the
    identity: 4 of 8 such pairs were `same`. The match must hold on the panels' pixels."""

    def figure(k: int) -> np.ndarray:
        left, right = (_fit(load_image(p[k]), 256) for p in (bccd_images, dsb_images[190:]))
        return composite(left, right, caption=30, mark=60)

    for k in (130, 131, 140, 142):  # a figure and the next one: unrelated images, same layout
        assert match_images(figure(k), figure(k + 1), heatmaps=False).transform is None, k
    f1 = figure(130)
    again = f1.copy()
    again[-12:, 100:200] = 0.0  # the same figure with another caption mark
    assert match_images(f1, again, heatmaps=False).transform is not None


def test_a_panel_match_is_outlined_on_the_panel(bccd_images):
    """The match figure outlines where the panel is, not the whole figure's footprint."""
    a = load_image(bccd_images[10])
    fig = composite(a[100:400, 150:450], _fit(load_image(bccd_images[120]), 300))
    r = match_images(a, fig, heatmaps=False)
    assert r.info["panel"]["image"] == "b"
    np.testing.assert_allclose(r.outline_b().min(0), (-0.5, -0.5), atol=0.01)
    np.testing.assert_allclose(r.outline_b().max(0), (299.5, 299.5), atol=0.01)
    np.testing.assert_allclose(r.outline_a().min(0), (149.5, 99.5), atol=1.5)
    np.testing.assert_allclose(r.outline_a().max(0), (449.5, 399.5), atol=1.5)


def test_each_panel_of_a_figure_votes_with_its_own_keypoints(bccd_images, dsb_images):
    """The scan's local-feature votes pick which pairs get checked. A figure gave its 300
    strongest keypoints for all panels together, so a reused dark panel beside a bright one
    had almost none and its pair was never checked (1 of 5 panel reuses found by a default
    scan in a review; 3 of 5 with a figure's keypoints taken panel by panel)."""
    from bta_core.scan.keypoint_votes import DESCRIPTORS_PER_IMAGE, image_descriptors

    smear = _fit(load_image(bccd_images[3]), 256)
    nuclei = dark_fluorescence(dsb_images)
    fig = composite(smear, nuclei)
    desc, mirror = image_descriptors(fig, mirrored=True)
    alone, _ = image_descriptors(nuclei, mirrored=False)
    assert len(desc) > DESCRIPTORS_PER_IMAGE and len(mirror) > DESCRIPTORS_PER_IMAGE
    # the dark panel's own keypoints are among the figure's: each of its descriptors has a twin
    d = ((alone[:, None, :] - desc[None, :, :]) ** 2).sum(-1).min(1)
    assert np.mean(d < 1e-3) > 0.5


def test_two_figures_sharing_one_panel_are_boxed_on_that_panel(bccd_images):
    """Figure 2's right panel is figure 6's left panel turned 180 degrees; their other, narrow
    panels are unrelated. The whole figures match on the shared panel, and the match must be
    that panel's: boxes on it, not the figures' footprints spilling over the other panels."""
    shared = _fit(load_image(bccd_images[30]), 256)
    left = _fit(load_image(bccd_images[60]), 256)[:, :120]
    right = _fit(load_image(bccd_images[90]), 256)[:, :120]
    fig2 = composite(left, shared)
    fig6 = composite(np.ascontiguousarray(shared[::-1, ::-1]), right)
    r = match_images(fig2, fig6, heatmaps=False)
    assert r.transform is not None and r.transform.dihedral == "rot180", r.info
    x0, w = 130, shared.shape[1]
    assert r.box_a == pytest.approx((x0, 0, x0 + w, 256), abs=3)
    assert r.box_b == pytest.approx((0, 0, w, 256), abs=3)


def _grid(panels: list[np.ndarray], gap: int = 10) -> np.ndarray:
    """Four 300 px panels in a 2x2 white figure with a margin and gutters, each lettered A-D
    in a white box at its top-left corner."""
    from PIL import Image, ImageDraw, ImageFont

    size = 2 * 300 + 3 * gap
    fig = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(fig)
    for k, p in enumerate(panels):
        y, x = gap + (k // 2) * (300 + gap), gap + (k % 2) * (300 + gap)
        fig.paste(Image.fromarray((np.clip(p[:300, :300], 0, 1) * 255).astype(np.uint8)), (x, y))
        draw.rectangle((x, y, x + 34, y + 40), fill="white")
        draw.text((x + 6, y + 2), "ABCD"[k], fill="black", font=ImageFont.load_default(size=32))
    return np.asarray(fig).astype(np.float32) / 255


def test_a_moved_panel_shows_no_edits_but_a_patch_on_it_does(bccd_images):
    """Panel A of one figure reused unchanged as panel D of another showed 15-16 "pasted or
    erased?" cells along its border (cells across it compared the gutter and the neighbours;
    a reviewer's figures, 2026-11-29); a patch cloned inside the panel must still show."""
    tiles = [_fit(load_image(bccd_images[k]), 300) for k in (10, 60, 120, 160, 200, 240)]
    one = _grid(tiles[:4])
    other = _grid([tiles[4], tiles[5], tiles[2][::-1], tiles[0]])
    r = match_images(one, other, heatmaps=False)
    assert r.transform is not None and "panel" in r.info, r.info
    assert r.local_edits is None or not r.local_edits.cells, r.local_edits
    cloned = tiles[0].copy()
    cloned[150:210, 150:210] = cloned[60:120, 60:120]
    r = match_images(one, _grid([tiles[4], tiles[5], tiles[2][::-1], cloned]), heatmaps=False)
    assert r.local_edits is not None and r.local_edits.cells, r.info
    x0, y0, x1, y1 = r.local_edits.box_a
    assert x0 <= 170 <= x1 and y0 <= 170 <= y1


def _dark_tiles(shared_data, n: int) -> list[np.ndarray]:
    """``n`` dark fluorescence tiles of different fields (DSB2018 test split, 300 px): the
    darkest first."""
    import csv

    root = shared_data / "dsb2018"
    seen, tiles = set(), []
    for row in csv.DictReader(open(root / "splits.csv")):
        if row["modality"] == "fluorescence" and row["split"] == "test":
            if row["group_id"] not in seen and row["width"] == row["height"] == "256":
                seen.add(row["group_id"])
                tiles.append(_fit(load_image(root / row["file"]), 300))
    tiles.sort(key=lambda t: float(t.mean()))
    return tiles[:n]


@pytest.mark.parametrize("turn", ["moved", "mirrored", "rot90"])
def test_a_dark_fluorescence_panel_reused_in_another_figure_is_found(shared_data, turn):
    """A dark fluorescence picture, panel A of one lettered figure, reused as panel D of
    another (moved, mirrored or turned): found in 2 of 12 such cases in a review. Each panel's
    grey was stretched up to its white letter box, leaving the nuclei too dim for keypoints;
    mirrored, each figure's letter box fell on the other's picture; and the panel's black
    background, beside a pure white box, was all taken for graphics."""
    tiles = _dark_tiles(shared_data, 8)
    picture = tiles[1]
    copy = {"moved": picture, "mirrored": picture[:, ::-1], "rot90": np.rot90(picture)}[turn]
    one = _grid([picture, tiles[2], tiles[3], tiles[4]])
    other = _grid([tiles[5], tiles[6], tiles[7], np.ascontiguousarray(copy)])
    r = match_images(one, other, heatmaps=False)
    assert r.transform is not None and "panel" in r.info, r.info
    assert r.box_a == pytest.approx((10, 10, 310, 310), abs=4)
    assert r.box_b == pytest.approx((320, 320, 620, 620), abs=4)


def _jpeg(fig: np.ndarray, quality: int = 85) -> np.ndarray:
    """``fig`` saved as JPEG and read back."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.clip(fig, 0, 1) * 255).round().astype(np.uint8)).save(
        buf, "JPEG", quality=quality
    )
    return np.asarray(Image.open(buf).convert("RGB")).astype(np.float32) / 255


CAPTION = (
    "Figure 4. Panels of one experiment: the fields A-F, scale bars 20 um, n = 3.",
    "Each field imaged at 20x in one of three cultures; one representative shown.",
)


def _captioned(
    panels: list[np.ndarray],
    cols: int,
    gutter: int = 10,
    paper: float = 1.0,
    caption: tuple[str, ...] = CAPTION,
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Square panels in rows of ``cols`` on a figure of colour ``paper`` (1 white, 0 black),
    with gutters and margins ``gutter`` wide, a letter in each panel's corner, a scale bar in
    each, and the lines of ``caption`` one gutter under the panels (in the opposite colour,
    right across the columns). Returns the figure and the panels' boxes ``(y0, y1, x0, x1)``."""
    from PIL import Image, ImageDraw, ImageFont

    side = panels[0].shape[0]
    rows = -(-len(panels) // cols)
    bottom = gutter + rows * (side + gutter)
    w = gutter + cols * (side + gutter)
    ink = (0, 0, 0) if paper else (255, 255, 255)
    size = (w, bottom + 4 + 17 * len(caption) + 3)
    fig = Image.new("RGB", size, (255, 255, 255) if paper else (0, 0, 0))
    draw = ImageDraw.Draw(fig)
    boxes = []
    for k, p in enumerate(panels):
        y, x = gutter + (k // cols) * (side + gutter), gutter + (k % cols) * (side + gutter)
        fig.paste(Image.fromarray((np.clip(p, 0, 1) * 255).astype(np.uint8)), (x, y))
        draw.text((x + 6, y + 4), "ABCDEF"[k], fill="white", font=ImageFont.load_default(size=18))
        draw.rectangle((x + side - 60, y + side - 14, x + side - 14, y + side - 10), fill="white")
        boxes.append((y, y + side, x, x + side))
    for k, line in enumerate(caption):
        draw.text(
            (gutter, bottom + 4 + 17 * k), line, fill=ink, font=ImageFont.load_default(size=14)
        )
    return np.asarray(fig).astype(np.float32) / 255, boxes


def _near(found: list, boxes: list, tol: int = 3) -> bool:
    """Each box found lies within ``tol`` px of its panel, one for one."""
    return len(found) == len(boxes) and all(
        max(abs(a - b) for a, b in zip(f, t, strict=True)) <= tol
        for f, t in zip(found, boxes, strict=True)
    )


@pytest.mark.parametrize("n, cols, gutter, lines", [(2, 2, 11, 1), (5, 3, 10, 2)])
def test_a_caption_under_the_panels_does_not_join_them(bccd_images, n, cols, gutter, lines):
    """A caption one gutter under the panels, its type right across the columns: the gutter
    above it was only a gutter when the caption's rows just past it were dark enough (its
    first rows are the tops of capitals: mostly white, not unlike a white gutter), else the
    bottom row of panels and the caption were one piece. Two smears in a row saved as JPEG
    got no panels at all; a grid's bottom panels were one."""
    panels = [_fit(load_image(bccd_images[20 + 30 * k]), 240)[:, :240] for k in range(n)]
    fig, boxes = _captioned(panels, cols, gutter, caption=CAPTION[:lines])
    for version in (fig, _jpeg(fig)):
        assert _near(find_panels(version), boxes), find_panels(version)


def _noisy_dark_fields(shared_data, n: int) -> list[np.ndarray]:
    """``n`` dark fluorescence fields of different groups (DSB2018 test split, 256 px, mean
    grey 10-16 of 255) whose background lies at least 5 grey levels off black: the darkest
    first. (A background within 2-3 levels of a black gutter is not told from it.)"""
    tiles = [t for t in _dark_tiles(shared_data, 40) if np.median(t[:, :, 0]) >= 4.5 / 255]
    return [t[:256, :256] for t in tiles[:n]]


@pytest.mark.parametrize("quality", [None, 85])
def test_black_gutters_between_dark_fluorescence_pictures_are_cut(shared_data, quality):
    """A black gutter beside dark fluorescence pictures has their background's colour, so it
    was not told from it and no panels were found. It is exactly uniform, while the pictures'
    background is noisy: two rows of three fields on black, with a white caption under them,
    as PNG and as JPEG q85."""
    fields = _noisy_dark_fields(shared_data, 6)
    fig, boxes = _captioned(fields, 3, gutter=8, paper=0.0)
    fig = fig if quality is None else _jpeg(fig, quality)
    assert _near(find_panels(fig), boxes), find_panels(fig)
    two, boxes = _captioned(fields[:2], 2, gutter=6, paper=0.0)
    assert _near(find_panels(two), boxes), find_panels(two)


def test_real_dark_single_pictures_stay_uncut(shared_data):
    """The rule for black gutters must not cut a dark picture at its empty rows: every test
    fluorescence picture of DSB2018 and every test microtissue of phase_culture (pillars,
    dark fluorescence), as it is and saved as JPEG q85, is one picture."""
    import csv

    cut = []
    for ds, kinds in (("dsb2018", "fluorescence"), ("phase_culture", "microtissue")):
        for row in csv.DictReader(open(shared_data / ds / "splits.csv")):
            if row["split"] == "test" and kinds in row["modality"]:
                image = load_image(shared_data / ds / row["file"])[..., :3]
                if image.ndim == 2:
                    image = np.repeat(image[..., None], 3, axis=-1)
                for version in (image, _jpeg(image)):
                    if find_panels(version):
                        cut.append(row["file"])
    assert cut == []
