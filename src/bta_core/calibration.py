"""Model score -> calibrated probability: the checkpoint's Platt mapping (the one home of it).

A checkpoint's ``config.calibration["probability"]`` holds plain data::

    {"method": "platt", "platt": [a, b], "fitted_on": "...", "pairs": n, ...}

and the probability of a raw head score ``s`` is ``sigmoid(a * logit(s) + b)`` with ``a > 0``
(so the mapping keeps the ranking). ``bta-core calibrate`` fits the slope ``a`` by logistic
regression on validation pairs and sets ``b = -a * logit(threshold)``: a pair exactly at the
checkpoint's threshold gets probability 0.5, so ``score >= threshold`` (verdict ``suspect`` on
the model alone) is the same rule as ``probability >= 0.5``. Checkpoints without the record
(older ones) report the raw score. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

PROBABILITY_KEY = "probability"
"""Key of the probability mapping inside a checkpoint's ``calibration`` record."""
COLLECTION_KEY = "collection"
"""Key of the collection-similarity threshold (``{"threshold": t, ...}``): in a scan, a pair
whose model score alone is above the threshold is ``suspect`` only if its embeddings, whitened
with the scanned collection's statistics (``bta_core.whitening``), also reach ``t``."""
SCORE_EPS = 1e-6
"""Scores are clipped to [eps, 1 - eps] before the logit."""


def score_logit(score):
    """``log(s / (1 - s))`` of a score or an array of scores, clipped away from 0 and 1."""
    s = np.clip(np.asarray(score, dtype=np.float64), SCORE_EPS, 1.0 - SCORE_EPS)
    out = np.log(s) - np.log1p(-s)
    return float(out) if out.ndim == 0 else out


def platt_probability(score, platt):
    """``sigmoid(a * logit(score) + b)`` for ``platt = (a, b)``; a float or an array like ``score``."""
    a, b = (float(v) for v in platt)
    z = a * np.asarray(score_logit(score)) + b
    out = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow
    return float(out) if np.ndim(out) == 0 else out.astype(np.float64)


def anchored_platt(slope: float, threshold: float) -> list[float]:
    """The Platt pair ``[a, b]`` with slope ``a`` that maps ``threshold`` to exactly 0.5."""
    return [float(slope), float(-slope * score_logit(threshold))]


def probability_mapping(calibration: Mapping | None) -> tuple[float, float] | None:
    """The Platt pair of a checkpoint's calibration record, or None when it has none."""
    record = (calibration or {}).get(PROBABILITY_KEY)
    if not isinstance(record, Mapping) or "platt" not in record:
        return None
    a, b = record["platt"]
    return float(a), float(b)


def score_probability(calibration: Mapping | None, score):
    """Calibrated P(same source) of raw head score(s): the Platt mapping, else the raw score."""
    platt = probability_mapping(calibration)
    if platt is None:
        return float(score) if np.ndim(score) == 0 else np.asarray(score, dtype=np.float64)
    return platt_probability(score, platt)


def collection_threshold(calibration: Mapping | None) -> float | None:
    """The collection-similarity threshold of a calibration record, or None when it has none."""
    record = (calibration or {}).get(COLLECTION_KEY)
    if not isinstance(record, Mapping) or "threshold" not in record:
        return None
    return float(record["threshold"])


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def mapping_problem(calibration: Mapping) -> str | None:
    """What is wrong with the probability and collection records of a calibration, or None."""
    if COLLECTION_KEY in calibration:
        record = calibration[COLLECTION_KEY]
        where = f"calibration.{COLLECTION_KEY}"
        if not isinstance(record, Mapping):
            return f"{where} must be a JSON object, got {type(record).__name__}"
        t = record.get("threshold")
        if not _finite(t) or not -1.0 <= t <= 1.0:
            return f"{where}.threshold must be a finite number from -1 to 1, got {t!r:.40}"
    if PROBABILITY_KEY not in calibration:
        return None
    record = calibration[PROBABILITY_KEY]
    where = f"calibration.{PROBABILITY_KEY}"
    if not isinstance(record, Mapping):
        return f"{where} must be a JSON object, got {type(record).__name__}"
    platt = record.get("platt")
    if not isinstance(platt, list) or len(platt) != 2 or not all(_finite(v) for v in platt):
        return f"{where}.platt must be a list of 2 finite numbers [a, b], got {platt!r:.80}"
    if not 0 < platt[0] <= 1e3 or abs(platt[1]) > 1e5:
        return f"{where}.platt slope must be in (0, 1000] and |intercept| <= 1e5, got {platt!r:.80}"
    if "fitted_on" in record and not isinstance(record["fitted_on"], str):
        return f"{where}.fitted_on must be a string, got {type(record['fitted_on']).__name__}"
    pairs = record.get("pairs", 0)
    if not isinstance(pairs, int) or isinstance(pairs, bool) or pairs < 0:
        return f"{where}.pairs must be a whole number >= 0, got {pairs!r:.40}"
    return None
