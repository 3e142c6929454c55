"""Rebuild the files in ``napari_bta/sample_data`` from the real images in ../shared/data.

Run once by a developer (``python -m napari_bta._make_sample_data /path/to/shared/data``); the
plugin only reads the files it writes. Sources and licences are listed in
``sample_data/README.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent / "sample_data"
BCCD_A = "BloodImage_00010.jpg"  # a field with no same-source partner in BCCD
BCCD_C = "BloodImage_00030.jpg"  # an unrelated field (negative control)
DSB_CHANNELS = (
    "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552.png",
    "0287e7ee5b007c91ae2bd7628d09735e70496bc6127ecb7f3dd043e04ce37426.png",
)
PIXEL_SIZE_UM = 0.65


def _resize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.transform import resize

    out = resize(img, shape, anti_aliasing=True, preserve_range=True)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def make_pair(data: Path) -> None:
    """A BCCD field, a rotated crop of it (the planted reuse) and an unrelated field."""
    from skimage import io

    a = io.imread(data / "bccd" / "images" / BCCD_A)[..., :3]
    c = io.imread(data / "bccd" / "images" / BCCD_C)[..., :3]
    crop = a[100:420, 220:580]  # 320 x 360 pixels of the 480 x 640 field
    reused = np.rot90(crop, k=1)  # rotated 90 degrees counter-clockwise
    reused = np.clip(reused.astype(np.float32) * 1.08 + 6, 0, 255).astype(np.uint8)
    from PIL import Image

    Image.fromarray(_resize(a, (192, 256))).save(HERE / "bccd_a.jpg", quality=90)
    Image.fromarray(_resize(reused, (180, 160))).save(HERE / "bccd_b_reused.jpg", quality=90)
    Image.fromarray(_resize(c, (192, 256))).save(HERE / "bccd_c_other.jpg", quality=90)


def make_stack(data: Path) -> None:
    """A 3-channel 16-bit OME-TIFF: two nuclei fields and a flipped, shifted copy of the first."""
    import tifffile
    from skimage import io

    chans = []
    for name in DSB_CHANNELS:
        img = io.imread(data / "dsb2018" / "images" / name)[..., :3].mean(axis=-1)
        chans.append(_resize(img, (256, 256)).astype(np.uint16) * 200 + 300)
    planted = np.roll(chans[0][:, ::-1], shift=(12, -20), axis=(0, 1))
    stack = np.stack([chans[0], chans[1], (planted * 0.8).astype(np.uint16)])
    tifffile.imwrite(
        HERE / "nuclei_3ch.ome.tif",
        stack,
        ome=True,
        compression="zlib",
        metadata={
            "axes": "CYX",
            "PhysicalSizeX": PIXEL_SIZE_UM,
            "PhysicalSizeY": PIXEL_SIZE_UM,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm",
            "Channel": {"Name": ["nuclei A", "nuclei B", "nuclei A reused"]},
        },
    )


if __name__ == "__main__":
    root = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parents[3].parent / "shared" / "data"
    )
    make_pair(root)
    make_stack(root)
    print(sorted((p.name, p.stat().st_size) for p in HERE.iterdir()))
