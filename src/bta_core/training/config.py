"""The training recipe: ``TrainConfig`` (one field per ``bta-core train`` flag), its stages,
the paper's cosine learning-rate schedule and the recipe stored in checkpoints."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..losses import LAMBDA_BT, LAMBDA_COMBINED

DEFAULT_EPOCHS = {"bta": 200, "combined": 200, "head": 100, "simclr": 200}


@dataclass
class TrainConfig:
    """Training options; every field is a ``bta-core train`` flag of the same name."""

    data: list[str] = field(default_factory=list)
    out: str = "bta.safetensors"
    mode: str = "combined"
    views: str = "paper"
    backbone: str = "resnet50-barlowtwins"
    backbone_weights: str | None = None
    projector_dim: int | None = None
    split: str | None = "train"
    epochs: int | None = None
    head_epochs: int = 100
    batch_size: int = 128
    image_size: int = 224
    lr_start: float = 3e-3
    lr_end: float = 5e-4
    weight_decay: float = 1e-2
    lambda_bt: float = LAMBDA_BT
    lambda_: float = LAMBDA_COMBINED
    p_same: float = 0.4
    pos_weight: float | None = None
    """Weight of the positives of the all-pairs BCE; None balances them (B - 1)."""
    head: str = "symmetric"
    limit: int | None = None
    seed: int = 0
    device: str = "auto"
    finetune_backbone: bool = False
    backbone_lr_scale: float = 0.1
    init_projector: str | None = None
    compile: bool = False
    save_every: int = 10
    resume: bool = False
    view_bank: int = 0
    quiet: bool = False

    def stages(self) -> list[tuple[str, int]]:
        """The (stage, epochs) sequence of the recipe."""
        epochs = self.epochs if self.epochs is not None else DEFAULT_EPOCHS[self.mode]
        if self.mode == "bta":
            return [("projector", epochs), ("head", self.head_epochs)]
        if self.mode == "simclr":
            return [("simclr", epochs), ("head", self.head_epochs)]
        if self.mode == "combined":
            return [("combined", epochs)]
        if self.mode == "head":
            return [("head", epochs)]
        raise ValueError(f"unknown mode {self.mode!r} (bta, combined, head or simclr)")


def stages_text(stages: list[tuple[str, int]]) -> str:
    """``"combined 3 epochs"``, ``"projector 200 epochs, head 1 epoch"``: a recipe's stages in
    words (the training log and the ``--resume`` refusal)."""
    return ", ".join(f"{name} {n} epoch{'s' * (n != 1)}" for name, n in stages)


def cosine_lr(epoch: int, epochs: int, lr_start: float, lr_end: float) -> float:
    """Paper schedule: gamma_k = gamma_start * q_k + gamma_end * (1 - q_k), q_k = (1 + cos(pi k/K)) / 2."""
    q = 0.5 * (1 + math.cos(math.pi * epoch / max(epochs, 1)))
    return lr_start * q + lr_end * (1 - q)


def recipe_dict(cfg: TrainConfig) -> dict:
    """The training recipe as stored in checkpoints (no paths that only exist on one machine)."""
    d = asdict(cfg)
    for key in ("out", "resume", "quiet", "device"):
        d.pop(key)
    return d
