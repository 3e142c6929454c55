"""The learned model's score of one pair of images (float RGB arrays)."""

from __future__ import annotations

import numpy as np
import torch

from .model import BTAModel, embed_images


def score_arrays(
    model: BTAModel, image_a: np.ndarray, image_b: np.ndarray, tta: str | None = None
) -> float:
    """Symmetric score of two float RGB arrays; with ``tta="d4"`` the max over B's 8 orientations."""
    if tta == "d4":
        z = embed_images(model, [image_a, image_b], tta="d4").to(model.device)
        with torch.no_grad():
            return float(model.score_matrix(z[0, :1], z[1]).max())
    z = embed_images(model, [image_a, image_b]).to(model.device)
    with torch.no_grad():
        return float(model.score_pairs(z[:1], z[1:2])[0])
