"""Each image view represented once per method and reused by every resample and protocol.

A view is a named batch of images made by a function (a resize of the originals, the paper's
view A, one manipulation, ...). :class:`ViewStore` makes the pixels when a view is first asked
for, runs every method on them once (methods sharing a frozen backbone share its forward pass)
and keeps only the representations. With ``cache=False`` every request recomputes: the
reference path the tests compare the cached one against. View keys name views of one image
set: use one store per :class:`~.datasets.EvalData`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence

import torch

from .methods import BackboneFeatures, Method

Reps = dict[str, object]


class ViewStore:
    """Representations of named views, computed once per (view, method)."""

    def __init__(self, cache: bool = True, batch_size: int = 64) -> None:
        self.cache = cache
        self.batch_size = batch_size
        self._reps: dict[Hashable, Reps] = {}
        self.seconds: dict[str, float] = {}  # time spent per kind of work (views, backbone, ...)

    def _add_time(self, what: str, t0: float) -> None:
        self.seconds[what] = self.seconds.get(what, 0.0) + time.perf_counter() - t0

    def reps(
        self, key: Hashable, make: Callable[[], torch.Tensor], methods: Sequence[Method]
    ) -> Reps:
        """Every method's representation of the view ``key`` (pixels from ``make()``)."""
        have = self._reps.get(key, {}) if self.cache else {}
        todo = [m for m in methods if m.name not in have]
        if todo:
            t0 = time.perf_counter()
            x = make()
            self._add_time("make views", t0)
            have = {**have, **self.represent(x, todo)}
            if self.cache:
                self._reps[key] = have
        return {m.name: have[m.name] for m in methods}

    def represent(self, x: torch.Tensor, methods: Sequence[Method]) -> Reps:
        """Representations of a pixel batch (not stored)."""
        feats = BackboneFeatures(x, self.batch_size)
        out: Reps = {}
        for m in methods:
            t0 = time.perf_counter()
            out[m.name] = m.represent(feats)
            self._add_time(f"represent {m.kind}:{m.name}", t0)
        return out
