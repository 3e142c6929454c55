"""Names of the 8 orientations of the dihedral group D4 (rotations by 90 degrees and flips).

Kept free of torch so keypoint matching can use them without loading it. Order: the four
rotations of the image, then the four rotations of its left-right mirror.
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
