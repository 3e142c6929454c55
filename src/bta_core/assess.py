"""The evidence cascade for one pair of images, ending in the one decision rule (``verdict``).

``score``, ``match`` and the napari Compare panel call :func:`assess_pair`; ``scan`` gathers the
same evidence in batches and calls the same :func:`bta_core.verdict.decide`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .calibration import collection_threshold, probability_mapping, score_probability
from .fingerprint import fingerprint, pair_phash
from .runtime import ProgressFn, StopFn, check_cancel
from .verdict import Decision, Evidence, Policy, decide


@dataclass
class Assessment:
    """A pair's decision plus the localisation result when matching ran (else None)."""

    decision: Decision
    match: Any = None
    note: str | None = None
    """Why a kind of evidence was not gathered (e.g. keypoint verification skipped), else None."""


def policy_for(model: Any) -> Policy:
    """The decision policy a checkpoint implies (its calibrated thresholds)."""
    return Policy(
        threshold=float(model.config.threshold),
        collection_threshold=collection_threshold(model.config.calibration),
    )


def set_model_score(evidence: Evidence, model: Any, score: float | None) -> Evidence:
    """Record the model's raw score and its calibrated probability (the checkpoint's mapping;
    left None for a checkpoint that was never calibrated: the verdict line then says so)."""
    evidence.model_score = None if score is None else float(score)
    calibration = None if model is None else model.config.calibration
    if score is not None and probability_mapping(calibration) is not None:
        evidence.model_probability = score_probability(calibration, float(score))
    return evidence


def pair_scorer(model: Any, tta: str | None = None):
    """``scorer(a, b) -> (raw model score, calibrated probability or None)`` of two float RGB
    images, as ``match.within.find_repeated_panels`` takes it (CLI and napari alike)."""

    def score(a: np.ndarray, b: np.ndarray) -> tuple[float, float | None]:
        from .scoring import score_arrays

        evidence = set_model_score(Evidence(), model, score_arrays(model, a, b, tta=tta))
        return float(evidence.model_score), evidence.model_probability

    return score


def fingerprint_evidence(image_a: np.ndarray, image_b: np.ndarray) -> Evidence:
    """The first two kinds of evidence: identical pixels and the perceptual-hash distance."""
    fa, fb = fingerprint(image_a), fingerprint(image_b)
    distance, orientation = pair_phash(fa, fb)
    return Evidence(
        identical_pixels=fa.pixel_hash == fb.pixel_hash,
        phash_distance=distance,
        phash_orientation=orientation,
    )


def add_match(evidence: Evidence, found: Any) -> Evidence:
    """Record a ``match.MatchResult`` as the keypoint-verification evidence of a pair."""
    evidence.verified = bool(found.found)
    evidence.match_confidence = round(float(found.confidence), 4)
    evidence.inliers = int(found.inliers)
    if found.found and found.transform is not None:
        t = found.transform
        evidence.transform = f"{t.describe()}, scale {t.scale:.2f}"
        edits = getattr(found, "local_edits", None)
        evidence.local_edits = None if edits is None else len(edits.cells)
    return evidence


def assess_pair(
    model: Any,
    image_a: np.ndarray,
    image_b: np.ndarray,
    *,
    verify: bool = True,
    tta: str | None = None,
    policy: Policy | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    names: tuple[str, str] = ("image A", "image B"),
) -> Assessment:
    """Gather every kind of evidence for A and B (float RGB arrays) and decide.

    Matching (the slow part) runs when ``verify`` is set and the pixels are not identical. When
    matching is impossible (an image too small), the verdict comes from the other evidence and
    ``note`` says why verification was skipped, naming the image by ``names``.
    """
    from .scoring import score_arrays  # noqa: PLC0415  (lazy: torch)

    total = 4 if verify else 3

    def progress(step: int, stage: str) -> None:
        if on_progress is not None:
            on_progress(step, total, {"stage": stage})

    evidence = fingerprint_evidence(image_a, image_b)
    progress(1, "fingerprints")
    check_cancel(should_stop, "comparison")
    set_model_score(evidence, model, score_arrays(model, image_a, image_b, tta=tta))
    progress(2, "model score")
    found = note = None
    if verify and not evidence.identical_pixels:
        check_cancel(should_stop, "comparison")
        from .match import match_images  # noqa: PLC0415
        from .match.prepare import ImageTooSmallError  # noqa: PLC0415

        try:
            found = match_images(image_a, image_b, should_stop=should_stop)
        except ImageTooSmallError as exc:  # "image_a: image too small to match (8x8 pixels)"
            note = verification_skipped(exc, names)
        else:
            add_match(evidence, found)
        progress(3, "keypoint verification")
    decision = decide(evidence, policy or policy_for(model))
    progress(total, "decision")
    return Assessment(decision, found, note)


def verification_skipped(exc: Exception, names: tuple[str, str]) -> str:
    """Why keypoint matching could not run on a pair (the matcher refused it, e.g. an image too
    small), naming the image by ``names``: ``score``'s note and a scan's ``not_checked``."""
    return f"keypoint verification skipped: {_name_image(str(exc), names)}"


def _name_image(message: str, names: tuple[str, str]) -> str:
    """``message`` with the matcher's leading ``image_a:``/``image_b:`` replaced by a name."""
    for tag, name in zip(("image_a:", "image_b:"), names, strict=True):
        if message.startswith(tag):
            return f"{name}:{message[len(tag) :]}"
    return message
