"""Projector p and similarity head s of BTA (paper section 3).

The projector follows Barlow Twins: ``Linear(bias=False) + BatchNorm1d + ReLU`` blocks and a
last plain ``Linear``; its output is normalised by a ``BatchNorm1d(affine=False)`` (the
``Normalize`` step of Algorithm 1: batch statistics while training, running statistics at
inference, so one image's embedding never depends on the rest of its batch).

The similarity head is the paper code's MLP on ``concat(z_a, z_b)``:
``2D -> 512 -> 256 -> 64 -> 16 -> 1`` with ReLU, and a sigmoid on top.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

PAPER_PROJECTOR_SIZES = (2048, 4096, 4096, 4096)
PAPER_HEAD_SIZES = (512, 256, 64, 16)


class Projector(nn.Module):
    """Barlow Twins projector plus the normalisation of Algorithm 1.

    Args:
        sizes: layer widths, input first, e.g. ``(2048, 4096, 4096, 4096)``.
    """

    def __init__(self, sizes: Sequence[int] = PAPER_PROJECTOR_SIZES) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"projector needs at least two sizes, got {sizes}")
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 2):
            layers += [
                nn.Linear(sizes[i], sizes[i + 1], bias=False),
                nn.BatchNorm1d(sizes[i + 1]),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm1d(sizes[-1], affine=False)
        self.sizes = tuple(sizes)

    @property
    def out_dim(self) -> int:
        return self.sizes[-1]

    def forward(self, y: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.layers(y)
        return self.bn(z) if normalize else z


class SimilarityHead(nn.Module):
    """MLP on ``concat(z_a, z_b)`` giving the logit of P(same source image).

    ``forward`` returns logits (apply ``torch.sigmoid`` for probabilities); ``score_matrix``
    scores all pairs of two embedding sets without building the concatenations.
    """

    def __init__(self, embed_dim: int, hidden: Sequence[int] = PAPER_HEAD_SIZES) -> None:
        super().__init__()
        dims = [2 * int(embed_dim), *[int(h) for h in hidden]]
        self.first = nn.Linear(dims[0], dims[1])
        rest: list[nn.Module] = [nn.ReLU(inplace=True)]
        for i in range(1, len(dims) - 1):
            rest += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU(inplace=True)]
        rest.append(nn.Linear(dims[-1], 1))
        self.rest = nn.Sequential(*rest)
        self.embed_dim = int(embed_dim)
        self.hidden = tuple(int(h) for h in hidden)

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """Logits for the row-wise pairs ``(z_a[i], z_b[i])``, shape ``(N,)``."""
        return self.rest(self.first(torch.cat([z_a, z_b], dim=1))).squeeze(1)

    def split_first_layer(
        self, z_a: torch.Tensor, z_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """First-layer pre-activations of each side: ``W_a z_a + bias`` and ``W_b z_b``.

        ``first(cat(z_a, z_b)) == W_a z_a + W_b z_b + bias``, so each image's share is computed
        once and pairs only add two rows.
        """
        w_a = self.first.weight[:, : self.embed_dim]
        w_b = self.first.weight[:, self.embed_dim :]
        return z_a @ w_a.T + self.first.bias, z_b @ w_b.T

    def score_matrix(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        chunk_pairs: int = 1 << 21,
        logits: bool = False,
    ) -> torch.Tensor:
        """Scores of every pair ``(z_a[i], z_b[j])`` as an ``(N, M)`` matrix.

        Memory stays bounded by ``chunk_pairs`` pairs at a time (the hidden activations of a
        chunk are ``chunk_pairs x 512`` values). Returns probabilities unless ``logits``.
        """
        u, v = self.split_first_layer(z_a, z_b)
        n, m = u.shape[0], v.shape[0]
        out = torch.empty(n, m, device=u.device, dtype=torch.float32)
        rows = max(1, min(n, chunk_pairs // max(m, 1)))
        cols = m if rows > 1 or m <= chunk_pairs else chunk_pairs
        for i in range(0, n, rows):
            ui = u[i : i + rows]
            for j in range(0, m, cols):
                vj = v[j : j + cols]
                h = (ui[:, None, :] + vj[None, :, :]).reshape(-1, u.shape[1])
                s = self.rest(h).reshape(ui.shape[0], vj.shape[0]).float()
                out[i : i + rows, j : j + cols] = s
        return out if logits else torch.sigmoid(out)

    def concat_score_matrix(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """Reference all-pairs scoring through explicit concatenation (paper code's way)."""
        n, m = z_a.shape[0], z_b.shape[0]
        za = z_a.repeat_interleave(m, dim=0)
        zb = z_b.repeat(n, 1)
        return torch.sigmoid(self.forward(za, zb).float()).reshape(n, m)


def symmetric_score_matrix(
    head: SimilarityHead, z_a: torch.Tensor, z_b: torch.Tensor, chunk_pairs: int = 1 << 21
) -> torch.Tensor:
    """Order-independent scores: mean of ``s(a, b)`` and ``s(b, a)`` for every pair.

    When both sides are the same embeddings (all pairs within one set) one pass suffices:
    ``s(b, a)`` is the transpose of ``s(a, b)``.
    """
    ab = head.score_matrix(z_a, z_b, chunk_pairs=chunk_pairs)
    same = (
        z_a.shape == z_b.shape
        and z_a.data_ptr() == z_b.data_ptr()
        and z_a.stride() == z_b.stride()
        and z_a.device == z_b.device
    )
    if same:
        return 0.5 * (ab + ab.T)
    ba = head.score_matrix(z_b, z_a, chunk_pairs=chunk_pairs)
    return 0.5 * (ab + ba.T)
