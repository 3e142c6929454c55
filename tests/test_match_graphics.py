"""Figure graphics (labels, captions, gutters) are not content: figures made with one template
must not match on them (bta_core.match.graphics), on real DSB2018 and BCCD pictures."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from bta_core.imageio import load_image
from bta_core.match import match_images
from bta_core.match.graphics import graphics_mask

CAPTION = "Figure 2. DAPI, three conditions. Scale bar 20 um."
GOLD = (255, 220, 0)


@pytest.fixture(scope="module")
def nuclei_tiles(shared_data) -> list[Image.Image]:
    """Fluorescence pictures of eight different fields of view, 256 x 256."""
    root = shared_data / "dsb2018"
    seen, tiles = set(), []
    for row in csv.DictReader(open(root / "splits.csv")):
        if row["modality"] == "fluorescence" and row["group_id"] not in seen:
            seen.add(row["group_id"])
            tiles.append(Image.open(root / row["file"]).convert("RGB").resize((256, 256)))
        if len(tiles) == 8:
            break
    return tiles


def _figure(
    panels: list[Image.Image],
    gutter: int = 10,
    boxed: bool = True,
    cols: int = 3,
    colour: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Panels in rows of ``cols`` on a white figure, each lettered in its top-left corner (in a
    white box, or in white type on the picture), and one caption under them: one journal's
    template."""
    font = ImageFont.load_default(size=22)
    rows = -(-len(panels) // cols)
    w, h = cols * (256 + gutter) + gutter, rows * (256 + gutter) + gutter
    fig = Image.new("RGB", (w, h + 40), "white")
    for k, panel in enumerate(panels):
        p = panel.copy()
        draw = ImageDraw.Draw(p)
        if boxed:
            draw.rectangle((4, 4, 32, 32), fill="white")
        if not boxed and colour != (255, 255, 255):  # large letters, an arrow in their colour
            draw.text((8, 4), "ABCD"[k], fill=colour, font=ImageFont.load_default(size=40))
            draw.line((150, 120, 200, 170), fill=colour, width=5)
        else:
            draw.text((11, 6), "ABCD"[k], fill="black" if boxed else colour, font=font)
        r, c = divmod(k, cols)
        fig.paste(p, (gutter + c * (256 + gutter), gutter + r * (256 + gutter)))
    ImageDraw.Draw(fig).text((gutter, h + 8), CAPTION, fill="black", font=font)
    return np.asarray(fig).astype(np.float32) / 255


def _jpeg(image: np.ndarray, quality: int = 85) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray((image * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB")).astype(np.float32) / 255


def test_graphics_are_labels_gutters_and_type_not_pictures(nuclei_tiles, bccd_images):
    smear = Image.fromarray((load_image(bccd_images[5]) * 255).astype(np.uint8)).resize((256, 256))
    fig = _figure([smear, nuclei_tiles[0]])
    drawn = graphics_mask(fig, fig.shape)
    assert drawn[:10].all() and drawn[-30:].all()  # the white margin and the caption strip
    assert drawn[10 + 4 : 10 + 33, 10 + 4 : 10 + 33].all()  # the letter box and its letter
    assert drawn[60:200, 60:200].mean() < 0.05  # a picture's middle is content
    gold = _figure([smear, smear], boxed=False, cols=2, colour=GOLD)
    marked = graphics_mask(gold, gold.shape)
    assert marked[10 + 125 : 10 + 165, 10 + 155 : 10 + 195].mean() > 0.2  # a gold arrow
    assert marked[10 + 200 : 10 + 250, 10 + 30 : 10 + 100].mean() < 0.05  # the smear beside
    # pictures alone have none: neither a smear nor nuclei on a black background
    for picture in (np.asarray(nuclei_tiles[0]) / 255.0, load_image(bccd_images[5])):
        assert graphics_mask(picture, picture.shape).mean() < 0.02
    small = graphics_mask(fig, (fig.shape[0] // 4, fig.shape[1] // 4))
    assert small.shape == (fig.shape[0] // 4, fig.shape[1] // 4) and small[:2].all()


@pytest.mark.parametrize(
    ("gutter", "boxed", "cols", "colour"),
    [
        (10, True, 3, None),
        (0, True, 3, None),
        (4, False, 3, None),
        (10, True, 2, None),
        (10, False, 2, GOLD),
    ],
)
def test_unrelated_figures_of_one_template_do_not_match(nuclei_tiles, gutter, boxed, cols, colour):
    """Two figures of unrelated nuclei pictures made alike (letters in each panel's corner, one
    caption, white or no gutters; gold letters and arrows) lined up their labels, caption and
    gutters under the identity: 20 of 60 such pairs were `same` in a review (103 inliers, all
    on graphics), and gold letters or red arrows still made 2 of 22 in a second review."""
    n = 3 if cols == 3 else 4
    style = (gutter, boxed, cols, colour or (255, 255, 255))
    a = _figure(nuclei_tiles[0:n], *style)
    b = _jpeg(_figure(nuclei_tiles[4 : 4 + n], *style))
    r = match_images(a, b, heatmaps=False)
    assert r.transform is None, (r.inliers, r.info)


def test_a_resaved_figure_and_a_shared_panel_still_match(nuclei_tiles):
    a = _figure(nuclei_tiles[0:3])
    again = match_images(a, _jpeg(a, 75), heatmaps=False)
    assert again.transform is not None and again.transform.dihedral == "identity"
    assert min(again.overlap_a, again.overlap_b) > 0.95
    # B's third panel is A's first: the match is that panel, where it is in each figure
    b = _jpeg(_figure([nuclei_tiles[6], nuclei_tiles[7], nuclei_tiles[0]]))
    r = match_images(a, b, heatmaps=False)
    assert r.transform is not None, r.info
    x0 = 10 + 2 * 266
    assert r.box_a == pytest.approx((10, 10, 266, 266), abs=4)
    assert r.box_b == pytest.approx((x0, 10, x0 + 256, 266), abs=4)


def test_saturated_fluorescence_copies_still_match(shared_data):
    """Saturated nuclei are pure white and their background flat black, which graphics also
    are: their copies must still verify, on what is left or, when the picture is marked whole,
    on the whole overlap (a review's synthetic case: white specks on flat black)."""
    from scipy.ndimage import gaussian_filter

    root = shared_data / "dsb2018"
    name = "images/0ea221716cf13710214dcd331a61cea48308c3940df1d28cfc7fd817c83714e1.png"
    picture = np.clip(np.asarray(Image.open(root / name).convert("RGB")) / 255.0 * 4, 0, 1)
    rng = np.random.default_rng(2)
    specks = np.zeros((600, 600))
    for y, x in rng.integers(20, 580, (20, 2)):
        specks[y - 9 : y + 10, x - 9 : x + 10] += 3 * np.exp(
            -(np.mgrid[-9:10, -9:10] ** 2).sum(0) / 50
        )
    specks = np.clip(
        specks + gaussian_filter(rng.normal(0, 0.1, specks.shape), 1.5) * (specks > 0.1), 0, 1
    )
    assert graphics_mask(specks, specks.shape).mean() > 0.95  # marked whole
    for image in (picture.astype(np.float32), specks.astype(np.float32)):
        h, w = image.shape[:2]
        for copy in (
            image.copy(),
            image[h // 8 : h * 7 // 8, w // 8 : w * 7 // 8],
            _jpeg(np.atleast_3d(image) * np.ones(3)),
        ):
            assert (
                match_images(image, np.ascontiguousarray(copy), heatmaps=False).transform
                is not None
            )


def _hot(t: np.ndarray) -> np.ndarray:
    """The "hot" colour map (black, red, yellow, white) at levels ``t`` in 0-1, as RGB 0-255."""
    return np.clip(np.stack([3 * t, 3 * t - 1, 3 * t - 2], -1), 0, 1) * 255


def _dark_figure(panels: list[Image.Image]) -> np.ndarray:
    """A dark fluorescence figure: four panels on black (every other one in green), each with a
    green channel label in thin antialiased type and a colour bar with white ticks beside it."""
    ps, g, bar = 256, 10, 50
    fig = Image.new("RGB", (2 * (ps + bar) + g, 2 * ps + 3 * g), "black")
    draw = ImageDraw.Draw(fig)
    legend = Image.fromarray(
        np.repeat(_hot(np.linspace(1, 0, ps - 40))[:, None], 14, 1).astype(np.uint8)
    )
    for k, panel in enumerate(panels):
        grey = panel.convert("L")
        if k % 2:
            zero = Image.new("L", grey.size, 0)
            grey = Image.merge("RGB", (zero, grey, zero))
        r, c = divmod(k, 2)
        x, y = c * (ps + bar + g), g + r * (ps + g)
        fig.paste(grey.convert("RGB"), (x, y))
        label = ("DAPI", "GFP", "Merge", "CTRL")[k]
        draw.text(
            (x + ps - 90, y + 6), label, fill=(0, 255, 0), font=ImageFont.load_default(size=22)
        )
        fig.paste(legend, (x + ps + 6, y + 20))
        for j, tick in enumerate(("1.0", "0.5", "0")):
            ty = y + 20 + j * (ps - 41) // 2
            draw.line((x + ps + 20, ty, x + ps + 24, ty), fill="white")
            draw.text(
                (x + ps + 25, ty - 6), tick, fill="white", font=ImageFont.load_default(size=11)
            )
    return np.asarray(fig).astype(np.float32) / 255


def test_coloured_type_and_colour_bars_of_dark_figures_are_graphics(nuclei_tiles):
    """Two unrelated dark fluorescence figures of one template (green labels in thin type,
    colour bars with ticks, on black) lined up their colour bars' edges and type under the
    identity: a review found 2 of 22 such pairs `same` (118 inliers on labels and ticks)."""
    a = _dark_figure(nuclei_tiles[0:4])
    b = _jpeg(_dark_figure(nuclei_tiles[4:8]))
    assert graphics_mask(a, a.shape)[50:210, 262:276].all()  # a colour bar, as drawn
    for fig in (a, b):
        assert graphics_mask(fig, fig.shape)[18:36, 168:216].mean() > 0.9  # "DAPI"
    r = match_images(a, b, heatmaps=False)
    assert r.transform is None, (r.inliers, r.info)


def test_real_gfp_signal_is_not_taken_for_graphics(shared_data):
    """Green fluorescence (phase_culture's GFP microtissues) is strongly coloured, thin in
    places and on black, as green type is: the type must be marked, the signal not."""
    from bta_core.match.graphics import _colour_bar, _thin_colour

    root = shared_data / "phase_culture"
    rows = list(csv.DictReader(open(root / "splits.csv")))
    gfp = [r["file"] for r in rows if r["modality"] == "fluorescence-microtissue"][::3]
    assert len(gfp) >= 8
    for name in gfp:
        grey = Image.open(root / name).convert("L").resize((300, 300), Image.LANCZOS)
        zero = Image.new("L", grey.size, 0)
        green = np.asarray(Image.merge("RGB", (zero, grey, zero))).astype(np.float32) / 255
        for picture in (green, _jpeg(green)):
            chans = [picture[..., c] for c in range(3)]
            assert (_thin_colour(chans) | _colour_bar(chans)).mean() < 0.01, name
            assert graphics_mask(picture, picture.shape).mean() < 0.2, name
        # the channel's name above the picture, on the figure's black, as journals print it
        labelled = Image.new("RGB", (300, 330), "black")
        labelled.paste(Image.fromarray((green * 255).round().astype(np.uint8)), (0, 30))
        font = ImageFont.load_default(size=22)
        ImageDraw.Draw(labelled).text((8, 4), "GFP", fill=(0, 255, 0), font=font)
        typed = _jpeg(np.asarray(labelled).astype(np.float32) / 255)
        drawn = graphics_mask(typed, typed.shape)
        assert drawn[10:24, 12:48].mean() > 0.9, name  # the type
        assert drawn[60:].mean() < 0.2, name  # the picture
