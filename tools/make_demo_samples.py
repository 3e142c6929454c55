"""Build the bundled scan demo (src/bta_core/samples/scan_demo) from ../shared/data.

Real test-split images, resized small, plus planted reuse: a rotated crop, a mirrored copy, a
re-compressed brightened copy, a 16-bit two-channel TIFF copy, and a real pair of photos of
the same smear field. ``planted.csv`` lists the truth. Run from the repository root:

    python tools/make_demo_samples.py ../shared/data
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "src" / "bta_core" / "samples" / "scan_demo"


def _load(path: Path, max_side: int) -> Image.Image:
    im = Image.open(path).convert("RGB")
    im.thumbnail((max_side, max_side), Image.BICUBIC)
    return im


def main(shared: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    bccd, dsb = shared / "bccd", shared / "dsb2018"
    split = {r["file"]: r for r in csv.DictReader(open(dsb / "splits.csv"))}
    fluo = [f for f, r in split.items() if r["split"] == "test" and r["modality"] == "fluorescence"]
    tissue = [
        f for f, r in split.items() if r["split"] == "test" and r["modality"] == "tissue-colour"
    ]
    blood = [
        "BloodImage_00002.jpg",
        "BloodImage_00011.jpg",
        "BloodImage_00033.jpg",
        "BloodImage_00047.jpg",
    ]
    truth = []

    def save(im: Image.Image, name: str, **kw) -> str:
        im.save(OUT / name, **kw)
        return name

    names = [
        save(_load(bccd / "images" / b, 320), f"smear_{i + 1}.jpg", quality=92)
        for i, b in enumerate(blood)
    ]
    # real repositioned duplicate: the same field photographed twice (35 % overlap)
    a = save(_load(bccd / "images" / "BloodImage_00228.jpg", 320), "field_7a.jpg", quality=92)
    b = save(_load(bccd / "images" / "BloodImage_00259.jpg", 320), "field_7b.jpg", quality=92)
    truth.append((a, b, "same field photographed twice (real, 35% overlap)"))
    # planted: a crop of smear_1, rotated 90 degrees
    src = Image.open(OUT / names[0])
    w, h = src.size
    crop = src.crop((w // 5, h // 6, w // 5 + w // 2, h // 6 + int(h * 0.6))).transpose(
        Image.Transpose.ROTATE_90
    )
    truth.append(
        (names[0], save(crop, "figure3_panel_b.png"), "crop (30% of the area) rotated 90 degrees")
    )
    nuclei = []
    for i, f in enumerate(fluo[:3]):
        nuclei.append(save(_load(dsb / f, 256), f"nuclei_{i + 1}.png"))
    flipped = Image.open(OUT / nuclei[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    truth.append((nuclei[0], save(flipped, "nuclei_1_mirror.png"), "mirrored copy"))
    # planted: a 16-bit two-channel TIFF whose first channel is nuclei_2 (other format, other depth)
    grey = np.asarray(Image.open(OUT / nuclei[1]).convert("L")).astype(np.uint16) * 257
    other = np.asarray(Image.open(OUT / nuclei[2]).convert("L")).astype(np.uint16) * 200
    tifffile.imwrite(
        OUT / "stack_2ch.tif",
        np.stack([grey, other]),
        photometric="minisblack",
        metadata={"axes": "CYX"},
    )
    truth.append((nuclei[1], "stack_2ch.tif[c=0]", "channel 0 of a 16-bit 2-channel TIFF"))
    truth.append(
        (nuclei[2], "stack_2ch.tif[c=1]", "channel 1 of the same TIFF, intensities rescaled")
    )
    tiles = [save(_load(dsb / f, 256), f"tissue_{i + 1}.png") for i, f in enumerate(tissue[:2])]
    arr = np.asarray(Image.open(OUT / tiles[0])).astype(np.float32)
    bright = Image.fromarray(np.clip(arr * 1.2 + 12, 0, 255).astype(np.uint8))
    truth.append(
        (tiles[0], save(bright, "tissue_1_edit.jpg", quality=35), "brightened, JPEG quality 35")
    )
    # a damaged file, to show that scans skip and report it
    data = (OUT / names[1]).read_bytes()
    (OUT / "damaged_upload.jpg").write_bytes(data[: len(data) // 4])
    with open(OUT / "planted.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["a", "b", "what"])
        wr.writerows(truth)
    (OUT / "README.md").write_text(
        "# Scan demo images\n\nMade by `tools/make_demo_samples.py` from real images in `../shared/data`:\n"
        "BCCD blood smears (MIT licence, Shenggan/BCCD_Dataset) and DSB2018 nuclei/tissue (CC0 1.0,\n"
        "BBBC038). Resized to at most 320 px. `planted.csv` lists the reused pairs;\n"
        "`damaged_upload.jpg` is truncated on purpose.\n"
    )
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total / 1024:.0f} KiB to {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data"))
