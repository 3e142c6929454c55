"""Can a different frozen-backbone descriptor lift the model-free reuse AUC? (issue 11)

Training-free variants of the EfficientNet-Lite0 image descriptor, each scored on the reuse
suite of every data set's test split (so every data set is unseen by construction; the
variants' settings were chosen on bccd's val split). Positives: clean image vs its manipulated
copy; negatives: clean image vs the same manipulation of up to 32 same-population images of
other groups (the holdout protocol's hard negatives).

* ``global``: cosine of the average-pooled features (what the model's projector sees);
* ``global_whitened``: the same, whitened with the clean images of the block (a scan's
  collection), the manipulated copies outside the fit and each pair's clean image left out
  (``whitening.pair_similarity``);
* ``global_whitened_ref``: whitened with the *other* data sets' val images instead (what a
  single-pair score could carry with it);
* ``regions_whitened``: besides the global vector, 7x7-cell windows of the 448 px and 320 px
  feature maps (crop-sized regions, 80 per image), whitened with the clean images' regions; the
  global and best-region similarities are each standardised by the median/MAD of all the
  block's pairs and added;
* ``grid3_whitened``: a 3x3 grid of per-cell vectors (layout), cell-whitened, best of the 8
  rotations/flips of B's grid;
* ``preblur_whitened``: ``global_whitened`` on inputs blurred with sigma 1 px first;
* ``global_d4_whitened``: ``global_whitened``, best of the 8 rotations/flips of B's *image*;
* ``fused``: the sum of the robust z-scores of ``global_d4_whitened``, the best region (A's
  regions against B's 8 orientations and B's regions against A), ``grid3_whitened`` and
  ``preblur_whitened`` (a fixed, label-free rule; chosen on bccd's val split);
  ``fused_no_d4``, ``fused_224`` and ``fused_224_d4`` leave parts of it out.

Every whitening is fitted on the clean images only (since 2026-11-29). Fitting it on the
clean images *and* every image's copy under the manipulation being scored, as before, let the
whitening learn that manipulation's systematic shift and discount it (optimistic). Only the
global cosines leave each pair's clean image out of the fit; the regions, grid and pre-blurred
vectors keep it in (a copy's source inside the fit looks less alike: conservative).

    python benchmarks/descriptor_variants.py --out benchmarks/descriptor_variants_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bta_core.augment import dihedral_apply, gaussian_blur
from bta_core.backbones import build_backbone
from bta_core.data import decode_records, read_splits_csv
from bta_core.evaluation.metrics import roc_auc, threshold_at_fpr
from bta_core.evaluation.pairs import manipulate
from bta_core.training.features import negative_partners
from bta_core.whitening import Whitening, fit_whitening, pair_similarity

MANIPS = [
    "hflip",
    "rot90",
    "crop50",
    "crop25",
    "jitter",
    "blur",
    "noise",
    "jpeg30",
    "gamma",
    "combo",
]
D4_CODES = (0, 1, 2, 3, 4, 5, 6, 7)  # flips (1, 2) and transpose (4): all 8 of the group
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class Maps:
    """Backbone feature maps of batches (``forward_features`` of the frozen network)."""

    def __init__(self) -> None:
        self.net = build_backbone("efficientnet-lite0").module.eval()

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, size: int = 224, blur: float = 0.0) -> torch.Tensor:
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
        if blur > 0:
            x = gaussian_blur(x.contiguous(), torch.full((len(x),), blur))
        chunks = [x[i : i + 16] for i in range(0, len(x), 16)]
        return torch.cat([self.net.forward_features((c - MEAN) / STD) for c in chunks]).float()


def whiten(w: Whitening | None, x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x, dim=-1)
    return x if w is None else F.normalize((x - w.mean) @ w.matrix, dim=-1)


def left_out_matrix(w: Whitening, a: torch.Tensor, b: torch.Tensor, rows: int = 16) -> torch.Tensor:
    """All-pairs ``(len(a), len(b))`` whitened cosine, each ``a`` (fitted) left out of the
    fit for its pairs, ``b`` (a copy, never fitted) compared from outside."""
    out = []
    for i in range(0, len(a), rows):
        ai = a[i : i + rows]
        aa = ai[:, None].expand(-1, len(b), -1).reshape(-1, a.shape[1])
        bb = b[None].expand(len(ai), -1, -1).reshape(-1, b.shape[1])
        out.append(pair_similarity(w, aa, bb, True, False).view(len(ai), len(b)))
    return torch.cat(out)


def robust_z(s: torch.Tensor) -> torch.Tensor:
    """Standardise an all-pairs similarity matrix by its off-diagonal median and MAD."""
    off = s[~torch.eye(len(s), dtype=torch.bool)]
    med = off.median()
    return (s - med) / (1.4826 * (off - med).abs().median() + 1e-6)


def regions(m: torch.Tensor) -> torch.Tensor:
    """Mean vectors of every 7x7-cell window of a map ``(N, C, h, w)`` -> ``(N, R, C)``."""
    return F.avg_pool2d(m, 7, stride=1).flatten(2).transpose(1, 2)


def d4_grids(g: torch.Tensor) -> torch.Tensor:
    """The 8 rotations/flips of a grid batch ``(N, C, k, k)`` -> ``(8, N, C, k, k)``."""
    out = []
    for t in range(4):
        r = torch.rot90(g, t, (2, 3))
        out += [r, r.flip(3)]
    return torch.stack(out)


def similarity_matrices(clean: dict, manip: dict, ref: Whitening) -> dict[str, torch.Tensor]:
    """All-pairs (clean x manipulated) similarity of every variant, ``{variant: (N, N)}``."""
    ga, gb = clean["224"].mean((2, 3)), manip["224"].mean((2, 3))
    w = fit_whitening(ga)  # the clean images only: the copies stay outside the fit
    out = {
        "global": whiten(None, ga) @ whiten(None, gb).T,
        "global_whitened": left_out_matrix(w, ga, gb),
        "global_whitened_ref": whiten(ref, ga) @ whiten(ref, gb).T,
    }
    ra = torch.cat([regions(clean["448"]), regions(clean["320"])], 1)
    rb = torch.cat([regions(manip["448"]), regions(manip["320"])], 1)
    wr = fit_whitening(ra.flatten(0, 1)[::7])
    ra, rb, gar, gbr = whiten(wr, ra), whiten(wr, rb), whiten(wr, ga), whiten(wr, gb)
    best_region = torch.maximum(
        torch.einsum("arc,bc->abr", ra, gbr).amax(-1), torch.einsum("brc,ac->abr", rb, gar).amax(-1)
    )
    out["regions_whitened"] = robust_z(out["global_whitened"]) + robust_z(best_region)
    ca, cb = F.adaptive_avg_pool2d(clean["224"], 3), F.adaptive_avg_pool2d(manip["224"], 3)
    wc = fit_whitening(ca.permute(0, 2, 3, 1).reshape(-1, ca.shape[1]))
    ca = whiten(wc, ca.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    cb = whiten(wc, cb.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    out["grid3_whitened"] = torch.einsum("acxy,obcxy->oab", ca, d4_grids(cb)).div(9).amax(0)
    pa, pb = clean["224blur"].mean((2, 3)), manip["224blur"].mean((2, 3))
    wp = fit_whitening(pa)
    out["preblur_whitened"] = whiten(wp, pa) @ whiten(wp, pb).T
    gbo = manip["224d4"].mean((3, 4))  # (8, N, C)
    out["global_d4_whitened"] = torch.stack([left_out_matrix(w, ga, g) for g in gbo]).amax(0)
    region_d4 = torch.einsum("arc,obc->oabr", ra, whiten(wr, gbo)).amax((0, 3))
    best_region_d4 = torch.maximum(region_d4, torch.einsum("brc,ac->abr", rb, gar).amax(-1))
    z = {k: robust_z(v) for k, v in out.items() if k.endswith("whitened")}
    z_layout = z["grid3_whitened"] + z["preblur_whitened"]
    out["fused"] = z["global_d4_whitened"] + robust_z(best_region_d4) + z_layout
    # ablations: without the 8 orientations; 224 px maps only (no regions)
    out["fused_no_d4"] = z["global_whitened"] + robust_z(best_region) + z_layout
    out["fused_224"] = z["global_whitened"] + z_layout
    out["fused_224_d4"] = z["global_d4_whitened"] + z_layout
    return out


def all_maps(maps: Maps, x: torch.Tensor, d4: bool = False) -> dict[str, torch.Tensor]:
    out = {}
    if d4:  # B's image in all 8 orientations (the identity first): (8, N, C, h, w)
        out["224d4"] = torch.stack([maps(dihedral_apply(x, c).contiguous()) for c in D4_CODES])
    return out | {
        "224": maps(x, 224),
        "320": maps(x, 320),
        "448": maps(x, 448),
        "224blur": maps(x, 224, blur=1.0),
    }


def evaluate(
    maps: Maps,
    root: Path,
    name: str,
    ref: Whitening,
    log,
    split: str = "test",
    fixed: dict[str, float] | None = None,
) -> dict:
    """Per variant and manipulation: ROC AUC and recall at this block's own 1 % FPR threshold;
    pooled over the manipulations: that threshold (``threshold@1%fpr``), and with ``fixed``
    thresholds (another split's, per variant) the FPR and mean recall they give here."""
    recs = [r for r in read_splits_csv(root / name / "splits.csv") if r.split == split]
    images, recs = decode_records(recs, 256)
    groups = np.array([r.group for r in recs])
    pop = np.array([r.modality or "" for r in recs])
    ia, ib = negative_partners(groups, pop, np.random.default_rng(0))
    clean = all_maps(maps, manipulate(images, "identity", 224))
    res: dict[str, dict] = {}
    pooled: dict[str, tuple[list, list]] = {}
    for k, m in enumerate(MANIPS):
        t0 = time.perf_counter()
        manip = all_maps(maps, manipulate(images, m, 224, seed=1 + k), d4=True)
        for variant, s in similarity_matrices(clean, manip, ref).items():
            pos, neg = s.diagonal().double().numpy(), s[ia, ib].double().numpy()
            thr = threshold_at_fpr(neg, 0.01)
            res.setdefault(variant, {})[m] = {
                "auc": roc_auc(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]),
                "recall@1%fpr": float((pos >= thr).mean()),
            }
            pooled.setdefault(variant, ([], []))[0].append(pos)
            pooled[variant][1].append(neg)
        log(f"{name} {m}: {time.perf_counter() - t0:.0f}s")
    for variant, per in res.items():
        per["mean"] = {k: float(np.mean([per[m][k] for m in MANIPS])) for k in per[MANIPS[0]]}
        pos_all, neg_all = pooled[variant]
        per["mean"]["threshold@1%fpr"] = float(threshold_at_fpr(np.concatenate(neg_all), 0.01))
        if fixed and variant in fixed:
            t = fixed[variant]
            per["mean"]["fixed_threshold"] = t
            per["mean"]["fpr@fixed"] = float((np.concatenate(neg_all) >= t).mean())
            per["mean"]["recall@fixed"] = float(np.mean([(x >= t).mean() for x in pos_all]))
    return {"n_test_images": len(recs), "n_negative_pairs": len(ia), "variants": res}


def reference_whitening(maps: Maps, root: Path, names: list[str], per_set: int = 150):
    """Whitening fitted on the val images (clean, noisy, jittered) of ``names``."""
    recs = []
    for n in names:
        recs += [r for r in read_splits_csv(root / n / "splits.csv") if r.split == "val"][:per_set]
    images, _ = decode_records(recs, 256)
    feats = [
        maps(manipulate(images, v, 224, seed=2)).mean((2, 3))
        for v in ("identity", "noise", "jitter")
    ]
    return fit_whitening(torch.cat(feats))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", default="benchmarks/descriptor_variants_cpu.json")
    p.add_argument("--only", nargs="*")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--split", default="test", help="split scored (val to choose settings)")
    p.add_argument(
        "--fixed-from",
        help="a val run's JSON: its pooled 1%% FPR thresholds (first data set) applied here",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    names = sorted(c.parent.name for c in root.glob("*/splits.csv"))
    maps = Maps()
    out = {
        "machine": f"{platform.machine()}, CPU, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "backbone": "efficientnet-lite0 (ImageNet, frozen)",
        "split": args.split,
        "sets": {},
    }
    fixed = None
    if args.fixed_from:
        doc = json.loads(Path(args.fixed_from).read_text(encoding="utf-8"))
        first = next(iter(doc["sets"].values()))["variants"]
        fixed = {v: per["mean"]["threshold@1%fpr"] for v, per in first.items()}
        out["fixed_from"] = f"{args.fixed_from} ({next(iter(doc['sets']))} {doc['split']})"
    for name in args.only or names:
        ref = reference_whitening(maps, root, [n for n in names if n != name])
        out["sets"][name] = evaluate(
            maps, root, name, ref, lambda s: print(s, flush=True), args.split, fixed
        )
        for variant, per in out["sets"][name]["variants"].items():
            row = " ".join(f"{m}:{per[m]['auc']:.3f}" for m in MANIPS)
            mean = per["mean"]
            print(
                f"{name:14s} {variant:20s} {row} | AUC {mean['auc']:.3f} "
                f"recall@1% {mean['recall@1%fpr']:.2f}"
                + (
                    f" | fixed thr: FPR {mean['fpr@fixed']:.3f} recall {mean['recall@fixed']:.2f}"
                    if "fpr@fixed" in mean
                    else ""
                ),
                flush=True,
            )
    path = Path(args.out)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1), encoding="utf-8")
    tmp.replace(path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
