"""Read microscopy images into the RGB float arrays the model takes.

Rules (also in docs/image-io.md):

* Formats: chosen from the file's first bytes, not its name. TIFF / OME-TIFF through tifffile;
  PNG, JPEG, BMP, GIF, WebP through Pillow (first frame). A file that is no image says what
  it holds (HTML, PDF, text...).
* Pixel budget: a file may declare at most ``MAX_PIXELS`` values (width x height x channels x
  planes; ``BTA_MAX_PIXELS`` overrides), checked from the header before decoding.
* Axes: a TIFF's axes come from its first series (``YX``, ``CYX``, ``YXS``, ``ZCYX``,
  ``TZCYX``...). Files without axis names (tifffile's ``Q``/``I``) are guessed: a last axis of
  3 or 4 is RGB(A) samples, a small leading axis (<= 8) is channels, a larger one Z.
* Planes: Z and T are "planes". ``load_image`` takes one plane (``plane=0`` by default);
  ``iter_images`` yields every plane (and with ``split_channels`` every channel) as its own
  image, named ``file.tif[c=1,z=3]``.
* Channels: 1 channel -> grey, replicated to RGB; grey + alpha -> grey; 3 -> RGB; 4 RGBA
  samples -> alpha dropped; CMYK -> RGB (ICC profile when embedded); 2, 4 (as a ``C`` axis) or
  >= 5 channels -> each channel scaled on its own and averaged to grey (with an
  ``ImageReadWarning``), unless
  ``channels=[...]`` picks up to three channels (mapped to R, G, B) or ``split_channels`` makes
  each channel its own image.
* Intensity: uint8 is divided by 255, and so is 8-bit data widened to uint16 (every value a
  multiple of 257, or of 256). Every other dtype (uint16, int, float) is scaled per
  channel from its 0.1st to 99.9th percentile to [0, 1] and clipped (robust to hot pixels;
  a constant image maps to 0). NaN / inf pixels are missing values: filled per channel with an
  ``ImageReadWarning``; an image with no finite value is refused. bool and complex data are
  refused.
* Bad input raises ``ImageReadError`` naming the file and the problem.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .decode import (  # noqa: F401 (errors and budget are re-exported from here)
    MAX_PIXELS,
    ImageReadError,
    ImageReadWarning,
    decode_file,
    first_series,
    pixel_budget,
    quiet_tifffile,
    read_first_stack,
)

TIFF_SUFFIXES = (".tif", ".tiff")
OTHER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
IMAGE_SUFFIXES = TIFF_SUFFIXES + OTHER_SUFFIXES
PERCENTILES = (0.1, 99.9)
MIN_SIZE = 2
MAX_NDIM = 5


@dataclass
class ImageInfo:
    """Where an image came from inside its file."""

    path: str
    name: str
    axes: str
    plane: dict[str, int]
    channels: tuple[int, ...] | None
    original_dtype: str
    original_shape: tuple[int, ...]


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has an image suffix this module reads."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def read_array(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Raw array of a file and its axes string (``Y``, ``X``, ``C``, ``S``, ``Z``, ``T``...).

    The format comes from the file's first bytes, not its name; a file that is no image says
    what it holds. Size and pixel type are checked from the header before pixels are decoded.
    """
    path = str(path)
    data, axes = decode_file(path)
    if data.dtype == object or data.ndim == 0:
        raise ImageReadError(path, "file does not hold a pixel array")
    return data, resolve_axes(axes, data.shape)


def resolve_axes(axes: str, shape: Sequence[int]) -> str:
    """Axes of an array: the file's own, or guessed when it has none or only unnamed ones.

    tifffile names axes it cannot identify ``Q`` (unknown) or ``I`` (a page sequence); a file
    with nothing better than those is treated as one without axis metadata.
    """
    axes = (axes or "").upper()
    if len(axes) != len(shape) or len(set(axes)) != len(axes):
        return _guess_axes(tuple(shape))
    if "Y" not in axes or "X" not in axes:
        return _guess_axes(tuple(shape))
    if set(axes) & set("QI") and not set(axes) - set("QIYXS"):
        return _guess_axes(tuple(shape))
    return axes


def _guess_axes(shape: tuple[int, ...]) -> str:
    nd = len(shape)
    if nd <= 1:
        return "X" * nd
    if nd == 2:
        return "YX"
    if nd == 3:
        if shape[-1] in (3, 4) and shape[0] > 4:
            return "YXS"
        return "CYX" if shape[0] <= 8 else "ZYX"
    if nd == 4:
        if shape[-1] in (3, 4):
            return "ZYXS"
        return "ZCYX" if shape[1] <= 8 else "TZYX"
    if nd == 5:
        return "TZCYX" if shape[-1] not in (3, 4) else "TZYXS"
    return "Q" * nd


def _check_array(path: str, data: np.ndarray) -> None:
    if data.dtype == bool:
        raise ImageReadError(path, "boolean (mask) data is not an image")
    if np.iscomplexobj(data):
        raise ImageReadError(path, f"complex data ({data.dtype}) is not an image")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise ImageReadError(path, f"unsupported pixel type {data.dtype}")
    if data.ndim < 2:
        raise ImageReadError(path, f"need at least 2 dimensions, got shape {data.shape}")
    if data.ndim > MAX_NDIM:
        raise ImageReadError(path, f"too many dimensions ({data.ndim} > {MAX_NDIM}): {data.shape}")
    if data.size == 0:
        raise ImageReadError(path, f"image is empty (shape {data.shape})")


def _split_axes(data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """Move axes to a canonical order ``(P..., C, Y, X)``; P = plane axes (Z, T, others)."""
    axes = axes.replace("S", "C") if "C" not in axes else axes.replace("S", "Q")
    if "Y" not in axes or "X" not in axes:
        axes = axes[:-2] + "YX"
    plane_axes = [i for i, a in enumerate(axes) if a not in "CYX"]
    order = (
        plane_axes
        + ([axes.index("C")] if "C" in axes else [])
        + [
            axes.index("Y"),
            axes.index("X"),
        ]
    )
    out = np.transpose(data, order)
    if "C" not in axes:
        out = out[..., None, :, :]
    names = "".join(axes[i] for i in plane_axes)
    return out, names


def scale_intensity(channel: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Map one channel to float32 [0, 1]: uint8 / 255 (and widened 8-bit data as its 8-bit
    values, :func:`widened_8bit_step`), others by robust percentiles.

    NaN and infinite values are left out of the percentiles and come out as 0; values of any
    magnitude (float64 up to 1e308, 64-bit integers) give a finite result.
    """
    if dtype == np.uint8:
        return channel.astype(np.float32) / 255.0
    x = np.asarray(channel)
    step = widened_8bit_step(x)
    if step:  # 8-bit data stored as 16-bit: read exactly as the 8-bit values
        return (x // step).astype(np.float32) / 255.0
    vals = x
    if x.dtype.kind == "f":
        finite = np.isfinite(x)
        if not finite.all():
            vals = x[finite]
    if vals.size == 0:
        return np.zeros(x.shape, np.float32)
    vmax = float(np.max(np.abs(vals.astype(np.float64))))
    if vmax > 1e30 or 0 < vmax < 1e-30:  # bring extreme magnitudes into float32's range
        x = x.astype(np.float64) / vmax
        vals = vals.astype(np.float64) / vmax
    lo, hi = (float(v) for v in np.percentile(vals, PERCENTILES))
    if not hi > lo:
        lo, hi = float(vals.min()), float(vals.max())
    if not hi > lo:
        return np.zeros(x.shape, np.float32)
    out = (x.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.nan_to_num(np.clip(out, 0.0, 1.0), nan=0.0)


WIDENING_STEPS = (257, 256)
"""How 8-bit data are widened to 16 bits: v x 257 (0-255 -> 0-65535) or a shift by 8 bits."""


def widened_8bit_step(x: np.ndarray) -> int | None:
    """The step when every value of a uint16 array is an 8-bit value widened by it, else None.

    Such a file holds 8-bit data; it is read as those values / 255, like the 8-bit file it was
    made from, instead of being contrast-stretched like 16-bit camera data. An all-zero array
    gives None (nothing to tell).
    """
    if x.dtype != np.uint16 or x.size == 0 or not x.any():
        return None
    for step in WIDENING_STEPS:
        if int(x.max()) <= 255 * step and not np.any(x % np.uint16(step)):
            return step
    return None


_AVERAGED_SAID: set[int] = set()
"""Channel counts whose averaging was already reported in this process."""


def _to_rgb(
    path: str,
    cyx: np.ndarray,
    dtype: np.dtype,
    channels: Sequence[int] | None,
    samples: bool = False,
) -> np.ndarray:
    n = cyx.shape[0]
    if channels is not None:
        channels = list(channels)
        bad = [c for c in channels if not -n <= c < n]
        if bad or not 1 <= len(channels) <= 3:
            raise ImageReadError(
                path, f"channels {channels} invalid for an image with {n} channel(s) (pick 1-3)"
            )
        picked = [scale_intensity(cyx[c], dtype) for c in channels]
        while len(picked) < 3:
            picked.append(picked[0] if len(channels) == 1 else np.zeros_like(picked[0]))
        return np.stack(picked, axis=-1)
    if n == 1 or (n == 2 and samples):  # grey, or grey + alpha samples
        g = scale_intensity(cyx[0], dtype)
        return np.stack([g, g, g], axis=-1)
    if n == 3 or (n == 4 and samples):
        return np.stack([scale_intensity(cyx[c], dtype) for c in range(3)], axis=-1)
    if n not in _AVERAGED_SAID:  # once per channel count and run: a folder of stacks, one line
        _AVERAGED_SAID.add(n)
        warnings.warn(
            ImageReadWarning(
                path,
                f"{n} channels, each scaled on its own and averaged to one grey image (to "
                "compare the channels one by one: 'bta-core scan --planes', 'bta-core score "
                '"FILE[c=0]" B\' for one channel, or the napari plugin); said once for all '
                f"{n}-channel files",
            ),
            stacklevel=3,
        )
    g = np.mean([scale_intensity(cyx[c], dtype) for c in range(n)], axis=0)
    return np.stack([g, g, g], axis=-1)


def _fill_non_finite(path: str, pcyx: np.ndarray) -> np.ndarray:
    """Treat NaN / inf pixels as missing: fill them per channel and warn; refuse all-missing.

    NaN and -inf take the channel's lowest finite value, +inf its highest, so masked regions
    of ratio images become background instead of spreading NaN through the model.
    """
    if pcyx.dtype.kind != "f":
        return pcyx
    finite = np.isfinite(pcyx)
    n_bad = int(finite.size - np.count_nonzero(finite))
    if n_bad == 0:
        return pcyx
    if n_bad == finite.size:
        raise ImageReadError(path, "every pixel is NaN or infinite (no usable values)")
    out = np.array(pcyx, copy=True)
    for c in range(out.shape[-3]):
        ch, ok = out[..., c, :, :], finite[..., c, :, :]
        good = ch[ok]
        lo, hi = (good.min(), good.max()) if good.size else (0.0, 0.0)
        ch[np.isposinf(ch)] = hi
        ch[~np.isfinite(ch)] = lo
    warnings.warn(
        ImageReadWarning(
            path,
            f"{n_bad:,} of {finite.size:,} pixel values are NaN or infinite; "
            "treated as missing (filled with the channel's lowest value, +inf with its highest)",
        ),
        stacklevel=3,
    )
    return out


def _planes(path: str, data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    _check_array(path, data)
    pcyx, plane_names = _split_axes(data, axes)
    h, w = pcyx.shape[-2:]
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ImageReadError(path, f"image is too small ({h}x{w} pixels)")
    return _fill_non_finite(path, pcyx), plane_names


def load_image(
    path: str | os.PathLike,
    channels: Sequence[int] | None = None,
    plane: int = 0,
) -> np.ndarray:
    """Load one image as float32 ``(H, W, 3)`` in [0, 1] following the module's rules.

    Args:
        path: image file.
        channels: up to three channel indices to map to R, G, B (default: see module rules).
        plane: index of the Z/T plane of a stack, counted over all planes (default: first).
    """
    path = str(path)
    data, axes = read_array(path)
    pcyx, _ = _planes(path, data, axes)
    flat = pcyx.reshape(-1, *pcyx.shape[-3:])
    if not -flat.shape[0] <= plane < flat.shape[0]:
        raise ImageReadError(path, f"plane {plane} out of range (file has {flat.shape[0]})")
    return _to_rgb(path, flat[plane], data.dtype, channels, samples="S" in axes)


def load_named(name: str | os.PathLike) -> np.ndarray:
    """``load_image`` of a file, or of one plane or channel named as a scan names it
    (``stack.tif[c=1]``, ``stack.tif[z=3]``, ``stack.tif[c=0,z=2]``: copy a name from pairs.csv).

    A path that exists as a file is always the whole file, brackets in its name or not.
    """
    text = str(name)
    if os.path.exists(text) or not text.endswith("]") or "[" not in text:
        return load_image(text)
    path = text[: text.rindex("[")]
    if not os.path.isfile(path):
        return load_image(text)  # the usual "not found", naming what was asked for
    split = "c=" in text[len(path) :]
    names = []
    for info, rgb in iter_images(path, split_channels=split):
        if info.name == text:
            return rgb
        names.append(info.name[len(path) :])
    raise ImageReadError(
        path, f"no plane {text[len(path) :]} in this file (it has {', '.join(names) or 'none'})"
    )


def iter_images(
    path: str | os.PathLike, split_channels: bool = False
) -> Iterator[tuple[ImageInfo, np.ndarray]]:
    """Yield every plane (and, with ``split_channels``, every channel) of a file as an image.

    A single 2-D image yields once, named by its path. Each item is ``(info, rgb)`` with ``rgb``
    as from ``load_image``.
    """
    path = str(path)
    data, axes = read_array(path)
    pcyx, plane_names = _planes(path, data, axes)
    plane_shape = pcyx.shape[:-3]
    n_c = pcyx.shape[-3]
    samples = "S" in axes
    rgb_like = samples and n_c in (3, 4)
    for idx in np.ndindex(*plane_shape) if plane_shape else [()]:
        cyx = pcyx[idx]
        plane = {plane_names[k].lower(): int(i) for k, i in enumerate(idx)}
        if split_channels and n_c > 1 and not rgb_like:
            for c in range(n_c):
                tag = ",".join([f"c={c}"] + [f"{k}={v}" for k, v in plane.items()])
                info = ImageInfo(
                    path, f"{path}[{tag}]", axes, plane, (c,), str(data.dtype), data.shape
                )
                yield info, _to_rgb(path, cyx, data.dtype, [c])
        else:
            tag = ",".join(f"{k}={v}" for k, v in plane.items())
            name = f"{path}[{tag}]" if tag else path
            info = ImageInfo(path, name, axes, plane, None, str(data.dtype), data.shape)
            yield info, _to_rgb(path, cyx, data.dtype, None, samples=samples)


SkipFn = Callable[[Path, str], None]


def find_images(folder: str | os.PathLike, on_skip: SkipFn | None = None) -> list[Path]:
    """All image files below ``folder`` (recursive, sorted, hidden files skipped).

    Symbolic links to folders are followed once: a link back to a folder already walked (a
    loop) is not. What cannot be used is reported through ``on_skip(path, problem)`` instead
    of silently left out: folders that cannot be listed, link loops, broken links, and image
    names that are pipes, sockets or devices.
    """
    root = Path(folder)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: folder not found")
    skip = on_skip or (lambda path, problem: None)
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder_path = stack.pop()
        try:
            st = folder_path.stat()
            if (st.st_dev, st.st_ino) in seen:
                skip(folder_path, "symbolic link loop: the folder it points to is already scanned")
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder_path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            skip(folder_path, f"cannot list folder ({exc.strerror or exc})")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                if entry.is_dir():  # follows links; loops are caught by ``seen``
                    stack.append(path)
                    continue
                if not is_image_file(entry.name):
                    continue
                if entry.is_symlink() and not path.exists():
                    skip(path, "broken symbolic link")
                elif not entry.is_file():
                    skip(path, "not a regular file (a pipe, socket or device)")
                else:
                    found.append(path)
            except OSError as exc:
                skip(path, f"cannot read file ({exc.strerror or exc})")
    return sorted(found)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """float [0, 1] RGB -> uint8 RGB (for caches and thumbnails)."""
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def to_float_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Any 2-D grey or (H, W, 1|3|4) array -> float32 (H, W, 3) in [0, 1]: the one rule.

    Floats already in [0, 1] are kept as they are; uint8 is divided by 255; every other range
    is stretched per channel by :func:`scale_intensity`. A fourth (alpha) channel is dropped.
    Raises ``ValueError`` naming ``name`` for shapes, pixel types or values it cannot use.
    """
    arr = np.asarray(image)
    if arr.dtype == bool or np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name}: unsupported pixel type {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name}: expected a (H, W) or (H, W, 3|4) image, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():  # missing values, as for files
        arr = np.moveaxis(_fill_non_finite(name, np.moveaxis(arr, -1, 0)), 0, -1)
    chans = arr.shape[-1] if arr.shape[-1] != 4 else 3
    if arr.dtype.kind == "f" and arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
        rgb = arr[..., :chans].astype(np.float32)
    else:
        rgb = np.stack([scale_intensity(arr[..., c], arr.dtype) for c in range(chans)], axis=-1)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    return np.ascontiguousarray(rgb, dtype=np.float32)
