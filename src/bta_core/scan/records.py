"""What a scan works on and returns: one record per image, decided pairs, skipped files."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from ..verdict import Decision, Evidence
from .groups import CopyGroup, copy_groups


@dataclass
class ScanImage:
    """One image of the scan: a file, or one plane/channel of a stack."""

    name: str
    """Display name: the path, plus ``[c=1,z=3]`` for a plane of a stack."""
    path: str
    role: str
    """``"query"`` (a scanned folder) or ``"reference"``."""
    content_hash: str
    index: int = 0
    """Position of this plane among the images the file yields."""
    pixel_hash: str = ""
    """Hash of the decoded pixels (``fingerprint.pixel_hash``): equal for identical images."""


@dataclass
class Pair:
    """Two images, the evidence gathered on them and the decision ``verdict.decide`` made."""

    path_a: str
    path_b: str
    decision: Decision
    orientation: str | None = None
    """With TTA, the orientation that gave the model score: how B looks relative to A (a D4
    name, as ``phash_orientation`` and the matcher's ``dihedral``)."""

    @property
    def evidence(self) -> Evidence:
        return self.decision.evidence

    @property
    def score(self) -> float:
        """The learned model's score (0 when it was not computed)."""
        s = self.decision.evidence.model_score
        return 0.0 if s is None else float(s)

    @property
    def verdict(self) -> str:
        return self.decision.verdict

    @property
    def decided_by(self) -> str:
        return self.decision.decided_by

    @property
    def probability(self) -> float:
        return self.decision.probability

    @property
    def same(self) -> bool:
        return self.decision.is_same

    @property
    def verified(self) -> bool | None:
        return self.decision.evidence.verified

    @property
    def match_confidence(self) -> float | None:
        return self.decision.evidence.match_confidence

    @property
    def transform(self) -> str | None:
        return self.decision.evidence.transform

    def to_dict(self) -> dict:
        """Plain data for pairs.json: the paths, the decision with its evidence, the orientation."""
        return {
            "path_a": self.path_a,
            "path_b": self.path_b,
            "score": round(self.score, 6),
            **self.decision.to_dict(),
            "orientation": self.orientation,
        }


@dataclass
class Skipped:
    """A file that could not be used and why."""

    path: str
    problem: str


@dataclass
class ScanResult:
    """What a scan found: pairs sorted best first, skipped files and statistics."""

    pairs: list[Pair] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    items: list[ScanImage] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    out_dir: str | None = None

    @cached_property
    def groups(self) -> list[CopyGroup]:
        """The groups of copies of ``pairs`` (``groups.copy_groups``), computed once: every
        output numbers them from this one list."""
        return copy_groups(self.pairs)
