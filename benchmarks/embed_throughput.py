"""Embedding from files vs the model's own pace: is decoding keeping the device busy?

* ``files_img_s``: image files -> embeddings, end to end, through
  ``bta_core.scan.loader.embed_files`` (``discover.decode_file``: decode, resize, fingerprints, in worker processes,
  batches to the device), the path of ``bta-core index`` and of the scan's embedding stage.
* ``forward_img_s``: backbone + projector alone on the same images, decoded beforehand, in the
  same process, same batch size.
* ``ratio`` = files / forward (1.0: decoding costs nothing visible).
* ``scan_img_s`` (unless ``--no-scan``): the scan's embedding stage on the same files
  (``bta_core.scan.embed.embed_folders``, no cache: hashing, decoding in processes, embedding).
* ``serial_img_s`` (with ``--serial``): decoding in the main process between batches, for
  comparison (what worker processes save).

    python benchmarks/embed_throughput.py --images ../shared/data/bccd/images --limit 256 --json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of image files")
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--checkpoint", default=None, help="model; default: the bundled one")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="decode processes")
    parser.add_argument("--no-scan", action="store_true", help="skip the scan-stage figure")
    parser.add_argument("--serial", action="store_true", help="also time decoding in-process")
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    args = parser.parse_args()

    from bta_core.checkpoint import load_checkpoint
    from bta_core.device import autocast, describe_device, get_device
    from bta_core.imageio import find_images, load_image
    from bta_core.model import to_model_input
    from bta_core.scan.loader import default_workers, embed_files

    device = get_device(args.device)
    model = load_checkpoint(args.checkpoint, device=device).eval()
    files = find_images(args.images)[: args.limit]
    if not files:
        sys.exit(f"{args.images}: no images")
    workers = default_workers() if args.workers is None else args.workers
    say = (lambda *a: None) if args.json else print

    # warm-up (weights, kernels, allocator)
    x0 = to_model_input([load_image(files[0])] * 2, model.config.image_size).to(device)
    with torch.inference_mode(), autocast(device):
        model(x0)

    def files_rate_with(n_workers: int) -> float:
        t0 = time.perf_counter()
        n = 0
        for _batch, z in embed_files(model, files, batch_size=args.batch_size, workers=n_workers):
            n += len(z)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - t0)

    files_rate = files_rate_with(workers)
    say(f"files -> embeddings ({workers} decode processes): {files_rate:.1f} img/s")

    x = to_model_input([load_image(f) for f in files], model.config.image_size)
    t0 = time.perf_counter()
    with torch.inference_mode(), autocast(device):
        for s in range(0, len(x), args.batch_size):
            model(x[s : s + args.batch_size].to(device)).float().cpu()
    if device.type == "cuda":
        torch.cuda.synchronize()
    forward_rate = len(x) / (time.perf_counter() - t0)
    say(f"forward only (backbone + projector): {forward_rate:.1f} img/s")

    out = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "device": describe_device(device),
        "torch_threads": torch.get_num_threads(),
        "images": str(args.images),
        "n": len(files),
        "batch_size": args.batch_size,
        "workers": workers,
        "files_img_s": round(files_rate, 2),
        "forward_img_s": round(forward_rate, 2),
        "ratio": round(files_rate / forward_rate, 3),
    }
    if args.serial:
        out["serial_img_s"] = round(files_rate_with(0), 2)
        say(f"decoding in the main process: {out['serial_img_s']:.1f} img/s")
    if not args.no_scan:
        import tempfile

        from bta_core.scan.embed import embed_folders

        with tempfile.TemporaryDirectory() as tmp:  # the same files, as a folder
            for k, f in enumerate(files):
                os.symlink(os.path.abspath(f), Path(tmp) / f"{k:06d}{f.suffix}")
            t0 = time.perf_counter()
            emb = embed_folders(
                model, [tmp], cache_dir=None, batch_size=args.batch_size, workers=workers
            )
        out["scan_img_s"] = round(emb.stats["n_embedded"] / (time.perf_counter() - t0), 2)
        say(f"scan embedding stage ({workers} decode processes): {out['scan_img_s']:.1f} img/s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
