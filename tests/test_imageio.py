"""Image IO rules on real images, TIFF stacks built from them, and every kind of bad input."""

import numpy as np
import pytest
import tifffile
from skimage import io as skio

from bta_core.imageio import ImageReadError, find_images, iter_images, load_image


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
    chans = (
        np.stack(
            [real_rgb[..., 0], real_rgb[..., 1], real_rgb[..., 2], 255 - real_rgb[..., 1]]
        ).astype(np.uint16)
        * 257
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


def test_two_channel_tiff_is_grey_composite(tmp_path, real_rgb):
    path = tmp_path / "two.tif"
    tifffile.imwrite(
        path,
        np.stack([real_rgb[..., 0], real_rgb[..., 2]]),
        photometric="minisblack",
        metadata={"axes": "CYX"},
    )
    img = load_image(path)
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
        (lambda p, rgb: p.write_text("this is not an image"), "cannot decode"),
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
