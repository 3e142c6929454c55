"""Training recipes on real images with tiny configs: losses fall, resume is exact, CLI works."""

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

from bta_core.checkpoint import load_checkpoint
from bta_core.cli import main as cli_main
from bta_core.training.config import TrainConfig, cosine_lr
from bta_core.training.log import stats_path
from bta_core.training.loop import TrainingCancelled, load_barlowtwins_projector, train
from bta_core.training.state import state_path


def _cfg(shared_data, tmp_path, **kw):
    base = dict(
        data=[
            str(shared_data / "bccd" / "splits.csv"),
            str(shared_data / "dsb2018" / "splits.csv"),
        ],
        out=str(tmp_path / "m.safetensors"),
        backbone="efficientnet-lite0",
        projector_dim=128,
        image_size=48,
        batch_size=16,
        limit=32,
        quiet=True,
        device="cpu",
        save_every=2,
    )
    base.update(kw)
    return TrainConfig(**base)


def _losses(cfg):
    return [json.loads(line) for line in stats_path(cfg.out).read_text().splitlines()]


@pytest.mark.parametrize(
    "mode, extra",
    [
        ("combined", {"epochs": 8}),
        ("bta", {"epochs": 6, "head_epochs": 8, "p_same": 0.5, "head": "paper"}),
        ("simclr", {"epochs": 4, "head_epochs": 1}),
    ],
)
def test_modes_lower_the_loss(shared_data, tmp_path, mode, extra):
    cfg = _cfg(shared_data, tmp_path, mode=mode, views="reuse", view_bank=2, **extra)
    path = train(cfg)
    rows = _losses(cfg)
    for stage in {r["stage"] for r in rows}:
        losses = [r["loss"] for r in rows if r["stage"] == stage]
        if len(losses) < 4:
            continue
        k = max(1, len(losses) // 4)
        assert sum(losses[-k:]) / k < sum(losses[:k]) / k, (stage, losses)
    model = load_checkpoint(path)
    assert model.config.recipe["mode"] == mode and model.config.image_size == 48
    first = rows[0]
    if mode == "simclr":  # the first stage really optimises NT-Xent, not the combined loss
        assert first["stage"] == "simclr" and "nt_xent" in first and "bce" not in first
        assert abs(first["nt_xent"] - first["loss"]) < 1e-9
    if mode == "combined":
        assert "bce" in first and "bt" in first and "nt_xent" not in first


def test_simclr_stage_calls_nt_xent(shared_data, tmp_path, monkeypatch):
    import bta_core.training.loop as train_mod

    calls = []
    real = train_mod.nt_xent_loss

    def spy(za, zb, *a, **kw):
        calls.append(za.shape)
        return real(za, zb, *a, **kw)

    monkeypatch.setattr(train_mod, "nt_xent_loss", spy)
    cfg = _cfg(shared_data, tmp_path, mode="simclr", views="reuse", view_bank=1, epochs=1)
    cfg.head_epochs = 1
    train(cfg)
    assert len(calls) == 2  # 32 images, batch 16: two simclr steps, none in the head stage


def test_head_mode_trains_only_the_head(shared_data, tmp_path):
    cfg = _cfg(shared_data, tmp_path, mode="head", views="reuse", view_bank=1, epochs=2, seed=4)
    torch.manual_seed(cfg.seed)
    from bta_core.training.loop import build_model

    fresh = build_model(cfg)
    trained = load_checkpoint(train(cfg))
    for k, v in fresh.projector.state_dict().items():
        assert torch.equal(v, trained.projector.state_dict()[k]), k
    assert not all(
        torch.equal(v, trained.head.state_dict()[k]) for k, v in fresh.head.state_dict().items()
    )


def test_full_pipeline_epoch_without_view_bank(shared_data, tmp_path):
    cfg = _cfg(shared_data, tmp_path, mode="combined", views="paper", epochs=1)
    train(cfg)
    assert _losses(cfg)[0]["images"] == 32


def test_resume_gives_same_weights(shared_data, tmp_path):
    ref_cfg = _cfg(shared_data, tmp_path / "ref", mode="combined", views="reuse", epochs=4)
    train(ref_cfg)
    cfg = _cfg(shared_data, tmp_path / "cut", mode="combined", views="reuse", epochs=4)
    calls = {"n": 0}

    def stop_in_epoch_three():
        calls["n"] += 1
        return calls["n"] == 2 * 2 + 1  # 2 steps per epoch: first step of epoch 3

    with pytest.raises(TrainingCancelled):
        train(cfg, should_stop=stop_in_epoch_three)
    assert state_path(cfg.out).exists()
    assert load_checkpoint(cfg.out)  # the interrupted run left a usable checkpoint
    cfg.resume = True
    train(cfg)
    a, b = load_file(ref_cfg.out), load_file(cfg.out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_cosine_schedule_matches_paper():
    assert cosine_lr(0, 200, 3e-3, 5e-4) == pytest.approx(3e-3)
    assert cosine_lr(100, 200, 3e-3, 5e-4) == pytest.approx((3e-3 + 5e-4) / 2)
    assert cosine_lr(200, 200, 3e-3, 5e-4) == pytest.approx(5e-4)


def test_official_barlowtwins_projector_layout(tmp_path):
    """A file with the layout of the official checkpoint.pth (module.projector.*, module.bn.*)."""
    from bta_core.heads import Projector

    ref = Projector([2048, 64, 64, 32])
    state = {"module.backbone.conv1.weight": torch.zeros(1)}
    state.update(
        {
            f"module.projector.{k[len('layers.') :]}": v
            for k, v in ref.state_dict().items()
            if k.startswith("layers.")
        }
    )
    state.update({f"module.{k}": v for k, v in ref.state_dict().items() if k.startswith("bn.")})
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 1000, "model": state}, path)
    loaded, sizes = load_barlowtwins_projector(str(path))
    assert sizes == [2048, 64, 64, 32]
    proj = Projector(sizes)
    proj.load_state_dict(loaded)
    for k, v in ref.state_dict().items():
        assert torch.equal(proj.state_dict()[k], v)
    torch.save({"model": {"module.backbone.x": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="module.projector"):
        load_barlowtwins_projector(str(path))


def test_cli_train_then_score(shared_data, tmp_path, capsys):
    out = tmp_path / "t.ckpt"
    images = shared_data / "bccd" / "images"
    rc = cli_main(
        [
            "train",
            str(images),
            "--mode",
            "combined",
            "--backbone",
            "efficientnet-lite0",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--image-size",
            "48",
            "--limit",
            "16",
            "--out",
            str(out),
            "--quiet",
            "--projector-dim",
            "64",
        ]
    )
    assert rc == 0 and out.exists()
    capsys.readouterr()
    a, b = sorted(images.glob("*.jpg"))[:2]
    assert cli_main(["score", str(a), str(b), "--checkpoint", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["score"] <= 1 and result["same"] == (result["verdict"] == "same")
    # two different smears: only the model speaks, and the one decision rule makes the
    # verdict "suspect" exactly when its score reaches the threshold
    assert result["decided_by"] in ("model score", "no evidence")
    assert (result["verdict"] == "suspect") == (result["score"] >= result["threshold"])
    assert result["checkpoint"] == str(out)


def test_two_process_ddp_on_cpu(shared_data, tmp_path):
    """torchrun with 2 CPU processes (gloo): the global BT cross-correlation is all-reduced."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:  # a free port, so parallel runs do not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={port}",
        "-m",
        "bta_core.cli",
        "train",
        str(shared_data / "bccd" / "images"),
        "--mode",
        "combined",
        "--backbone",
        "efficientnet-lite0",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--image-size",
        "48",
        "--limit",
        "32",
        "--projector-dim",
        "64",
        "--view-bank",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if run.returncode != 0 and "Signal 6 (SIGABRT)" in run.stderr:
        # gloo on a loaded 2-core runner has once aborted a rank (cause not reproduced here):
        # keep the evidence in the test log and try once more; a second failure fails the test
        warnings.warn(
            f"torchrun aborted a rank, retrying once:\n{_ranks_output(run.stderr)}", stacklevel=1
        )
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, _ranks_output(run.stderr)
    assert run.stdout.count("wrote") == 1  # only rank 0 writes and reports
    rows = _losses(TrainConfig(out=str(out)))
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["images"] == 32  # whole set per epoch
    assert load_checkpoint(out).config.recipe["mode"] == "combined"


def _ranks_output(stderr: str) -> str:
    """The ranks' own messages, which come before torchrun's summary of the failure."""
    head, _, _ = stderr.partition('Traceback (most recent call last):\n  File "<frozen runpy>"')
    return (head[-4000:] or stderr[-4000:]).strip()


def _feature_set(name, seed, n=40, d=32, k=3):
    import numpy as np

    from bta_core.training.features import FeatureSet

    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g)
    splits = np.array(["train"] * 24 + ["val"] * 8 + ["test"] * 8)
    tv = np.arange(32)
    return FeatureSet(
        name=name,
        clean=base,
        views=base[tv, None] + 0.5 * torch.randn(32, k, d, generator=g),
        manip=base[32:, None] + 0.5 * torch.randn(8, 4, d, generator=g),
        groups=np.arange(n),
        splits=splits,
        population=np.array([name] * n),
        trainval_index=tv,
        test_index=np.arange(32, n),
        test_views=["hflip", "noise", "paper_a", "paper_b"],
        files=[f"{name}/{i}" for i in range(n)],
    )


def test_feature_training_separates_copies_and_calibrates():
    """CPU recipe on cached features (synthetic: the property is exact-copy certainty)."""
    from dataclasses import replace

    from bta_core.training.features import (
        FeatureTrainConfig,
        calibrate_on_val,
        embed,
        train_on_features,
    )

    sets = [_feature_set("a", 0), _feature_set("b", 1)]
    cfg = replace(
        FeatureTrainConfig(),
        projector_sizes=[32, 32, 16],
        head_sizes=[8, 4],
        steps=120,
        batch_size=32,
        warmup=10,
    )
    proj, head, log = train_on_features(sets, cfg)
    assert log[-1]["bce"] < log[0]["bce"]
    z = embed(proj, sets[0].clean[24:32])
    zv = embed(proj, sets[0].views[24:32, 0])
    with torch.no_grad():
        s = torch.sigmoid(head.score_matrix(z, zv, logits=True))
        self_pairs = torch.sigmoid(head(z, z))
    assert (self_pairs >= 0.995).all()  # exact copies are certain
    assert s.diagonal().mean() > s[~torch.eye(8, dtype=torch.bool)].mean() + 0.1
    cal = calibrate_on_val(proj, head, sets)
    assert cal["fpr"] <= 0.01 and 0 < cal["threshold"] < 1


def test_one_image_is_not_enough_to_train(shared_data, tmp_path, capsys):
    """One clear line, not a BatchNorm error from deep inside torch."""
    rc = cli_main(
        [
            "train",
            str(shared_data / "bccd" / "images"),
            "--limit",
            "1",
            "--backbone",
            "efficientnet-lite0",
            "--image-size",
            "64",
            "--epochs",
            "1",
            "--quiet",
            "--out",
            str(tmp_path / "m.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "at least 2 readable images" in err and "Traceback" not in err
