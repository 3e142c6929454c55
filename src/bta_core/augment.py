"""Batched augmentations ("views") on uint8 image batches, on the GPU when there is one.

Two recipes:

* ``paper``: the two pipelines of the paper (Barlow Twins' views): RandomResizedCrop to the
  model size (scale 0.08-1, ratio 3/4-4/3, bicubic), horizontal flip p 0.5, colour jitter
  (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with p 0.8, grayscale p 0.2,
  Gaussian blur (sigma 0.1-2 at 224 px) with p 1.0 / 0.1, solarize with p 0.0 / 0.2.
* ``reuse``: what reused figure panels really undergo and the paper's views lack: rotations by
  90/180/270, vertical flips and transposes, crops that keep >= 25 % of the area, Gaussian
  noise, JPEG re-compression, gamma/contrast changes, plus the paper's jitter and blur.

Crop, flips and rotations are one affine resampling per batch (``grid_sample``); colour ops
are vectorised with per-sample random factors. Differences from torchvision's per-image PIL
pipeline: the four jitter ops run in a fixed order (brightness, contrast, saturation, hue)
rather than a random one, and downscaling crops are not antialiased.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ViewConfig:
    """Parameters of one augmentation pipeline (probabilities and ranges)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    vflip_p: float = 0.0
    rot90_p: float = 0.0
    transpose_p: float = 0.0
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    gamma_p: float = 0.0
    gamma: tuple[float, float] = (0.6, 1.6)
    noise_p: float = 0.0
    noise_std: tuple[float, float] = (0.01, 0.06)
    jpeg_p: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 90)


PAPER_VIEWS = (
    ViewConfig(blur_p=1.0, solarize_p=0.0),
    ViewConfig(blur_p=0.1, solarize_p=0.2),
)
_REUSE = ViewConfig(
    crop_scale=(0.25, 1.0),
    hflip_p=0.5,
    vflip_p=0.5,
    rot90_p=0.75,
    transpose_p=0.0,
    blur_p=0.3,
    gamma_p=0.3,
    noise_p=0.3,
    jpeg_p=0.3,
)
REUSE_VIEWS = (_REUSE, replace(_REUSE, blur_p=0.2, solarize_p=0.0))
VIEW_RECIPES = {"paper": PAPER_VIEWS, "reuse": REUSE_VIEWS}


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _bernoulli(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def crop_boxes(
    n: int, cfg: ViewConfig, g: torch.Generator, device, aspect: float = 1.0
) -> torch.Tensor:
    """Random crop boxes as fractions ``(cx, cy, w, h)`` of the image (area in crop_scale)."""
    area = _uniform(n, *cfg.crop_scale, g, device)
    log_r = _uniform(n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), g, device)
    ratio = torch.exp(log_r) / aspect
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = w / 2 + torch.rand(n, generator=g, device=device) * (1 - w)
    cy = h / 2 + torch.rand(n, generator=g, device=device) * (1 - h)
    return torch.stack([cx, cy, w, h], dim=1)


def dihedral_matrices(
    n: int, cfg: ViewConfig, g: torch.Generator, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample 2x2 output-coordinate maps for flips/rot90/transpose, and the op codes.

    Code bits: 1 = hflip, 2 = vflip, 4 = transpose, and ``k`` quarter turns in bits 3-4.
    """
    hflip = _bernoulli(n, cfg.hflip_p, g, device)
    vflip = _bernoulli(n, cfg.vflip_p, g, device)
    transpose = _bernoulli(n, cfg.transpose_p, g, device)
    rot = _bernoulli(n, cfg.rot90_p, g, device)
    k = torch.where(rot, torch.randint(1, 4, (n,), generator=g, device=device), 0)
    eye = torch.eye(2, device=device).expand(n, 2, 2).clone()
    m = eye.clone()
    m[hflip] = m[hflip] @ torch.tensor([[-1.0, 0], [0, 1]], device=device)
    m[vflip] = m[vflip] @ torch.tensor([[1.0, 0], [0, -1]], device=device)
    m[transpose] = m[transpose] @ torch.tensor([[0.0, 1], [1, 0]], device=device)
    r90 = torch.tensor([[0.0, -1], [1, 0]], device=device)
    for turns in (1, 2, 3):
        sel = k == turns
        if sel.any():
            m[sel] = m[sel] @ torch.linalg.matrix_power(r90, turns)
    code = hflip.long() + 2 * vflip.long() + 4 * transpose.long() + 8 * k
    return m, code


def dihedral_apply(x: torch.Tensor, code: int) -> torch.Tensor:
    """Apply the flips/rotation of a ``dihedral_matrices`` op code to an image ``(..., H, W)``."""
    if code & 1:
        x = x.flip(-1)
    if code & 2:
        x = x.flip(-2)
    if code & 4:
        x = x.transpose(-2, -1)
    return torch.rot90(x, (code >> 3) & 3, dims=(-2, -1))


def dihedral_invert(x: torch.Tensor, code: int) -> torch.Tensor:
    """Undo ``dihedral_apply(x, code)``."""
    x = torch.rot90(x, -((code >> 3) & 3), dims=(-2, -1))
    if code & 4:
        x = x.transpose(-2, -1)
    if code & 2:
        x = x.flip(-2)
    if code & 1:
        x = x.flip(-1)
    return x


def resample(
    x: torch.Tensor, boxes: torch.Tensor, maps: torch.Tensor, size: int, mode: str = "bicubic"
) -> torch.Tensor:
    """Crop ``boxes`` out of float ``x`` (B,C,H,W), apply the 2x2 ``maps``, resize to ``size``."""
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    scale = torch.diag_embed(boxes[:, 2:]).to(x.dtype)
    theta[:, :, :2] = scale @ maps.to(x.dtype)
    theta[:, :, 2] = (boxes[:, :2] * 2 - 1).to(x.dtype)
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="reflection", align_corners=False).clamp_(
        0, 1
    )


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of an RGB batch, shape (B,1,H,W)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-8), torch.zeros_like(maxc))
    dz = delta.clamp(min=1e-8)
    h = torch.where(
        maxc == r, ((g - b) / dz) % 6, torch.where(maxc == g, (b - r) / dz + 2, (r - g) / dz + 4)
    )
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h)) % 1.0
    return torch.stack([h, s, maxc], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6)
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    choices = [
        torch.stack(c, 1)
        for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
    ]
    out = choices[0]
    for idx in range(1, 6):
        out = torch.where((i == idx)[:, None], choices[idx], out)
    return out


def color_jitter(x: torch.Tensor, cfg: ViewConfig, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue with per-sample factors, applied with jitter_p."""
    n, dev = x.shape[0], x.device
    on = _bernoulli(n, cfg.jitter_p, g, dev)
    shape = (n, 1, 1, 1)

    def factor(amount: float) -> torch.Tensor:
        f = _uniform(n, max(0.0, 1 - amount), 1 + amount, g, dev)
        return torch.where(on, f, torch.ones_like(f)).view(shape)

    x = (x * factor(cfg.brightness)).clamp_(0, 1)
    c = factor(cfg.contrast)
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * c + mean).clamp_(0, 1)
    s = factor(cfg.saturation)
    gray = grayscale(x)
    x = ((x - gray) * s + gray).clamp_(0, 1)
    if cfg.hue > 0:
        hue = _uniform(n, -cfg.hue, cfg.hue, g, dev)
        hue = torch.where(on, hue, torch.zeros_like(hue))
        hsv = _rgb_to_hsv(x)
        hsv[:, 0] = (hsv[:, 0] + hue.view(n, 1, 1)) % 1.0
        x = _hsv_to_rgb(hsv).clamp_(0, 1)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each sample with its own sigma (pixels); sigma <= 0 leaves the sample unchanged."""
    n, c, h, w = x.shape
    smax = float(sigma.max()) if n else 0.0
    if smax <= 0:
        return x
    radius = max(1, min(int(math.ceil(3 * smax)), (min(h, w) - 1) // 2))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.clamp(min=1e-3).to(x.dtype)[:, None]
    k = torch.exp(-0.5 * (t[None] / s) ** 2)
    k = k / k.sum(1, keepdim=True)
    k = torch.where((sigma > 0)[:, None], k, (t == 0).to(x.dtype)[None].expand_as(k))
    k = k.repeat_interleave(c, 0)
    y = x.reshape(1, n * c, h, w)
    y = F.pad(y, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def jpeg_recompress(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """JPEG-encode and decode each sample of a float batch at its own quality.

    On CUDA, nvJPEG through TorchCodec when it is installed (torchvision's image codecs are
    deprecated since 0.29); otherwise Pillow's libjpeg on the CPU (same bytes as torchvision's).
    """
    u8 = (x * 255).round_().clamp_(0, 255).to(torch.uint8)
    out = torch.empty_like(x)
    if x.is_cuda:
        try:  # nvJPEG: encode and decode on the GPU
            from torchcodec.decoders import decode_jpeg
            from torchcodec.encoders import JpegEncoder

            for i in range(x.shape[0]):
                enc = JpegEncoder(u8[i]).to_tensor(quality=int(quality[i]))
                out[i] = decode_jpeg(enc.cpu(), device=x.device).to(x.dtype) / 255
            return out
        except Exception:  # no TorchCodec or no nvJPEG: fall back to the CPU codec
            pass
    import io

    import numpy as np
    from PIL import Image

    cpu = u8.permute(0, 2, 3, 1).cpu().numpy()
    for i in range(x.shape[0]):
        buf = io.BytesIO()
        Image.fromarray(cpu[i].squeeze(-1) if cpu.shape[-1] == 1 else cpu[i]).save(
            buf, format="JPEG", quality=int(quality[i])
        )
        dec = np.array(Image.open(buf)).reshape(cpu.shape[1:])
        out[i] = torch.from_numpy(dec).permute(2, 0, 1).to(x.device, x.dtype) / 255
    return out


def apply_view(
    images: torch.Tensor,
    cfg: ViewConfig,
    size: int,
    generator: torch.Generator,
    return_params: bool = False,
):
    """Augment a uint8 (or [0,1] float) batch ``(B,3,H,W)`` into a float [0,1] batch ``(B,3,size,size)``.

    With ``return_params`` also returns the crop boxes and dihedral op codes (for tests).
    """
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    n, dev = x.shape[0], x.device
    g = generator
    boxes = crop_boxes(n, cfg, g, dev, aspect=x.shape[-1] / x.shape[-2])
    maps, code = dihedral_matrices(n, cfg, g, dev)
    x = resample(x, boxes, maps, size)
    if cfg.jitter_p > 0:
        x = color_jitter(x, cfg, g)
    if cfg.grayscale_p > 0:
        gray_on = _bernoulli(n, cfg.grayscale_p, g, dev).view(n, 1, 1, 1)
        x = torch.where(gray_on, grayscale(x).expand_as(x), x)
    if cfg.gamma_p > 0:
        gam = _uniform(n, *cfg.gamma, g, dev)
        gam = torch.where(_bernoulli(n, cfg.gamma_p, g, dev), gam, torch.ones_like(gam))
        x = x.clamp(min=1e-6) ** gam.view(n, 1, 1, 1)
    if cfg.blur_p > 0:
        sigma = _uniform(n, *cfg.blur_sigma, g, dev) * (size / 224)
        sigma = torch.where(_bernoulli(n, cfg.blur_p, g, dev), sigma, torch.zeros_like(sigma))
        x = gaussian_blur(x, sigma)
    if cfg.solarize_p > 0:
        sol = _bernoulli(n, cfg.solarize_p, g, dev).view(n, 1, 1, 1)
        x = torch.where(sol & (x >= 0.5), 1 - x, x)
    if cfg.noise_p > 0:
        std = _uniform(n, *cfg.noise_std, g, dev)
        std = torch.where(_bernoulli(n, cfg.noise_p, g, dev), std, torch.zeros_like(std))
        noise = torch.randn(x.shape, generator=g, device=dev, dtype=x.dtype)
        x = (x + noise * std.view(n, 1, 1, 1)).clamp_(0, 1)
    if cfg.jpeg_p > 0:
        on = _bernoulli(n, cfg.jpeg_p, g, dev)
        if on.any():
            idx = on.nonzero().flatten()
            q = torch.randint(
                cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1, (len(idx),), generator=g, device=dev
            )
            x[idx] = jpeg_recompress(x[idx], q)
    x = x.clamp_(0, 1)
    if return_params:
        return x, boxes, code
    return x


def paper_pil_transforms(size: int = 224):
    """The paper's two view pipelines as torchvision PIL transforms (reference, benchmarks)."""
    from torchvision import transforms as T

    def pipeline(blur_p: float, solarize_p: float):
        return T.Compose(
            [
                T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC),
                T.RandomHorizontalFlip(p=0.5),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
                T.RandomApply([T.GaussianBlur(23, sigma=(0.1, 2.0))], p=blur_p),
                T.RandomSolarize(128, p=solarize_p),
                T.ToTensor(),
                T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
            ]
        )

    return pipeline(1.0, 0.0), pipeline(0.1, 0.2)
