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
