"""Scans of hostile folders and outputs (issue 13): formula-like and non-UTF-8 file names,
concurrent and failing writes, tampered shards, unusable caches, odd folder entries."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from bta_core import output_files
from bta_core.output_files import FORMULA_START, csv_cell, short_name
from bta_core.scan import merge, scan
from bta_core.scan.outputs import write_outputs


@pytest.fixture
def folder(tmp_path, bccd_images) -> Path:
    """Four real BCCD images, one of them copied (a planted reuse)."""
    q = tmp_path / "q"
    q.mkdir()
    for k, src in enumerate(bccd_images[:3]):
        shutil.copy(src, q / f"img{k}.jpg")
    shutil.copy(bccd_images[0], q / "copy of img0.jpg")
    return q


def _scan(folders, model, **kw):
    kw.setdefault("cache_dir", None)
    kw.setdefault("top_k", 6)
    return scan(folders, model=model, workers=1, **kw)


def _rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        return list(csv.reader(fh))


# ---------------------------------------------------------------------------------------------
# item 2: formula injection


@pytest.mark.parametrize(
    "value", ['=HYPERLINK("http://x")', "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]
)
def test_csv_cell_escapes_formula_starts(value):
    assert csv_cell(value) == "'" + value
    assert csv_cell("/data/" + value) == "/data/" + value and csv_cell(0.5) == 0.5


@pytest.mark.parametrize("value", ["-0.25", "-3", "-1.5e-05"])
def test_csv_cell_leaves_negative_numbers_alone(value):
    assert csv_cell(value) == value  # a number is no formula; a spreadsheet keeps it a number


def test_scan_csvs_never_start_a_cell_with_a_formula(
    tmp_path, bccd_images, tiny_model, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    evil = Path('=HYPERLINK("evil.example","click")')
    evil.mkdir()
    for k, src in enumerate(bccd_images[:2]):
        shutil.copy(src, evil / f"@cell{k}.jpg")
    shutil.copy(bccd_images[0], evil / "+copy.jpg")
    (evil / "-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = _scan([str(evil)], tiny_model, out_dir="out")
    assert result.pairs and result.skipped
    pairs, skipped = _rows(Path("out/pairs.csv")), _rows(Path("out/skipped.csv"))
    assert len(pairs) == len(result.pairs) + 1 and len(skipped) == len(result.skipped) + 1
    cells = [c for row in pairs + skipped for c in row]
    assert not [c for c in cells if c.startswith(FORMULA_START) and c != csv_cell(c)]
    assert not [c for c in cells if c.startswith(("=", "+", "@"))]
    assert "'" + str(evil / "-broken.png") in cells  # escaped, and still the whole path
    assert {"'" + p.path_a for p in result.pairs} <= set(cells)


def test_line_break_in_a_name_keeps_the_cell_whole_and_guarded(tmp_path, bccd_images, tiny_model):
    """review 8, item 1: ``ok\\r=1+1.jpg`` was written unquoted, so a reader split the row and
    a new line started with ``=1+1.jpg``; now the cell is quoted and each line in it guarded."""
    q = tmp_path / "q"
    q.mkdir()
    shutil.copy(bccd_images[0], q / "ok\r=1+1.jpg")
    shutil.copy(bccd_images[0], q / "copy.jpg")
    (q / "bad\n@2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = _scan([str(q)], tiny_model, out_dir=tmp_path / "out")
    pairs, skipped = _rows(tmp_path / "out/pairs.csv"), _rows(tmp_path / "out/skipped.csv")
    assert len(pairs) == len(result.pairs) + 1 and len(skipped) == len(result.skipped) + 1
    assert {len(r) for r in pairs} == {len(pairs[0])}
    cells = {c for row in pairs + skipped for c in row}
    assert str(q / "ok\r'=1+1.jpg") in cells and str(q / "bad\n'@2.png") in cells
    for name in ("pairs.csv", "skipped.csv"):
        text = (tmp_path / "out" / name).read_text(encoding="utf-8", errors="surrogateescape")
        lines = text.replace("\r", "\n").split("\n")
        assert not [ln for ln in lines if ln.startswith(("=", "+", "@", "\t"))]


# ---------------------------------------------------------------------------------------------
# item 4: file names that are not UTF-8


def test_non_utf8_file_name_survives_the_whole_scan(folder, tiny_model, tmp_path):
    raw = os.fsencode(folder) + b"/caf\xe9 latin-1.jpg"
    shutil.copy(folder / "img1.jpg", raw)
    out = tmp_path / "out"
    result = _scan(folder, tiny_model, out_dir=out)
    name = os.fsdecode(raw)
    assert any(name in (p.path_a, p.path_b) for p in result.pairs)
    assert raw in (out / "pairs.csv").read_bytes()  # the original bytes, usable as a path
    doc = json.loads((out / "pairs.json").read_text(encoding="utf-8"))
    names = {p["path_a"] for p in doc["pairs"]} | {p["path_b"] for p in doc["pairs"]}
    assert name in names and os.path.exists(os.fsencode(name))
    (out / "report.html").read_text(encoding="utf-8")  # valid UTF-8


# ---------------------------------------------------------------------------------------------
# items 5, 6: the output set is replaced whole, never mixed, never half


@pytest.fixture
def two_results(folder, tiny_model, tmp_path):
    a = _scan(folder, tiny_model)
    shutil.copy(folder / "img2.jpg", folder / "another copy.jpg")
    b = _scan(folder, tiny_model)
    a.stats["run"], b.stats["run"] = "A", "B"
    return a, b


def _run_of(out: Path) -> str:
    """Which run wrote the set in ``out``; fails if its files come from different runs."""
    doc = json.loads((out / "pairs.json").read_text(encoding="utf-8"))
    rows = _rows(out / "pairs.csv")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert [r[:2] for r in rows[1:]] == [[p["path_a"], p["path_b"]] for p in doc["pairs"]]
    assert ("another copy.jpg" in page) == any("another copy" in r[0] + r[1] for r in rows)
    return doc["stats"]["run"]


def test_concurrent_writers_never_mix_their_files(two_results, tmp_path):
    a, b = two_results
    out = tmp_path / "shared out"
    errors = []

    def writer(result):
        try:
            for _ in range(6):
                write_outputs(result, out, report_pairs=10)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(r,)) for r in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _run_of(out) in ("A", "B")
    assert not list(out.glob(".bta-staging-*")) and not (out / ".bta-commit.json").exists()


def test_full_disk_leaves_the_previous_set_intact(two_results, tmp_path, monkeypatch):
    a, b = two_results
    out = tmp_path / "out"
    write_outputs(a, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    real, calls = output_files.write_text, {"n": 0}

    def disk_fills_up(path, text):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    monkeypatch.setattr("bta_core.scan.outputs.write_text", disk_fills_up)
    with pytest.raises(OSError, match="No space left"):
        write_outputs(b, out)
    after = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    assert after == before and _run_of(out) == "A"
    assert not list(out.glob(".bta-staging-*"))


def test_interrupted_commit_is_finished_by_the_next_writer(two_results, tmp_path, monkeypatch):
    a, b = two_results
    out = tmp_path / "out"
    write_outputs(a, out)
    real_replace, moved = os.replace, []

    def crash_after_two(src, dst):
        if Path(src).parent.name.startswith(".bta-staging-") and Path(dst).parent == out:
            if len(moved) == 2:
                raise KeyboardInterrupt  # killed in the middle of moving the set in
            moved.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        write_outputs(b, out)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (out / ".bta-commit.json").exists()
    output_files._roll_forward(out)  # what the next write (or reader) does first
    assert _run_of(out) == "B"


# ---------------------------------------------------------------------------------------------
# item 7: merge refuses inconsistent shards


@pytest.fixture
def shards(folder, tiny_model, tmp_path):
    dirs = [tmp_path / f"shard{i}" for i in range(2)]
    for i, d in enumerate(dirs):
        _scan(folder, tiny_model, shard=f"{i}/2", out_dir=d)
    return dirs


def test_merge_of_good_shards_matches_a_single_scan(shards, folder, tiny_model):
    merged, single = merge(shards, tiny_model), _scan(folder, tiny_model)
    key = lambda r: sorted((p.path_a, p.path_b, round(p.score, 5)) for p in r.pairs)  # noqa: E731
    assert key(merged) == key(single)


def _items_path(shards):
    return next(d / "items.json" for d in shards if json.loads((d / "items.json").read_text()))


def test_merge_refuses_items_and_embeddings_of_different_length(shards, tiny_model):
    items = _items_path(shards)
    doc = json.loads(items.read_text())
    items.write_text(json.dumps(doc[:-1]))  # one item dropped: embeddings now shift
    with pytest.raises(ValueError, match="items.json does not match the hash"):
        merge(shards, tiny_model)
    # the same damage with shard.json's hash updated to hide it: the counts still disagree
    from bta_core.scan.cache import file_hash

    meta = items.parent / "shard.json"
    shard_doc = json.loads(meta.read_text())
    shard_doc["hashes"]["items.json"] = file_hash(items)
    meta.write_text(json.dumps(shard_doc))
    with pytest.raises(ValueError, match="disagree; the shard is inconsistent"):
        merge(shards, tiny_model)


def test_merge_refuses_repeated_shards_and_another_model(shards, tiny_model, cosine_model):
    with pytest.raises(ValueError, match="more than one shard|repeated"):
        merge([shards[0], shards[0], shards[1]], tiny_model)
    with pytest.raises(ValueError, match="embedded with model"):
        merge(shards, cosine_model)


# ---------------------------------------------------------------------------------------------
# item 10: an unusable cache warns and the scan goes on


def test_unwritable_cache_warns_and_scan_goes_on(folder, tiny_model, tmp_path):
    from bta_core.scan.cache import CacheWarning

    blocker = tmp_path / "not a folder"
    blocker.write_text("x")  # the cache folder cannot be created below a file (even as root)
    with pytest.warns(CacheWarning, match="cannot be written"):
        cached = _scan(folder, tiny_model, cache_dir=blocker / "cache")
    plain = _scan(folder, tiny_model)
    assert [(p.path_a, p.path_b, p.score) for p in cached.pairs] == [
        (p.path_a, p.path_b, p.score) for p in plain.pairs
    ]


def test_full_cache_disk_warns_once(folder, tiny_model, tmp_path, monkeypatch):
    import warnings

    import safetensors.torch

    from bta_core.scan.cache import CacheWarning

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _scan(folder, tiny_model, cache_dir=tmp_path / "cache", batch_size=1)
    assert len([w for w in caught if issubclass(w.category, CacheWarning)]) == 1
    assert result.stats["n_images"] == 4


# ---------------------------------------------------------------------------------------------
# item 11: --out naming a file fails before any work


def test_out_naming_a_file_fails_before_any_work(folder, tmp_path, monkeypatch, capsys):
    from bta_core.cli import main as cli_main

    target = tmp_path / "results.csv"
    target.write_text("keep me")

    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr("bta_core.cli.scan.load_checkpoint", no_work)
    assert cli_main(["scan", str(folder), "--out", str(target), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "results.csv: --out must be a folder, but a file of that name exists" in err
    monkeypatch.setattr("bta_core.scan.pipeline.embed_folders", no_work)
    with pytest.raises(ValueError, match="must be a folder"):
        scan(folder, model=object(), out_dir=target)
    assert target.read_text() == "keep me"


# ---------------------------------------------------------------------------------------------
# item 13: odd folder entries are listed in skipped.csv; long names in match


def test_loops_pipes_broken_links_and_unreadable_folders_are_listed(
    folder, tiny_model, tmp_path, monkeypatch
):
    (folder / "sub").mkdir()
    shutil.copy(folder / "img1.jpg", folder / "sub" / "deep.jpg")
    os.symlink("..", folder / "sub" / "loop")
    os.mkfifo(folder / "pipe.png")
    os.symlink(tmp_path / "gone.jpg", folder / "broken.jpg")
    locked = folder / "locked"
    locked.mkdir()
    real_scandir = os.scandir

    def scandir(path="."):
        if isinstance(path, (str, os.PathLike)) and Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # chmod does not stop root: simulate it
    out = tmp_path / "out"
    result = _scan(folder, tiny_model, out_dir=out)
    assert result.stats["n_images"] == 5
    problems = dict(_rows(out / "skipped.csv")[1:])
    assert problems == {
        str(
            folder / "sub" / "loop"
        ): "symbolic link loop: the folder it points to is already scanned",
        str(folder / "pipe.png"): "not a regular file (a pipe, socket or device)",
        str(folder / "broken.jpg"): "broken symbolic link",
        str(locked): "cannot list folder (Permission denied)",
    }


def test_match_with_two_long_file_names(tmp_path, bccd_images):
    from bta_core.cli import main as cli_main

    a, b = tmp_path / ("a" * 200 + ".jpg"), tmp_path / ("b" * 200 + ".jpg")
    shutil.copy(bccd_images[0], a)
    shutil.copy(bccd_images[1], b)
    out = tmp_path / "out"
    assert cli_main(["match", str(a), str(b), "--no-model", "--out", str(out), "--quiet"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 2 and all(len(n.encode()) <= 255 for n in written)
    assert short_name("a" * 200, "b" * 200) != short_name("a" * 200, "b" * 199 + "c")


def test_short_name_keeps_short_names():
    assert short_name("x", "y") == "x__y"
    assert len(short_name("é" * 300, "z").encode()) <= 120


def test_set_of_a_process_killed_mid_move_is_completed_next_time(two_results, tmp_path):
    import signal

    a, b = two_results
    out = tmp_path / "out"
    write_outputs(a, out)
    pid = os.fork()
    if pid == 0:  # child: SIGKILLed after moving two of the four files of run B
        moved = []
        real_replace = os.replace

        def die_after_two(src, dst):
            if Path(src).parent.name.startswith(".bta-staging-") and Path(dst).parent == out:
                if len(moved) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                moved.append(dst)
            real_replace(src, dst)

        os.replace = die_after_two
        write_outputs(b, out)
        os._exit(0)
    os.waitpid(pid, 0)
    assert (out / ".bta-commit.json").exists() and list(out.glob(".bta-staging-*"))
    with output_files.output_set(out):  # any later writer first completes the dead one's set
        pass
    assert _run_of(out) == "B" and not list(out.glob(".bta-staging-*"))
