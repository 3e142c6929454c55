"""The paper's BTA and BTA-combined training (sections 3-4, Algorithms 1-2); CLI: ``cli/train.py``.

Recipes (``--mode``):

* ``bta``: backbone frozen; projector trained with L_BT, then the head with BCE on random
  pairs (p_same = 0.4) with the projector frozen.
* ``combined``: projector and head together with BCE over all B x B in-batch pairs
  + lambda * L_BT.
* ``simclr``: the paper's SimCLR baseline: projector trained with NT-Xent on the same views,
  then the head as in ``bta``.
* ``head``: only the head, on a frozen projector (random, or the official Barlow Twins one
  with ``--init-projector``: the paper's Barlow Twins baseline).

Every image is decoded once into a uint8 tensor (on the GPU when it fits); views are made in
batches there (``bta_core.augment``); the frozen backbone runs once per view under no_grad,
in bf16 with channels_last on CUDA. Checkpoints are written atomically every
``--save-every`` epochs, at the end and on Ctrl-C, SIGTERM or cancel; ``--resume`` continues
from the training state saved next to the checkpoint. An epoch interrupted half-way is
restarted: the state saved is the one that epoch started from. Each epoch's randomness is
seeded from (seed, stage, epoch), so a resumed run repeats an uninterrupted one bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..augment import VIEW_RECIPES, apply_view
from ..backbones import feature_dim, safe_torch_load
from ..data import decode_records, group_ids, list_records
from ..device import autocast, describe_device, get_device
from ..distributed import rank_device, torchrun_rank
from ..heads import PAPER_HEAD_SIZES, PAPER_PROJECTOR_SIZES, SYMMETRIC_HEAD_SIZES
from ..losses import barlow_twins_loss, combined_loss, nt_xent_loss
from ..model import BTAModel, ModelConfig
from ..runtime import Cancelled, ProgressFn
from .config import DEFAULT_EPOCHS, TrainConfig, cosine_lr, recipe_dict, stages_text
from .log import TrainLogger
from .state import (
    check_resume_options,
    epoch_snapshot,
    load_training_state,
    remove_stale_outputs,
    restore_optimizer,
    restore_snapshot,
    save_training_state,
    state_path,
)


class TrainingCancelled(Cancelled):
    """Raised by ``train`` when ``should_stop`` asked it to stop (a checkpoint was saved)."""

    def __init__(self, message: str, at_epoch_start: bool = False) -> None:
        super().__init__(message)
        self.at_epoch_start = at_epoch_start


# ---------------------------------------------------------------------------------------------
# model construction


def load_barlowtwins_projector(path: str) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Projector (and its final BN) from the official full Barlow Twins checkpoint.

    The file (``checkpoint.pth`` of facebookresearch/barlowtwins) holds ``{"model": state}``
    with keys ``module.projector.*`` and ``module.bn.*``; returns our Projector's state dict
    and its layer sizes.
    """
    raw = safe_torch_load(path)
    state = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a Barlow Twins checkpoint (no state dict)")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("projector."):
            out["layers." + key[len("projector.") :]] = value
        elif key.startswith("bn."):
            out[key] = value
    linears = sorted(
        (int(k.split(".")[1]), v)
        for k, v in out.items()
        if k.startswith("layers.") and k.endswith(".weight") and v.ndim == 2
    )
    if not linears or not any(k.startswith("bn.") for k in out):
        raise ValueError(f"{path}: no 'module.projector.*' / 'module.bn.*' tensors found")
    sizes = [linears[0][1].shape[1]] + [w.shape[0] for _, w in linears]
    return out, sizes


def build_model(cfg: TrainConfig) -> BTAModel:
    """A fresh model for the recipe (projector from the official BT checkpoint if asked)."""
    projector_state = None
    if cfg.init_projector and str(cfg.init_projector).endswith(".safetensors"):
        from ..checkpoint import load_checkpoint as _load

        source = _load(cfg.init_projector)
        if source.config.backbone != cfg.backbone:
            raise ValueError(
                f"{cfg.init_projector}: projector was trained on {source.config.backbone}, "
                f"not {cfg.backbone}"
            )
        projector_state, sizes = source.projector.state_dict(), list(source.config.projector_sizes)
    elif cfg.init_projector:
        projector_state, sizes = load_barlowtwins_projector(cfg.init_projector)
    else:
        d = feature_dim(cfg.backbone)
        width = cfg.projector_dim or (PAPER_PROJECTOR_SIZES[1] if d == 2048 else 2048)
        sizes = [d, width, width, width]
    backbone_random = cfg.backbone in ("resnet18", "resnet50") and not cfg.backbone_weights
    mcfg = ModelConfig(
        backbone=cfg.backbone,
        backbone_weights=cfg.backbone_weights,
        backbone_in_checkpoint=cfg.finetune_backbone or backbone_random,
        projector_sizes=sizes,
        head=cfg.head,
        head_sizes=list(SYMMETRIC_HEAD_SIZES if cfg.head == "symmetric" else PAPER_HEAD_SIZES),
        image_size=cfg.image_size,
        recipe=recipe_dict(cfg),
    )
    model = BTAModel(mcfg)
    if projector_state is not None:
        model.projector.load_state_dict(projector_state)
    return model


# training


@dataclass
class _Run:
    """What one training run works with (built once by ``train``)."""

    cfg: TrainConfig
    model: BTAModel
    images: torch.Tensor
    groups: torch.Tensor
    device: torch.device
    world_size: int = 1
    rank: int = 0
    bank_a: torch.Tensor | None = None
    bank_b: torch.Tensor | None = None

    @property
    def autocast(self):
        return autocast(self.device)

    def generator(self, *keys: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        seed = self.cfg.seed
        for k in keys:
            seed = (seed * 1_000_003 + k + 1) % (2**63 - 1)
        return g.manual_seed(seed)

    def view_features(self, idx: torch.Tensor, g: torch.Generator, train_backbone: bool):
        """Backbone features of two views of images ``idx`` (from the view bank when built)."""
        if self.bank_a is not None:
            k = torch.randint(0, self.bank_a.shape[0], (len(idx),), generator=g, device=self.device)
            return self.bank_a[k, idx].float(), self.bank_b[k, idx].float()
        views_a, views_b = VIEW_RECIPES[self.cfg.views]
        x = self.images[idx].to(self.device, non_blocking=True)
        size = self.cfg.image_size
        va, vb = apply_view(x, views_a, size, g), apply_view(x, views_b, size, g)
        both = torch.cat([va, vb])
        if self.device.type == "cuda":
            both = both.contiguous(memory_format=torch.channels_last)
        with self.autocast, torch.set_grad_enabled(train_backbone):
            y = self.model.features(both)
        y = y.float()
        return y[: len(idx)], y[len(idx) :]


def _build_view_bank(run: _Run, on_progress: ProgressFn | None) -> None:
    """Backbone features of ``view_bank`` random view pairs per image, computed once."""
    k_views, n = run.cfg.view_bank, run.images.shape[0]
    d = run.model.projector.sizes[0]
    run.bank_a = torch.empty(k_views, n, d, device=run.device, dtype=torch.bfloat16)
    run.bank_b = torch.empty_like(run.bank_a)
    bs = run.cfg.batch_size
    total = k_views * math.ceil(n / bs)
    step = 0
    bank_a, bank_b = run.bank_a, run.bank_b
    run.bank_a = run.bank_b = None
    with torch.no_grad():
        for k in range(k_views):
            g = run.generator(99, k)
            for start in range(0, n, bs):
                idx = torch.arange(start, min(start + bs, n), device=run.device)
                ya, yb = run.view_features(idx, g, train_backbone=False)
                bank_a[k, idx], bank_b[k, idx] = ya.to(torch.bfloat16), yb.to(torch.bfloat16)
                step += 1
                if on_progress is not None:
                    on_progress(step, total, {"stage": "view-bank"})
    run.bank_a, run.bank_b = bank_a, bank_b


def _pair_partners(idx: torch.Tensor, groups: torch.Tensor, p_same: float, g: torch.Generator):
    """For each batch position a partner position: itself with p_same, else another image."""
    b = len(idx)
    dev = idx.device
    same = torch.rand(b, generator=g, device=dev) < p_same
    shift = torch.randint(1, max(b, 2), (b,), generator=g, device=dev)
    other = (torch.arange(b, device=dev) + shift) % b
    partner = torch.where(same, torch.arange(b, device=dev), other)
    target = (partner == torch.arange(b, device=dev)).float()
    # another photo of the same field of view is neither a clean positive nor a negative
    weight = torch.where((groups[idx] == groups[idx[partner]]) & (target == 0), 0.0, 1.0)
    return partner, target, weight


def train_one_epoch(
    run: _Run,
    stage: str,
    opt: torch.optim.Optimizer,
    params: list[nn.Parameter],
    stage_index: int,
    epoch: int,
    on_step: Callable[[int, int, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """One pass over the images for ``stage`` (projector / head / combined); returns mean stats.

    ``should_stop`` is polled before every step; when true, ``TrainingCancelled`` is raised.
    """
    cfg, model = run.cfg, run.model
    n = run.images.shape[0]
    g = run.generator(stage_index, epoch)
    perm = torch.randperm(n, generator=g, device=run.device)
    bs = cfg.batch_size * run.world_size
    steps = max(1, n // bs) if n >= bs else 1
    train_backbone = cfg.finetune_backbone and stage != "head"
    model.projector.train(stage != "head")
    model.head.train(stage in ("head", "combined"))
    model.backbone.eval()
    sums: dict[str, float] = {}
    seen = 0
    t0 = time.perf_counter()
    for step in range(steps):
        if should_stop is not None and should_stop():
            raise TrainingCancelled(
                f"cancelled during {stage} epoch {epoch + 1}", at_epoch_start=step == 0
            )
        batch = perm[step * bs : (step + 1) * bs]
        idx = batch[run.rank :: run.world_size]
        ya, yb = run.view_features(idx, g, train_backbone)
        parts: dict[str, float] = {}
        with run.autocast:
            if stage == "head":
                with torch.no_grad():
                    za, zb = model.projector(ya), model.projector(yb)
                partner, target, weight = _pair_partners(idx, run.groups, cfg.p_same, g)
                logits = model.head(za.float(), zb[partner].float())
                loss = (
                    nn.functional.binary_cross_entropy_with_logits(
                        logits.float(), target, reduction="none"
                    )
                    * weight
                ).sum() / weight.sum().clamp(min=1)
                parts["bce"] = float(loss.detach())
            else:
                za, zb = model.projector(ya), model.projector(yb)
                za, zb = za.float(), zb.float()
                if stage == "projector":
                    loss = barlow_twins_loss(
                        za, zb, lambda_bt=cfg.lambda_bt, world_size=run.world_size
                    )
                    parts["bt"] = float(loss.detach())
                elif stage == "simclr":
                    loss = nt_xent_loss(za, zb)
                    parts["nt_xent"] = float(loss.detach())
                else:
                    gi = run.groups[idx]
                    mask = (gi[:, None] != gi[None, :]) | torch.eye(
                        len(idx), dtype=torch.bool, device=gi.device
                    )
                    loss, parts = combined_loss(
                        model.head,
                        za,
                        zb,
                        lambda_=cfg.lambda_,
                        lambda_bt=cfg.lambda_bt,
                        pos_weight=cfg.pos_weight,
                        world_size=run.world_size,
                        mask=mask,
                    )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if run.world_size > 1:
            import torch.distributed as dist

            for p in params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= run.world_size
        opt.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {float(loss)} at epoch {epoch} step {step}; lower --lr-start"
            )
        parts["loss"] = float(loss.detach())
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        seen += len(batch)
        if on_step is not None:
            on_step(
                step + 1,
                steps,
                {"loss": parts["loss"], "images_per_s": seen / (time.perf_counter() - t0)},
            )
    stats = {k: v / steps for k, v in sums.items()}
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    stats.update(images=seen, seconds=elapsed, images_per_s=seen / max(elapsed, 1e-9))
    return stats


def _stage_params(model: BTAModel, stage: str, cfg: TrainConfig) -> list[dict]:
    groups = []
    if stage in ("projector", "combined", "simclr"):
        groups.append({"params": list(model.projector.parameters()), "lr_scale": 1.0})
    if stage in ("head", "combined"):
        groups.append({"params": list(model.head.parameters()), "lr_scale": 1.0})
    if cfg.finetune_backbone and stage != "head":
        groups.append(
            {"params": list(model.backbone.parameters()), "lr_scale": cfg.backbone_lr_scale}
        )
    return groups


def _setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    rank = torchrun_rank()
    if rank is None:
        return 1, 0, get_device(cfg.device)
    import torch.distributed as dist

    device = rank_device(rank, cfg.device)
    if device.type != "cuda":
        device = torch.device("cpu")  # gloo runs on the CPU
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_world_size(), dist.get_rank(), device


def train(
    cfg: TrainConfig,
    on_progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Path:
    """Train a model with recipe ``cfg`` and write it to ``cfg.out``; returns the checkpoint path.

    ``on_progress(step, total, info)`` is called after every optimisation step (``info`` has
    ``stage``, ``epoch``, ``loss``, ``images_per_s``); ``should_stop()`` is polled every step
    and, when true, saves a checkpoint and raises ``TrainingCancelled``.
    """
    if cfg.mode not in DEFAULT_EPOCHS:
        raise ValueError(f"unknown mode {cfg.mode!r}; choose bta, combined, head or simclr")
    if cfg.views not in VIEW_RECIPES:
        raise ValueError(f"unknown views {cfg.views!r}; choose {', '.join(VIEW_RECIPES)}")
    if not cfg.data:
        raise ValueError("no training data given")
    stages = cfg.stages()
    if cfg.resume and not state_path(cfg.out).exists():
        raise FileNotFoundError(
            f"{state_path(cfg.out)}: nothing to resume (no training state saved for {cfg.out}); "
            "run without --resume to start"
        )
    if cfg.resume:
        check_resume_options(state_path(cfg.out), cfg)
    records = list_records(cfg.data, split=cfg.split, limit=cfg.limit)  # bad data fails first
    remove_stale_outputs(cfg.out)  # temp files left by a run killed while writing
    world, rank, device = _setup_distributed(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    start_stage, start_epoch, resume_tensors, resume_meta = 0, 0, None, None
    if cfg.resume and state_path(cfg.out).exists():
        resume_meta, resume_tensors = load_training_state(model, state_path(cfg.out))
        start_stage, start_epoch = resume_meta["stage"], resume_meta["epoch"]
    model.to(device)
    if device.type == "cuda":
        model.backbone.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    for p in model.backbone.parameters():
        p.requires_grad_(cfg.finetune_backbone)
    if cfg.compile:
        model.backbone = torch.compile(model.backbone)

    cache_size = max(cfg.image_size, round(cfg.image_size * 8 / 7))
    skipped: list[tuple[str, str]] = []
    images, records = decode_records(
        records, cache_size, on_skip=lambda r, why: skipped.append((r.path, why))
    )
    if len(records) < 2:
        raise ValueError(
            f"training needs at least 2 readable images, got {len(records)} "
            f"({len(skipped)} skipped) in {', '.join(map(str, cfg.data))}"
        )
    if images.numel() < 2 * 1024**3 or device.type == "cpu":
        images = images.to(device)
    run = _Run(cfg, model, images, group_ids(records).to(device), device, world, rank)
    log = TrainLogger(cfg, rank == 0 and not cfg.quiet, write=rank == 0)
    log.info(
        f"training {cfg.mode} on {len(records)} images ({len(skipped)} skipped) with {cfg.backbone} "
        f"on {describe_device(device)}; stages: {stages_text(stages)}"
    )
    for path, why in skipped:
        log.info(f"skipped {path}: {why}")
    if cfg.view_bank:
        _build_view_bank(run, on_progress)

    total_steps = sum(e for _, e in stages) * max(1, len(records) // (cfg.batch_size * world))
    done_steps = 0
    for si, (stage, epochs) in enumerate(stages):
        if si < start_stage:
            done_steps += epochs * max(1, len(records) // (cfg.batch_size * world))
            continue
        groups = _stage_params(model, stage, cfg)
        params = [p for g in groups for p in g["params"]]
        for p in model.projector.parameters():
            p.requires_grad_(stage != "head")
        opt = torch.optim.AdamW(groups, lr=cfg.lr_start, weight_decay=cfg.weight_decay)
        first = 0
        if si == start_stage and resume_meta is not None:
            first = start_epoch
            restore_optimizer(opt, "optim", resume_tensors, resume_meta["optimizer"])
            log.info(f"resumed {stage} at epoch {first + 1}/{epochs} ({first} done)")
            log.forget_after([name for name, _ in stages], si, first)
        done_steps += first * max(1, len(records) // (cfg.batch_size * world))
        epoch = first
        snapshot = None
        try:
            for epoch in range(first, epochs):
                lr = cosine_lr(epoch, epochs, cfg.lr_start, cfg.lr_end)
                for group in opt.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                bar = log.bar(f"{stage} {epoch + 1}/{epochs}")

                def on_step(
                    step: int,
                    steps: int,
                    info: dict,
                    _bar=bar,
                    _epoch=epoch,
                    _stage=stage,
                    _done=done_steps,
                ) -> None:
                    if _bar is not None:
                        _bar.total = steps
                        _bar.set_postfix(
                            loss=f"{info['loss']:.4f}", img_s=f"{info['images_per_s']:.0f}"
                        )
                        _bar.update(1)
                    if on_progress is not None:
                        on_progress(
                            _done + step,
                            total_steps,
                            {"stage": _stage, "epoch": _epoch, **info},
                        )

                snapshot = epoch_snapshot(model, opt) if rank == 0 else None
                stats = train_one_epoch(run, stage, opt, params, si, epoch, on_step, should_stop)
                if bar is not None:
                    bar.close()
                done_steps += max(1, len(records) // (cfg.batch_size * world))
                log.stats({"stage": stage, "epoch": epoch + 1, "epochs": epochs, "lr": lr, **stats})
                if rank == 0 and ((epoch + 1) % cfg.save_every == 0 or epoch + 1 == epochs):
                    save_training_state(model, opt, cfg, si, epoch + 1, partial=False)
        except (KeyboardInterrupt, TrainingCancelled) as exc:
            if rank == 0:
                # --resume restarts the interrupted epoch: save the state it started from, so
                # the resumed run repeats the uninterrupted one bit for bit
                if snapshot is not None and not getattr(exc, "at_epoch_start", False):
                    restore_snapshot(model, opt, snapshot)
                save_training_state(model, opt, cfg, si, epoch, partial=False)
                log.info(
                    f"stopped: checkpoint of epoch {epoch}/{epochs} ({stage}) saved to {cfg.out}; "
                    "--resume restarts the interrupted epoch"
                )
            raise
        start_epoch = 0
        resume_meta = None
        if rank == 0:
            save_training_state(model, opt, cfg, si + 1, 0, partial=False)
    return Path(cfg.out)  # the caller reports it (the CLI's "wrote ..." line, the Train panel)
