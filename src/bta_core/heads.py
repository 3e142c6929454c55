"""Projector p and similarity head s of BTA (paper section 3).

The projector follows Barlow Twins: ``Linear(bias=False) + BatchNorm1d + ReLU`` blocks and a
last plain ``Linear``; its output is normalised by a ``BatchNorm1d(affine=False)`` (the
``Normalize`` step of Algorithm 1: batch statistics while training, running statistics at
inference, so one image's embedding never depends on the rest of its batch).

Two similarity heads (``ModelConfig.head``):

* ``"paper"``: the paper code's MLP on ``concat(z_a, z_b)``:
  ``2D -> 512 -> 256 -> 64 -> 16 -> 1`` with ReLU, and a sigmoid on top. Not symmetric, and
  it cannot represent "identical" (kept for the paper's protocol and table).
* ``"symmetric"`` (default of new models): ``logit = c - D(a, b)`` where ``D`` is a learned,
  monotone function of non-negative pair features that vanish exactly when ``a == b``, so
  ``s(a, b) == s(b, a)`` and ``s(z, z) = sigmoid(c)`` is the maximum by construction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PAPER_PROJECTOR_SIZES = (2048, 4096, 4096, 4096)
PAPER_HEAD_SIZES = (512, 256, 64, 16)
SYMMETRIC_HEAD_SIZES = (256, 16)
"""Symmetric head: width of the learned metric space, hidden units of the monotone MLP."""
HEAD_TYPES = ("paper", "symmetric")
IDENTITY_FLOOR = 0.995
"""Lowest score the symmetric head can give an image and itself (its learned maximum is above)."""


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
    head: nn.Module, z_a: torch.Tensor, z_b: torch.Tensor, chunk_pairs: int = 1 << 21
) -> torch.Tensor:
    """Order-independent scores: mean of ``s(a, b)`` and ``s(b, a)`` for every pair.

    A head that is symmetric by construction is scored once. When both sides are the same embeddings (all pairs within one set) one pass suffices:
    ``s(b, a)`` is the transpose of ``s(a, b)``.
    """
    ab = head.score_matrix(z_a, z_b, chunk_pairs=chunk_pairs)
    if isinstance(head, SymmetricHead):
        return ab
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


class SymmetricHead(nn.Module):
    """Identity-aware, order-free head: ``logit(a, b) = c - D(f(a, b))``.

    ``e = W z`` is a learned metric space. The pair features ``f`` are ``1 - cos(e_a, e_b)``,
    ``|e_a - e_b|^2 / m`` (the squared elementwise difference, i.e. ``|e_a|^2 + |e_b|^2 -
    2 e_a . e_b``, so it carries the product features too) and ``1 - cos(z_a, z_b)``: all are
    >= 0, symmetric, and 0 when ``a == b``. ``D`` is a small MLP with non-negative weights and
    ReLUs, minus ``D(0)``: non-decreasing in every feature, so ``D >= 0 = D(f(z, z))``. Hence
    ``s(a, b) = s(b, a) <= s(z, z) = sigmoid(c)``; ``c >= logit(IDENTITY_FLOOR)`` (an exact
    copy is certain by design, not by what training happened to reach). All features come
    from Gram matrices, so all-pairs scoring costs two matrix products plus a tiny per-pair MLP.
    """

    n_features = 3

    def __init__(self, embed_dim: int, sizes: Sequence[int] = SYMMETRIC_HEAD_SIZES) -> None:
        super().__init__()
        metric_dim, hidden = (int(s) for s in sizes)
        self.proj = nn.Linear(int(embed_dim), metric_dim, bias=False)
        k = self.n_features
        self.w1 = nn.Parameter(torch.randn(hidden, k) * 0.5)
        self.b1 = nn.Parameter(torch.linspace(-2.0, 0.0, hidden))
        self.w2 = nn.Parameter(torch.full((hidden,), -3.0))
        self.lin = nn.Parameter(torch.zeros(k))
        self.scale = nn.Parameter(torch.zeros(k))
        self.bias = nn.Parameter(torch.tensor(0.0))
        self.embed_dim, self.metric_dim, self.hidden = int(embed_dim), metric_dim, hidden

    def identity_logit(self) -> torch.Tensor:
        """``c``: the logit of every pair of identical embeddings, >= logit(IDENTITY_FLOOR)."""
        return math.log(IDENTITY_FLOOR / (1 - IDENTITY_FLOOR)) + F.softplus(self.bias)

    def _distance(self, f: torch.Tensor) -> torch.Tensor:
        """Monotone ``D(f) - D(0)`` of non-negative features ``(..., k)``."""
        f = f * F.softplus(self.scale) * 2.0
        w1, w2 = F.softplus(self.w1), F.softplus(self.w2)
        h = torch.relu(f @ w1.T + self.b1) - torch.relu(self.b1)
        return f @ F.softplus(self.lin) + h @ w2

    def _parts(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e = self.proj(z.float())
        return e, F.normalize(e, dim=1), F.normalize(z.float(), dim=1)

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """Logits for the row-wise pairs ``(z_a[i], z_b[i])``, shape ``(N,)``."""
        ea, na, ua = self._parts(z_a)
        eb, nb, ub = self._parts(z_b)
        f = torch.stack(
            [
                0.5 * (na - nb).pow(2).sum(1),
                (ea - eb).pow(2).sum(1) / self.metric_dim,
                0.5 * (ua - ub).pow(2).sum(1),
            ],
            dim=1,
        )
        return self.identity_logit() - self._distance(f)

    def pair_features(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """All-pairs features ``(N, M, 3)`` from Gram matrices (clamped at 0)."""
        ea, na, ua = self._parts(z_a)
        eb, nb, ub = self._parts(z_b)
        sq = (ea.pow(2).sum(1)[:, None] + eb.pow(2).sum(1)[None, :] - 2 * ea @ eb.T).clamp(min=0)
        f = torch.stack([1 - na @ nb.T, sq / self.metric_dim, 1 - ua @ ub.T], dim=-1)
        return f.clamp(min=0)

    def score_matrix(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        chunk_pairs: int = 1 << 21,
        logits: bool = False,
    ) -> torch.Tensor:
        """Scores of every pair ``(z_a[i], z_b[j])`` as an ``(N, M)`` matrix (symmetric head).

        Rows are processed in blocks of about ``chunk_pairs`` pairs to bound memory.
        """
        n, m = z_a.shape[0], z_b.shape[0]
        out = torch.empty(n, m, device=z_a.device, dtype=torch.float32)
        rows = max(1, chunk_pairs // max(m, 1))
        for i in range(0, n, rows):
            f = self.pair_features(z_a[i : i + rows], z_b)
            out[i : i + rows] = self.identity_logit() - self._distance(f)
        return out if logits else torch.sigmoid(out)


def build_head(kind: str, embed_dim: int, sizes: Sequence[int] | None = None) -> nn.Module:
    """The similarity head ``kind`` (``"paper"`` or ``"symmetric"``) on ``embed_dim`` inputs."""
    if kind == "paper":
        return SimilarityHead(embed_dim, sizes or PAPER_HEAD_SIZES)
    if kind == "symmetric":
        return SymmetricHead(embed_dim, sizes or SYMMETRIC_HEAD_SIZES)
    raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(HEAD_TYPES)}")


def is_symmetric(head: nn.Module) -> bool:
    """True for heads whose scores are order-free by construction."""
    return isinstance(head, SymmetricHead)
