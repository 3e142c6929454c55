"""Localising reused regions (bta_core.match) on real BCCD and DSB2018 images."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.transform import rescale

from bta_core import cli
from bta_core.dihedral import D4_NAMES
from bta_core.imageio import ImageReadError, load_image
from bta_core.match import (
    MatchTransform,
    match_files,
    match_images,
    render_match_png,
    upsample_heatmap,
    warp_b_to_a,
)


def iou(p, q) -> float:
    ix = max(0, min(p[2], q[2]) - max(p[0], q[0]))
    iy = max(0, min(p[3], q[3]) - max(p[1], q[1]))
    inter = ix * iy
    return inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter)


def plant(image: np.ndarray, frac: float, orient: int, scale: float, rng: np.random.Generator):
    """Crop ``frac`` of the area (the most detailed of a few random places), then rotate/flip
    (``D4_NAMES[orient]``) and rescale it. Returns B and the crop's box in A."""
    h, w = image.shape[:2]
    aspect = rng.uniform(0.75, 1.33)
    ch = min(h, round(np.sqrt(frac * h * w / aspect)))
    cw = min(w, round(frac * h * w / ch))
    places = [
        (int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))) for _ in range(4)
    ]
    y0, x0 = max(places, key=lambda p: image[p[0] : p[0] + ch, p[1] : p[1] + cw].std())
    crop = image[y0 : y0 + ch, x0 : x0 + cw]
    b = np.rot90(np.fliplr(crop) if orient >= 4 else crop, orient % 4)
    if scale != 1:
        b = rescale(b, scale, channel_axis=-1, anti_aliasing=True)
    return np.ascontiguousarray(b, dtype=np.float32), (x0, y0, x0 + cw, y0 + ch)


def by_modality(shared_data: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    with open(shared_data / "dsb2018" / "splits.csv") as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["modality"], []).append(shared_data / "dsb2018" / row["file"])
    return {k: sorted(v) for k, v in out.items()}


def groups(shared_data: Path) -> dict[str, str]:
    out = {}
    for ds in ("bccd", "dsb2018"):
        with open(shared_data / ds / "same_source_groups.csv") as fh:
            out.update({Path(r["file"]).name: r["group_id"] for r in csv.DictReader(fh)})
    return out


# every orientation at least once, with 1.0 / 0.7 / 1.4 rescaling, crops of 25-60 % of the area
PLANTS_BCCD = [(0, 1.0), (1, 1.0), (2, 0.7), (3, 1.4), (4, 1.0), (5, 0.7), (6, 1.4), (7, 1.0)]


@pytest.mark.parametrize("orient,scale", PLANTS_BCCD)
def test_planted_crop_bccd(bccd_images, orient, scale):
    rng = np.random.default_rng(100 + orient)
    a = load_image(bccd_images[int(rng.integers(len(bccd_images)))])
    b, truth = plant(a, rng.uniform(0.25, 0.6), orient, scale, rng)
    r = match_images(a, b)
    assert r.found, r.info
    assert r.transform.dihedral == D4_NAMES[orient]
    assert iou(r.box_a, truth) >= 0.7
    assert r.transform.scale == pytest.approx(1 / scale, rel=0.05)
    assert abs(r.transform.residual_angle) < 2
    assert r.confidence >= 0.5
    assert (
        r.box_b == (0, 0, b.shape[1], b.shape[0])
        or iou(r.box_b, (0, 0, b.shape[1], b.shape[0])) >= 0.9
    )


@pytest.mark.parametrize(
    "modality,orient,scale",
    [
        ("tissue-colour", 5, 1.0),
        ("tissue-colour", 2, 1.4),
        ("fluorescence", 3, 1.0),
        ("fluorescence", 6, 0.7),
        ("brightfield-grey", 7, 1.0),
        ("brightfield-grey", 1, 0.7),
    ],
)
def test_planted_crop_dsb(shared_data, modality, orient, scale):
    files = by_modality(shared_data)[modality]
    rng = np.random.default_rng(7 + orient)
    # dense images: the localiser needs detail inside the crop (see docs/match.md, limitations)
    imgs = [load_image(files[int(i)]) for i in rng.choice(len(files), 3, replace=False)]
    a = max(imgs, key=lambda im: float(np.std(im)))
    b, truth = plant(a, rng.uniform(0.25, 0.6), orient, scale, rng)
    r = match_images(a, b)
    assert r.found, r.info
    assert r.transform.dihedral == D4_NAMES[orient]
    assert iou(r.box_a, truth) >= 0.7


def test_same_field_bccd_pairs(shared_data):
    """The 43 real same-field pairs: overlap found, overlap fraction as the curated phase
    correlation says (+-0.05), and the aligned pixels agree."""
    folder = shared_data / "bccd"
    with open(folder / "same_source_edges.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 43
    ok, misses = 0, []
    for row in rows:
        a, b = load_image(folder / "images" / row["a"]), load_image(folder / "images" / row["b"])
        r = match_images(a, b)
        expected = float(re.search(r"\(([\d.]+)\)", row["relation"]).group(1))
        good = (
            r.found
            and r.transform.dihedral == "identity"
            and abs(r.transform.scale - 1) < 0.02
            and abs(r.overlap_a - expected) <= 0.05
        )
        if good:
            # independent of the band-pass used inside: plain grey pixels agree once aligned
            wb = warp_b_to_a(b, r, a.shape)
            ga, gb = a.mean(-1)[r.mask_a], wb.mean(-1)[r.mask_a]
            good = np.corrcoef(ga, gb)[0, 1] > 0.5  # re-photographed: focus/light differ
        ok += good
        if not good:
            misses.append((row["a"], row["b"], r.overlap_a, expected))
    rate = ok / len(rows)
    print(f"same-field BCCD pairs localised: {ok}/{len(rows)} ({rate:.0%})")
    assert rate >= 0.9, misses


def test_unrelated_images_get_no_box(shared_data, bccd_images):
    grp = groups(shared_data)
    mods = by_modality(shared_data)
    rng = np.random.default_rng(3)
    pairs = []
    for pool in (
        bccd_images,
        mods["fluorescence"],
        mods["tissue-colour"],
        bccd_images,
        mods["fluorescence"],
    ):
        while True:
            p, q = (pool[int(i)] for i in rng.choice(len(pool), 2, replace=False))
            if grp.get(p.name) != grp.get(q.name):
                pairs.append((p, q))
                break
    pairs.append((bccd_images[5], mods["fluorescence"][10]))
    for p, q in pairs:
        r = match_files(p, q)
        assert not r.found, (p.name, q.name, r.to_dict()["transform"])
        assert r.box_a is None and r.box_b is None
        assert not r.mask_a.any() and not r.mask_b.any()
        assert r.confidence < 0.3
        assert r.heatmap_source == "none" and float(r.heatmap_a.max()) == 0.0


def test_one_cameras_sensor_specks_do_not_verify_two_fields(shared_data):
    """Two different phase-contrast fields (other field-of-view groups) taken through one camera
    share dust specks at the same pixels: SIFT lines 13 of them up under the identity, and the
    band-passed pixels agree, but the cells do not (coarse agreement 0.29): no match. The real
    shifted re-photographs of one BCCD field still verify (test_same_field_bccd_pairs)."""
    from bta_core.match.keypoints import Candidate, coarse_agreement, lowpass

    folder = shared_data / "phase_culture" / "images"
    a, b = folder / "usiigaci_train_set09.png", folder / "usiigaci_train_set10.png"
    with open(shared_data / "phase_culture" / "splits.csv", newline="") as fh:
        grp = {Path(r["file"]).name: r["group_id"] for r in csv.DictReader(fh)}
    assert grp[a.name] != grp[b.name]
    r = match_files(a, b)
    assert not r.found, r.to_dict()["transform"]
    ga = load_image(a).mean(axis=2)
    cand = coarse_agreement(
        lowpass(ga), lowpass(load_image(b).mean(axis=2)), Candidate(np.eye(3), "keypoints")
    )
    assert cand.ncc_coarse < 0.5
    assert (
        coarse_agreement(lowpass(ga), lowpass(ga), Candidate(np.eye(3), "keypoints")).ncc_coarse
        > 0.99
    )


def test_transform_decomposition_names_every_orientation():
    """Synthetic points (a property of the maths): B = rot90^k(flip?(A region)) decodes to k, flip."""
    h, w = 30, 50
    ys, xs = np.mgrid[0:h, 0:w]
    for index, name in enumerate(D4_NAMES):
        src = np.fliplr(np.stack([xs, ys], -1)) if index >= 4 else np.stack([xs, ys], -1)
        ob = np.rot90(src, index % 4)  # each B pixel holds its source (x, y) in A
        oh, ow = ob.shape[:2]
        pts_b = np.array([[0, 0, 1], [ow - 1, 0, 1], [0, oh - 1, 1]], float)
        pts_a = np.array([[*ob[int(y), int(x)], 1] for x, y, _ in pts_b], float)
        m = np.linalg.lstsq(pts_b, pts_a, rcond=None)[0].T
        m = 2.0 * m  # and A twice as large
        m[2] = [0, 0, 1]
        t = MatchTransform.from_matrix(m)
        assert t.dihedral == name and t.scale == pytest.approx(2.0)
        assert t.rotation == 90 * (index % 4) and t.flip == (index >= 4)


def test_warp_heatmap_and_png(bccd_images, tmp_path):
    rng = np.random.default_rng(1)
    a = load_image(bccd_images[40])
    b, truth = plant(a, 0.4, 5, 1.0, rng)
    r = match_images(a, b)
    wb = warp_b_to_a(b, r, a.shape)
    assert wb.shape == a.shape
    assert np.abs(wb[r.mask_a] - a[r.mask_a]).mean() < 0.02
    assert not wb[~r.mask_a].any()
    # heatmaps: high inside the planted region, zero far from it
    full = upsample_heatmap(r.heatmap_a, a.shape)
    assert full.shape == a.shape[:2]
    x0, y0, x1, y1 = truth
    assert full[y0:y1, x0:x1].mean() > 0.5
    outside = ~r.mask_a
    assert full[outside].mean() < 0.2
    assert r.heatmap_b.min() >= 0 and r.heatmap_b.max() <= 1
    png = render_match_png(a, b, r, tmp_path / "m.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = r.to_dict()
    assert json.loads(json.dumps(d))["transform"]["dihedral"] == "flip_rot90"


def test_cli_json_and_png(shared_data, tmp_path, capsys):
    folder = shared_data / "bccd" / "images"
    a, b = folder / "BloodImage_00206.jpg", folder / "BloodImage_00278.jpg"
    out = tmp_path / "out"
    rc = cli.main(["match", str(a), str(b), "--json", "--out", str(out), "--no-model"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["found"] and data["box_a"] and data["score"] is None
    assert len(data["transform"]["matrix"]) == 3
    assert Path(data["png"]).read_bytes()[:4] == b"\x89PNG"
    assert json.loads(Path(data["json"]).read_text())["box_b"] == data["box_b"]


def test_bad_inputs_name_the_file(bccd_images, tmp_path, capsys):
    missing = tmp_path / "nope.png"
    assert cli.main(["match", str(bccd_images[0]), str(missing), "--no-model"]) == 1
    assert "nope.png" in capsys.readouterr().err
    with pytest.raises(ImageReadError, match="nope.png"):
        match_files(bccd_images[0], missing)
    with pytest.raises(ValueError, match="image_b"):
        match_images(load_image(bccd_images[0]), np.zeros(10))
    with pytest.raises(ValueError, match="image_a"):
        match_images(np.full((40, 40), np.nan), load_image(bccd_images[0]))
    with pytest.raises(ValueError, match="no match"):
        warp_b_to_a(
            load_image(bccd_images[0]),
            match_images(*(load_image(p) for p in bccd_images[1:3])),
            (4, 4),
        )


def test_model_score_heatmaps_progress_and_cancel(bccd_images, tiny_model):
    """Plumbing with a random-head model: score and tile heatmaps are present and in range."""
    a = np.ascontiguousarray(load_image(bccd_images[10])[::2, ::2])  # small: CPU time
    b, _ = plant(a, 0.5, 2, 1.0, np.random.default_rng(0))
    steps = []
    r = match_images(
        a,
        b,
        model=tiny_model,
        model_tiles=True,
        on_progress=lambda i, n, info: steps.append((i, n)),
    )
    assert steps[-1] == (4, 4)
    assert r.found and r.heatmap_source == "alignment"
    assert 0.0 <= r.score <= 1.0
    assert r.model_heatmap_a.shape == r.heatmap_a.shape
    assert 0 <= r.model_heatmap_b.min() and r.model_heatmap_b.max() <= 1
    unrelated = match_images(a, load_image(bccd_images[200])[::2, ::2], model=tiny_model)
    assert not unrelated.found  # two different smears: no region
    assert unrelated.heatmap_source == "model"  # so the model's tiles are the heatmap
    assert unrelated.heatmap_a is unrelated.model_heatmap_a
    assert match_images(a, b, model=tiny_model).model_heatmap_a is None  # found: tiles skipped
    with pytest.raises(InterruptedError):
        match_images(a, b, should_stop=lambda: True)


def test_chance_coincidences_do_not_support_a_match(shared_data):
    """Two DSB fluorescence tiles of one experiment, enlarged to 448 px: a corner placement lines
    up 4 keypoints, about what the keypoint density gives by chance; no overlap may be claimed."""
    from skimage.transform import resize

    folder = shared_data / "dsb2018" / "images"
    names = (
        "3b75fc03a1d12b29bd2870eb1f6fdb44174dbd1118dfc11c31f127bd87bd27ef.png",
        "2349e95ece2857c89db7e4a8be8c88af0b45f3c4262608120cb3bd6ef51fd241.png",
    )
    a, b = (resize(load_image(folder / n), (448, 448), anti_aliasing=True) for n in names)
    assert not match_images(a, b).found


def test_png_titles_of_an_unrelated_pair(bccd_images, tmp_path):
    """No located region: the figure must not claim one (titles, summary), and shifts never read -0."""
    from bta_core.match.render import panel_titles, summary

    a, b = load_image(bccd_images[3]), load_image(bccd_images[200])
    r = match_images(a, b)
    assert not r.found
    titles = panel_titles(r)
    assert not any("region found in A" in t or "overlap with B" in t for t in titles)
    assert render_match_png(a, b, r, tmp_path / "u.png").read_bytes()[:4] == b"\x89PNG"
    same = match_images(a, a)
    assert panel_titles(same)[1] == "B: region found in A"
    assert "-0" not in summary(same)


def test_cli_error_names_the_too_small_file(bccd_images, tmp_path, capsys):
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tiny)
    assert cli.main(["match", str(bccd_images[0]), str(tiny), "--no-model"]) == 1
    err = capsys.readouterr().err
    assert str(tiny) in err and "image_b" not in err


def test_shared_correlation_maps_equal_direct_ncc_in_every_orientation():
    """The FFT maps reuse sums and spectra across orientations; each entry must still be the
    plain NCC of the overlap it stands for (a synthetic pair: every shift checked directly)."""
    from bta_core.dihedral import apply_d4
    from bta_core.match.correlation import _NCCMaps
    from bta_core.match.prepare import pixel_ncc

    rng = np.random.default_rng(3)
    a = rng.normal(size=(12, 10)).astype(np.float32)
    b = rng.normal(size=(7, 5)).astype(np.float32)
    maps = _NCCMaps(a, b, min_overlap=10)
    for k in range(8):
        ob = apply_d4(b, k)
        ncc, (ox, oy) = maps.map(k)
        hb, wb = ob.shape
        assert ncc.shape == (12 + hb - 1, 10 + wb - 1)
        checked = 0
        for i in range(ncc.shape[0]):
            for j in range(ncc.shape[1]):
                dy, dx = i - oy, j - ox  # b's pixel (x, y) lies on a's (x + dx, y + dy)
                y0, y1, x0, x1 = max(0, dy), min(12, dy + hb), max(0, dx), min(10, dx + wb)
                if (y1 - y0) * (x1 - x0) < 16:
                    assert ncc[i, j] == -1.0
                elif ncc[i, j] > -1.0:
                    direct = pixel_ncc(a[y0:y1, x0:x1], ob[y0 - dy : y1 - dy, x0 - dx : x1 - dx])
                    assert abs(ncc[i, j] - direct) < 1e-4, (k, i, j)
                    checked += 1
        assert checked > 0.4 * ncc.size


def test_an_exact_crop_agrees_everywhere_and_a_cloned_patch_shows_where(bccd_images, tmp_path):
    """Pixel-identical crops (also turned) snap to a whole-pixel shift and agree in every cell,
    flat background included; a cloned 60 px patch is the only place that disagrees."""
    from bta_core.dihedral import apply_d4

    a = load_image(bccd_images[7])
    for b in (a[60:400, 100:560], apply_d4(a[61:401, 101:561], D4_NAMES.index("rot90"))):
        r = match_images(a, b)
        t = r.transform
        assert t.scale == 1.0 and all(float(v).is_integer() for v in t.translation)
        inside = r.heatmap_a[2:10, 3:13]  # cells wholly inside the overlap
        assert inside.min() >= 0.95, inside
        assert r.local_edits is not None and r.local_edits.cells == ()
    edited = a.copy()
    edited[200:260, 300:360] = a[100:160, 150:210]
    found = match_images(a, edited)
    x0, y0, x1, y1 = found.local_edits.box_a  # the pasted patch, and nothing else
    assert x0 < 360 and x1 > 300 and y0 < 260 and y1 > 200 and (x1 - x0) * (y1 - y0) < 4 * 3600
    # the box follows the patch's pixels, not the 40 px grid cells it falls in
    assert iou((x0, y0, x1, y1), (300, 200, 360, 260)) >= 0.75, (x0, y0, x1, y1)
    heat = found.heatmap_a
    rows, cols = np.nonzero(heat < 0.9)
    cell_h, cell_w = a.shape[0] / heat.shape[0], a.shape[1] / heat.shape[1]
    assert len(rows) >= 1
    assert (rows * cell_h < 260).all() and ((rows + 1) * cell_h > 200).all()
    assert (cols * cell_w < 360).all() and ((cols + 1) * cell_w > 300).all()


def test_re_encoded_or_recoloured_copies_show_no_local_edit(bccd_images, dsb_images, tmp_path):
    """JPEG q50 and gamma change every pixel a little: global, not a local edit (no false
    'retouched' on a plain re-save)."""
    import io as _io

    for path in (bccd_images[12], dsb_images[40]):
        a = load_image(path)
        buf = _io.BytesIO()
        Image.fromarray((a * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=50)
        for b in (np.asarray(Image.open(buf)).astype(np.float32) / 255, a**0.7):
            r = match_images(a, b)
            assert r.found and r.local_edits is not None and r.local_edits.cells == (), path


def test_snapping_takes_turns_and_refuses_shear_and_scale():
    from bta_core.match.heatmaps import snapped

    c = (99.5, 79.5)
    turn = np.array([[0.0, -1.0, 300.4], [1.0, 0.0, 20.6], [0, 0, 1]])  # rot90-like, 0.4 px off
    turn[:2, :2] = turn[:2, :2] @ np.array(
        [[np.cos(0.003), -np.sin(0.003)], [np.sin(0.003), np.cos(0.003)]]
    )
    snap = snapped(turn, c)
    assert snap is not None and np.array_equal(snap[:2, :2], [[0, -1], [1, 0]])
    assert np.allclose(snap[:2, :2] @ c + snap[:2, 2], turn[:2, :2] @ c + turn[:2, 2], atol=1.0)
    assert snapped(np.array([[1.0, 0.3, 0], [0, 1.0, 0], [0, 0, 1]]), c) is None  # shear
    assert snapped(np.array([[1.05, 0, 0], [0, 1.05, 0], [0, 0, 1]]), c) is None  # 5 % scale


def test_local_edits_of_a_small_crop_use_a_finer_grid(bccd_images):
    """A 160x120 crop of a 640x480 smear covers fewer than 8 whole cells of A's 16-cell grid:
    the check still runs (a finer grid), and a patch pasted into the crop is found there."""
    a = load_image(bccd_images[7])
    crop = a[150:270, 250:410].copy()
    r = match_images(a, crop, heatmaps=False)
    assert r.found and r.local_edits is not None and r.local_edits.cells == ()
    assert r.local_edits.grid_shape[1] > 16
    crop[40:80, 60:100] = a[400:440, 20:60]
    x0, y0, x1, y1 = match_images(a, crop, heatmaps=False).local_edits.box_a
    assert x0 < 250 + 100 and x1 > 250 + 60 and y0 < 150 + 80 and y1 > 150 + 40


@pytest.mark.parametrize("fill", [0, 255])
def test_a_panel_rotated_by_a_free_angle_with_filled_corners(bccd_images, fill):
    """A crop rotated 17 degrees the way slide software does it: the corners filled with black
    or white. The fill is not in A, so only the overlap within the matched keypoints is
    compared; the rotation is recovered."""
    from PIL import Image

    a = np.asarray(Image.open(bccd_images[1]).convert("RGB"))
    crop = Image.fromarray(a[80:380, 150:450])
    b = np.asarray(crop.rotate(17, resample=Image.BICUBIC, fillcolor=(fill,) * 3))
    r = match_images(a, b, heatmaps=False)
    assert r.found and r.method == "keypoints", r.confidence
    assert abs(abs(r.transform.angle) - 17) < 1.0 and not r.transform.flip, r.transform
    assert r.local_edits is not None and r.local_edits.cells == ()  # the fill is no edit
    # the shared region is the crop, not B's whole frame with its filled corners
    assert iou(r.box_a, (150, 80, 450, 380)) >= 0.95, r.box_a
    # PIL turns counter-clockwise as displayed; the words say so
    assert "turned 17.0 degrees counter-clockwise" in r.transform.describe()
    # the figure's agreement panel leaves the fill out: every shown cell of the copy agrees
    from bta_core.match.prepare import as_float_rgb, to_grey
    from bta_core.match.render import aligned_grey_b, overlap_agreement

    full = match_images(a, b)
    grey = [to_grey(as_float_rgb(x, "x")) for x in (a, b)]
    _, content = aligned_grey_b(*grey, full.transform)
    shown = overlap_agreement(full, overlap=content).compressed()
    assert shown.size > 0 and shown.min() >= 0.9, shown.min()


def test_the_drawn_agreement_of_an_exact_crop_is_full_inside_and_absent_outside(bccd_images):
    """The figure's agreement panel: an exact crop agrees in every shown pixel, edge cells
    included, and nothing is drawn outside the overlap."""
    from bta_core.match.render import overlap_agreement

    a = load_image(bccd_images[7])
    r = match_images(a, a[80:400, 100:460])
    heat = overlap_agreement(r)
    assert heat.mask[~r.mask_a].all()  # nothing outside the overlap
    shown = heat.compressed()
    assert shown.size > 0.8 * r.mask_a.sum() and shown.min() >= 0.9, shown.min()


def test_a_keypoint_match_on_a_sliver_of_both_images_needs_many_keypoints():
    """A panel letter that reads the same mirrored ("A") verified two unrelated figures on a
    61 px strip (8 inliers, 5 % of each). A crop still passes: it covers most of itself."""
    from bta_core.match.keypoints import Candidate
    from bta_core.match.locate import _accept

    def cand(inliers: int, overlap_a: float, overlap_b: float) -> Candidate:
        c = Candidate(np.eye(3), "keypoints", inliers=inliers, ncc=0.9, structure=0.5)
        c.overlap_a, c.overlap_b, c.ncc_coarse = overlap_a, overlap_b, 0.9
        return c

    assert not _accept(cand(8, 0.05, 0.05))  # the letter strip
    assert _accept(cand(8, 0.05, 0.95))  # a small crop of a large image
    assert _accept(cand(30, 0.05, 0.05))  # a small shared region with many keypoints


@pytest.mark.parametrize(("wider", "turn"), [(1.2, 0), (1 / 1.33, 1)])
def test_a_stretched_copy_is_found_and_named(bccd_images, wider, turn):
    """A picture dragged wider (or taller) in figure software: a similarity fit kept only a
    band of it and nothing was found, even at 10 % (0 of 12 real pictures at 1.1-1.5x)."""
    from skimage.transform import resize

    a = load_image(bccd_images[7])
    h, w = a.shape[:2]
    b = np.rot90(resize(a, (h, round(w * wider)), anti_aliasing=True), turn).astype(np.float32)
    r = match_images(a, np.ascontiguousarray(b), heatmaps=False)
    assert r.transform is not None, r.info
    assert r.transform.dihedral == ("identity", "rot90")[turn]
    assert r.transform.stretch == pytest.approx(wider if not turn else 1 / wider, rel=0.03)
    word = "wider" if r.transform.stretch > 1 else "taller"
    assert f"stretched {max(wider, 1 / wider):.2f}x {word}" in r.transform.describe()
    assert min(r.overlap_a, r.overlap_b) > 0.9
    assert r.local_edits is None or not r.local_edits.cells


def test_a_stretch_fit_keeps_its_axes_square_and_transforms_name_it():
    """Unit properties on exact point sets: an axis stretch is fitted, a shear is refused (it
    was taken for a turn plus a stretch), and a singular matrix does not break the summary."""
    from bta_core.match.keypoints_cv import _stretched_fit
    from bta_core.match.transform import MatchTransform

    rng = np.random.default_rng(0)
    src = rng.uniform(0, 400, (200, 2))
    for lin, fitted in (([[1.25, 0.0], [0.0, 1.0]], True), ([[1.0, 0.3], [0.0, 1.0]], False)):
        dst = src @ np.array(lin).T + 5.0
        fit = _stretched_fit(src, dst, similar=10)
        assert (fit is not None) == fitted, lin
    t = MatchTransform.from_matrix(np.diag([0.8, 1.0, 1.0]))
    assert t.stretch == pytest.approx(1.25) and "stretched 1.25x wider" in t.describe()
    flat = MatchTransform.from_matrix(np.diag([1.0, 0.0, 1.0]))
    assert flat.stretch == 1.0 and "stretched" not in flat.describe()
