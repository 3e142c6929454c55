"""Interrupted training on real images: Ctrl-C or SIGTERM mid-epoch saves a state that
``--resume`` continues bit for bit; killed writes leave no temp files; nothing to resume says so."""

import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from bta_core.checkpoint import atomic_write, remove_stale_temps
from bta_core.training import loop as train_mod
from bta_core.training.config import TrainConfig
from bta_core.training.loop import train
from bta_core.training.state import state_path


def _cfg(shared_data, out, **kw):
    base = dict(
        data=[
            str(shared_data / "bccd" / "splits.csv"),
            str(shared_data / "dsb2018" / "splits.csv"),
        ],
        out=str(out),
        backbone="efficientnet-lite0",
        projector_dim=64,
        image_size=48,
        batch_size=8,
        limit=24,
        quiet=True,
        device="cpu",
        mode="combined",
        views="reuse",
        view_bank=1,
        epochs=3,
        save_every=10,
    )
    base.update(kw)
    return TrainConfig(**base)


def _same_tensors(a, b):
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    return all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.fixture(scope="module")
def reference(shared_data, tmp_path_factory):
    cfg = _cfg(shared_data, tmp_path_factory.mktemp("ref") / "m.safetensors")
    train(cfg)
    return cfg.out


def test_ctrl_c_mid_epoch_then_resume_is_bit_identical(shared_data, tmp_path, reference):
    cfg = _cfg(shared_data, tmp_path / "m.safetensors")
    calls = {"n": 0}

    def progress(step, total, info):  # 3 steps per epoch: Ctrl-C after step 2 of epoch 2
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_progress=progress)
    assert state_path(cfg.out).exists() and not _same_tensors(reference, cfg.out)
    cfg.resume = True
    train(cfg)
    assert _same_tensors(reference, cfg.out)


def test_sigterm_during_cli_train_saves_like_ctrl_c(
    shared_data, tmp_path, monkeypatch, reference, capsys
):
    from bta_core.cli import main as cli_main

    original, calls = train_mod.train_one_epoch, {"n": 0}

    def epoch_then_sigterm(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # a batch scheduler stops the job during the second epoch
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", epoch_then_sigterm)
    out = tmp_path / "m.safetensors"
    cfg = _cfg(shared_data, out)
    argv = ["train", *cfg.data, "--out", str(out), "--backbone", cfg.backbone]
    argv += ["--projector-dim", "64", "--image-size", "48", "--batch-size", "8", "--limit", "24"]
    argv += ["--device", "cpu", "--mode", "combined", "--views", "reuse", "--view-bank", "1"]
    argv += ["--epochs", "3", "--save-every", "10", "--quiet"]
    assert cli_main(argv) == 130
    assert state_path(out).exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    monkeypatch.setattr(train_mod, "train_one_epoch", original)
    capsys.readouterr()
    # resuming with other settings would silently change the schedule: refused, each one named
    saved = state_path(out).read_bytes()
    changed = [*argv, "--resume", "--epochs", "5", "--image-size", "64", "--backbone", "resnet18"]
    assert cli_main(changed) == 1
    err = capsys.readouterr().err
    assert "started with --backbone efficientnet-lite0, --image-size 48, stages combined 3" in err
    assert "asks for --backbone resnet18, --image-size 64, stages combined 5 epochs" in err
    assert "Traceback" not in err and "size mismatch" not in err
    assert state_path(out).read_bytes() == saved
    # the same folders spelled relative to another working directory: the same run, resumed
    monkeypatch.chdir(shared_data)
    relative = ["bccd/splits.csv", "dsb2018/splits.csv"]
    assert cli_main(["train", *relative, *argv[1 + len(cfg.data) :], "--resume"]) == 0
    assert _same_tensors(reference, out)
    # a freshly trained model says it is not calibrated, and how to calibrate it
    assert "not calibrated yet: its threshold is 0.5 and its P is the raw score" in (
        capsys.readouterr().out
    )


def test_resume_with_nothing_saved_says_so(shared_data, tmp_path, capsys):
    from bta_core.cli import main as cli_main

    out = tmp_path / "none.safetensors"
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(_cfg(shared_data, out, resume=True))
    code = cli_main(["train", str(shared_data / "bccd"), "--out", str(out), "--resume", "--quiet"])
    assert code == 1 and "nothing to resume" in capsys.readouterr().err
    assert not out.exists()


def test_write_killed_midway_leaves_a_temp_that_the_next_write_removes(tmp_path):
    target = tmp_path / "m.safetensors"
    pid = os.fork()
    if pid == 0:  # child: dies by SIGKILL in the middle of writing 1 MB

        def write(tmp):
            with open(tmp, "wb") as fh:
                fh.write(b"\0" * 2**20)
                fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)

        atomic_write(target, write)
        os._exit(0)
    os.waitpid(pid, 0)
    orphans = list(tmp_path.glob(".m.safetensors.*.tmp"))
    assert len(orphans) == 1 and not target.exists()
    live = tmp_path / f".m.safetensors.{os.getppid()}.busy.tmp"  # a writer that still runs
    live.write_bytes(b"x")
    old_style = tmp_path / ".m.safetensors.k2j_x9a.tmp"  # orphan of an older version
    old_style.write_bytes(b"\0" * 1000)
    os.utime(old_style, (1, 1))
    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"ok"))
    assert target.read_bytes() == b"ok"
    assert sorted(tmp_path.glob(".*.tmp")) == [live]
    assert remove_stale_temps(target) == []


def test_resume_accepts_the_same_run_spelled_differently(tmp_path):
    """`--epochs 200` is the default of --mode combined, and --init-projector only seeds a fresh
    run: neither makes a resume a different run. A different number of epochs does."""
    import json
    from dataclasses import asdict

    from safetensors.torch import save_file

    from bta_core.training.state import check_resume_options

    started = TrainConfig(data=["a"], mode="combined", epochs=None, init_projector="p.safetensors")
    state = tmp_path / "m.safetensors.state"
    meta = {"state": json.dumps({"config": asdict(started)})}
    save_file({"x": torch.zeros(1)}, str(state), metadata=meta)
    check_resume_options(state, TrainConfig(data=["a"], mode="combined", epochs=200))
    with pytest.raises(ValueError, match="stages combined 200 epochs; this one asks for stages"):
        check_resume_options(state, TrainConfig(data=["a"], mode="combined", epochs=100))


def test_ctrl_c_right_after_an_epochs_stats_row_lists_each_epoch_once(
    shared_data, tmp_path, monkeypatch, reference
):
    """Ctrl-C just after an epoch's stats row was written, before its checkpoint: the resumed
    run repeats that epoch, and the stats file still lists every epoch once."""
    import json

    from bta_core.training.log import TrainLogger, stats_path

    original = TrainLogger.stats

    def stats_then_ctrl_c(self, row):
        original(self, row)
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainLogger, "stats", stats_then_ctrl_c)
    cfg = _cfg(shared_data, tmp_path / "m.safetensors")
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(TrainLogger, "stats", original)
    rows = stats_path(cfg.out).read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
    cfg.resume = True
    train(cfg)
    rows = stats_path(cfg.out).read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]
    assert _same_tensors(reference, cfg.out)
