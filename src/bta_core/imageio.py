"""Read microscopy images into the RGB float arrays the model takes.

Rules (also in docs/image-io.md):

* Formats: TIFF / OME-TIFF through tifffile; PNG, JPEG, BMP and other common formats through
  scikit-image.
* Axes: a TIFF's axes come from its first series (``YX``, ``CYX``, ``YXS``, ``ZCYX``,
  ``TZCYX``...). Unknown layouts are guessed: a last axis of 3 or 4 is RGB(A) samples, a small
  leading axis (<= 8) is channels.
* Planes: Z and T are "planes". ``load_image`` takes one plane (``plane=0`` by default);
  ``iter_images`` yields every plane (and with ``split_channels`` every channel) as its own
  image, named ``file.tif[c=1,z=3]``.
* Channels: 1 channel -> grey, replicated to RGB; 3 -> RGB; 4 RGBA samples (PNG, or a TIFF
  ``S`` axis) -> alpha dropped; 2, 4 (as a ``C`` axis) or >= 5 channels -> each channel scaled
  on its own and averaged to grey, unless
  ``channels=[...]`` picks up to three channels (mapped to R, G, B) or ``split_channels`` makes
  each channel its own image.
* Intensity: uint8 is divided by 255. Every other dtype (uint16, int, float) is scaled per
  channel from its 0.1st to 99.9th percentile to [0, 1] and clipped (robust to hot pixels;
  a constant image maps to 0). bool and complex data are refused.
* Bad input raises ``ImageReadError`` naming the file and the problem: missing, truncated or
  corrupt files, non-images, empty or 1-pixel images, NaN/inf values, bool/complex dtypes,
  more than 5 dimensions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")
OTHER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
IMAGE_SUFFIXES = TIFF_SUFFIXES + OTHER_SUFFIXES
PERCENTILES = (0.1, 99.9)
MIN_SIZE = 2
MAX_NDIM = 5


class ImageReadError(ValueError):
    """An image file could not be used; ``path`` and ``problem`` say which and why."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


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


def _read_tiff(path: str) -> tuple[np.ndarray, str]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ImageReadError(path, "TIFF file holds no image series")
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes
    return data, axes


def read_array(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Raw array of a file and its axes string (``Y``, ``X``, ``C``, ``S``, ``Z``, ``T``...)."""
    path = str(path)
    if not os.path.exists(path):
        raise ImageReadError(path, "file not found")
    if os.path.isdir(path):
        raise ImageReadError(path, "is a folder, not an image file")
    if os.path.getsize(path) == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    try:
        if path.lower().endswith(TIFF_SUFFIXES):
            data, axes = _read_tiff(path)
        else:
            from skimage import io as skio

            data = np.asarray(skio.imread(path))
            axes = ""
    except ImageReadError:
        raise
    except MemoryError as exc:
        raise ImageReadError(path, "image is too large to load into memory") from exc
    except Exception as exc:  # decoders raise many types for damaged files
        raise ImageReadError(path, f"cannot decode file ({type(exc).__name__}: {exc})") from exc
    if data.dtype == object or data.size == 0 and data.ndim == 0:
        raise ImageReadError(path, "file does not hold a pixel array")
    axes = axes.upper() if axes and len(axes) == data.ndim else _guess_axes(data.shape)
    return data, axes


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
    """Map one channel to float32 [0, 1]: uint8 / 255, others by robust percentiles."""
    if dtype == np.uint8:
        return channel.astype(np.float32) / 255.0
    x = channel.astype(np.float32)
    lo, hi = np.percentile(x, PERCENTILES)
    if hi <= lo:
        lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


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
    if n == 1:
        g = scale_intensity(cyx[0], dtype)
        return np.stack([g, g, g], axis=-1)
    if n == 3 or (n == 4 and samples):
        return np.stack([scale_intensity(cyx[c], dtype) for c in range(3)], axis=-1)
    g = np.mean([scale_intensity(cyx[c], dtype) for c in range(n)], axis=0)
    return np.stack([g, g, g], axis=-1)


def _planes(path: str, data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    _check_array(path, data)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise ImageReadError(path, "image contains NaN or infinite values")
    pcyx, plane_names = _split_axes(data, axes)
    h, w = pcyx.shape[-2:]
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ImageReadError(path, f"image is too small ({h}x{w} pixels)")
    return pcyx, plane_names


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


def find_images(folder: str | os.PathLike) -> list[Path]:
    """All image files below ``folder`` (recursive, sorted, hidden files skipped)."""
    root = Path(folder)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: folder not found")
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and is_image_file(p)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """float [0, 1] RGB -> uint8 RGB (for caches and thumbnails)."""
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
