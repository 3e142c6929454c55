"""Copy ../shared/data resized to at most 256 px (JPEG q95) into .gpu/data for a GPU machine.

The device machine receives at most 64 MiB and no ../shared; `benchmarks/gpu_run.sh` reads
`.gpu/data/{bccd,dsb2018}/splits.csv` made here (same rows, files renamed to .jpg).

    python tools/pack_gpu_data.py ../shared/data .gpu/data
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

from PIL import Image


def pack(src: Path, dst: Path, max_side: int = 256) -> None:
    for ds in ("bccd", "dsb2018"):
        (dst / ds / "images").mkdir(parents=True, exist_ok=True)
        with open(src / ds / "splits.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        out = []
        for row in rows:
            im = Image.open(src / ds / row["file"]).convert("RGB")
            im.thumbnail((max_side, max_side), Image.BICUBIC)
            name = Path(row["file"]).stem + ".jpg"
            im.save(dst / ds / "images" / name, quality=95)
            out.append({**row, "file": "images/" + name, "width": im.size[0], "height": im.size[1]})
        with open(dst / ds / "splits.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(out[0]))
            writer.writeheader()
            writer.writerows(out)
        for name in ("same_source_edges.csv", "same_source_groups.csv"):
            shutil.copy(src / ds / name, dst / ds / name)


if __name__ == "__main__":
    pack(
        Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data"),
        Path(sys.argv[2] if len(sys.argv) > 2 else ".gpu/data"),
    )
