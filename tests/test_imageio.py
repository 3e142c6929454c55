"""Image IO rules on real images, TIFF stacks built from them, and every kind of bad input."""

import os
import warnings

import numpy as np
import pytest
import tifffile
from skimage import io as skio

from bta_core.imageio import ImageReadError, ImageReadWarning, find_images, iter_images, load_image


@pytest.fixture(scope="module")
def real_rgb(bccd_images):
    return skio.imread(bccd_images[0])  # (480, 640, 3) uint8


def test_jpeg_loads_as_rgb_float(bccd_images, real_rgb):
    img = load_image(bccd_images[0])
    assert img.shape == (480, 640, 3) and img.dtype == np.float32
    assert np.allclose(img, real_rgb / 255.0, atol=1e-6)


def test_rgb_tiff_samples(tmp_path, real_rgb):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, real_rgb, photometric="rgb")
    assert np.allclose(load_image(path), real_rgb / 255.0)


def test_rgba_png_drops_alpha(dsb_images):
    raw = skio.imread(dsb_images[0])
    assert raw.shape[-1] == 4
    img = load_image(dsb_images[0])
    assert img.shape == raw.shape[:2] + (3,)
    assert np.allclose(img, raw[..., :3] / 255.0, atol=1e-6)


def test_grey_tiff_is_replicated(tmp_path, real_rgb):
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, real_rgb[..., 1])
    img = load_image(path)
    assert img.shape == (480, 640, 3)
    assert np.array_equal(img[..., 0], img[..., 2])
    assert np.allclose(img[..., 0], real_rgb[..., 1] / 255.0)


def test_multichannel_16bit_tiff(tmp_path, real_rgb):
    """A 4-channel CYX uint16 stack made from a real image: rules for scaling and channels."""
    chans = (  # 12-bit camera-like values with a dark offset: real 16-bit data, stretched
        np.stack(
            [real_rgb[..., 0], real_rgb[..., 1], real_rgb[..., 2], 255 - real_rgb[..., 1]]
        ).astype(np.uint16)
        * 16
        + 300
    )
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, chans, photometric="minisblack", metadata={"axes": "CYX"})
    img = load_image(path)  # 4 fluorescence-like channels: grey composite of scaled channels
    assert img.shape == (480, 640, 3)
    assert np.array_equal(img[..., 0], img[..., 2])
    rgb = load_image(path, channels=[0, 1, 2])
    # robust percentile scaling: each channel spans [0, 1]
    for c in range(3):
        assert rgb[..., c].min() == 0.0 and rgb[..., c].max() == 1.0
    img = rgb
    # percentile scaling preserves order of intensities
    flat_in, flat_out = chans[1].ravel()[:5000], img[..., 1].ravel()[:5000]
    assert np.all(np.diff(flat_out[np.argsort(flat_in, kind="stable")]) >= -1e-6)
    picked = load_image(path, channels=[3])
    assert np.array_equal(picked[..., 0], picked[..., 1])
    with pytest.raises(ImageReadError, match="channels"):
        load_image(path, channels=[7])
    names = [info.name for info, _ in iter_images(path, split_channels=True)]
    assert names == [f"{path}[c={c}]" for c in range(4)]


def test_two_channel_tiff_is_grey_composite(tmp_path, real_rgb, monkeypatch):
    path = tmp_path / "two.tif"
    tifffile.imwrite(
        path,
        np.stack([real_rgb[..., 0], real_rgb[..., 2]]),
        photometric="minisblack",
        metadata={"axes": "CYX"},
    )
    monkeypatch.setattr("bta_core.imageio._AVERAGED_SAID", set())
    with pytest.warns(ImageReadWarning, match=r"two.tif: 2 channels, each scaled .* --planes"):
        img = load_image(path)  # averaged, and it says so (a copy of one channel scores low)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(path)  # once per run: a folder of such stacks gives one line, not one each
    assert np.array_equal(img[..., 0], img[..., 1])
    expected = (real_rgb[..., 0] / 255.0 + real_rgb[..., 2] / 255.0) / 2
    assert np.allclose(img[..., 0], expected, atol=1e-5)


def test_z_stack_planes(tmp_path, real_rgb):
    stack = np.stack([real_rgb[..., c] for c in range(3)])  # ZYX
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, stack, photometric="minisblack", metadata={"axes": "ZYX"})
    assert np.allclose(load_image(path, plane=2)[..., 0], real_rgb[..., 2] / 255.0)
    names = [info.name for info, _ in iter_images(path)]
    assert names == [f"{path}[z={z}]" for z in range(3)]


def test_float_tiff_scaled(tmp_path, real_rgb):
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, real_rgb[..., 0].astype(np.float32) * 3.5 - 100)
    img = load_image(path)
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.max() == 1.0


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p, rgb: p.write_bytes(b""), "empty"),
        (lambda p, rgb: p.write_bytes(open_bytes(rgb)[:300]), "cannot decode"),
        (
            lambda p, rgb: p.write_text("this is not an image"),
            "not an image file: it holds plain text",
        ),
        (lambda p, rgb: tifffile.imwrite(p, np.zeros((1, 1), np.uint8)), "too small"),
        (lambda p, rgb: tifffile.imwrite(p, np.full((8, 8), np.nan, np.float32)), "NaN"),
        (
            lambda p, rgb: tifffile.imwrite(p, np.full((8, 8), np.inf, np.float32)),
            "NaN or infinite",
        ),
        (lambda p, rgb: tifffile.imwrite(p, np.ones((8, 8), np.complex64)), "complex"),
        (lambda p, rgb: tifffile.imwrite(p, np.ones((8, 8), bool)), "boolean"),
        (
            lambda p, rgb: tifffile.imwrite(p, np.ones((2, 2, 2, 2, 2, 8, 8), np.uint8)),
            "dimensions",
        ),
    ],
)
def test_bad_input_names_file_and_problem(tmp_path, real_rgb, make, problem):
    path = tmp_path / "bad.tif"
    make(path, real_rgb)
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    assert str(path) in str(err.value) and problem in str(err.value)
    assert err.value.path == str(path)


def open_bytes(rgb):
    import io

    buf = io.BytesIO()
    tifffile.imwrite(buf, rgb)
    return buf.getvalue()


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_truncated_jpeg(tmp_path, bccd_images):
    data = bccd_images[0].read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        load_image(path)


def test_find_images_recursive(tmp_path, bccd_images):
    (tmp_path / "a b" / "ü").mkdir(parents=True)
    (tmp_path / "a b" / "ü" / "x y.jpg").write_bytes(bccd_images[0].read_bytes())
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"")
    assert [p.name for p in find_images(tmp_path)] == ["x y.jpg"]


# ---------------------------------------------------------------------------------------------
# odd and hostile files made from real images (issue 13)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path, real_rgb):
    from PIL import Image

    path = tmp_path / "cmyk.jpg"
    Image.fromarray(real_rgb).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    img = load_image(path)
    assert img.shape == real_rgb.shape
    assert np.abs(img - real_rgb / 255.0).mean() < 0.01  # JPEG loss only, not CMY read as RGB


def test_cmyk_tiff_is_converted_to_rgb(tmp_path, real_rgb):
    from PIL import Image

    path = tmp_path / "cmyk.tif"
    tifffile.imwrite(
        path, np.asarray(Image.fromarray(real_rgb).convert("CMYK")), photometric="separated"
    )
    assert np.allclose(load_image(path), real_rgb / 255.0, atol=1e-6)


def test_grey_alpha_png_is_one_grey_image(tmp_path, dsb_images):
    from PIL import Image

    grey = np.asarray(Image.open(dsb_images[0]).convert("L"))
    path = tmp_path / "la.png"
    Image.fromarray(grey).convert("LA").save(path)
    assert Image.open(path).mode == "LA"
    img = load_image(path)
    assert img.shape == grey.shape + (3,)
    assert np.allclose(img[..., 0], grey / 255.0) and np.array_equal(img[..., 0], img[..., 2])
    assert len(list(iter_images(path))) == 1  # one image, not one per row


def test_partly_non_finite_float_image_is_filled_with_a_warning(tmp_path, real_rgb):
    from bta_core.imageio import ImageReadWarning

    ratio = real_rgb[..., 0].astype(np.float32) / (real_rgb[..., 2].astype(np.float32) + 1)
    masked = ratio.copy()
    masked[:60, :80] = np.nan  # masked region of a ratio image
    masked[200, 300] = -np.inf
    path = tmp_path / "ratio.tif"
    tifffile.imwrite(path, masked)
    with pytest.warns(ImageReadWarning, match=r"ratio.tif: 4,801 of 307,200 .*NaN or infinite"):
        img = load_image(path)
    assert np.isfinite(img).all() and 0 <= img.min() and img.max() <= 1
    filled = masked.copy()
    filled[~np.isfinite(filled)] = np.nanmin(masked[np.isfinite(masked)])
    ref = tmp_path / "filled.tif"
    tifffile.imwrite(ref, filled)
    assert np.array_equal(img, load_image(ref))
    assert (img[:60, :80] == 0).all()


def test_only_all_non_finite_images_are_refused(tmp_path, real_rgb):
    data = np.where(real_rgb[..., 0] > 128, np.inf, np.nan).astype(np.float32)
    path = tmp_path / "allbad.tif"
    tifffile.imwrite(path, data)
    with pytest.raises(ImageReadError, match="every pixel is NaN or infinite"):
        load_image(path)


def _declare_size(path, width, height):
    """Rewrite a TIFF's header so it declares width x height pixels (the data stay small)."""
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tags = tif.pages[0].tags
        tags["ImageWidth"].overwrite(width)
        tags["ImageLength"].overwrite(height)
        tags["RowsPerStrip"].overwrite(height)


def test_pixel_budget_applies_to_tiff_before_reading(tmp_path, real_rgb, monkeypatch):
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, real_rgb[..., 0])
    _declare_size(path, 40_000, 40_000)
    monkeypatch.setattr(
        tifffile.TiffPageSeries, "asarray", lambda *a, **k: pytest.fail("pixels were read")
    )
    with pytest.raises(ImageReadError, match=r"too large: declares 40000 x 40000 = 1,600,000,000"):
        load_image(path)


@pytest.mark.parametrize("suffix", [".tif", ".png", ".jpg"])
def test_one_pixel_budget_for_every_format(tmp_path, real_rgb, monkeypatch, suffix):
    from PIL import Image

    path = tmp_path / f"img{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, real_rgb, photometric="rgb")
    else:
        Image.fromarray(real_rgb).save(path)
    assert load_image(path).shape == (480, 640, 3)
    monkeypatch.setenv("BTA_MAX_PIXELS", str(480 * 640 * 3 - 1))
    with pytest.raises(ImageReadError, match=r"480 x 640 x 3 = 921,600 pixel values, over"):
        load_image(path)


def _png_declaring(path, width: int, height: int) -> None:
    """A small grey PNG whose header declares ``width`` x ``height`` (the data stay small)."""
    import struct
    import zlib

    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    raw = bytearray(path.read_bytes())
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))


def test_the_tools_budget_governs_pillows_limit(tmp_path, monkeypatch):
    """review 8, item 4: above Pillow's own limit (178,956,970 px) the user got Pillow's
    "decompression bomb" text, and BTA_MAX_PIXELS could not allow more than Pillow did."""
    from PIL import ImageFile

    grey, bomb = tmp_path / "grey_14000.png", tmp_path / "bomb.png"
    _png_declaring(grey, 14_000, 14_000)
    _png_declaring(bomb, 30_000, 30_000)
    with pytest.raises(ImageReadError) as err:
        load_image(grey)
    assert err.value.problem == (
        "image too large: declares 14000 x 14000 x 1 = 196,000,000 pixel values, over the budget "
        "of 134,217,728 (set BTA_MAX_PIXELS to allow more)"
    )
    with pytest.raises(ImageReadError) as err:
        load_image(bomb)
    assert err.value.problem.startswith("image too large: declares 900,000,000 pixels")
    assert err.value.problem.endswith("(set BTA_MAX_PIXELS to allow more)")
    assert "decompression bomb" not in err.value.problem
    # allowed more: both headers pass, decoding starts (and is stopped here)
    monkeypatch.setenv("BTA_MAX_PIXELS", str(10**9))

    def no_pixels(self):
        raise RuntimeError("decoding started")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)
    for path in (grey, bomb):
        with pytest.raises(ImageReadError, match="decoding started"):
            load_image(path)


@pytest.mark.parametrize(
    "content, holds",
    [
        (b"<!DOCTYPE html><html><body>Not found</body></html>", "an HTML page"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "a PDF document"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00", "a ZIP archive"),
        (b"Bilder der Zellkultur, Tag 3\n", "plain text"),
        (bytes(range(7, 200)), "unknown binary data (not TIFF, PNG, JPEG, BMP, GIF or WebP)"),
    ],
)
def test_non_image_jpg_says_what_it_is(tmp_path, content, holds):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    assert err.value.problem == f"not an image file: it holds {holds}"
    assert "Tiff" not in str(err.value)


def test_format_comes_from_content_not_name(tmp_path, real_rgb, bccd_images):
    tiff_named_jpg = tmp_path / "really_a_tiff.jpg"
    tifffile.imwrite(tiff_named_jpg, real_rgb, photometric="rgb")
    assert np.allclose(load_image(tiff_named_jpg), real_rgb / 255.0)
    jpeg_named_tif = tmp_path / "really_a_jpeg.tif"
    jpeg_named_tif.write_bytes(bccd_images[0].read_bytes())
    assert np.allclose(load_image(jpeg_named_tif), real_rgb / 255.0, atol=1e-6)


def test_three_plane_16bit_tiff_without_axes_is_three_channels(tmp_path, real_rgb):
    chans = np.moveaxis(real_rgb, -1, 0).astype(np.uint16) * 257  # (3, Y, X), no axis metadata
    path = tmp_path / "cyx.tif"
    tifffile.imwrite(path, chans, photometric="minisblack")
    img = load_image(path)
    assert not np.array_equal(img[..., 0], img[..., 2])  # colour, not a grey plane
    for c in range(3):
        ref = tmp_path / f"c{c}.tif"
        tifffile.imwrite(ref, chans[c])
        assert np.array_equal(img[..., c], load_image(ref)[..., 0])
    zstack = np.stack([chans[c % 3] for c in range(12)])  # 12 planes without axes: Z
    tifffile.imwrite(tmp_path / "z.tif", zstack, photometric="minisblack")
    names = [info.name for info, _ in iter_images(tmp_path / "z.tif")]
    assert names == [f"{tmp_path / 'z.tif'}[z={z}]" for z in range(12)]


def test_extreme_float_values_give_finite_output(tmp_path, real_rgb):
    for scale in (1e300, 1e-300):
        path = tmp_path / "extreme.tif"
        tifffile.imwrite(path, real_rgb[..., 1].astype(np.float64) * scale - scale * 100)
        img = load_image(path)
        assert np.isfinite(img).all() and img.max() == 1.0 and img.min() == 0.0


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match="not a regular file"):
        load_image(fifo)


def test_in_memory_arrays_follow_the_same_missing_value_rule(real_rgb):
    from bta_core.imageio import ImageReadWarning, to_float_rgb

    grey = real_rgb[..., 1].astype(np.float32) * 7.0
    grey[:10] = np.nan
    with pytest.warns(ImageReadWarning, match="layer A: 6,400 of 307,200"):
        rgb = to_float_rgb(grey, "layer A")
    assert np.isfinite(rgb).all() and (rgb[:10] == 0).all()
    with pytest.raises(ImageReadError, match="layer A: every pixel"):
        to_float_rgb(np.full((8, 8), np.nan), "layer A")


def test_truncated_tiff_stack_is_named_without_tifffile_log_lines(tmp_path, real_rgb, caplog):
    """A cut multi-page TIFF: one clear error naming the file, and no raw tifffile log line
    ("<tifffile.TiffPages @8> invalid page offset ...") before it."""
    import logging

    import tifffile

    path = tmp_path / "cut stack.tif"
    plane = real_rgb[:256, :256, 0].astype(np.uint16) * 257
    tifffile.imwrite(path, np.stack([plane] * 4), photometric="minisblack")
    path.write_bytes(path.read_bytes()[:300])  # the header, not the data
    with caplog.at_level(logging.DEBUG), pytest.raises(ImageReadError, match="cut stack.tif"):
        load_image(path)
    assert [r for r in caplog.records if r.name.startswith("tifffile")] == []


def test_cut_stack_that_still_reads_says_planes_may_be_missing(tmp_path, real_rgb):
    """A stack of separate pages cut after its third page still reads (tifffile keeps what it
    can): the lost planes are reported as an ImageReadWarning naming the file, not dropped."""
    plane = real_rgb[:256, :256, 0].astype(np.uint16) * 257
    path = tmp_path / "cut pages.tif"
    with tifffile.TiffWriter(path) as tw:
        for k in range(4):
            tw.write(plane + k, photometric="minisblack", contiguous=False)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.warns(ImageReadWarning, match=r"cut pages.tif: damaged TIFF .* planes may be"):
        img = load_image(path)
    assert img.shape == (256, 256, 3)


def test_pages_written_one_by_one_are_all_read(tmp_path, real_rgb):
    """A stack written page by page (one TIFF series per page) is read whole, as a page stack,
    not as its first page alone; a cut copy keeps the pages before the cut and says how many."""
    pages = [real_rgb[:256, :256, c].astype(np.uint16) * 257 for c in range(3)]
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tw:
        for page in pages:
            tw.write(page, photometric="minisblack", contiguous=False)
    items = list(iter_images(path, split_channels=True))
    assert [info.name for info, _ in items] == [f"{path}[c={k}]" for k in range(3)]
    for (_, rgb), page in zip(items, pages, strict=True):
        assert np.corrcoef(rgb[..., 0].ravel(), page.ravel())[0, 1] > 0.99  # percentile-scaled
    data = path.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: int(len(data) * 0.8)])
    with pytest.warns(ImageReadWarning, match=r"cut.tif: only 2 of 3 pages could be read"):
        items = list(iter_images(tmp_path / "cut.tif", split_channels=True))
    assert len(items) == 2


def test_8bit_data_widened_to_16bit_read_as_the_8bit_file(tmp_path, shared_data):
    """A 16-bit export of an 8-bit picture (x 257, or shifted by 8 bits; TIFF or 16-bit PNG) is
    read with exactly the 8-bit file's pixels, not contrast-stretched: a dim fluorescence
    picture stretched scored 0.36 against its own 8-bit file. Real 16-bit data still stretch."""
    from PIL import Image

    rows = (shared_data / "dsb2018" / "splits.csv").read_text().splitlines()[1:]
    fluo = [r.split(",")[0] for r in rows if r.split(",")[3] == "fluorescence"]
    src = shared_data / "dsb2018" / fluo[0]
    eight = load_image(src)
    grey8 = np.asarray(Image.open(src).convert("L"))
    assert grey8.max() < 250  # a dim picture: stretching would change it
    Image.fromarray(grey8).save(tmp_path / "grey8.png")
    ref = load_image(tmp_path / "grey8.png")
    rgb16 = np.asarray(Image.open(src).convert("RGB")).astype(np.uint16)
    tifffile.imwrite(tmp_path / "x257.tif", rgb16 * 257, photometric="rgb")
    assert np.array_equal(load_image(tmp_path / "x257.tif"), eight)
    tifffile.imwrite(tmp_path / "shift.tif", grey8.astype(np.uint16) << 8)
    assert np.array_equal(load_image(tmp_path / "shift.tif"), ref)
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    assert np.array_equal(load_image(tmp_path / "grey16.png"), ref)
    camera = grey8.astype(np.uint16) * 16 + 300  # 12-bit-like data with an offset
    tifffile.imwrite(tmp_path / "camera.tif", camera)
    assert load_image(tmp_path / "camera.tif").max() == 1.0  # stretched as before
