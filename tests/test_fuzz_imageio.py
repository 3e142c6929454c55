"""Property tests: whatever bytes or arrays a file holds, the loader gives a valid RGB float
image or one clear ``ImageReadError``, and the napari reader gives ``None`` or layers."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bta_core.imageio import ImageReadError, ImageReadWarning, iter_images, load_image
from napari_bta._reader import napari_get_reader

FUZZ = settings(
    max_examples=int(os.environ.get("BTA_FUZZ_EXAMPLES", "40")),  # raise it for a long hunt
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DTYPES = [
    "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "float16", "float32", "float64", "bool", "complex64",
]  # fmt: skip


def _assert_loader_contract(path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageReadWarning)
        try:
            img = load_image(path)
        except ImageReadError as exc:
            assert exc.path == str(path) and exc.problem and "Traceback" not in exc.problem
            return
        assert img.dtype == np.float32 and img.ndim == 3 and img.shape[-1] == 3
        assert img.shape[0] >= 2 and img.shape[1] >= 2
        assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
        for _, rgb in iter_images(path, split_channels=True):
            assert rgb.shape[-1] == 3 and np.isfinite(rgb).all()


def _assert_reader_contract(path) -> None:
    reader = napari_get_reader(str(path))
    if reader is None:
        return
    layers = reader(str(path))
    assert isinstance(layers, list) and layers
    for data, kwargs, layer_type in layers:
        assert layer_type == "image" and np.asarray(data).size > 0
        assert all(np.isfinite(kwargs.get("scale", [1.0])))


@pytest.fixture(scope="module")
def real_files(bccd_images, dsb_images):
    """Small real images encoded as TIFF, PNG and JPEG bytes (seeds for byte mutations)."""
    from PIL import Image

    rgb = np.asarray(Image.open(bccd_images[0]).convert("RGB"))[::8, ::8]
    grey = np.asarray(Image.open(dsb_images[0]).convert("L"))[::8, ::8]
    out = {}
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.stack([grey, grey // 2]).astype(np.uint16), metadata={"axes": "CYX"})
    out[".tif"] = buf.getvalue()
    for suffix, fmt, arr in ((".png", "PNG", grey), (".jpg", "JPEG", rgb)):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, fmt)
        out[suffix] = buf.getvalue()
    return out


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".tif", ".png", ".jpg"]))
def test_random_bytes(tmp_path, data, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(data)
    _assert_loader_contract(path)
    _assert_reader_contract(path)


@FUZZ
@given(
    suffix=st.sampled_from([".tif", ".png", ".jpg"]),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8),
)
def test_damaged_real_files(tmp_path, real_files, suffix, cut, flips):
    raw = bytearray(real_files[suffix])
    for where, value in flips:
        raw[int(where * (len(raw) - 1))] = value
    raw = raw[: max(1, int(cut * len(raw)))] if cut < 0.98 else raw
    path = tmp_path / f"damaged{suffix}"
    path.write_bytes(bytes(raw))
    _assert_loader_contract(path)
    _assert_reader_contract(path)


@st.composite
def arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=6, min_side=1, max_side=7))
    elements = None
    if dtype.kind == "f":
        elements = st.floats(width=dtype.itemsize * 8, allow_nan=True, allow_infinity=True)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@FUZZ
@given(arr=arrays(), fmt=st.sampled_from(["tiff", "png"]))
def test_random_valid_arrays(tmp_path, arr, fmt):
    path = tmp_path / f"array.{'tif' if fmt == 'tiff' else 'png'}"
    try:
        if fmt == "tiff":
            tifffile.imwrite(path, arr)
        else:
            from PIL import Image

            Image.fromarray(arr).save(path)
    except Exception:  # the writer cannot store this array in this format
        assume(False)
    _assert_loader_contract(path)
    _assert_reader_contract(path)
