"""``bta-core train``: the options of ``bta_core.training.loop.train`` (recipes: docs/training.md).

``--mode bta`` trains the projector with L_BT, then the head; ``combined`` trains both with
all-pairs BCE + lambda * L_BT; ``simclr`` is the NT-Xent baseline; ``head`` trains only the
head. SIGTERM (a batch scheduler's stop) saves the training state like Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator

from ..augment import VIEW_RECIPES
from ..calibration import probability_mapping
from ..checkpoint import load_checkpoint
from ..heads import HEAD_TYPES
from ..training.config import DEFAULT_EPOCHS, TrainConfig
from ..training.loop import TrainingCancelled, train
from ._help import add_device, float_in, int_in


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        description=__doc__,
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("data", nargs="+", help="image folders and/or splits.csv files")
    p.add_argument("--out", default=d.out, help="checkpoint to write (safetensors)")
    p.add_argument(
        "--mode",
        default=d.mode,
        choices=list(DEFAULT_EPOCHS),
        help="training recipe (docs/training.md)",
    )
    p.add_argument(
        "--views", default=d.views, choices=list(VIEW_RECIPES), help="augmentation recipe"
    )
    p.add_argument(
        "--backbone",
        default=d.backbone,
        help="resnet50-barlowtwins, efficientnet-lite0, resnet18, resnet50",
    )
    p.add_argument(
        "--backbone-weights",
        default=d.backbone_weights,
        help="local weights file or URL for the backbone",
    )
    p.add_argument(
        "--projector-dim",
        type=int_in(1),
        default=d.projector_dim,
        help="projector width (default 4096 for 2048-d backbones, else 2048)",
    )
    p.add_argument("--split", default=d.split, help="split of splits.csv rows to use ('' for all)")
    p.add_argument(
        "--epochs",
        type=int_in(1),
        default=d.epochs,
        help="epochs (default: bta 200 projector, combined 200, head 100)",
    )
    p.add_argument(
        "--head-epochs", type=int_in(1), default=d.head_epochs, help="head epochs of --mode bta"
    )
    p.add_argument("--batch-size", type=int_in(2), default=d.batch_size, help="images per step")
    p.add_argument(
        "--image-size", type=int_in(32), default=d.image_size, help="model input size (px)"
    )
    p.add_argument(
        "--lr-start",
        type=float_in(0),
        default=d.lr_start,
        help="gamma_start of the cosine schedule",
    )
    p.add_argument(
        "--lr-end", type=float_in(0), default=d.lr_end, help="gamma_end of the cosine schedule"
    )
    p.add_argument(
        "--weight-decay", type=float_in(0), default=d.weight_decay, help="AdamW weight decay"
    )
    p.add_argument(
        "--lambda-bt", type=float_in(0), default=d.lambda_bt, help="redundancy weight of L_BT"
    )
    p.add_argument(
        "--lambda",
        dest="lambda_",
        type=float_in(0),
        default=d.lambda_,
        help="weight of L_BT in the combined loss",
    )
    p.add_argument(
        "--p-same",
        type=float_in(0, 1),
        default=d.p_same,
        help="share of same-image pairs for head training",
    )
    p.add_argument(
        "--pos-weight",
        type=float_in(0),
        default=d.pos_weight,
        help="weight of positives in the all-pairs BCE (default: balanced, B - 1)",
    )
    p.add_argument(
        "--head",
        default=d.head,
        choices=list(HEAD_TYPES),
        help="similarity head: symmetric (identity-aware) or paper (concatenation MLP)",
    )
    p.add_argument("--limit", type=int_in(1), default=d.limit, help="use only the first N images")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (runs are repeatable)")
    add_device(p, default=d.device)
    p.add_argument(
        "--finetune-backbone", action="store_true", help="also train the backbone (lower lr)"
    )
    p.add_argument(
        "--backbone-lr-scale",
        type=float_in(0),
        default=d.backbone_lr_scale,
        help="backbone learning rate / head learning rate with --finetune-backbone",
    )
    p.add_argument(
        "--init-projector",
        default=d.init_projector,
        help="take the projector from the official Barlow Twins checkpoint.pth or from a napari-bta .safetensors checkpoint",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    p.add_argument(
        "--save-every", type=int_in(1), default=d.save_every, help="checkpoint every N epochs"
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT.state")
    p.add_argument(
        "--view-bank",
        type=int_in(0),
        default=d.view_bank,
        help="precompute backbone features of K view pairs per image (frozen backbone only; much faster on a CPU)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The parsed options as a ``TrainConfig`` ('' split means all rows)."""
    names = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    cfg.split = cfg.split or None
    if cfg.view_bank and cfg.finetune_backbone:
        raise ValueError("--view-bank needs a frozen backbone (drop --finetune-backbone)")
    return cfg


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside: SIGTERM (e.g. ``kill``, a batch scheduler's stop) acts like Ctrl-C, so training
    saves its state before it ends. Only in the main thread; elsewhere a no-op."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _end_distributed(finished: bool) -> None:
    """Close a torchrun process group, so no rank aborts at exit with the group still open.

    After a finished run every rank first waits at a barrier for rank 0 to write the checkpoint,
    so no rank tears its connections down while another still uses them. After a failure there
    is no barrier (a dead rank would never reach it); torchrun stops the others."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def main(args: argparse.Namespace) -> int:
    """Train, then report the checkpoint written (exit 130 when cancelled)."""
    cfg = config_from_args(args)
    finished = False
    try:
        with sigterm_as_interrupt():
            path = train(cfg)
        finished = True
    except TrainingCancelled as exc:
        print(str(exc))
        return 130
    finally:
        _end_distributed(finished)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    model = load_checkpoint(path)
    print(f"wrote {path} ({model.config.backbone}, projector {model.config.projector_sizes})")
    if probability_mapping(model.config.calibration) is None:
        print(
            f"not calibrated yet: its threshold is {model.config.threshold:g} and its P is the raw "
            "score. Calibrate it on images it was not trained on before trusting its verdicts: "
            f"bta-core calibrate {path} VAL_FOLDER"
        )
    return 0
