"""Find reused images in folders of TIFF/PNG/JPEG files (``bta-core scan``).

Data flow (docs/architecture.md): ``discover`` files -> ``embed`` pixels and fingerprints (with
the ``cache``) -> ``evidence`` (identical pixels, perceptual hash) and ``candidates`` (model
scores, FAISS for large corpora) -> ``verify`` (keypoints, the best k of every image) ->
``verdict.decide`` -> ``outputs``/``report``. ``shards`` splits the embedding over machines;
``pipeline`` runs it all.
"""

from .pipeline import ScanOptions, merge, scan, score_and_report
from .records import Pair, ScanImage, ScanResult, Skipped

__all__ = [
    "Pair",
    "ScanImage",
    "ScanOptions",
    "ScanResult",
    "Skipped",
    "merge",
    "scan",
    "score_and_report",
]
