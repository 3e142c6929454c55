"""Fit a checkpoint's decision threshold and probability mapping on validation pairs
(``bta-core calibrate``).

Validation pairs are reuse-style: the original image (resized) against a partner made with the
``reuse`` view pipeline, the same image with probability 0.4 and otherwise an image of another
field-of-view group, of the same data set and modality when there is one (hard negatives).
The threshold maximises F1 on those pairs, or, with ``--target-fpr``, is the lowest one whose
false positive rate stays within the target (``keep_threshold``: the stored one is kept).
On the same pairs a Platt mapping (logistic regression on the logit of the score) gives the
calibrated probability; its intercept is set so that the threshold maps to 0.5 (see
``bta_core.calibration``), i.e. the probability assumes the share of reused pairs at which the
threshold is the even-odds point; that share, and the expected calibration error (ECE) of raw
score and probability on the pairs, are stored with it. The threshold and the ``calibration``
record are stored in the checkpoint's config; the file is rewritten atomically with the
precision of its tensors. The bundled default model is never overwritten without ``out``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..augment import REUSE_VIEWS, apply_view
from ..calibration import (
    COLLECTION_KEY,
    PROBABILITY_KEY,
    anchored_platt,
    platt_probability,
    score_logit,
)
from ..checkpoint import DEFAULT_MODEL_DIR, load_checkpoint, resolve_checkpoint, save_checkpoint
from ..device import get_device
from ..whitening import DEFAULT_SHRINKAGE, fit_whitening, pair_similarity
from .datasets import EvalData, describe_selection, load_eval_data, report_skipped
from .methods import BackboneFeatures, ModelMethod
from .metrics import (
    TARGET_FPR,
    best_f1_threshold,
    reliability,
    threshold_at_fpr,
    threshold_metrics,
)
from .pairs import resize_batch, sample_partners

CALIBRATION_SEED = 20_251_126
MIN_PAIRS = 100
"""Fewer validation pairs than this give a warning: threshold and mapping are unreliable."""


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


LOW_RECALL = 0.1
"""Below this recall at the fitted threshold, ``calibrate`` warns that it is unusable."""
HIGH_FPR = 0.05
"""Above this false-positive rate at the fitted threshold, ``calibrate`` warns likewise."""
USELESS_FPR = 0.5
"""Above this false-positive rate the fitted threshold is refused and nothing is written."""


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


def fit_probability(labels, scores, threshold: float, fitted_on: str = "") -> dict:
    """The Platt mapping of ``scores`` on ``labels`` anchored at ``threshold`` (maps to 0.5).

    Logistic regression on ``logit(score)`` gives the slope ``a`` and the intercept ``b_pairs``
    for the pairs' share of positives; the stored intercept ``b = -a * logit(threshold)`` is the
    same fit under the prior share ``prior`` of reused pairs at which the threshold has even odds.
    ECE (10 bins) is reported for the raw score and the probabilities, on the pairs as sampled
    and reweighted to ``prior``. Raises ``ValueError`` when a class is missing or the score does
    not rise with the share of positives.
    """
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.all() or not y.any():
        raise ValueError("the pairs hold only one class; no probability mapping can be fitted")
    x = np.asarray(score_logit(s)).reshape(-1, 1)
    lr = LogisticRegression(C=1.0).fit(x, y)
    a, b_pairs = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if not a > 0:
        raise ValueError(f"the score does not rise with P(same) on these pairs (slope {a:.3g})")
    platt = anchored_platt(a, threshold)
    base = float(y.mean())
    prior = float(platt_probability(base, [1.0, platt[1] - b_pairs]))  # the shifted base rate
    w = np.where(y, prior / base, (1 - prior) / (1 - base))
    p_pairs = platt_probability(s, [a, b_pairs])
    p = platt_probability(s, platt)
    return {
        "method": "platt",
        "platt": platt,
        "fitted_on": fitted_on,
        "pairs": int(len(y)),
        "positives": int(y.sum()),
        "anchor": {"threshold": float(threshold), "probability": 0.5},
        "intercept_at_pairs_prior": b_pairs,
        "prior": prior,
        "ece_score": reliability(y, s)[0],
        "ece_fit_at_pairs_prior": reliability(y, p_pairs)[0],
        "ece_score_at_prior": reliability(y, s, weights=w)[0],
        "ece_at_prior": reliability(y, p, weights=w)[0],
        "reliability_at_prior": reliability(y, p, weights=w)[1],
    }


def fit_collection_threshold(
    z_clean: torch.Tensor,
    z_views: torch.Tensor,
    labels: np.ndarray,
    collections: np.ndarray,
    groups: np.ndarray,
    target_fpr: float = TARGET_FPR,
) -> dict | None:
    """Collection-similarity threshold at ``target_fpr``, measured as a scan measures it.

    Each collection (``collections[i]`` names image ``i``'s data set) is whitened with its own
    clean images (``z_clean``). Negatives: every pair of its clean images from different
    field-of-view groups, each with the pair left out of the fit (``pair_similarity``), as in a
    scan of that collection. Positives, for the recall only: calibration pair ``k`` (clean image
    ``k % n`` against a reuse view ``z_views[k]``) with ``labels[k] == 1``, the views added to
    the fit as a scan holding those copies would. None when no collection has enough images.
    """
    n = len(collections)
    neg, pos, used = [], [], []
    for name in sorted(set(collections.tolist())):
        members = np.flatnonzero(collections == name)
        w = fit_whitening(z_clean[torch.as_tensor(members)])
        if w is None:
            continue
        used.append(str(name))
        iu, ju = np.triu_indices(len(members), k=1)
        keep = groups[members[iu]] != groups[members[ju]]
        a, b = members[iu[keep]], members[ju[keep]]
        neg.append(pair_similarity(w, z_clean[a], z_clean[b]).double().numpy())
        rows = np.flatnonzero(np.isin(np.arange(len(labels)) % n, members) & (labels == 1))
        if len(rows):
            r = torch.as_tensor(rows)
            views = z_views[r]
            w_pos = fit_whitening(torch.cat([z_clean[torch.as_tensor(members)], views]))
            clean = z_clean[torch.as_tensor(rows % n)]
            pos.append(pair_similarity(w_pos, clean, views).double().numpy())
    if not neg or not sum(len(x) for x in neg):
        return None
    q = np.concatenate(neg)
    p = np.concatenate(pos) if pos else np.zeros(0)
    t = float(threshold_at_fpr(q, target_fpr))
    return {
        "threshold": t,
        "target_fpr": float(target_fpr),
        "fpr": float((q >= t).mean()),
        "recall": float((p >= t).mean()) if len(p) else float("nan"),
        "negatives": int(len(q)),
        "positives": int(len(p)),
        "negatives_are": "clean pairs of one collection, other groups, pair left out of the fit",
        "collections": used,
        "shrinkage": DEFAULT_SHRINKAGE,
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


def bundled_target(checkpoint: str | Path) -> Path | None:
    """The file ``checkpoint`` resolves to when it is a model shipped inside the package."""
    path = resolve_checkpoint(checkpoint).resolve()
    return path if path.parent == DEFAULT_MODEL_DIR.resolve() else None


def _stage(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"calibrate: {message}", file=sys.stderr, flush=True)


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
    keep_threshold: bool = False,
) -> dict:
    """Fit and store the threshold and probability mapping of ``checkpoint``; returns the record.

    Writes to ``out`` (default: the checkpoint itself, atomically; a model shipped inside the
    package is refused without ``out``). ``keep_threshold``: keep the stored threshold and its
    record, fit only the probability mapping (anchored at that threshold).
    """
    if out is None and bundled_target(checkpoint) is not None:
        raise ValueError(
            f"{resolve_checkpoint(checkpoint)} is a model shipped with napari-bta and is not "
            "overwritten; pass --out FILE (for example --out calibrated.safetensors)"
        )
    dev = get_device(device)
    _stage(quiet, f"loading {resolve_checkpoint(checkpoint)}")
    model = load_checkpoint(checkpoint, dev)
    size = model.config.image_size
    _stage(quiet, f"decoding {describe_selection(data, split or None)}")
    eval_data = load_eval_data(data, split or None, decode_size=2 * size, limit=limit)
    report_skipped(eval_data.skipped, quiet)
    xa, xb, label = calibration_pairs(eval_data, size, repeats=repeats)
    n_pos = int(np.sum(label))
    _stage(quiet, f"{len(label)} pairs ({n_pos} same source) of {len(eval_data.images)} images")
    if len(label) < MIN_PAIRS:
        print(
            f"warning: only {len(label)} calibration pairs (fewer than {MIN_PAIRS}); the "
            "threshold and probabilities will be unreliable",
            file=sys.stderr,
        )
    _stage(quiet, "scoring the pairs with the model")
    method = ModelMethod(Path(checkpoint).stem, model, str(checkpoint))
    idx = np.arange(len(label))
    feats_a, feats_b = BackboneFeatures(xa), BackboneFeatures(xb)
    scores = method.score(method.represent(feats_a), method.represent(feats_b), idx, idx)
    datasets = np.array([name.split("/")[0] for name in eval_data.population_names])
    n_images = len(eval_data.images)
    collection = fit_collection_threshold(
        method.embeddings(feats_a)[:n_images],  # xa: the clean images, repeated
        method.embeddings(feats_b),
        label,
        datasets[eval_data.population],
        eval_data.groups,
        TARGET_FPR if target_fpr is None else target_fpr,
    )
    _stage(quiet, "fitting the threshold and the probability mapping")
    where = dict(split=split, data=[str(d) for d in data], views="reuse")
    if keep_threshold:
        info = {k: v for k, v in model.config.calibration.items() if k != PROBABILITY_KEY}
        info.setdefault("threshold", float(model.config.threshold))
        info.update(kept_threshold=True)
    else:
        info = fit_threshold(label, scores, target_fpr)
        info.update(**where, date=time.strftime("%Y-%m-%d"))
        if info["fpr"] > USELESS_FPR:
            raise ValueError(
                f"{resolve_checkpoint(checkpoint)}: not calibrated, nothing written. The best "
                f"threshold ({info['method']}) would call {info['fpr']:.0%} of unrelated pairs "
                "suspect: the model does not tell these images apart. Train it longer or on more "
                "images, calibrate on more images, or pass --target-fpr 0.01"
            )
    thr = float(info["threshold"])
    fitted_on = f"{len(label)} {split or 'all'} pairs (reuse views) of " + ", ".join(
        Path(d).parent.name if Path(d).name == "splits.csv" else Path(d).name for d in data
    )
    try:
        prob = fit_probability(label, scores, thr, fitted_on)
        prob.update(date=time.strftime("%Y-%m-%d"), **where)
        info[PROBABILITY_KEY] = prob
    except ValueError as exc:
        print(f"warning: no probability mapping stored ({exc})", file=sys.stderr)
        prob = None
    info.pop(COLLECTION_KEY, None)
    if collection is not None:
        collection.update(date=time.strftime("%Y-%m-%d"), **where)
        info[COLLECTION_KEY] = collection
    model.config.threshold = thr
    model.config.calibration = info
    target = Path(out) if out else resolve_checkpoint(checkpoint)
    _stage(quiet, f"writing {target}")
    save_checkpoint(model, target, half=checkpoint_is_half(resolve_checkpoint(checkpoint)))
    if not quiet:
        m = threshold_metrics(label, scores, thr)
        how = "kept" if keep_threshold else info["method"]
        print(
            f"{target}: threshold {thr:.4f} ({how}; on {len(label)} {split} pairs: "
            f"F1 {m['f1']:.3f}, FPR {m['fpr']:.3f}, precision {m['precision']:.3f}, "
            f"recall {m['recall']:.3f})"
        )
        if collection is not None:
            print(
                f"collection similarity threshold {collection['threshold']:.4f} (FPR "
                f"{collection['fpr']:.3f}, recall {collection['recall']:.3f} on the "
                f"{collection['negatives']} negative pairs, each of "
                f"{', '.join(collection['collections'])} whitened with its own images)"
            )
        low = [("model score", m["recall"])]
        if collection is not None:
            low.append(("collection similarity", collection["recall"]))
        if m["fpr"] > HIGH_FPR:
            print(
                f"warning: the model score threshold lets {m['fpr']:.0%} of the unrelated pairs "
                f"through: {m['fpr']:.0%} of unrelated image pairs would be called suspect. "
                "The model does not tell these images apart well; train it longer or on more "
                "images"
                + (
                    ""
                    if target_fpr is not None or keep_threshold
                    else ", or pass --target-fpr 0.01"
                ),
                file=sys.stderr,
            )
        for what, recall in low:
            if recall < LOW_RECALL:
                print(
                    f"warning: the {what} threshold keeps a recall of only {recall:.3f} on these "
                    "pairs: almost no reuse would be called by it; calibrate on more images, or "
                    "on images like the ones you will check",
                    file=sys.stderr,
                )
        if prob is not None:
            a, b = prob["platt"]
            print(
                f"probability: sigmoid({a:.4f} * logit(score) {'-' if b < 0 else '+'} "
                f"{abs(b):.4f}); threshold -> 0.5, "
                f"assumes {prob['prior']:.1%} of pairs reused; ECE (10 bins) at that share: "
                f"raw score {prob['ece_score_at_prior']:.3f} -> probability "
                f"{prob['ece_at_prior']:.3f}; on the pairs as sampled ({n_pos / len(label):.0%} "
                f"same): raw score {prob['ece_score']:.3f}, unanchored fit "
                f"{prob['ece_fit_at_pairs_prior']:.3f}"
            )
            print("reliability at that share (bin: pairs, mean probability, share same):")
            for row in prob["reliability_at_prior"]:
                lo, hi = row["bin"]
                print(
                    f"  {lo:.1f}-{hi:.1f}: {row['n']:4d}, {row['mean_score']:.3f}, "
                    f"{row['share_same']:.3f}"
                )
    return info
