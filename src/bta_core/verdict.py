"""The one place that turns a pair's evidence into a verdict: ``same``, ``suspect`` or ``different``.

Evidence comes in four kinds, strongest first (the cascade):

1. identical decoded pixels (a hash of the pixel array, so a re-saved lossless copy counts);
2. a perceptual-hash match under one of the 8 rotations/flips (re-encoded, resized, recoloured
   copies);
3. a keypoint-verified, localised overlap (crops, rotations, retouching around the overlap);
4. the learned model score from the similarity head (raw, compared with the threshold), with its
   calibrated probability (the checkpoint's Platt mapping, 0.5 at the threshold).

The first three are each enough for ``same``; the model score alone, above the calibrated
threshold, gives ``suspect`` (worth a look, not proof). In a scan, the collection is evidence
too: the pair's embeddings whitened with the scanned images' own statistics must also be
similar (``collection_similarity`` at least the checkpoint's collection threshold), so that
look-alikes of one lab, stain or camera, which all score high, are not flagged by the score. Everything the user sees (``score``,
``scan``, ``match``, the HTML report, ``demo`` and every napari panel) calls :func:`decide` and
sorts with :func:`rank_key`; nothing else re-derives "same" from a score and a threshold.
Torch-free, so napari can import it without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .dihedral import describe_d4

SAME, SUSPECT, DIFFERENT = "same", "suspect", "different"
VERDICTS = (SAME, SUSPECT, DIFFERENT)

IDENTICAL_PIXELS = "identical pixels"
PERCEPTUAL_HASH = "perceptual hash"
VERIFIED_OVERLAP = "verified overlap"
MODEL_SCORE = "model score"
COLLECTION_LOOK_ALIKE = "collection look-alike"
"""``different``: the model score reached the threshold, but the pair does not stand out among
the scanned images (collection similarity below the collection threshold)."""
NO_EVIDENCE = "no evidence"

DEFAULT_PHASH_MAX_DISTANCE = 40
"""Largest Hamming distance (of 256 bits, best of 8 orientations) still called a near-exact copy.

Measured on the test splits of bccd, dsb2018 and phase_culture (80 images each): different fields
of view are never closer than 78 bits (1st percentile 98-104); JPEG q30, half size, rotation/flip
and noise copies stay within 14 bits, strong gamma changes within 32. Crops move the hash far
(80+ bits): they are left to the model score and keypoint verification.
The threshold was chosen on those test images, as were the matcher's acceptance rules
(``match.params``), so a `same` precision measured on the test splits (docs/results.md) is
in-sample for the cascade; the scan of the `val` splits (``scan_quality_val_cpu.json``) is not.
"""

LOOK_ALIKE_CAP = 0.45
"""Largest probability of a collection look-alike (it is ``different``: below 0.5)."""

_TIER = {
    IDENTICAL_PIXELS: 5,
    PERCEPTUAL_HASH: 4,
    VERIFIED_OVERLAP: 3,
    MODEL_SCORE: 2,
    COLLECTION_LOOK_ALIKE: 1,
    NO_EVIDENCE: 0,
}


@dataclass
class Evidence:
    """What is known about a pair; ``None`` means "not checked"."""

    model_score: float | None = None
    """The similarity head's raw score (ranks pairs; compared with the checkpoint's threshold)."""
    model_probability: float | None = None
    """The raw score mapped to a calibrated P(same source) (``calibration.score_probability``);
    ``None``: not mapped, the raw score stands in."""
    identical_pixels: bool | None = None
    phash_distance: int | None = None
    """Smallest Hamming distance between A's and B's perceptual hashes over B's 8 orientations."""
    phash_orientation: str | None = None
    """The orientation of B (a D4 name) at that smallest distance."""
    verified: bool | None = None
    """True when keypoint/correlation matching located and verified a geometric overlap."""
    match_confidence: float | None = None
    transform: str | None = None
    """Short description of the verified transform (orientation, scale, shift)."""
    inliers: int | None = None
    collection_similarity: float | None = None
    """Cosine of the pair's embeddings after whitening with the scanned collection's statistics
    (``bta_core.whitening``); None outside a scan of enough images."""
    local_edits: int | None = None
    """Cells of the verified overlap where B differs locally from A (pasted or erased content,
    ``match.edits``); None without a verified overlap."""
    not_checked: str | None = None
    """Why the keypoint check of a chosen pair could not run (a file gone or changed since it
    was embedded or indexed); None when it ran or was not chosen."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Policy:
    """The thresholds of the decision; the model threshold comes from the checkpoint."""

    threshold: float = 0.5
    phash_max_distance: int = DEFAULT_PHASH_MAX_DISTANCE
    collection_threshold: float | None = None
    """Model-only evidence must also reach this collection similarity (when it was measured);
    None: the score alone decides (checkpoints without a collection calibration)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, int | float) and math.isfinite(self.threshold)):
            raise ValueError(f"model threshold must be a finite number, got {self.threshold!r}")
        t = self.collection_threshold
        if t is not None and not (isinstance(t, int | float) and math.isfinite(t)):
            raise ValueError(f"collection threshold must be a finite number or None, got {t!r}")

    def distinct_in_collection(self, evidence: Evidence) -> bool:
        """Whether the collection evidence lets a high model score count (True when either the
        policy or the pair has none)."""
        c = evidence.collection_similarity
        if self.collection_threshold is None or c is None or not math.isfinite(c):
            return True
        return c >= self.collection_threshold


@dataclass
class Decision:
    """A verdict, the evidence that decided it, and one probability that the pair is one source."""

    verdict: str
    decided_by: str
    probability: float
    evidence: Evidence

    @property
    def is_same(self) -> bool:
        return self.verdict == SAME

    def _p(self) -> str:
        """The probability as shown, or why there is none (a checkpoint without a probability
        mapping: never calibrated, or its mapping could not be fitted)."""
        if self.evidence.model_probability is None:
            return "raw score, no calibrated P in this checkpoint: bta-core calibrate adds one"
        return f"P {self.probability:.2f}"

    def explain(self) -> str:
        """One line for people: the verdict and why."""
        ev = self.evidence
        if self.decided_by == IDENTICAL_PIXELS:
            why = "identical pixels (after decoding and intensity scaling)"
        elif self.decided_by == PERCEPTUAL_HASH:
            how = describe_d4(ev.phash_orientation)
            why = f"perceptual hash match ({how}, distance {ev.phash_distance})"
        elif self.decided_by == VERIFIED_OVERLAP:
            why = "verified overlap" + (f": {ev.transform}" if ev.transform else "")
        elif self.decided_by == MODEL_SCORE:
            why = (
                f"model score {ev.model_score:.3f} above threshold ({self._p()}), "
                "no geometric confirmation"
            )
            if ev.collection_similarity is not None:
                why += f"; collection similarity {ev.collection_similarity:.2f}"
        elif self.decided_by == COLLECTION_LOOK_ALIKE:
            why = (
                f"a look-alike of the scanned images: model score {ev.model_score:.3f} reaches "
                f"the threshold, but the pair is only {ev.collection_similarity:.2f} alike once "
                f"what all of them share is taken out ({self._p()})"
            )
        else:
            why = "no evidence of reuse" + (
                f" (model score {ev.model_score:.3f}, {self._p()})"
                if ev.model_score is not None
                else ""
            )
            if ev.collection_similarity is not None:
                why += f"; collection similarity {ev.collection_similarity:.2f}"
        if ev.not_checked and self.verdict != SAME:
            why += f"; not keypoint-checked: {ev.not_checked}"
        if ev.local_edits:
            cells = "cell" if ev.local_edits == 1 else "cells"
            why += (
                f"; B differs locally from A in {ev.local_edits} {cells} of the overlap "
                "(pasted or erased content?)"
            )
        return f"{self.verdict}: {why}"

    @property
    def hash_orientation(self) -> str | None:
        """The perceptual hash's orientation when the hash decided, else None: for a distant
        hash the best of 8 orientations means nothing (one rule for CSV, JSON and reports)."""
        return self.evidence.phash_orientation if self.decided_by == PERCEPTUAL_HASH else None

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "decided_by": self.decided_by,
            "probability": round(float(self.probability), 6),
            **self.evidence.to_dict(),
            "phash_orientation": self.hash_orientation,
        }


def decide(evidence: Evidence, policy: Policy | None = None) -> Decision:
    """The verdict for one pair: the strongest evidence present decides."""
    policy = policy or Policy()
    score = evidence.model_score
    p_model = evidence.model_probability if evidence.model_probability is not None else score
    p_model = float(p_model) if p_model is not None and math.isfinite(p_model) else 0.0
    if evidence.identical_pixels:
        return Decision(SAME, IDENTICAL_PIXELS, 1.0, evidence)
    if evidence.phash_distance is not None and evidence.phash_distance <= policy.phash_max_distance:
        return Decision(SAME, PERCEPTUAL_HASH, max(p_model, 0.999), evidence)
    if evidence.verified:
        conf = float(evidence.match_confidence or 0.0)
        return Decision(SAME, VERIFIED_OVERLAP, max(p_model, 0.95 + 0.049 * conf), evidence)
    if score is not None and math.isfinite(score) and score >= policy.threshold:
        if policy.distinct_in_collection(evidence):
            return Decision(SUSPECT, MODEL_SCORE, p_model, evidence)
        # above the threshold, but no more alike than the collection's look-alikes: below
        # 0.5, as every 'different' pair (rank_key breaks the ties by the model score)
        return Decision(DIFFERENT, COLLECTION_LOOK_ALIKE, min(p_model, LOOK_ALIKE_CAP), evidence)
    return Decision(DIFFERENT, NO_EVIDENCE, p_model, evidence)


def rank_key(decision: Decision) -> tuple[float, float, float]:
    """Sort key, larger first: the kind of evidence, the probability, then the model score."""
    score = decision.evidence.model_score
    score = float(score) if score is not None and math.isfinite(score) else 0.0
    return (_TIER[decision.decided_by], decision.probability, score)
