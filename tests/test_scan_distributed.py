"""``bta-core scan`` under torchrun: each rank embeds one shard, rank 0 merges (CPU, gloo)."""

from __future__ import annotations

import csv
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bta_core.scan.ranks import shard_dir, torchrun_rank


def _read_pairs(path: Path) -> list[tuple[str, str, str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return [
            (r["path_a"], r["path_b"], r["verdict"], r["decided_by"]) for r in csv.DictReader(fh)
        ]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, bccd_images, dsb_images) -> tuple[Path, frozenset]:
    """7 real images (small JPEG/PNG) and a mirrored copy of one of them."""
    root = tmp_path_factory.mktemp("torchrun scan")
    for src in [*bccd_images[::50][:4], *dsb_images[::97][:3]]:
        shutil.copy(src, root / src.name)
    original = root / bccd_images[0].name
    copy = root / "mirrored copy.png"
    Image.open(original).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(copy)
    return root, frozenset((str(original), str(copy)))


def test_torchrun_rank_reads_the_launcher_environment():
    assert torchrun_rank({}) is None and torchrun_rank({"WORLD_SIZE": "1", "RANK": "0"}) is None
    rank = torchrun_rank({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "2"})
    assert (rank.rank, rank.world, rank.local_rank, rank.is_main) == (2, 4, 2, False)
    with pytest.raises(ValueError, match="RANK"):
        torchrun_rank({"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="outside"):
        torchrun_rank({"WORLD_SIZE": "2", "RANK": "2"})


def test_shard_under_torchrun_is_a_clear_error(monkeypatch, folder, tmp_path, capsys):
    from bta_core.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    argv = ["scan", str(folder[0]), "--shard", "0/2", "--out", str(tmp_path / "o"), "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--shard cannot be used under torchrun" in err and "Traceback" not in err


def _options(tiny_model, tmp_path: Path) -> list[str]:
    from bta_core.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")
    opts = ["--checkpoint", str(ckpt), "--no-cache", "--verify-per-image", "1"]
    return [*opts, "--match-top", "0", "--top", "100", "--device", "cpu"]


def _torchrun_scan(root: Path, out: Path, opts: list[str]) -> subprocess.CompletedProcess:
    with socket.socket() as sock:  # a free port, so parallel runs do not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += [f"--master_port={port}", "-m", "bta_core.cli", "scan", str(root), "--out", str(out)]
    return subprocess.run([*cmd, *opts], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_ranks_on_cpu_equal_a_single_scan(folder, tiny_model, tmp_path):
    """torchrun with 2 CPU ranks: shards in OUT/shards/rank-R, rank 0's merge = one process."""
    from bta_core.cli import main

    root, planted = folder
    opts = _options(tiny_model, tmp_path)
    out = tmp_path / "ranks"
    run = _torchrun_scan(root, out, opts)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote ") == 1  # only rank 0 reports (the summary is on stdout)
    sizes = []
    for r in range(2):
        with open(shard_dir(out, r) / "items.json", encoding="utf-8") as fh:
            sizes.append(fh.read().count('"role"'))
    assert sum(sizes) == 8 and min(sizes) > 0  # each rank embedded its own share

    assert main(["scan", str(root), "--out", str(tmp_path / "single"), "--quiet", *opts]) == 0
    ranks, single = _read_pairs(out / "pairs.csv"), _read_pairs(tmp_path / "single" / "pairs.csv")
    assert ranks == single and len(single) == 28  # every pair of 8 images, same verdicts
    assert frozenset(ranks[0][:2]) == planted and ranks[0][2] == "same"
    assert (out / "report.html").exists() and not (shard_dir(out, 0) / "pairs.csv").exists()


@pytest.mark.slow
def test_a_failed_rank_stops_the_merge(folder, tiny_model, tmp_path):
    """Rank 1 cannot write its shard: rank 0 names it and writes no outputs."""
    out = tmp_path / "ranks"
    shard_dir(out, 1).parent.mkdir(parents=True)
    shard_dir(out, 1).write_text("not a folder")
    run = _torchrun_scan(folder[0], out, _options(tiny_model, tmp_path))
    assert run.returncode != 0
    assert "shards failed, nothing merged; rank 1:" in run.stderr and "rank-1" in run.stderr
    assert not (out / "pairs.csv").exists() and (shard_dir(out, 0) / "shard.json").exists()
