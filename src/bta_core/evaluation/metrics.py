"""Pair-ranking metrics: scikit-learn's curves and scores, plus the few it lacks.

``roc_curve``, ``roc_auc``, ``average_precision`` and ``best_f1_threshold`` wrap
scikit-learn (NaN instead of an error when a class is missing); ``threshold_at_fpr``,
``recall_at_fpr`` and ``recall_at_k`` are the fixed-FPR and top-k figures it has no call for.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

TARGET_FPR = 0.01


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
    tn, fp, _, _ = skm.confusion_matrix(y, pred, labels=[False, True]).ravel()
    return {
        "accuracy": float(skm.accuracy_score(y, pred)) if len(y) else 0.0,
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "fpr": float(fp / (fp + tn)) if fp + tn else 0.0,
    }


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score, highest threshold first."""
    y, s = _as_arrays(labels, scores)
    return skm.roc_curve(y, s, drop_intermediate=False)


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y, s = _as_arrays(labels, scores)
    if y.all() or not y.any():
        return float("nan")
    return float(skm.roc_auc_score(y, s))


def average_precision(labels, scores) -> float:
    """Average precision of the ranking; NaN without positives."""
    y, s = _as_arrays(labels, scores)
    if not y.any():
        return float("nan")
    return float(skm.average_precision_score(y, s))


def best_f1_threshold(labels, scores) -> tuple[float, float]:
    """Threshold (one of the scores) maximising F1; returns (threshold, F1)."""
    y, s = _as_arrays(labels, scores)
    if not y.any():
        return 0.5, 0.0
    precision, recall, thresholds = skm.precision_recall_curve(y, s)
    p, r = precision[:-1], recall[:-1]
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    k = len(f1) - 1 - int(np.argmax(f1[::-1]))  # the highest threshold among ties
    return float(thresholds[k]), float(f1[k])


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


def recall_at_k(labels, scores, k: int) -> float:
    """Share of the positives among the ``k`` highest scores."""
    y, s = _as_arrays(labels, scores)
    if not y.any():
        return float("nan")
    top = np.argsort(-s, kind="mergesort")[: int(k)]
    return float(y[top].sum() / y.sum())


def reliability(labels, scores, bins: int = 10, weights=None) -> tuple[float, list[dict]]:
    """Expected calibration error of probabilities ``scores`` and the reliability table.

    Equal-width bins on [0, 1]; each row has the bin, its pair count, mean score and the share
    of positives. ECE = sum over bins of (share of pairs) x |mean score - share of positives|.
    ``weights`` (one per pair) reweight the pairs, e.g. to another share of positives.
    """
    y, s = _as_arrays(labels, scores)
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != s.shape:
        raise ValueError(f"weights {w.shape} and scores {s.shape} differ in length")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(s, edges[1:-1]), 0, bins - 1)
    table, ece, total = [], 0.0, float(w.sum())
    for b in range(bins):
        m = which == b
        if not m.any() or w[m].sum() <= 0:
            continue
        wm = w[m]
        conf, share = float(np.average(s[m], weights=wm)), float(np.average(y[m], weights=wm))
        ece += float(wm.sum() / total) * abs(conf - share)
        table.append(
            {
                "bin": [float(edges[b]), float(edges[b + 1])],
                "n": int(m.sum()),
                "mean_score": conf,
                "share_same": share,
            }
        )
    return float(ece), table
