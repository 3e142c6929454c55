"""Cache of frozen-backbone features of many views per image (the CPU training recipe).

For one data set (``splits.csv``) ``cache_dataset`` writes ``<name>.safetensors`` with

* ``clean``: features of every image, resized whole (the image as a user scores it);
* ``views``: ``K`` random "reuse" views (crops, flips, rot90, colour, blur, noise, JPEG) of
  each train/val image, shape ``(N_trainval, K, D)``;
* ``manip``: every reuse-suite manipulation of each test image plus the paper's two view
  pipelines, shape ``(N_test, M, D)``;

and a JSON sidecar with the files, groups, splits, modalities and manipulation names
(``bta_core.training.features.load_feature_set`` reads both). Features are stored in fp16; the
files are written atomically, so a data set whose cache exists is complete.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..augment import PAPER_VIEWS, REUSE_VIEWS, apply_view
from ..data import decode_records, read_splits_csv
from ..evaluation.pairs import MANIPULATIONS, manipulate

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TEST_VIEWS = [m for m in MANIPULATIONS if m != "identity"] + ["paper_a", "paper_b"]


def _features(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return net((x - MEAN) / STD).half()


def subsample(records: list, caps: dict[str, int], seed: int) -> list:
    """At most ``caps[split]`` random images of each split (CPU budget), in file order."""
    rng = np.random.default_rng(seed)
    keep = []
    for split in sorted({r.split for r in records}):
        idx = [i for i, r in enumerate(records) if r.split == split]
        cap = caps.get(split)
        if cap and len(idx) > cap:
            idx = sorted(rng.choice(idx, cap, replace=False).tolist())
        keep += idx
    return [records[i] for i in sorted(keep)]


def cache_dataset(
    name: str,
    csv: Path,
    out: Path,
    net: torch.nn.Module,
    k_views: int = 4,
    size: int = 224,
    bs: int = 32,
    seed: int = 0,
    caps: dict[str, int] | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Compute and write the feature cache of one data set (``net``: the frozen backbone)."""
    records = subsample(read_splits_csv(csv), caps or {}, seed)
    t0 = time.time()
    skipped: list[str] = []
    images, records = decode_records(
        records, round(size * 8 / 7), on_skip=lambda r, why: skipped.append(f"{r.path}: {why}")
    )
    log(f"{name}: decoded {len(records)} images in {time.time() - t0:.0f}s")
    splits = [r.split for r in records]
    trainval = [i for i, s in enumerate(splits) if s in ("train", "val")]
    test = [i for i, s in enumerate(splits) if s == "test"]
    g = torch.Generator().manual_seed(seed)
    clean, views, manip = [], [], []
    n = len(records)
    for start in range(0, n, bs):
        x = images[start : start + bs]
        clean.append(_features(net, manipulate(x, "identity", size)))
        log(f"{name}: clean {min(start + bs, n)}/{n} {time.time() - t0:.0f}s")
    for start in range(0, len(trainval), bs):
        x = images[trainval[start : start + bs]]
        per = [_features(net, apply_view(x, REUSE_VIEWS[k % 2], size, g)) for k in range(k_views)]
        views.append(torch.stack(per, 1))
        log(f"{name}: views {start + len(x)}/{len(trainval)} {time.time() - t0:.0f}s")
    for start in range(0, len(test), bs):
        x = images[test[start : start + bs]]
        per = []
        for k, m in enumerate(TEST_VIEWS):
            if m.startswith("paper_"):
                v = apply_view(x, PAPER_VIEWS[m == "paper_b"], size, g)
            else:
                v = manipulate(x, m, size, seed=seed + start + k)
            per.append(_features(net, v))
        manip.append(torch.stack(per, 1))
        log(f"{name}: test {start + len(x)}/{len(test)} {time.time() - t0:.0f}s")
    from safetensors.torch import save_file

    d = net_dim = clean[0].shape[1]
    tensors = {
        "clean": torch.cat(clean).contiguous(),
        "views": torch.cat(views).contiguous() if views else torch.zeros(0, k_views, d),
        "manip": torch.cat(manip).contiguous()
        if manip
        else torch.zeros(0, len(TEST_VIEWS), net_dim),
    }
    meta = {
        "dataset": name,
        "files": [r.path for r in records],
        "groups": [r.group for r in records],
        "splits": splits,
        "modalities": [r.modality or "" for r in records],
        "trainval_index": trainval,
        "test_index": test,
        "test_views": TEST_VIEWS,
        "k_views": k_views,
        "image_size": size,
        "skipped": skipped,
        "seed": seed,
        "caps": caps or {},
    }
    tmp = out.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(out)
    out.with_suffix(".json").write_text(json.dumps(meta), encoding="utf-8")
    log(f"{name}: wrote {out} in {time.time() - t0:.0f}s")


def build_caches(
    root: str | Path,
    cache: str | Path,
    k_views: int = 4,
    seed: int = 0,
    caps: dict[str, int] | None = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Cache every data set folder of ``root`` (``*/splits.csv``) missing from ``cache``."""
    from ..backbones import build_backbone

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    net = None
    paths = []
    for csv in sorted(Path(root).glob("*/splits.csv")):
        name = csv.parent.name
        out = cache / f"{name}.safetensors"
        paths.append(out)
        if out.exists() and out.with_suffix(".json").exists():
            log(f"{name}: cached already ({out})")
            continue
        if net is None:
            net = build_backbone("efficientnet-lite0").module.eval()
        cache_dataset(name, csv, out, net, k_views, seed=seed, caps=caps, log=log)
    if not paths:
        raise ValueError(f"{root}: no data set folders with a splits.csv")
    return paths
