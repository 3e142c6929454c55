"""The TIFF reader: channels as layers, Z as a slider, scale from metadata, None when unreadable."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_bta._reader import napari_get_reader


def _stack_16bit(rgb_of, bccd_images, dsb_images) -> np.ndarray:
    """(Z=2, C=3, 96, 128) uint16 from real images: grey channels of BCCD and DSB, rescaled."""
    from skimage.transform import resize

    planes = []
    for z in range(2):
        chans = []
        for path in (bccd_images[z], bccd_images[z + 5], dsb_images[z]):
            grey = rgb_of(path).mean(axis=-1)
            chans.append(resize(grey, (96, 128), preserve_range=True) * (200 + 50 * z))
        planes.append(chans)
    return np.asarray(planes).astype(np.uint16)


def test_imagej_zcyx_16bit_gives_one_layer_per_channel_with_scale(
    tmp_path, bccd_images, dsb_images, make_napari_viewer, read_rgb
):
    data = _stack_16bit(read_rgb, bccd_images, dsb_images)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.25),  # pixels per micrometre in X and Y
        metadata={"axes": "ZCYX", "spacing": 2.0, "unit": "um"},
    )
    reader = napari_get_reader(str(path))
    assert callable(reader)
    [(arr, kwargs, layer_type)] = reader(str(path))
    assert layer_type == "image" and arr.dtype == np.uint16 and kwargs["channel_axis"] == 1
    np.testing.assert_allclose(kwargs["scale"], [2.0, 0.25, 0.5])

    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-bta")
    assert len(layers) == 3
    for c, layer in enumerate(layers):
        assert layer.data.shape == (2, 96, 128)
        np.testing.assert_allclose(layer.scale, [2.0, 0.25, 0.5])
        np.testing.assert_array_equal(np.asarray(layer.data), data[:, c])
    assert viewer.dims.nsteps[0] == 2  # Z is a slider


def test_ome_sample_reads_channel_names_and_pixel_size():
    from napari_bta._sample_data import SAMPLE_DIR

    path = str(SAMPLE_DIR / "nuclei_3ch.ome.tif")
    [(arr, kwargs, _)] = napari_get_reader(path)(path)
    assert arr.shape == (3, 256, 256) and arr.dtype == np.uint16
    assert kwargs["name"][2].endswith("[nuclei A reused]")
    np.testing.assert_allclose(kwargs["scale"], [0.65, 0.65])


def test_plain_rgb_tiff_is_one_rgb_layer(tmp_path, bccd_images, read_rgb):
    path = tmp_path / "rgb.tiff"
    tifffile.imwrite(path, read_rgb(bccd_images[0]), photometric="rgb")
    [(arr, kwargs, _)] = napari_get_reader(str(path))(str(path))
    assert arr.shape == (480, 640, 3) and kwargs["rgb"] is True and "channel_axis" not in kwargs
    assert kwargs["scale"] == [1.0, 1.0]


def test_unreadable_paths_return_none(tmp_path, bccd_images):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00 this is not a tiff")
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    for path in (
        str(bad),
        str(empty),
        str(tmp_path / "missing.tif"),
        str(bccd_images[0]),
        str(tmp_path),
    ):
        assert napari_get_reader(path) is None
    assert napari_get_reader([str(bad), str(bad)]) is None


# ---------------------------------------------------------------------------------------------
# files the reader must decline (None) or read fully, never claim and then fail (issue 13)


def _real_stack(read_rgb, bccd_images) -> np.ndarray:
    """(3, 240, 320) uint16 channels of a real BCCD image."""
    rgb = read_rgb(bccd_images[0])[::2, ::2]
    return np.moveaxis(rgb, -1, 0).astype(np.uint16) * 257


def _declines_or_reads(path) -> object:
    reader = napari_get_reader(str(path))
    if reader is not None:
        layers = reader(str(path))
        assert layers and all(np.asarray(d).size for d, _, _ in layers)
    return reader


def test_truncated_tiff_is_declined_with_a_reason(tmp_path, read_rgb, bccd_images, monkeypatch):
    said = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", said.append)
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, _real_stack(read_rgb, bccd_images), photometric="minisblack")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert napari_get_reader(str(full)) is not None and not said
    assert napari_get_reader(str(cut)) is None
    assert len(said) == 1 and str(cut) in said[0] and "Traceback" not in said[0]


def test_huge_header_is_declined_without_reading(tmp_path, read_rgb, bccd_images, monkeypatch):
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, read_rgb(bccd_images[0])[..., 0])
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tags = tif.pages[0].tags
        for name in ("ImageWidth", "ImageLength", "RowsPerStrip"):
            tags[name].overwrite(40_000)
    monkeypatch.setattr(
        tifffile.TiffPageSeries, "asarray", lambda *a, **k: pytest.fail("pixels were read")
    )
    assert napari_get_reader(str(path)) is None


def test_complex_tiff_is_declined(tmp_path, read_rgb, bccd_images):
    path = tmp_path / "fft.tif"
    grey = read_rgb(bccd_images[0])[..., 1].astype(np.float32)
    tifffile.imwrite(path, np.fft.fft2(grey).astype(np.complex64))
    assert napari_get_reader(str(path)) is None


@pytest.mark.parametrize(
    "old, new",
    [
        (b'SizeZ="3"', b'SizeZ="90000"'),
        (b'SizeZ="3"', b'SizeZ="9"'),
        (b'SizeZ="3"', b'SizeZ="0"'),
        (b'SizeZ="3"', b'SizeZ="-1"'),
        (b'SizeX="320"', b'SizeX="77777"'),
        (b'PhysicalSizeX="0.5"', b'PhysicalSizeX="nan"'),
        (b'Type="uint16"', b'Type="complex"'),
    ],
)
def test_ome_with_wrong_sizes_is_declined_or_fully_read(tmp_path, read_rgb, bccd_images, old, new):
    path = tmp_path / "planes.ome.tif"
    meta = {"axes": "ZYX", "PhysicalSizeX": 0.5}
    tifffile.imwrite(path, _real_stack(read_rgb, bccd_images), ome=True, metadata=meta)
    raw = path.read_bytes()
    assert raw.count(old) == 1
    path.write_bytes(raw.replace(old, new))
    reader = _declines_or_reads(path)
    if reader is not None:
        [(_, kwargs, _)] = reader(str(path))
        assert all(np.isfinite(kwargs["scale"])) and min(kwargs["scale"]) > 0


@pytest.mark.parametrize("spacing", ["abc", "nan", "-2", "0", "1e999"])
def test_bad_imagej_spacing_reads_pixels_without_z_scale(tmp_path, read_rgb, bccd_images, spacing):
    stack = _real_stack(read_rgb, bccd_images)
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path, stack, imagej=True, resolution=(2.0, 2.0), metadata={"axes": "ZYX", "unit": "um"}
    )
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tag = tif.pages[0].tags["ImageDescription"]
        tag.overwrite(tag.value.replace("unit=um", f"spacing={spacing}\nunit=um"))
    with tifffile.TiffFile(path) as tif:
        assert "spacing" in tif.imagej_metadata
    [(data, kwargs, _)] = _declines_or_reads(path)(str(path))
    np.testing.assert_array_equal(data, stack)
    np.testing.assert_allclose(kwargs["scale"], [1.0, 0.5, 0.5])


def test_16bit_three_plane_tiff_without_axes_opens_as_three_channels(
    tmp_path, read_rgb, bccd_images, make_napari_viewer
):
    stack = _real_stack(read_rgb, bccd_images)
    path = tmp_path / "cyx.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")  # no axis metadata: 'QYX'
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "QYX"
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-bta")
    assert len(layers) == 3
    for c, layer in enumerate(layers):
        np.testing.assert_array_equal(np.asarray(layer.data), stack[c])
    assert viewer.dims.ndim == 2  # no slider


def test_pages_written_one_by_one_open_as_layers(tmp_path, read_rgb, bccd_images):
    """A TIFF written page by page holds one series per page: every page opens, not only the
    first (as bta-core reads it)."""
    stack = _real_stack(read_rgb, bccd_images)
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tw:
        for page in stack:
            tw.write(page, photometric="minisblack", contiguous=False)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series) == len(stack)
    layers = napari_get_reader(str(path))(str(path))
    data = [np.asarray(d) for d, _, _ in layers]
    if len(data) == 1:  # one layer with a channel axis given to napari
        data = list(np.moveaxis(data[0], layers[0][1].get("channel_axis", 0), 0))
    assert len(data) == len(stack)
    for got, page in zip(data, stack, strict=True):
        np.testing.assert_array_equal(got, page)


def test_z_slider_is_labelled_z(tmp_path, read_rgb, bccd_images, make_napari_viewer):
    stack = np.concatenate([_real_stack(read_rgb, bccd_images)] * 4)  # 12 planes, no axes
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    [(_, kwargs, _)] = napari_get_reader(str(path))(str(path))
    assert kwargs["axis_labels"] == ["Z", "Y", "X"]
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-bta")
    assert viewer.dims.nsteps[0] == 12 and viewer.dims.axis_labels[0] == "Z"


def test_imagej_labels_per_plane_name_the_channels(tmp_path, bccd_images, dsb_images, read_rgb):
    """ImageJ labels every plane of a hyperstack (Z*C labels, repeating per Z): the channels
    are named from the first C labels, not ch0/ch1."""
    data = _stack_16bit(read_rgb, bccd_images, dsb_images)  # Z=2, C=3
    path = tmp_path / "labelled.tif"
    labels = ["DAPI", "GFP", "RFP"] * 2
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX", "Labels": labels})
    with tifffile.TiffFile(path) as tif:
        assert tif.imagej_metadata["Labels"] == labels
    [(_, kwargs, _)] = napari_get_reader(str(path))(str(path))
    assert kwargs["name"] == ["labelled [DAPI]", "labelled [GFP]", "labelled [RFP]"]
    # labels that differ per plane do not name channels
    other = tmp_path / "per_plane.tif"
    planes = [f"z{z} c{c}" for z in range(2) for c in range(3)]
    tifffile.imwrite(other, data, imagej=True, metadata={"axes": "ZCYX", "Labels": planes})
    [(_, kwargs, _)] = napari_get_reader(str(other))(str(other))
    assert kwargs["name"] == ["per_plane [ch0]", "per_plane [ch1]", "per_plane [ch2]"]


def test_16bit_rgb_tiff_opens_as_red_green_blue_channels(
    tmp_path, read_rgb, bccd_images, make_napari_viewer
):
    """napari shows only 8-bit RGB as RGB: a 16-bit RGB TIFF opens as three channel layers,
    coloured red, green and blue (napari's default cyan/magenta/yellow mixed into wrong
    colours); a 16-bit grey stack keeps napari's colours."""
    stack = _real_stack(read_rgb, bccd_images)
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, np.moveaxis(stack, 0, -1), photometric="rgb")
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-bta")
    assert [ly.colormap.name for ly in layers] == ["red", "green", "blue"]
    for c, layer in enumerate(layers):
        np.testing.assert_array_equal(np.asarray(layer.data), stack[c])
    grey = tmp_path / "grey16.tif"
    tifffile.imwrite(grey, stack, photometric="minisblack")
    [(_, kwargs, _)] = napari_get_reader(str(grey))(str(grey))
    assert "colormap" not in kwargs
