"""The 8 orientations of the dihedral group D4 (rotations by 90 degrees and flips): one home.

Names, numpy apply/invert and the torch batch version used for test-time augmentation. Kept
free of a torch import so keypoint matching and napari can use it without loading torch. Order:
the four rotations of the image, then the four rotations of its left-right mirror.
"""

D4_NAMES = (
    "identity",
    "rot90",
    "rot180",
    "rot270",
    "flip",
    "flip_rot90",
    "flip_rot180",
    "flip_rot270",
)

D4_WORDS = {
    "identity": "A as it is",
    "rot90": "A turned 90 degrees counter-clockwise",
    "rot180": "A turned 180 degrees",
    "rot270": "A turned 90 degrees clockwise",
    "flip": "A mirrored left-right",
    "flip_rot90": "A transposed (mirrored across its main diagonal)",
    "flip_rot180": "A mirrored top-bottom",
    "flip_rot270": "A mirrored across its other diagonal",
}
"""How B looks relative to A, in words, for each orientation name (reports, verdict lines)."""


def describe_d4(name: str | None) -> str:
    """``"B is A turned 90 degrees clockwise"``-style words for an orientation name."""
    if name in (None, "identity"):
        return "same orientation"
    return "B is " + D4_WORDS.get(name, name)


def apply_d4(array, index: int):
    """Orientation ``D4_NAMES[index]`` of an array whose first two axes are (rows, columns).

    Works for numpy arrays (grey or (H, W, C)); the order matches ``D4_NAMES``: ``rot90`` is
    ``np.rot90`` (counter-clockwise) and the ``flip_*`` entries mirror left-right first.
    """
    import numpy as np

    src = np.fliplr(array) if index >= 4 else array
    return np.ascontiguousarray(np.rot90(src, index % 4, axes=(0, 1)))


def invert_d4(index: int) -> int:
    """The index whose orientation undoes ``D4_NAMES[index]``."""
    if index >= 4:
        return index  # a mirror followed by a rotation is its own inverse
    return (4 - index) % 4


def d4_orientations(x):
    """The 8 orientations of a torch ``(..., H, W)`` batch, in ``D4_NAMES`` order (same as
    :func:`apply_d4` on each image)."""
    flipped = x.flip(-1)
    return [x.rot90(k, dims=(-2, -1)) for k in range(4)] + [
        flipped.rot90(k, dims=(-2, -1)) for k in range(4)
    ]
