"""Fit a checkpoint's decision threshold on validation pairs (``bta-core calibrate``).

Validation pairs are reuse-style: the original image (resized) against a partner made with the
``reuse`` view pipeline, the same image with probability 0.4 and otherwise an image of another
field-of-view group, of the same data set and modality when there is one (hard negatives).
The threshold maximises F1 on those pairs, or, with ``--target-fpr``, is the lowest one whose
false positive rate stays within the target. The threshold and a ``calibration`` record
(method, split, number of pairs, F1/FPR/precision/recall at the threshold) are stored in the
checkpoint's config; the file is rewritten atomically with the precision of its tensors.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..augment import REUSE_VIEWS, apply_view
from ..checkpoint import load_checkpoint, save_checkpoint
from ..device import get_device
from .datasets import EvalData, load_eval_data
from .methods import BackboneFeatures, ModelMethod
from .metrics import best_f1_threshold, threshold_at_fpr, threshold_metrics
from .pairs import resize_batch, sample_partners

CALIBRATION_SEED = 20_251_126


def calibration_pairs(
    eval_data: EvalData,
    size: int,
    repeats: int = 3,
    p_same: float = 0.4,
    seed: int = CALIBRATION_SEED,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Row-wise view pairs ``(x_a, x_b, label)`` of the evaluation images, for calibration."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    base = resize_batch(eval_data.images, size)
    xa, xb, labels = [], [], []
    for _ in range(repeats):
        partner, label = sample_partners(
            eval_data.groups, rng, p_same, population=eval_data.population
        )
        xa.append(base)
        xb.append(apply_view(eval_data.images[torch.as_tensor(partner)], REUSE_VIEWS[1], size, g))
        labels.append(label)
    return torch.cat(xa), torch.cat(xb), np.concatenate(labels)


def fit_threshold(labels, scores, target_fpr: float | None = None) -> dict:
    """Threshold maximising F1 (or the lowest meeting ``target_fpr``) and its metrics."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if target_fpr is None:
        thr, _ = best_f1_threshold(y, s)
        method = "max-f1"
    else:
        thr = threshold_at_fpr(s[~y], target_fpr)
        method = f"fpr<={target_fpr:g}"
        if not np.isfinite(thr):
            thr = float(s.min())
    m = threshold_metrics(y, s, thr)
    return {
        "threshold": float(thr),
        "method": method,
        "n_pairs": int(len(y)),
        "n_positive": int(y.sum()),
        **{k: float(v) for k, v in m.items()},
    }


def checkpoint_is_half(path: str | Path) -> bool:
    """True when a checkpoint file stores its float tensors in half precision."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():
            dtype = fh.get_slice(key).get_dtype()
            if dtype.startswith(("F", "BF")):
                return dtype in ("F16", "BF16")
    return False


@torch.no_grad()
def calibrate(
    checkpoint: str | Path,
    data: list[str | Path],
    split: str = "val",
    target_fpr: float | None = None,
    out: str | Path | None = None,
    limit: int | None = None,
    repeats: int = 3,
    device: str = "cpu",
    quiet: bool = False,
) -> dict:
    """Fit and store the threshold of ``checkpoint`` on ``split`` pairs; returns the record.

    Writes to ``out`` (default: the checkpoint itself, atomically).
    """
    dev = get_device(device)
    model = load_checkpoint(checkpoint, dev)
    size = model.config.image_size
    eval_data = load_eval_data(data, split or None, decode_size=2 * size, limit=limit)
    xa, xb, label = calibration_pairs(eval_data, size, repeats=repeats)
    method = ModelMethod(Path(checkpoint).stem, model, str(checkpoint))
    idx = np.arange(len(label))
    scores = method.score(
        method.represent(BackboneFeatures(xa)), method.represent(BackboneFeatures(xb)), idx, idx
    )
    info = fit_threshold(label, scores, target_fpr)
    info.update(
        split=split,
        data=[str(d) for d in data],
        views="reuse",
        date=time.strftime("%Y-%m-%d"),
    )
    model.config.threshold = info["threshold"]
    model.config.calibration = info
    target = Path(out) if out else Path(checkpoint)
    save_checkpoint(model, target, half=checkpoint_is_half(checkpoint))
    if not quiet:
        print(
            f"{target}: threshold {info['threshold']:.4f} ({info['method']} on {info['n_pairs']} "
            f"{split} pairs: F1 {info['f1']:.3f}, FPR {info['fpr']:.3f}, "
            f"precision {info['precision']:.3f}, recall {info['recall']:.3f})"
        )
    return info
