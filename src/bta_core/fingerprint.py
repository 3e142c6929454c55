"""Per-image fingerprints for the first two kinds of evidence: identical pixels and near copies.

``pixel_hash`` hashes the decoded pixel array (shape, dtype and bytes), so a lossless re-save in
another format matches while the file bytes differ. ``d4_phash`` is a 256-bit perceptual hash
(imagehash's DCT pHash) of the image in each of its 8 rotations/flips; the smallest Hamming
distance between A's identity hash and B's 8 hashes tells re-encoded, resized, recoloured and
rotated/flipped copies from different images. Torch-free.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .dihedral import D4_NAMES, invert_d4

PHASH_SIZE = 16
"""Hash side: 16 gives 256 bits (8 gives 64, too coarse for look-alike microscopy fields)."""
PHASH_BITS = PHASH_SIZE * PHASH_SIZE
"""Bits of one hash: the largest possible Hamming distance."""
_WORK_SIDE = PHASH_SIZE * 4
"""pHash reads a ``4 * hash_size`` square, so resizing once to it and rotating that is exact."""


@dataclass(frozen=True)
class Fingerprint:
    """What the cascade needs of one image before any model runs."""

    pixel_hash: str
    phash: np.ndarray
    """``(8, PHASH_SIZE**2 // 8)`` uint8: packed bits of the hash of each D4 orientation."""


def pixel_hash(image: np.ndarray) -> str:
    """SHA-256 of an image array's shape, dtype and bytes (identical decoded pixels)."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{arr.shape}|{arr.dtype.str}|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def _grey_uint8(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3:
        if arr.shape[-1] >= 3:  # the channel mean, written out (numpy's mean over a short
            # last axis is ~30x slower; same float32 sum order, same values)
            arr = (arr[..., 0].astype(np.float32) + arr[..., 1] + arr[..., 2]) / np.float32(3)
        else:
            arr = arr[..., 0]
    arr = arr.astype(np.float32)
    if arr.size and float(arr.max()) <= 1.0 + 1e-6:
        arr = arr * 255.0
    return np.clip(arr, 0, 255).astype(np.uint8)


def d4_phash(image: np.ndarray) -> np.ndarray:
    """Packed 256-bit pHash of each of the 8 orientations of ``image`` (grey or RGB, uint8 or [0,1]).

    imagehash's pHash (the low 16x16 DCT coefficients of a 64x64 grey copy, above their median)
    of every orientation, from one DCT: mirroring an axis flips the sign of its odd
    coefficients and a transpose transposes them, so the 8 hashes equal
    ``imagehash.phash(apply_d4(small, k), 16)`` bit for bit at an eighth of the cost.
    """
    from scipy.fft import dct

    small = Image.fromarray(_grey_uint8(image)).resize((_WORK_SIDE, _WORK_SIDE), Image.LANCZOS)
    base = np.asarray(small, dtype=np.float64)
    coef = dct(dct(base, axis=0), axis=1)[:PHASH_SIZE, :PHASH_SIZE]
    odd = (-1.0) ** np.arange(PHASH_SIZE)
    rows = []
    for k in range(len(D4_NAMES)):
        c = coef * odd[None, :] if k >= 4 else coef  # left-right mirror first
        for _ in range(k % 4):  # np.rot90 = transpose, then reverse the rows
            c = c.T * odd[:, None]
        rows.append(np.packbits((c > np.median(c)).reshape(-1)))
    return np.stack(rows)


def fingerprint(image: np.ndarray) -> Fingerprint:
    """Both fingerprints of one decoded image."""
    return Fingerprint(pixel_hash(image), d4_phash(image))


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def phash_distances(query: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest Hamming distance from each query hash to each other image over its 8 orientations.

    ``query``: ``(N, 8, B)`` or ``(N, B)`` packed hashes (only the identity orientation is used);
    ``others``: ``(M, 8, B)``. Returns ``(N, M)`` distances and ``(N, M)`` the orientation index of
    the other image at that distance.
    """
    q = query[:, 0] if query.ndim == 3 else query
    diff = np.bitwise_xor(q[:, None, None, :], others[None, :, :, :])
    dist = _POPCOUNT[diff].sum(axis=-1, dtype=np.int32)  # (N, M, 8)
    best = dist.argmin(axis=-1)
    return np.take_along_axis(dist, best[..., None], axis=-1)[..., 0], best


def pairs_phash(phash_a: np.ndarray, phash_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric distance of row-wise pairs: ``(K, 8, B)`` hashes each -> ``(K,)`` distances and
    ``(K,)`` the D4 index ``m`` with B = A turned by ``m`` (``apply_d4(A, m)`` looks like B).

    The smaller of A against B's 8 orientations and B against A's 8, so a pair gets the same
    distance whichever image comes first. ``m`` says how B looks relative to A, as the
    matcher's ``dihedral`` and the scan's TTA orientation do: one convention everywhere.
    """
    a_id, b_id = phash_a[:, 0], phash_b[:, 0]
    d_ab = _POPCOUNT[np.bitwise_xor(a_id[:, None, :], phash_b)].sum(axis=-1, dtype=np.int32)
    d_ba = _POPCOUNT[np.bitwise_xor(b_id[:, None, :], phash_a)].sum(axis=-1, dtype=np.int32)
    k_ab, k_ba = d_ab.argmin(axis=1), d_ba.argmin(axis=1)
    rows = np.arange(len(a_id))
    best_ab, best_ba = d_ab[rows, k_ab], d_ba[rows, k_ba]
    inverse = np.array([invert_d4(k) for k in range(len(D4_NAMES))])
    use_ab = best_ab <= best_ba
    return np.where(use_ab, best_ab, best_ba), np.where(use_ab, inverse[k_ab], k_ba)


def pair_phash(fa: Fingerprint, fb: Fingerprint) -> tuple[int, str]:
    """Symmetric smallest distance between two images' hashes and how B is A turned
    (``pairs_phash``)."""
    dist, best = pairs_phash(fa.phash[None], fb.phash[None])
    return int(dist[0]), D4_NAMES[int(best[0])]
