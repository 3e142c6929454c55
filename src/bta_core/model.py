"""The BTA model M(x, y) = s(p(f(x)), p(f(y))) and its configuration."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone, build_backbone, feature_dim
from .device import autocast
from .dihedral import D4_NAMES, d4_orientations  # noqa: F401 (re-exported)
from .heads import PAPER_HEAD_SIZES, Projector, build_head, is_symmetric, symmetric_score_matrix
from .runtime import ProgressFn, StopFn, check_cancel


@dataclass
class ModelConfig:
    """Everything needed to rebuild and use a BTA model (stored in every checkpoint)."""

    backbone: str = "efficientnet-lite0"
    backbone_weights: str | None = None
    """Where the backbone's weights came from (None: the registry's default source)."""
    backbone_in_checkpoint: bool = False
    """True when the backbone's tensors are stored in the checkpoint (fine-tuned or random)."""
    projector_sizes: list[int] = field(default_factory=lambda: [1280, 2048, 2048, 2048])
    head_sizes: list[int] = field(default_factory=lambda: list(PAPER_HEAD_SIZES))
    head: str = "paper"
    """Similarity head: ``"paper"`` (concatenation MLP; the default of checkpoints written
    before the field existed) or ``"symmetric"`` (identity-aware; the default of new training)."""
    image_size: int = 224
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    threshold: float = 0.5
    calibration: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}")
        return cls(**data)

    @classmethod
    def for_backbone(cls, backbone: str, projector_dim: int = 2048, **kwargs) -> ModelConfig:
        """Config with a 3-layer projector of width ``projector_dim`` on ``backbone``."""
        d = feature_dim(backbone)
        return cls(
            backbone=backbone,
            projector_sizes=[d, projector_dim, projector_dim, projector_dim],
            **kwargs,
        )


class BTAModel(nn.Module):
    """Encoder f, projector p and similarity head s, with input preprocessing.

    ``forward``/``embed`` take RGB batches in [0, 1] of shape ``(B, 3, S, S)`` and return the
    normalised projected embeddings z. Scores come from ``score_pairs`` / ``score_matrix``.
    """

    def __init__(self, config: ModelConfig, backbone: Backbone | None = None) -> None:
        super().__init__()
        if backbone is None:
            backbone = build_backbone(config.backbone, weights=config.backbone_weights)
        if backbone.feature_dim != config.projector_sizes[0]:
            raise ValueError(
                f"backbone {backbone.name} gives {backbone.feature_dim}-d features but the "
                f"projector expects {config.projector_sizes[0]}"
            )
        self.config = config
        self.checkpoint_path: str | None = None
        """The file the model was loaded from (None: built in memory); set by ``load_checkpoint``."""
        self.backbone = backbone.module
        self.projector = Projector(config.projector_sizes)
        self.head = build_head(config.head, config.projector_sizes[-1], config.head_sizes)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def embed_dim(self) -> int:
        return self.projector.out_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features y = f(x) of a [0, 1] RGB batch."""
        return self.backbone((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.features(x))

    embed = forward

    def score_pairs(
        self, z_a: torch.Tensor, z_b: torch.Tensor, symmetric: bool = True
    ) -> torch.Tensor:
        """P(same source) for row-wise pairs of embeddings."""
        p = torch.sigmoid(self.head(z_a, z_b).float())
        if symmetric and not is_symmetric(self.head):
            p = 0.5 * (p + torch.sigmoid(self.head(z_b, z_a).float()))
        return p

    def score_matrix(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        symmetric: bool = True,
        chunk_pairs: int = 1 << 21,
    ) -> torch.Tensor:
        """P(same source) for every pair ``(z_a[i], z_b[j])``, shape ``(N, M)``."""
        if symmetric:
            return symmetric_score_matrix(self.head, z_a, z_b, chunk_pairs=chunk_pairs)
        return self.head.score_matrix(z_a, z_b, chunk_pairs=chunk_pairs)


def to_model_input(images: Sequence[np.ndarray] | np.ndarray, image_size: int) -> torch.Tensor:
    """Stack float RGB arrays ``(H, W, 3)`` in [0, 1] into a ``(B, 3, S, S)`` tensor.

    Each image is resized (whole field of view, aspect not kept) with antialiasing, so the
    model sees every pixel of the image; reused crops stay recognisable after resizing.
    """
    out = torch.empty(len(images), 3, image_size, image_size)
    for i, img in enumerate(images):
        t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
        if t.shape[-2:] != (image_size, image_size):
            t = F.interpolate(
                t,
                size=(image_size, image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        out[i] = t[0].clamp_(0, 1)
    return out


@torch.no_grad()
def embed_images(
    model: BTAModel,
    images: Sequence[np.ndarray],
    batch_size: int = 32,
    tta: str | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> torch.Tensor:
    """Embed float RGB arrays; returns ``(N, D)`` (or ``(N, 8, D)`` with ``tta="d4"``) on the CPU."""
    model.eval()
    device = model.device
    size = model.config.image_size
    outs = []
    for start in range(0, len(images), batch_size):
        check_cancel(should_stop, "embedding")
        x = to_model_input(images[start : start + batch_size], size).to(device)
        with autocast(device):
            if tta == "d4":
                views = d4_orientations(x)
                z = model(torch.cat(views)).float()
                z = z.reshape(8, x.shape[0], -1).transpose(0, 1)
            else:
                z = model(x).float()
        outs.append(z.cpu())
        if on_progress is not None:
            on_progress(min(start + batch_size, len(images)), len(images), {})
    if not outs:
        return torch.empty(0, model.embed_dim)
    return torch.cat(outs)
