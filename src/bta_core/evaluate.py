"""``bta-core eval``: BTA models and baselines scored on the very same image pairs.

Protocols (``--protocol``, several may be given comma-separated):

* ``paper``: section 4 of the paper. Every image x_i gives x_i^A through the paper's first view
  pipeline; with p_same = 0.4 its partner is x_i through the second pipeline, otherwise another
  image through it. Accuracy, precision, recall, F1 at the default threshold (0.5 for models)
  and at the calibrated one, and ROC AUC, as mean and std over 10 resamples with fixed seeds.
  Fix against the paper's code: a "different" partner is drawn among images of *other*
  field-of-view groups, so an image is never its own negative, nor is another photo of the
  same field.
* ``reuse``: one positive pair per image and named manipulation (original vs manipulated copy);
  negatives are the original against the manipulated copy of *another* image of the same data
  set and modality (hard negatives). Per manipulation: recall at the threshold giving 1% FPR
  on those negatives, and ROC AUC. Pairs from ``same_source_edges.csv`` ("same field, other
  photo") are reported separately, against the unmanipulated hard negatives.
* ``scan``: the images plus planted manipulated copies of a subset; every pair is ranked;
  average precision and recall@k of the planted pairs (other photos of one field are left out
  of the ranking: they are neither planted nor independent).

Methods: every ``--checkpoint`` (labelled by its file name) and the training-free baselines
``phash``, ``crhash`` (imagehash's crop-resistant hash) and ``backbone-cosine`` (cosine of the
frozen backbone's pooled features). Checkpoints sharing a frozen backbone share its features,
so adding a method costs only its projector and head.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .augment import (
    PAPER_VIEWS,
    ViewConfig,
    apply_view,
    color_jitter,
    dihedral_apply,
    gaussian_blur,
    grayscale,
    jpeg_recompress,
)
from .checkpoint import atomic_write, atomic_write_text, load_checkpoint
from .data import ImageRecord, decode_records, list_records
from .device import DEVICE_CHOICES, get_device
from .model import BTAModel, ModelConfig

ProgressFn = Callable[[int, int, dict], None]

PROTOCOLS = ("paper", "reuse", "scan")
BASELINES = ("phash", "crhash", "backbone-cosine")
P_SAME = 0.4
PAPER_SEEDS = tuple(range(10))
TARGET_FPR = 0.01
MANIPULATIONS = (
    "identity",
    "hflip",
    "vflip",
    "rot90",
    "rot180",
    "rot270",
    "transpose",
    "crop50",
    "crop25",
    "jitter",
    "greyscale",
    "blur",
    "noise",
    "jpeg30",
    "gamma",
    "combo",
)
# dihedral op codes of augment.dihedral_apply: 1 hflip, 2 vflip, 4 transpose, 8*k quarter turns
_DIHEDRAL = {"hflip": 1, "vflip": 2, "rot90": 8, "rot180": 16, "rot270": 24, "transpose": 4}
_STILL = ViewConfig(
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    hflip_p=0.0,
    jitter_p=0.0,
    grayscale_p=0.0,
    blur_p=0.0,
)


# ---------------------------------------------------------------------------------------------
# metrics


def _as_arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    return y, s


def threshold_metrics(labels, scores, threshold: float) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and FPR of ``score >= threshold`` (0 where undefined)."""
    y, s = _as_arrays(labels, scores)
    pred = s >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    tn = int(np.sum(~pred & ~y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / max(len(y), 1),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fpr": fp / (fp + tn) if fp + tn else 0.0,
    }


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score, highest threshold first.

    The first point is (0, 0) at threshold +inf, as in scikit-learn.
    """
    y, s = _as_arrays(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    npos, nneg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    fpr = np.r_[0.0, fps / nneg]
    tpr = np.r_[0.0, tps / npos]
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (probability a positive outscores a negative, ties half)."""
    y, s = _as_arrays(labels, scores)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(s)
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def average_precision(labels, scores) -> float:
    """Average precision: sum over distinct thresholds of (R_n - R_{n-1}) * P_n."""
    y, s = _as_arrays(labels, scores)
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall = tps / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def threshold_at_fpr(negative_scores, fpr: float = TARGET_FPR) -> float:
    """Lowest threshold at which at most ``fpr`` of the negatives score ``>=`` it."""
    neg = np.sort(np.asarray(negative_scores, dtype=np.float64))[::-1]
    if len(neg) == 0:
        return float("-inf")
    allowed = int(math.floor(fpr * len(neg) + 1e-9))
    if allowed >= len(neg):
        return float("-inf")
    return float(np.nextafter(neg[allowed], np.inf))


def recall_at_fpr(labels, scores, fpr: float = TARGET_FPR) -> tuple[float, float]:
    """Recall at the threshold giving at most ``fpr`` false positives; returns (recall, threshold)."""
    y, s = _as_arrays(labels, scores)
    thr = threshold_at_fpr(s[~y], fpr)
    return (float(np.mean(s[y] >= thr)) if y.any() else float("nan")), thr


def best_f1_threshold(labels, scores) -> tuple[float, float]:
    """Threshold (one of the scores) maximising F1; returns (threshold, F1)."""
    y, s = _as_arrays(labels, scores)
    if not y.any():
        return 0.5, 0.0
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), len(ss) - 1]
    tps = np.cumsum(yy)[last]
    f1 = 2 * tps / ((last + 1) + y.sum())
    k = int(np.argmax(f1))
    return float(ss[last[k]]), float(f1[k])


def recall_at_k(labels, scores, k: int) -> float:
    """Share of the positives among the ``k`` highest scores."""
    y, s = _as_arrays(labels, scores)
    if not y.any():
        return float("nan")
    top = np.argsort(-s, kind="mergesort")[: int(k)]
    return float(y[top].sum() / y.sum())


# ---------------------------------------------------------------------------------------------
# pairs


def sample_partners(
    groups: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    p_same: float = P_SAME,
    population: Sequence | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A partner per image: itself with probability ``p_same``, else an image of another group.

    Never a self-negative nor a same-group negative. With ``population`` the negative is drawn
    from the same population (data set + modality) when it has another group. Returns
    ``(partner, label)`` with ``label = 1`` for same-image pairs.
    """
    groups = np.asarray(groups)
    n = len(groups)
    pop = (
        np.zeros(n, dtype=np.int64)
        if population is None
        else np.unique(population, return_inverse=True)[1]
    )
    same = rng.random(n) < p_same
    partner = np.arange(n)
    for i in np.flatnonzero(~same):
        cand = np.flatnonzero((groups != groups[i]) & (pop == pop[i]))
        if len(cand) == 0:
            cand = np.flatnonzero(groups != groups[i])
        if len(cand) == 0:
            same[i] = True  # nothing it may be paired against: a positive instead
            continue
        partner[i] = cand[rng.integers(len(cand))]
    return partner, same.astype(np.int64)


def hard_negative_pairs(
    groups: np.ndarray, population: np.ndarray, rng: np.random.Generator, per_image: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``per_image`` partners per image from its population, outside its group."""
    ia, ib = [], []
    for i in range(len(groups)):
        cand = np.flatnonzero((population == population[i]) & (groups != groups[i]))
        if len(cand) > per_image:
            cand = rng.choice(cand, per_image, replace=False)
        ia += [i] * len(cand)
        ib += cand.tolist()
    return np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# manipulations


def manipulate(images: torch.Tensor, name: str, size: int, seed: int = 0) -> torch.Tensor:
    """One named manipulation of a uint8 batch, as a float [0, 1] batch ``(B, 3, size, size)``.

    Crops are cut from the full-resolution batch; the other ops act on the resized image.
    """
    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    if name in ("crop50", "crop25"):
        area = 0.5 if name == "crop50" else 0.25
        return apply_view(images, replace(_STILL, crop_scale=(area, area)), size, g)
    if name == "combo":
        cfg = replace(
            _STILL, crop_scale=(0.5, 0.5), hflip_p=0.5, rot90_p=1.0, jitter_p=1.0, jpeg_p=1.0
        )
        cfg = replace(cfg, jpeg_quality=(50, 50), noise_p=1.0, noise_std=(0.03, 0.03))
        return apply_view(images, cfg, size, g)
    x = F.interpolate(images.float() / 255, size=(size, size), mode="bilinear", antialias=True)
    x = x.clamp_(0, 1)
    if name == "identity":
        return x
    if name in _DIHEDRAL:
        return dihedral_apply(x, _DIHEDRAL[name]).contiguous()
    if name == "jitter":
        return color_jitter(x, replace(_STILL, jitter_p=1.0), g)
    if name == "greyscale":
        return grayscale(x).expand_as(x).contiguous()
    if name == "blur":
        return gaussian_blur(x, torch.full((n,), 2.0 * size / 224))
    if name == "noise":
        return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp_(0, 1)
    if name == "jpeg30":
        return jpeg_recompress(x, torch.full((n,), 30, dtype=torch.long))
    if name == "gamma":
        gam = torch.where(torch.arange(n) % 2 == 0, 0.6, 1.6).view(n, 1, 1, 1)
        return x.clamp(min=1e-6) ** gam
    raise ValueError(f"unknown manipulation {name!r} (one of {', '.join(MANIPULATIONS)})")


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 or float batch to float [0, 1] at ``size`` (antialiased)."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp_(0, 1)


# ---------------------------------------------------------------------------------------------
# methods


class Features:
    """Backbone features of one image batch, computed once per distinct backbone."""

    def __init__(self, x: torch.Tensor, batch_size: int = 64) -> None:
        self.x = x
        self.batch_size = batch_size
        self._cache: dict[tuple, torch.Tensor] = {}

    @torch.no_grad()
    def get(self, key: tuple, model: BTAModel) -> torch.Tensor:
        if key not in self._cache:
            size = model.config.image_size
            dev = model.device
            outs = []
            for start in range(0, self.x.shape[0], self.batch_size):
                xb = resize_batch(self.x[start : start + self.batch_size], size).to(dev)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    outs.append(model.features(xb).float().cpu())
            self._cache[key] = torch.cat(outs) if outs else torch.empty(0)
        return self._cache[key]


def _backbone_key(model: BTAModel, path: str) -> tuple:
    c = model.config
    if c.backbone_in_checkpoint:
        return ("checkpoint", path, c.image_size)
    return (c.backbone, c.backbone_weights, c.image_size)


@dataclass
class Method:
    """A way of scoring pairs: ``represent`` each image once, then ``score`` index pairs."""

    name: str
    kind: str
    threshold: float
    calibrated: float | None = None
    calibration: dict = field(default_factory=dict)

    def represent(self, feats: Features):
        raise NotImplementedError

    def score(self, rep_a, rep_b, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "threshold": self.threshold,
            "calibrated_threshold": self.calibrated,
            "calibration": self.calibration,
        }


class ModelMethod(Method):
    """A BTA checkpoint: projector on shared backbone features, symmetric head on pairs."""

    def __init__(self, name: str, model: BTAModel, path: str, chunk: int = 65536) -> None:
        cal = dict(model.config.calibration or {})
        super().__init__(name, "checkpoint", 0.5, model.config.threshold if cal else None, cal)
        self.model, self.path, self.key, self.chunk = model, path, _backbone_key(model, path), chunk

    @torch.no_grad()
    def represent(self, feats: Features):
        y = feats.get(self.key, self.model)
        dev = self.model.device
        us, vs = [], []
        for start in range(0, y.shape[0], 1024):
            z = self.model.projector(y[start : start + 1024].to(dev)).float()
            u, v = self.model.head.split_first_layer(z, z)
            us.append(u.cpu())
            vs.append(v.cpu())
        return torch.cat(us), torch.cat(vs)

    @torch.no_grad()
    def score(self, rep_a, rep_b, ia, ib) -> np.ndarray:
        (ua, va), (ub, vb) = rep_a, rep_b
        head, dev = self.model.head, self.model.device
        out = []
        for s in range(0, len(ia), self.chunk):
            a = torch.as_tensor(ia[s : s + self.chunk])
            b = torch.as_tensor(ib[s : s + self.chunk])
            ab = head.rest((ua[a] + vb[b]).to(dev)).squeeze(1).float()
            ba = head.rest((ub[b] + va[a]).to(dev)).squeeze(1).float()
            out.append((0.5 * (torch.sigmoid(ab) + torch.sigmoid(ba))).cpu())
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


class CosineMethod(Method):
    """Cosine similarity of the frozen backbone's pooled features (no training)."""

    def __init__(self, model: BTAModel, key: tuple, threshold: float = 0.9) -> None:
        super().__init__("backbone-cosine", "baseline", threshold)
        self.model, self.key = model, key

    def represent(self, feats: Features):
        return F.normalize(feats.get(self.key, self.model), dim=1)

    def score(self, rep_a, rep_b, ia, ib) -> np.ndarray:
        a, b = torch.as_tensor(ia), torch.as_tensor(ib)
        return (rep_a[a] * rep_b[b]).sum(1).double().numpy()


def _pil_images(x: torch.Tensor):
    from PIL import Image

    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


class PHashMethod(Method):
    """Perceptual hash (64-bit DCT hash); score = 1 - Hamming distance / 64."""

    def __init__(self, threshold: float = 1 - 10 / 64) -> None:
        super().__init__("phash", "baseline", threshold)

    def represent(self, feats: Features):
        import imagehash

        return np.stack([imagehash.phash(im).hash.ravel() for im in _pil_images(feats.x)])

    def score(self, rep_a, rep_b, ia, ib) -> np.ndarray:
        return 1.0 - (rep_a[ia] != rep_b[ib]).mean(1)


class CropHashMethod(Method):
    """imagehash's crop-resistant hash (segment dhashes) with a symmetric matched-segment score.

    score = 0.99 * mean over both directions of the share of segments whose nearest segment in
    the other image is within 25% of the bits, + 0.01 * (1 - mean nearest distance / bits).
    """

    def __init__(self, threshold: float = 0.5, bit_error_rate: float = 0.25) -> None:
        super().__init__("crhash", "baseline", threshold)
        self.bit_error_rate = bit_error_rate

    def represent(self, feats: Features):
        import imagehash

        size = feats.x.shape[-1]
        min_seg = max(16, int(500 * (size / 300) ** 2))
        out = []
        for im in _pil_images(feats.x):
            h = imagehash.crop_resistant_hash(
                im, segmentation_image_size=size, min_segment_size=min_seg
            )
            out.append(np.stack([s.hash.ravel() for s in h.segment_hashes]))
        return out

    def score(self, rep_a, rep_b, ia, ib) -> np.ndarray:
        out = np.empty(len(ia))
        for k, (i, j) in enumerate(zip(ia, ib, strict=True)):
            a, b = rep_a[i], rep_b[j]
            d = (a[:, None, :] != b[None, :, :]).sum(-1)
            cut = self.bit_error_rate * a.shape[1]
            da, db = d.min(1), d.min(0)
            share = 0.5 * (np.mean(da <= cut) + np.mean(db <= cut))
            near = 0.5 * (da.mean() + db.mean()) / a.shape[1]
            out[k] = 0.99 * share + 0.01 * (1 - near)
        return out


def build_methods(
    checkpoints: Sequence[str | os.PathLike] = (),
    baselines: Sequence[str] = BASELINES,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    models: Sequence[tuple[str, BTAModel]] = (),
) -> list[Method]:
    """Methods for checkpoint files, already-loaded ``(label, model)`` pairs and baselines."""
    dev = get_device(str(device)) if not isinstance(device, torch.device) else device
    methods: list[Method] = []
    loaded = [(n, m, f"memory:{n}") for n, m in models]
    for path in checkpoints:
        loaded.append((Path(path).stem, load_checkpoint(path, dev), str(path)))
    seen: dict[str, int] = {}
    for name, model, path in loaded:
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}-{seen[name]}"
        methods.append(ModelMethod(label, model.to(dev).eval(), path))
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown} (choose from {', '.join(BASELINES)})")
    for b in baselines:
        if b == "phash":
            methods.append(PHashMethod())
        elif b == "crhash":
            methods.append(CropHashMethod())
        elif b == "backbone-cosine":
            frozen = [m for m in methods if isinstance(m, ModelMethod) and m.key[0] != "checkpoint"]
            if frozen:
                methods.append(CosineMethod(frozen[0].model, frozen[0].key))
            else:
                cfg = ModelConfig.for_backbone(
                    "efficientnet-lite0", projector_dim=16, image_size=image_size or 224
                )
                model = BTAModel(cfg).to(dev).eval()
                methods.append(CosineMethod(model, ("efficientnet-lite0", None, cfg.image_size)))
    if not methods:
        raise ValueError("nothing to evaluate: give --checkpoint and/or --baselines")
    return methods


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class EvalData:
    """Decoded images of one split with their groups, populations and same-field pairs."""

    images: torch.Tensor
    records: list[ImageRecord]
    groups: np.ndarray
    population: np.ndarray
    population_names: list[str]
    same_field: np.ndarray  # (K, 2) index pairs from same_source_edges.csv


def load_eval_data(
    data: Sequence[str | os.PathLike],
    split: str | None,
    decode_size: int,
    limit: int | None = None,
    on_progress: ProgressFn | None = None,
) -> EvalData:
    """Read and decode the images of ``split`` from folders / ``splits.csv`` files.

    ``limit`` keeps at most that many images per source (so every data set stays present).
    """
    import csv

    records: list[ImageRecord] = []
    datasets: list[str] = []
    edges: list[tuple[str, str]] = []
    for src in data:
        src = Path(src)
        recs = list_records([src], split=split or None)
        if limit:
            recs = recs[: int(limit)]
        name = src.parent.name if src.suffix.lower() == ".csv" else src.name
        records += recs
        datasets += [name] * len(recs)
        edge_file = (src.parent if src.suffix.lower() == ".csv" else src) / "same_source_edges.csv"
        if edge_file.exists():
            base = edge_file.parent / "images"
            with open(edge_file, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    edges.append((str(base / row["a"]), str(base / row["b"])))
    images, kept = decode_records(records, decode_size, on_progress=on_progress)
    dataset_of = {r.path: d for r, d in zip(records, datasets, strict=True)}
    groups_map: dict[str, int] = {}
    groups = np.array([groups_map.setdefault(r.group, len(groups_map)) for r in kept])
    pops = [f"{dataset_of[r.path]}/{r.modality or 'any'}" for r in kept]
    names = sorted(set(pops))
    population = np.array([names.index(p) for p in pops])
    index = {os.path.normpath(r.path): i for i, r in enumerate(kept)}
    pairs = [
        (index[os.path.normpath(a)], index[os.path.normpath(b)])
        for a, b in edges
        if os.path.normpath(a) in index and os.path.normpath(b) in index
    ]
    same_field = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return EvalData(images, kept, groups, population, names, same_field)


# ---------------------------------------------------------------------------------------------
# protocols


def _mean_std(rows: list[dict]) -> dict[str, dict[str, float]]:
    keys = rows[0].keys()
    return {
        k: {
            "mean": float(np.nanmean([r[k] for r in rows])),
            "std": float(np.nanstd([r[k] for r in rows])),
        }
        for k in keys
    }


def run_paper(
    ed: EvalData,
    methods: Sequence[Method],
    size: int,
    seeds: Sequence[int] = PAPER_SEEDS,
    p_same: float = P_SAME,
    log: Callable[[str], None] = print,
) -> dict:
    """The paper's protocol: one pair per image, p_same = 0.4, over resamples with fixed seeds."""
    per_method: dict[str, list[dict]] = {m.name: [] for m in methods}
    pooled: dict[str, tuple[list, list]] = {m.name: ([], []) for m in methods}
    label_rate = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        partner, label = sample_partners(ed.groups, rng, p_same)
        label_rate.append(float(label.mean()))
        g = torch.Generator().manual_seed(10_000 + seed)
        xa = Features(apply_view(ed.images, PAPER_VIEWS[0], size, g))
        xb = Features(apply_view(ed.images[torch.as_tensor(partner)], PAPER_VIEWS[1], size, g))
        idx = np.arange(len(partner))
        for m in methods:
            s = m.score(m.represent(xa), m.represent(xb), idx, idx)
            row = {"auc": roc_auc(label, s)}
            row.update(
                {f"{k}@default": v for k, v in threshold_metrics(label, s, m.threshold).items()}
            )
            if m.calibrated is not None:
                cal = threshold_metrics(label, s, m.calibrated)
                row.update({f"{k}@calibrated": v for k, v in cal.items()})
            per_method[m.name].append(row)
            pooled[m.name][0].append(label)
            pooled[m.name][1].append(s)
        log(f"paper: seed {seed} done ({len(idx)} pairs, {label.mean():.2f} same)")
    out = {
        "n_pairs_per_resample": int(len(ed.groups)),
        "seeds": list(seeds),
        "label_rate": float(np.mean(label_rate)),
        "methods": {},
    }
    for m in methods:
        y = np.concatenate(pooled[m.name][0])
        s = np.concatenate(pooled[m.name][1])
        out["methods"][m.name] = {**m.describe(), "metrics": _mean_std(per_method[m.name])}
        out["methods"][m.name]["_roc"] = (y, s)
    return out


def run_reuse(
    ed: EvalData,
    methods: Sequence[Method],
    size: int,
    manipulations: Sequence[str] = MANIPULATIONS,
    negatives_per_image: int = 32,
    target_fpr: float = TARGET_FPR,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Recall at ``target_fpr`` on hard negatives and ROC AUC per manipulation."""
    rng = np.random.default_rng(seed)
    na, nb = hard_negative_pairs(ed.groups, ed.population, rng, negatives_per_image)
    if len(na) == 0:
        raise ValueError("reuse protocol needs at least two groups in one data set and modality")
    idx = np.arange(len(ed.groups))
    orig = Features(resize_batch(ed.images, size))
    reps = {m.name: m.represent(orig) for m in methods}
    res: dict = {
        "n_images": len(idx),
        "n_negatives": int(len(na)),
        "target_fpr": target_fpr,
        "manipulations": list(manipulations),
        "methods": {m.name: {**m.describe(), "per_manipulation": {}} for m in methods},
    }
    pooled: dict[str, tuple[list, list]] = {m.name: ([], []) for m in methods}
    for k, name in enumerate(manipulations):
        xm = Features(manipulate(ed.images, name, size, seed=seed * 1000 + k))
        for m in methods:
            rep_m = m.represent(xm)
            pos = m.score(reps[m.name], rep_m, idx, idx)
            neg = m.score(reps[m.name], rep_m, na, nb)
            y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
            s = np.r_[pos, neg]
            recall, thr = recall_at_fpr(y, s, target_fpr)
            res["methods"][m.name]["per_manipulation"][name] = {
                "recall@fpr": recall,
                "auc": roc_auc(y, s),
                "threshold": thr,
            }
            pooled[m.name][0].append(y)
            pooled[m.name][1].append(s)
        log(f"reuse: {name} done")
    sf = ed.same_field
    res["n_same_field_pairs"] = int(len(sf))
    for m in methods:
        entry = res["methods"][m.name]
        per = entry["per_manipulation"]
        entry["mean_recall@fpr"] = float(np.mean([v["recall@fpr"] for v in per.values()]))
        entry["min_recall@fpr"] = float(np.min([v["recall@fpr"] for v in per.values()]))
        entry["mean_auc"] = float(np.mean([v["auc"] for v in per.values()]))
        y = np.concatenate(pooled[m.name][0])
        s = np.concatenate(pooled[m.name][1])
        entry["_roc"] = (y, s)
        if len(sf):
            neg = m.score(reps[m.name], reps[m.name], na, nb)
            pos = m.score(reps[m.name], reps[m.name], sf[:, 0], sf[:, 1])
            yy = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
            recall, thr = recall_at_fpr(yy, np.r_[pos, neg], target_fpr)
            entry["same_field"] = {
                "recall@fpr": recall,
                "auc": roc_auc(yy, np.r_[pos, neg]),
                "threshold": thr,
            }
    return res


def run_scan(
    ed: EvalData,
    methods: Sequence[Method],
    size: int,
    planted_fraction: float = 0.25,
    manipulations: Sequence[str] = MANIPULATIONS,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Rank all pairs of the images plus planted copies; AP and recall@k of the planted pairs."""
    rng = np.random.default_rng(seed)
    n = len(ed.groups)
    n_plant = max(1, int(round(planted_fraction * n)))
    src = np.sort(rng.choice(n, n_plant, replace=False))
    kinds = [manipulations[k % len(manipulations)] for k in range(n_plant)]
    copies = torch.empty(n_plant, 3, size, size)
    for k, name in enumerate(manipulations):
        sel = [i for i, kind in enumerate(kinds) if kind == name]
        if sel:
            copies[sel] = manipulate(ed.images[torch.as_tensor(src[sel])], name, size, seed + k)
    allx = Features(torch.cat([resize_batch(ed.images, size), copies]))
    owner = np.r_[np.arange(n), src]  # the original image each entry shows
    group = ed.groups[owner]
    ia, ib = np.triu_indices(n + n_plant, k=1)
    planted = (owner[ia] == owner[ib]) & (ib >= n)
    keep = planted | (group[ia] != group[ib])
    ia, ib, y = ia[keep], ib[keep], planted[keep].astype(np.int64)
    res: dict = {
        "n_images": n,
        "n_planted": n_plant,
        "n_pairs": int(len(ia)),
        "planted_manipulations": dict(zip(*np.unique(kinds, return_counts=True), strict=True)),
        "methods": {},
    }
    res["planted_manipulations"] = {k: int(v) for k, v in res["planted_manipulations"].items()}
    for m in methods:
        rep = m.represent(allx)
        s = m.score(rep, rep, ia, ib)
        res["methods"][m.name] = {
            **m.describe(),
            "average_precision": average_precision(y, s),
            "recall@k": recall_at_k(y, s, n_plant),
            "recall@2k": recall_at_k(y, s, 2 * n_plant),
            "auc": roc_auc(y, s),
            "_roc": (y, s),
        }
        log(f"scan: {m.name} done")
    return res


# ---------------------------------------------------------------------------------------------
# calibration of methods without a stored threshold


def calibrate_methods(
    methods: Sequence[Method],
    data: Sequence[str | os.PathLike],
    split: str,
    size: int,
    limit: int | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Give every method without a stored calibrated threshold one fitted on ``split`` pairs."""
    from .calibrate import calibration_pairs, fit_threshold

    todo = [m for m in methods if m.calibrated is None]
    if not todo:
        return
    ed = load_eval_data(data, split, decode_size=2 * size, limit=limit)
    xa, xb, label = calibration_pairs(ed, size)
    fa, fb = Features(xa), Features(xb)
    idx = np.arange(len(label))
    for m in todo:
        s = m.score(m.represent(fa), m.represent(fb), idx, idx)
        info = fit_threshold(label, s)
        m.calibrated = info["threshold"]
        m.calibration = {**info, "split": split, "source": "fitted by bta-core eval"}
    log(f"calibrated {len(todo)} method(s) on {len(label)} {split} pairs")


# ---------------------------------------------------------------------------------------------
# reports


PAPER_ROWS = [
    ("accuracy@default", "accuracy (default thr.)"),
    ("precision@default", "precision (default thr.)"),
    ("recall@default", "recall (default thr.)"),
    ("f1@default", "F1 (default thr.)"),
    ("auc", "ROC AUC"),
    ("accuracy@calibrated", "accuracy (calibrated thr.)"),
    ("precision@calibrated", "precision (calibrated thr.)"),
    ("recall@calibrated", "recall (calibrated thr.)"),
    ("f1@calibrated", "F1 (calibrated thr.)"),
]


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown_report(results: dict) -> str:
    """metrics.md: one table per protocol, methods as columns, metrics as rows."""
    parts = [f"# bta-core eval ({results['split'] or 'all'} split)\n"]
    for proto in PROTOCOLS:
        r = results["protocols"].get(proto)
        if r is None:
            continue
        names = list(r["methods"])
        meth = r["methods"]
        if proto == "paper":
            parts.append(
                f"## paper protocol ({r['n_pairs_per_resample']} pairs x {len(r['seeds'])} "
                f"resamples, same-pair rate {r['label_rate']:.3f}; mean ± std)\n"
            )
            rows = []
            for key, label in PAPER_ROWS:
                row = [label]
                for n in names:
                    v = meth[n]["metrics"].get(key)
                    row.append(f"{v['mean']:.3f} ± {v['std']:.3f}" if v else "—")
                rows.append(row)
            rows.append(["threshold (default)"] + [_fmt(meth[n]["threshold"]) for n in names])
            rows.append(
                ["threshold (calibrated)"] + [_fmt(meth[n]["calibrated_threshold"]) for n in names]
            )
            parts.append(_table(["metric", *names], rows))
        elif proto == "reuse":
            parts.append(
                f"## reuse protocol ({r['n_images']} positives per manipulation, "
                f"{r['n_negatives']} hard negatives; recall at {r['target_fpr']:.0%} FPR / ROC AUC)\n"
            )
            rows = []
            for man in r["manipulations"]:
                rows.append(
                    [man]
                    + [
                        f"{_fmt(meth[n]['per_manipulation'][man]['recall@fpr'])} / "
                        f"{_fmt(meth[n]['per_manipulation'][man]['auc'])}"
                        for n in names
                    ]
                )
            rows.append(
                ["**mean**"]
                + [
                    f"{_fmt(meth[n]['mean_recall@fpr'])} / {_fmt(meth[n]['mean_auc'])}"
                    for n in names
                ]
            )
            rows.append(["**min recall**"] + [_fmt(meth[n]["min_recall@fpr"]) for n in names])
            if r["n_same_field_pairs"]:
                rows.append(
                    [f"same field, other photo ({r['n_same_field_pairs']} pairs)"]
                    + [
                        f"{_fmt(meth[n]['same_field']['recall@fpr'])} / "
                        f"{_fmt(meth[n]['same_field']['auc'])}"
                        for n in names
                    ]
                )
            parts.append(_table(["manipulation", *names], rows))
        else:
            parts.append(
                f"## scan protocol ({r['n_images']} images + {r['n_planted']} planted copies, "
                f"{r['n_pairs']} pairs ranked; k = {r['n_planted']})\n"
            )
            rows = [
                [label] + [_fmt(meth[n][key]) for n in names]
                for key, label in (
                    ("average_precision", "average precision"),
                    ("recall@k", "recall@k"),
                    ("recall@2k", "recall@2k"),
                    ("auc", "ROC AUC"),
                )
            ]
            parts.append(_table(["metric", *names], rows))
        parts.append("")
    return "\n".join(parts) + "\n"


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    """One ROC curve per method on one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (y, s) in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(y, s):.3f})", lw=1.6)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)


def plot_reuse_bars(res: dict, path: Path) -> None:
    """Grouped bars: recall at the target FPR per manipulation, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["methods"])
    mans = list(res["manipulations"])
    has_sf = res.get("n_same_field_pairs", 0) > 0
    labels = mans + (["same field"] if has_sf else [])
    width = 0.8 / max(len(names), 1)
    wide = min(16.0, max(8.0, 3.0 + 0.12 * len(labels) * max(1, len(names))))
    fig, ax = plt.subplots(figsize=(wide, 4.8))
    x = np.arange(len(labels))
    for k, n in enumerate(names):
        per = res["methods"][n]["per_manipulation"]
        vals = [per[m]["recall@fpr"] for m in mans]
        if has_sf:
            vals.append(res["methods"][n]["same_field"]["recall@fpr"])
        ax.bar(x + (k - (len(names) - 1) / 2) * width, vals, width, label=n)
    ax.axhline(0.95, color="black", lw=0.8, ls="--", label="target 0.95")
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"recall at {res['target_fpr']:.0%} FPR")
    ax.set_title("reuse protocol: recall per manipulation (hard negatives)")
    ax.legend(
        fontsize=7,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.08),
        ncol=min(5, len(names) + 1),
        frameon=False,
    )
    fig.tight_layout()
    _save_fig(fig, path)


def _save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def _json_ready(obj):
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------------------------------------
# entry points


def evaluate(
    data: Sequence[str | os.PathLike],
    protocols: Sequence[str] = PROTOCOLS,
    checkpoints: Sequence[str | os.PathLike] = (),
    baselines: Sequence[str] = BASELINES,
    split: str | None = "test",
    out: str | os.PathLike | None = "eval",
    image_size: int | None = None,
    seeds: Sequence[int] = PAPER_SEEDS,
    limit: int | None = None,
    calibration_split: str | None = "val",
    device: str = "cpu",
    models: Sequence[tuple[str, BTAModel]] = (),
    negatives_per_image: int = 32,
    manipulations: Sequence[str] = MANIPULATIONS,
    quiet: bool = False,
) -> dict:
    """Run ``protocols`` for every method on the same pairs; write the outputs to ``out``.

    ``models`` adds already-loaded ``(label, model)`` pairs (tests). ``limit`` caps images per
    source. Methods without a stored calibrated threshold get one fitted on
    ``calibration_split`` (skipped when None or when the data has no such split). Returns the
    results dict that ``metrics.json`` holds.
    """
    log = (lambda _msg: None) if quiet else (lambda msg: print(msg, flush=True))
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"unknown protocol {unknown} (choose from {', '.join(PROTOCOLS)})")
    t0 = time.perf_counter()
    methods = build_methods(checkpoints, baselines, device, image_size, models)
    sizes = [m.model.config.image_size for m in methods if isinstance(m, ModelMethod)]
    size = int(image_size or (max(sizes) if sizes else 224))
    ed = load_eval_data(data, split, decode_size=2 * size, limit=limit)
    log(f"{len(ed.groups)} images ({', '.join(ed.population_names)}), views at {size} px")
    if calibration_split and any(m.calibrated is None for m in methods):
        try:
            calibrate_methods(methods, data, calibration_split, size, limit, log)
        except ValueError as exc:  # e.g. folders without splits
            log(f"no calibration on {calibration_split!r}: {exc}")
    results: dict = {
        "data": [str(d) for d in data],
        "split": split,
        "image_size": size,
        "n_images": len(ed.groups),
        "populations": ed.population_names,
        "methods": [m.name for m in methods],
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "protocols": {},
    }
    out_dir = Path(out) if out is not None else None
    for proto in protocols:
        if proto == "paper":
            r = run_paper(ed, methods, size, seeds, log=log)
        elif proto == "reuse":
            r = run_reuse(
                ed,
                methods,
                size,
                manipulations=manipulations,
                negatives_per_image=negatives_per_image,
                log=log,
            )
        else:
            r = run_scan(ed, methods, size, manipulations=manipulations, log=log)
        results["protocols"][proto] = r
        if out_dir is not None:
            curves = {n: v["_roc"] for n, v in r["methods"].items()}
            plot_roc(curves, out_dir / f"roc_{proto}.png", f"{proto} protocol ({split or 'all'})")
            if proto == "reuse":
                plot_reuse_bars(r, out_dir / "reuse_recall.png")
    results["seconds"] = round(time.perf_counter() - t0, 1)
    clean = _json_ready(results)
    md = markdown_report(results)
    if out_dir is not None:
        atomic_write_text(out_dir / "metrics.json", json.dumps(clean, indent=2) + "\n")
        atomic_write_text(out_dir / "metrics.md", md)
    log(md)
    return clean


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__,
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("data", nargs="+", help="image folders and/or splits.csv files")
    p.add_argument(
        "--protocol", default="paper", help=f"comma-separated, from {', '.join(PROTOCOLS)}"
    )
    p.add_argument(
        "--checkpoint", action="append", default=[], help="checkpoint to evaluate (repeatable)"
    )
    p.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help=f"comma-separated from {', '.join(BASELINES)} ('' for none)",
    )
    p.add_argument("--split", default="test", help="split of splits.csv rows ('' for all)")
    p.add_argument("--out", default="eval", help="output folder")
    p.add_argument("--image-size", type=int, default=None, help="view size (default: models')")
    p.add_argument("--resamples", type=int, default=len(PAPER_SEEDS), help="paper protocol")
    p.add_argument("--limit", type=int, default=None, help="at most N images per source")
    p.add_argument(
        "--calibration-split",
        default="val",
        help="split to fit thresholds of uncalibrated methods on ('' for none)",
    )
    p.add_argument("--negatives-per-image", type=int, default=32, help="reuse protocol")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--quiet", action="store_true")
    return p


def main(args: argparse.Namespace) -> int:
    evaluate(
        args.data,
        protocols=[p.strip() for p in args.protocol.split(",") if p.strip()],
        checkpoints=args.checkpoint,
        baselines=[b.strip() for b in args.baselines.split(",") if b.strip()],
        split=args.split or None,
        out=args.out,
        image_size=args.image_size,
        seeds=tuple(range(args.resamples)),
        limit=args.limit,
        calibration_split=args.calibration_split or None,
        device=args.device,
        negatives_per_image=args.negatives_per_image,
        quiet=args.quiet,
    )
    if not args.quiet:
        print(f"wrote {Path(args.out) / 'metrics.json'}, metrics.md and PNGs")
    return 0
