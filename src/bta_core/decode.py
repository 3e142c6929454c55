"""Decoding image files safely: format sniffing, pixel budget, TIFF and Pillow decoders.

``bta_core.imageio`` turns what these return into model input; this module only makes sure a
file is what it claims, is not too large, and decodes to a plain pixel array, raising
``ImageReadError`` (file + problem) for anything else. Read by the format in the first bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

MAX_PIXELS = 2**27
"""Pixel budget: most values (width x height x channels x planes) a file may declare."""
IMAGE_KINDS = ("tiff", "png", "jpeg", "gif", "bmp", "webp")


class ImageReadError(ValueError):
    """An image file could not be used; ``path`` and ``problem`` say which and why."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ImageReadWarning(UserWarning):
    """An image was read, but something in it was repaired (e.g. NaN pixels filled)."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def pixel_budget() -> int:
    """Most pixel values (width x height x channels x planes) one file may declare.

    ``MAX_PIXELS`` unless the environment variable ``BTA_MAX_PIXELS`` sets another number.
    """
    env = os.environ.get("BTA_MAX_PIXELS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else MAX_PIXELS


def _check_declared(path: str, shape: Sequence[int], dtype: np.dtype | None) -> None:
    """Refuse a file from its header alone: pixel type and size, before any pixel is decoded."""
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype.kind == "b":
            raise ImageReadError(path, "boolean (mask) data is not an image")
        if dtype.kind == "c":
            raise ImageReadError(path, f"complex data ({dtype}) is not an image")
        if dtype.kind not in "uif":
            raise ImageReadError(path, f"unsupported pixel type {dtype}")
    values = int(np.prod([int(n) for n in shape], dtype=np.float64))
    budget = pixel_budget()
    if values > budget:
        dims = " x ".join(str(int(n)) for n in shape)
        raise ImageReadError(
            path,
            f"image too large: declares {dims} = {values:,} pixel values, over the budget of "
            f"{budget:,} (set BTA_MAX_PIXELS to allow more)",
        )


def _too_large(pillow_message: str, budget: int) -> str:
    """The budget's message for a file Pillow refused from its header (above twice the
    budget): Pillow names only the pixel count, not the dimensions."""
    found = re.search(r"\((\d+) pixels\)", pillow_message)
    size = f"{int(found.group(1)):,} pixels (width x height)" if found else "more pixels"
    return (
        f"image too large: declares {size}, over the budget of {budget:,} pixel values "
        "(set BTA_MAX_PIXELS to allow more)"
    )


def sniff(head: bytes) -> str:
    """What the first bytes of a file hold: an image format this module reads, or a description."""
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if not head:
        return "empty"
    for magic, what in _NOT_IMAGES:
        if head.lstrip()[: len(magic)].lower() == magic:
            return what
    try:
        text: str | None = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a character cut at the end of the sample is fine
        text = head[: exc.start].decode("utf-8") if exc.start >= len(head) - 3 else None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "plain text"
    return "unknown binary data (not TIFF, PNG, JPEG, BMP, GIF or WebP)"


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)
_NOT_IMAGES = (
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"<?xml", "an XML document"),
    (b"<svg", "an SVG drawing (vector graphics are not read)"),
    (b"%pdf", "a PDF document"),
    (b"pk\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"\x80\x02", "a Python pickle"),
    (b"{", "JSON or other text"),
)


@contextlib.contextmanager
def quiet_tifffile(path: str | os.PathLike | None = None) -> Iterator[None]:
    """Keep tifffile's log lines about odd or damaged structure off the console while a file
    is read. A file that cannot be read still raises (the caller names it and the problem); one
    that reads despite such errors (a cut stack: planes lost) gives one ``ImageReadWarning``
    naming ``path``."""
    logger = logging.getLogger("tifffile")
    errors: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record.getMessage())

    handler = _Keep(level=logging.ERROR)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    if path is not None and errors:  # reached only when the read succeeded
        what = errors[0].split("> ", 1)[-1]  # "<tifffile.TiffPages @8> invalid page offset 9"
        warnings.warn(
            ImageReadWarning(
                path,
                f"damaged TIFF structure ({what}): read what could be read, planes may be missing",
            ),
            stacklevel=3,
        )


def first_series(path: str, tif) -> object:
    """The first image series of an open ``tifffile.TiffFile``, checked from its header."""
    if not tif.series:
        raise ImageReadError(path, "TIFF file holds no image series")
    series = tif.series[0]
    _check_declared(path, series.shape, series.dtype)
    return series


def _matching_series(tif, first) -> list:
    """``first`` and every later series of the same shape, type and axes: the pages of a stack
    that was written page by page (otherwise only its first page would be read)."""
    if "I" in first.axes or len(tif.series) < 2:
        return [first]
    return [
        s
        for s in tif.series
        if s.shape == first.shape and s.dtype == first.dtype and s.axes == first.axes
    ]


def _read_pages(path: str, series: list) -> list[np.ndarray]:
    """The pages of ``series`` up to the first that cannot be read (a cut file), with a
    warning naming how many were lost; the first page failing is the file's error."""
    pages = [series[0].asarray()]
    for s in series[1:]:
        try:
            pages.append(s.asarray())
        except (ValueError, OSError, EOFError):
            warnings.warn(
                ImageReadWarning(
                    path,
                    f"only {len(pages)} of {len(series)} pages could be read (the file is cut "
                    "or damaged after them)",
                ),
                stacklevel=4,
            )
            break
    return pages


def read_first_stack(path: str, tif) -> tuple[np.ndarray, str]:
    """The pixels and tifffile axes of an open TIFF's first series; a stack written page by
    page (one series per page of one shape) is read whole, with a leading ``I`` axis."""
    series = first_series(path, tif)
    same = _matching_series(tif, series)
    if len(same) > 1:
        _check_declared(path, (len(same), *series.shape), series.dtype)
        return np.stack(_read_pages(path, same)), "I" + series.axes
    return series.asarray(), series.axes


def _read_tiff(path: str) -> tuple[np.ndarray, str]:
    import tifffile

    with quiet_tifffile(path), tifffile.TiffFile(path) as tif:
        data, axes = read_first_stack(path, tif)
        cmyk = tif.pages[0].photometric == tifffile.PHOTOMETRIC.SEPARATED
    if cmyk and axes.endswith("S") and data.shape[-1] == 4 and data.dtype.kind in "uf":
        data = _cmyk_array_to_rgb(data)
    return data, axes


def _cmyk_array_to_rgb(data: np.ndarray) -> np.ndarray:
    """CMYK ink samples (last axis) -> RGB with the standard formula, in the same dtype."""
    top = float(np.iinfo(data.dtype).max) if data.dtype.kind == "u" else 1.0
    ink = data.astype(np.float32) / top
    rgb = (1.0 - ink[..., :3]) * (1.0 - ink[..., 3:4])
    return np.clip(rgb * top, 0, top).round().astype(data.dtype)


def _read_pil(path: str) -> tuple[np.ndarray, str]:
    """PNG / JPEG / BMP / GIF / WebP through Pillow (first frame), colour modes made RGB or grey."""
    from PIL import Image

    budget = pixel_budget()
    # Pillow's own limit follows the tool's budget (so BTA_MAX_PIXELS raises it too): it warns
    # above ``budget`` pixels (our check below says more) and refuses above twice that
    Image.MAX_IMAGE_PIXELS = budget
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise ImageReadError(path, _too_large(str(exc), budget)) from exc
        with im:
            w, h = im.size
            _check_declared(path, (h, w, len(im.getbands())), None)
            mode = im.mode
            if mode == "1":
                raise ImageReadError(path, "boolean (1-bit) data is not an image")
            if mode == "CMYK":
                return np.asarray(_cmyk_to_rgb(im)), "YXS"
            if mode in ("LA", "La"):
                return np.asarray(im.getchannel(0)), "YX"
            if mode in ("P", "PA"):
                im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
            elif mode not in ("L", "RGB", "RGBA", "I", "F") and not mode.startswith("I;16"):
                im = im.convert("RGB")
            data = np.asarray(im)
    return data, ("YXS" if data.ndim == 3 else "YX")


def _cmyk_to_rgb(im):
    """CMYK -> RGB: through the embedded ICC profile when there is one, else the plain formula."""
    profile = im.info.get("icc_profile")
    if profile:
        try:
            import io

            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(
                im, src, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
        except Exception:  # a broken profile: fall back to the formula below
            pass
    return im.convert("RGB")


def decode_file(path: str) -> tuple[np.ndarray, str]:
    """Pixels of an image file and the axes its format names (``""`` when it names none)."""
    path = str(path)
    if not os.path.exists(path):
        raise ImageReadError(path, "file not found")
    if os.path.isdir(path):
        raise ImageReadError(path, "is a folder, not an image file")
    if not os.path.isfile(path):
        raise ImageReadError(path, "not a regular file (a pipe, socket or device)")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open file ({exc.strerror or exc})") from exc
    if size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    kind = sniff(head)
    if kind not in IMAGE_KINDS:
        raise ImageReadError(path, f"not an image file: it holds {kind}")
    try:
        data, axes = _read_tiff(path) if kind == "tiff" else _read_pil(path)
    except ImageReadError:
        raise
    except MemoryError as exc:
        raise ImageReadError(path, "image is too large to load into memory") from exc
    except Exception as exc:  # decoders raise many types for damaged files
        text = " ".join(str(exc).split())[:200]
        raise ImageReadError(
            path,
            f"cannot decode {kind.upper()} data, truncated or corrupt "
            f"({type(exc).__name__}: {text})",
        ) from exc
    return data, axes
