"""``File > Open Sample`` data: a real image pair with a planted reuse, and a multichannel stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_DIR = Path(__file__).parent / "sample_data"
GAP_PX = 16


def _read_rgb(name: str) -> np.ndarray:
    from PIL import Image

    with Image.open(SAMPLE_DIR / name) as img:
        return np.asarray(img.convert("RGB"))


def reuse_pair() -> list[tuple[Any, dict, str]]:
    """Blood smear field A, a rotated crop of it (B, the planted reuse) and an unrelated field C."""
    layers = []
    x = 0.0
    for name, label in (
        ("bccd_a.jpg", "BCCD A"),
        ("bccd_b_reused.jpg", "BCCD B (reused crop of A, rotated)"),
        ("bccd_c_other.jpg", "BCCD C (other field)"),
    ):
        rgb = _read_rgb(name)
        meta = {"source": f"napari-bta sample data: {name}", "licence": "MIT (BCCD dataset)"}
        layers.append(
            (rgb, {"name": label, "rgb": True, "translate": (0.0, x), "metadata": meta}, "image")
        )
        x += rgb.shape[1] + GAP_PX
    return layers


def nuclei_stack() -> list[tuple[Any, dict, str]]:
    """A 3-channel 16-bit OME-TIFF of nuclei (channel 2 reuses channel 0), one layer per channel."""
    from ._reader import read_tiff

    return read_tiff(str(SAMPLE_DIR / "nuclei_3ch.ome.tif"))
