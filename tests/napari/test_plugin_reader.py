"""The TIFF reader: channels as layers, Z as a slider, scale from metadata, None when unreadable."""

from __future__ import annotations

import numpy as np
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
