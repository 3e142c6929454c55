"""Evaluation pairs: partners for the paper protocol, hard negatives, named manipulations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import (
    ViewConfig,
    apply_view,
    color_jitter,
    dihedral_apply,
    gaussian_blur,
    grayscale,
    jpeg_recompress,
)

P_SAME = 0.4
MANIPULATIONS = (
    "identity",
    "hflip",
    "vflip",
    "rot90",
    "rot180",
    "rot270",
    "transpose",
    "crop50",
    "crop25",
    "jitter",
    "greyscale",
    "blur",
    "noise",
    "jpeg30",
    "gamma",
    "combo",
)
# dihedral op codes of augment.dihedral_apply: 1 hflip, 2 vflip, 4 transpose, 8*k quarter turns
_DIHEDRAL = {"hflip": 1, "vflip": 2, "rot90": 8, "rot180": 16, "rot270": 24, "transpose": 4}
_STILL = ViewConfig(
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    hflip_p=0.0,
    jitter_p=0.0,
    grayscale_p=0.0,
    blur_p=0.0,
)


def sample_partners(
    groups: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    p_same: float = P_SAME,
    population: Sequence | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A partner per image: itself with probability ``p_same``, else an image of another group.

    Never a self-negative nor a same-group negative. With ``population`` the negative is drawn
    from the same population (data set + modality) when it has another group. Returns
    ``(partner, label)`` with ``label = 1`` for same-image pairs.
    """
    groups = np.asarray(groups)
    n = len(groups)
    pop = (
        np.zeros(n, dtype=np.int64)
        if population is None
        else np.unique(population, return_inverse=True)[1]
    )
    same = rng.random(n) < p_same
    partner = np.arange(n)
    for i in np.flatnonzero(~same):
        cand = np.flatnonzero((groups != groups[i]) & (pop == pop[i]))
        if len(cand) == 0:
            cand = np.flatnonzero(groups != groups[i])
        if len(cand) == 0:
            same[i] = True  # nothing it may be paired against: a positive instead
            continue
        partner[i] = cand[rng.integers(len(cand))]
    return partner, same.astype(np.int64)


def hard_negative_pairs(
    groups: np.ndarray, population: np.ndarray, rng: np.random.Generator, per_image: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``per_image`` partners per image from its population, outside its group."""
    ia, ib = [], []
    for i in range(len(groups)):
        cand = np.flatnonzero((population == population[i]) & (groups != groups[i]))
        if len(cand) > per_image:
            cand = rng.choice(cand, per_image, replace=False)
        ia += [i] * len(cand)
        ib += cand.tolist()
    return np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)


def manipulate(images: torch.Tensor, name: str, size: int, seed: int = 0) -> torch.Tensor:
    """One named manipulation of a uint8 batch, as a float [0, 1] batch ``(B, 3, size, size)``.

    Crops are cut from the full-resolution batch; the other ops act on the resized image.
    """
    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    if name in ("crop50", "crop25"):
        area = 0.5 if name == "crop50" else 0.25
        return apply_view(images, replace(_STILL, crop_scale=(area, area)), size, g)
    if name == "combo":
        cfg = replace(
            _STILL, crop_scale=(0.5, 0.5), hflip_p=0.5, rot90_p=1.0, jitter_p=1.0, jpeg_p=1.0
        )
        cfg = replace(cfg, jpeg_quality=(50, 50), noise_p=1.0, noise_std=(0.03, 0.03))
        return apply_view(images, cfg, size, g)
    x = F.interpolate(images.float() / 255, size=(size, size), mode="bilinear", antialias=True)
    x = x.clamp_(0, 1)
    if name == "identity":
        return x
    if name in _DIHEDRAL:
        return dihedral_apply(x, _DIHEDRAL[name]).contiguous()
    if name == "jitter":
        return color_jitter(x, replace(_STILL, jitter_p=1.0), g)
    if name == "greyscale":
        return grayscale(x).expand_as(x).contiguous()
    if name == "blur":
        return gaussian_blur(x, torch.full((n,), 2.0 * size / 224))
    if name == "noise":
        return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp_(0, 1)
    if name == "jpeg30":
        return jpeg_recompress(x, torch.full((n,), 30, dtype=torch.long))
    if name == "gamma":
        gam = torch.where(torch.arange(n) % 2 == 0, 0.6, 1.6).view(n, 1, 1, 1)
        return x.clamp(min=1e-6) ** gam
    raise ValueError(f"unknown manipulation {name!r} (one of {', '.join(MANIPULATIONS)})")


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 or float batch to float [0, 1] at ``size`` (antialiased)."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp_(0, 1)
