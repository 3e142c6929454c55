"""The learned model's score of pairs of images, and the one rotation/flip (D4) TTA rule.

Without TTA a pair scores the symmetric head's P(same source). With ``tta="d4"`` it scores the
best over the 8 orientations of either image (B's 8 against A as it is, and A's 7 others
against B as it is): ``score``, ``match`` and ``scan`` all use :func:`d4_best`, so the same
pair gets the same number everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .device import autocast
from .dihedral import D4_NAMES, invert_d4
from .model import BTAModel, embed_images

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def d4_best(
    score: ScoreFn, za: torch.Tensor, zb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``score(a, b)`` over the orientations of ``za``/``zb`` (``(n, 8, D)`` each) and a code
    for the winner: 0-7 the orientation of b (a as it is), 8-15 that of a (b as it is)."""
    best = code = None
    for o in range(8):
        for side in (0, 1):
            if side == 1 and o == 0:
                continue  # identity x identity is already scored
            a = za[:, 0] if side == 0 else za[:, o]
            b = zb[:, o] if side == 0 else zb[:, 0]
            s = score(a, b).float()
            c = o + 8 * side
            if best is None:
                best, code = s, torch.full(s.shape, c, dtype=torch.int8, device=s.device)
            else:
                better = s > best
                best = torch.where(better, s, best)
                code[better] = c
    return best, code


def orientation_name(code: int) -> str | None:
    """How B looks relative to A (a D4 name, ``rot90``: B is A turned by ``np.rot90``) for a
    :func:`d4_best` code, the convention of the perceptual hash and the matcher; None for -1.

    Code ``o`` < 8 scored B turned by ``o`` against A, so B is A turned by the inverse of ``o``;
    code ``8 + o`` scored A turned by ``o`` against B, so B is A turned by ``o``."""
    if code < 0:
        return None
    if code < 8:
        return D4_NAMES[invert_d4(code)]
    return D4_NAMES[code - 8]


def block_scores(
    model: BTAModel, za: torch.Tensor, zb: torch.Tensor, tta: str | None, chunk_pairs: int = 1 << 21
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric scores of every ``(za[i], zb[j])`` and the best orientation code (-1 without TTA)."""
    with torch.no_grad(), autocast(za.device):
        if tta != "d4":
            s = model.score_matrix(za, zb, symmetric=True, chunk_pairs=chunk_pairs).float()
            return s, torch.full(s.shape, -1, dtype=torch.int8, device=s.device)
        return d4_best(
            lambda a, b: model.score_matrix(a, b, symmetric=True, chunk_pairs=chunk_pairs), za, zb
        )


def pair_scores(
    model: BTAModel, za: torch.Tensor, zb: torch.Tensor, tta: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise version of :func:`block_scores` for pairs ``(za[k], zb[k])``."""
    with torch.no_grad(), autocast(za.device):
        if tta != "d4":
            s = model.score_pairs(za, zb, symmetric=True).float()
            return s, torch.full(s.shape, -1, dtype=torch.int8, device=s.device)
        return d4_best(lambda a, b: model.score_pairs(a, b, symmetric=True), za, zb)


def score_arrays(
    model: BTAModel, image_a: np.ndarray, image_b: np.ndarray, tta: str | None = None
) -> float:
    """Score of two float RGB images (with ``tta="d4"`` the :func:`d4_best` rule)."""
    z = embed_images(model, [image_a, image_b], tta=tta).to(model.device)
    s, _ = pair_scores(model, z[:1], z[1:2], tta)
    return float(s[0])
