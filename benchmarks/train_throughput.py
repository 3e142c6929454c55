"""Training throughput: the paper notebook's pipeline vs ours, same images and model, one process.

Reference (the paper's notebook): PIL augmentations in the main process, batch 16, fp32, and
the backbone run a second time for the Barlow Twins term as the notebook's criterion does.
Ours: ``bta_core.training.loop.train_one_epoch`` (uint8 images on the device, batched views, frozen
backbone once per view under no_grad, bf16 + channels_last on CUDA).

    python benchmarks/train_throughput.py ../shared/data/bccd/splits.csv --backbone resnet50 \
        --image-size 224 --out benchmarks/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from bta_core.augment import paper_pil_transforms
from bta_core.data import decode_records, group_ids, list_records
from bta_core.device import describe_device, get_device
from bta_core.losses import barlow_twins_loss, combined_loss
from bta_core.training.config import TrainConfig
from bta_core.training.loop import _Run, _stage_params, build_model, train_one_epoch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference_images_per_s(model, pil_images, device, steps: int, batch: int = 16) -> float:
    """The notebook's loop: PIL views per image, fp32, backbone twice (BCE pass + BT criterion)."""
    t_a, t_b = paper_pil_transforms(model.config.image_size)
    params = list(model.projector.parameters()) + list(model.head.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3)
    model.projector.train()
    model.head.train()
    model.backbone.eval()
    mean, std = model.mean, model.std

    def backbone(x):  # the notebook's views are already normalised by the PIL pipeline
        with torch.no_grad():
            return model.backbone(x)

    def step(i: int) -> None:
        imgs = [pil_images[(i * batch + k) % len(pil_images)] for k in range(batch)]
        xa = torch.stack([t_a(im) for im in imgs]).to(device)
        xb = torch.stack([t_b(im) for im in imgs]).to(device)
        za, zb = model.projector(backbone(xa)), model.projector(backbone(xb))
        loss, _ = combined_loss(model.head, za, zb)
        # the notebook's criterion recomputes the backbone for the Barlow Twins term
        za2, zb2 = model.projector(backbone(xa)), model.projector(backbone(xb))
        loss = loss + 2e-5 * barlow_twins_loss(za2, zb2)
        opt.zero_grad()
        loss.backward()
        opt.step()

    del mean, std
    for i in range(2):
        step(i)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i + 2)
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def ours_images_per_s(cfg: TrainConfig, model, images, groups, device, epochs: int) -> float:
    run = _Run(cfg, model, images.to(device), groups.to(device), device)
    groups_p = _stage_params(model, "combined", cfg)
    params = [p for g in groups_p for p in g["params"]]
    opt = torch.optim.AdamW(groups_p, lr=cfg.lr_start)
    train_one_epoch(run, "combined", opt, params, 0, 0)  # warm-up (cudnn autotune, allocator)
    _sync(device)
    seen, t0 = 0, time.perf_counter()
    for e in range(epochs):
        seen += train_one_epoch(run, "combined", opt, params, 0, e + 1)["images"]
    _sync(device)
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("data", nargs="+")
    ap.add_argument("--split", default=None)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--limit", type=int, default=1024)
    ap.add_argument("--ref-steps", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--views", default="paper")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    device = get_device(args.device)
    torch.manual_seed(0)
    cfg = TrainConfig(
        data=args.data,
        backbone=args.backbone,
        image_size=args.image_size,
        batch_size=args.batch_size,
        views=args.views,
        mode="combined",
        device=str(device),
        quiet=True,
        compile=args.compile,
    )
    records = list_records(args.data, split=args.split, limit=args.limit)
    cache = max(args.image_size, round(args.image_size * 8 / 7))
    images, records = decode_records(records, cache)
    groups = group_ids(records)
    model = build_model(cfg).to(device)

    from PIL import Image

    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images[: max(64, 16 * 4)]]
    ref = (
        None if args.skip_reference else reference_images_per_s(model, pil, device, args.ref_steps)
    )

    if device.type == "cuda":
        model.backbone.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.compile:
        model.backbone = torch.compile(model.backbone)
    ours = ours_images_per_s(cfg, model, images, groups, device, args.epochs)
    result = {
        "device": describe_device(device),
        "host": platform.node(),
        "torch": torch.__version__,
        "backbone": args.backbone,
        "image_size": args.image_size,
        "images": len(records),
        "batch_size_ours": args.batch_size,
        "batch_size_reference": 16,
        "reference_images_per_s": ref,
        "ours_images_per_s": ours,
        "speedup": (ours / ref) if ref else None,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"{'pipeline':<34}{'images/s':>12}")
    if ref:
        print(f"{'reference (PIL, fp32, batch 16)':<34}{ref:>12.1f}")
    print(f"{'ours (batched views, bf16 on CUDA)':<34}{ours:>12.1f}")
    if ref:
        print(f"speed-up: {ours / ref:.1f}x")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
