"""Groups of copies: the images a scan found to be one source, joined through ``same`` pairs.

Five copies of one figure make ten ``same`` pairs; an editor wants to read "these five files are
one image" once. Images connected by ``same`` pairs (any evidence: identical pixels, perceptual
hash, verified overlap) form one group, even where two members share no pixels themselves (two
different crops of one source). ``suspect`` pairs join nothing: they are model evidence only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..verdict import SAME

if TYPE_CHECKING:
    from .records import Pair

LISTED_MIN = 3
"""Groups of at least this many images are listed by name (console, report section, napari);
a group of two is just its pair."""


@dataclass
class CopyGroup:
    """One group: its number (1 = largest), its images and the evidence that joined them."""

    number: int
    members: list[str]
    """Image names (paths, with a plane suffix for stacks), in the order of their best pair."""
    n_same_pairs: int = 0
    decided_by: dict[str, int] = field(default_factory=dict)
    """How many of the group's ``same`` pairs each kind of evidence decided."""

    def to_dict(self) -> dict:
        return {
            "group": self.number,
            "files": list(self.members),
            "same_pairs": self.n_same_pairs,
            "decided_by": dict(self.decided_by),
        }


def copy_groups(pairs: Sequence[Pair]) -> list[CopyGroup]:
    """The groups of ``pairs`` (best first, as a scan sorts them): largest group first, ties
    by their best pair; every image of a ``same`` pair is in exactly one group."""
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        parent.setdefault(name, name)
        while parent[name] != name:
            parent[name] = parent[parent[name]]  # path halving
            name = parent[name]
        return name

    order: dict[str, int] = {}
    same = [p for p in pairs if p.verdict == SAME]
    for p in same:
        for name in (p.path_a, p.path_b):
            order.setdefault(name, len(order))
        ra, rb = root(p.path_a), root(p.path_b)
        if ra != rb:
            parent[max(ra, rb, key=order.get)] = min(ra, rb, key=order.get)
    members: dict[str, list[str]] = {}
    for name in sorted(order, key=order.get):
        members.setdefault(root(name), []).append(name)
    kinds: dict[str, Counter] = {r: Counter() for r in members}
    for p in same:
        kinds[root(p.path_a)][p.decided_by] += 1
    roots = sorted(members, key=lambda r: (-len(members[r]), order[r]))
    return [
        CopyGroup(k, members[r], sum(kinds[r].values()), dict(kinds[r]))
        for k, r in enumerate(roots, 1)
    ]


def listed_groups(groups: Sequence[CopyGroup]) -> list[CopyGroup]:
    """The groups worth listing by name: ``LISTED_MIN`` or more images."""
    return [g for g in groups if len(g.members) >= LISTED_MIN]


def group_numbers(groups: Sequence[CopyGroup]) -> dict[str, int]:
    """Image name -> its group's number."""
    return {name: g.number for g in groups for name in g.members}


def groups_text(groups: Sequence[CopyGroup]) -> str:
    """``"3 groups of copies (5, 3 and 2 images)"``; empty when there is none."""
    if not groups:
        return ""
    sizes = [str(len(g.members)) for g in groups]
    if len(sizes) > 5:  # by size, largest first: "(1 of 5 images, 6 of 3, 12 of 2)"
        counts = Counter(len(g.members) for g in groups)
        parts = [f"{counts[k]} of {k}" for k in sorted(counts, reverse=True)]
        parts[0] += " images"
        return f"{len(groups)} groups of copies ({', '.join(parts)})"
    listed = sizes[0] if len(sizes) == 1 else ", ".join(sizes[:-1]) + " and " + sizes[-1]
    noun = "group" if len(groups) == 1 else "groups"
    return f"{len(groups)} {noun} of copies ({listed} images)"
