"""Ways of scoring pairs on the same images: BTA checkpoints and training-free baselines.

Checkpoints sharing a frozen backbone share its features (:class:`BackboneFeatures`), so adding
a method costs only its projector and head.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import load_checkpoint
from ..device import autocast, get_device
from ..heads import is_symmetric
from ..model import BTAModel, ModelConfig
from .crophash import crop_resistant_bits, pack_segments, segment_match_scores
from .pairs import resize_batch

BASELINES = ("phash", "crhash", "backbone-cosine")


@torch.no_grad()
def _fold_batchnorms(module: torch.nn.Module) -> None:
    """Fold every eval-mode BatchNorm that directly follows a Conv2d into that convolution."""
    prev = None
    for name, child in list(module.named_children()):
        if (
            isinstance(prev, torch.nn.Conv2d)
            and isinstance(child, torch.nn.BatchNorm2d)
            and child.running_mean is not None
        ):
            scale = child.running_var.add(child.eps).rsqrt()
            if child.weight is not None:
                scale = scale * child.weight
            shift = -child.running_mean * scale
            if child.bias is not None:
                shift = shift + child.bias
            w = prev.weight.detach() * scale.view(-1, 1, 1, 1)
            b = shift if prev.bias is None else prev.bias.detach() * scale + shift
            prev.weight = torch.nn.Parameter(w, requires_grad=False)
            prev.bias = torch.nn.Parameter(b.detach(), requires_grad=False)
            after = [getattr(child, k) for k in ("drop", "act") if hasattr(child, k)]
            setattr(module, name, torch.nn.Sequential(*after))  # timm BatchNormAct2d: act only
        else:
            _fold_batchnorms(child)
        prev = child


def inference_features(model: BTAModel):
    """``model.features`` for inference: a copy of the backbone with batch norms folded into
    the convolutions, channels-last. Falls back to the plain copy when folding would change
    the features (a backbone whose layer order is not its data flow)."""
    import copy

    backbone = copy.deepcopy(model.backbone).eval()
    fused = copy.deepcopy(backbone)
    _fold_batchnorms(fused)
    probe = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    probe = probe.to(model.device)
    with torch.inference_mode():
        want, got = backbone(probe).float(), fused(probe).float()
    if torch.allclose(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()) + 1e-6):
        backbone = fused
    backbone.to(memory_format=torch.channels_last)
    mean, std = model.mean, model.std

    def features(x: torch.Tensor) -> torch.Tensor:
        return backbone((x - mean) / std)

    return features


class BackboneFeatures:
    """Backbone features of one image batch, computed once per distinct backbone."""

    def __init__(self, x: torch.Tensor, batch_size: int = 64) -> None:
        self.x = x
        self.batch_size = batch_size
        self._cache: dict[tuple, torch.Tensor] = {}

    @torch.inference_mode()
    def for_model(self, key: tuple, model: BTAModel, features=None) -> torch.Tensor:
        """Pooled backbone features of the batch for ``model`` (computed once per ``key``);
        ``features``: a faster equivalent of ``model.features`` (:func:`inference_features`)."""
        features = features or model.features
        if key not in self._cache:
            size = model.config.image_size
            dev = model.device
            outs = []
            for start in range(0, self.x.shape[0], self.batch_size):
                xb = resize_batch(self.x[start : start + self.batch_size], size).to(dev)
                xb = xb.contiguous(memory_format=torch.channels_last)
                with autocast(dev):
                    outs.append(features(xb).float().cpu())
            self._cache[key] = torch.cat(outs) if outs else torch.empty(0)
        return self._cache[key]


def _backbone_key(model: BTAModel, path: str) -> tuple:
    c = model.config
    if c.backbone_in_checkpoint:
        return ("checkpoint", path, c.image_size)
    return (c.backbone, c.backbone_weights, c.image_size)


@dataclass
class Method:
    """A way of scoring pairs: ``represent`` each image once, then ``score`` index pairs."""

    name: str
    kind: str
    threshold: float
    calibrated: float | None = None
    calibration: dict = field(default_factory=dict)

    def represent(self, feats: BackboneFeatures):
        raise NotImplementedError

    def score(self, rep_a, rep_b, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "threshold": self.threshold,
            "calibrated_threshold": self.calibrated,
            "calibration": self.calibration,
        }


class ModelMethod(Method):
    """A BTA checkpoint: projector on shared backbone features, symmetric head on pairs."""

    def __init__(self, name: str, model: BTAModel, path: str, chunk: int = 65536) -> None:
        cal = dict(model.config.calibration or {})
        super().__init__(name, "checkpoint", 0.5, model.config.threshold if cal else None, cal)
        self.model, self.path, self.key, self.chunk = model, path, _backbone_key(model, path), chunk
        self.features = inference_features(model)

    @torch.inference_mode()
    def represent(self, feats: BackboneFeatures):
        y = feats.for_model(self.key, self.model, self.features)
        dev = self.model.device
        us, vs = [], []
        for start in range(0, y.shape[0], 1024):
            z = self.model.projector(y[start : start + 1024].to(dev)).float()
            if is_symmetric(self.model.head):  # no split first layer: keep the embeddings
                us.append(z.cpu())
                continue
            u, v = self.model.head.split_first_layer(z, z)
            us.append(u.cpu())
            vs.append(v.cpu())
        if not vs:
            return torch.cat(us), None
        return torch.cat(us), torch.cat(vs)

    @torch.inference_mode()
    def embeddings(self, feats: BackboneFeatures) -> torch.Tensor:
        """The projected embeddings z of a batch (on the CPU)."""
        y = feats.for_model(self.key, self.model, self.features)
        dev = self.model.device
        parts = [
            self.model.projector(y[s : s + 1024].to(dev)).float().cpu()
            for s in range(0, y.shape[0], 1024)
        ]
        return torch.cat(parts) if parts else torch.empty(0, self.model.embed_dim)

    @torch.inference_mode()
    def score(self, rep_a, rep_b, ia, ib) -> np.ndarray:
        (ua, va), (ub, vb) = rep_a, rep_b
        head, dev = self.model.head, self.model.device
        out = []
        if va is None:  # a head symmetric by construction scores each pair once
            for s in range(0, len(ia), self.chunk):
                a = torch.as_tensor(ia[s : s + self.chunk])
                b = torch.as_tensor(ib[s : s + self.chunk])
                out.append(torch.sigmoid(head(ua[a].to(dev), ub[b].to(dev)).float()).cpu())
            return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)
        for s in range(0, len(ia), self.chunk):
            a = torch.as_tensor(ia[s : s + self.chunk])
            b = torch.as_tensor(ib[s : s + self.chunk])
            ab = head.rest((ua[a] + vb[b]).to(dev)).squeeze(1).float()
            ba = head.rest((ub[b] + va[a]).to(dev)).squeeze(1).float()
            out.append((0.5 * (torch.sigmoid(ab) + torch.sigmoid(ba))).cpu())
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


class CosineMethod(Method):
    """Cosine similarity of the frozen backbone's pooled features (no training)."""

    def __init__(self, model: BTAModel, key: tuple, threshold: float = 0.9, features=None) -> None:
        super().__init__("backbone-cosine", "baseline", threshold)
        self.model, self.key = model, key
        self.features = features or inference_features(model)

    def represent(self, feats: BackboneFeatures):
        return F.normalize(feats.for_model(self.key, self.model, self.features), dim=1)

    def score(self, rep_a, rep_b, ia, ib) -> np.ndarray:
        a, b = torch.as_tensor(ia), torch.as_tensor(ib)
        return (rep_a[a] * rep_b[b]).sum(1).double().numpy()


def _pil_images(x: torch.Tensor):
    from PIL import Image

    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


class PHashMethod(Method):
    """Perceptual hash (64-bit DCT hash); score = 1 - Hamming distance / 64."""

    def __init__(self, threshold: float = 1 - 10 / 64) -> None:
        super().__init__("phash", "baseline", threshold)

    def represent(self, feats: BackboneFeatures):
        import imagehash

        return np.stack([imagehash.phash(im).hash.ravel() for im in _pil_images(feats.x)])

    def score(self, rep_a, rep_b, ia, ib) -> np.ndarray:
        return 1.0 - (rep_a[ia] != rep_b[ib]).mean(1)


class CropHashMethod(Method):
    """imagehash's crop-resistant hash (segment dhashes) with a symmetric matched-segment score.

    score = 0.99 * mean over both directions of the share of segments whose nearest segment in
    the other image is within 25% of the bits, + 0.01 * (1 - mean nearest distance / bits).
    The segments are imagehash's, found by :mod:`.crophash` (same hashes, much faster).
    """

    def __init__(self, threshold: float = 0.5, bit_error_rate: float = 0.25) -> None:
        super().__init__("crhash", "baseline", threshold)
        self.bit_error_rate = bit_error_rate

    def represent(self, feats: BackboneFeatures):
        size = feats.x.shape[-1]
        min_seg = max(16, int(500 * (size / 300) ** 2))
        return pack_segments(
            [crop_resistant_bits(im, size, min_seg) for im in _pil_images(feats.x)]
        )

    def score(self, rep_a, rep_b, ia, ib) -> np.ndarray:
        return segment_match_scores(rep_a, rep_b, ia, ib, self.bit_error_rate)


def build_methods(
    checkpoints: Sequence[str | os.PathLike] = (),
    baselines: Sequence[str] = BASELINES,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    models: Sequence[tuple[str, BTAModel]] = (),
) -> list[Method]:
    """Methods for checkpoint files, already-loaded ``(label, model)`` pairs and baselines."""
    dev = get_device(str(device)) if not isinstance(device, torch.device) else device
    methods: list[Method] = []
    loaded = [(n, m, f"memory:{n}") for n, m in models]
    for path in checkpoints:
        loaded.append((Path(path).stem, load_checkpoint(path, dev), str(path)))
    seen: dict[str, int] = {}
    for name, model, path in loaded:
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}-{seen[name]}"
        methods.append(ModelMethod(label, model.to(dev).eval(), path))
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown} (choose from {', '.join(BASELINES)})")
    for b in baselines:
        if b == "phash":
            methods.append(PHashMethod())
        elif b == "crhash":
            methods.append(CropHashMethod())
        elif b == "backbone-cosine":
            frozen = [m for m in methods if isinstance(m, ModelMethod) and m.key[0] != "checkpoint"]
            if frozen:
                f = frozen[0]
                methods.append(CosineMethod(f.model, f.key, features=f.features))
            else:
                cfg = ModelConfig.for_backbone(
                    "efficientnet-lite0", projector_dim=16, image_size=image_size or 224
                )
                model = BTAModel(cfg).to(dev).eval()
                methods.append(CosineMethod(model, ("efficientnet-lite0", None, cfg.image_size)))
    if not methods:
        raise ValueError("nothing to evaluate: give --checkpoint and/or --baselines")
    return methods
