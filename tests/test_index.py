"""The persistent reference index (bta_core.index) on real BCCD / DSB2018 images."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bta_core.imageio import load_image
from bta_core.index import (
    IndexFormatError,
    ModelMismatchError,
    add_to_index,
    attach_index,
    build_index,
    index_info,
    load,
)

pytest.importorskip("faiss")


def _save(rgb: np.ndarray, path: Path, quality: int | None = None) -> Path:
    img = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
    if quality is None:
        img.save(path)
    else:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def refs(tmp_path_factory, bccd_images, dsb_images) -> Path:
    """Eight real reference images (BCCD smears + DSB nuclei) in one folder."""
    root = tmp_path_factory.mktemp("refs")
    picks = bccd_images[10:60:10] + dsb_images[100:400:100]
    for p in picks:
        shutil.copy(p, root / p.name)
    return root


def test_build_add_info_and_changed_file(refs, cosine_model, tmp_path, bccd_images):
    files = sorted(refs.iterdir())
    out = tmp_path / "idx"
    res = build_index(files[:5], out, cosine_model, workers=0)
    assert (res["added"], res["skipped"]) == (5, [])
    # adding the whole folder embeds only the three new files
    res = add_to_index(out, [refs], cosine_model, workers=0)
    assert (res["added"], res["unchanged"], res["replaced"]) == (3, 5, 0)
    info = index_info(out)
    assert (info["images"], info["segments"], info["search"]) == (8, 2, "flat")
    # a changed file is re-embedded; its old row is never returned again
    changed = tmp_path / "changed.jpg"
    shutil.copy(bccd_images[200], changed)
    add_to_index(out, [changed], cosine_model, workers=0)
    before = load(out).live_by_path()[str(changed.resolve())]
    shutil.copy(bccd_images[201], changed)
    res = add_to_index(out, [changed], cosine_model, workers=0)
    assert (res["added"], res["replaced"]) == (1, 1)
    idx = load(out)
    assert idx.n_live == 9 and before in idx.dead
    _, ids = idx.search(idx.embeddings(np.array([before])), 9)
    assert before not in ids[0]
    with pytest.raises(ValueError, match="already an index"):
        build_index(files, out, cosine_model, workers=0)


def test_planted_copies_find_their_reference(refs, cosine_model, tmp_path, dsb_images):
    """Query folder: a flip, a crop and a JPEG re-save of references, plus two unrelated images."""
    from bta_core.scan import scan

    files = sorted(refs.iterdir())
    out = tmp_path / "idx"
    build_index(files, out, cosine_model, workers=1)  # one decoding process
    q = tmp_path / "manuscript"
    q.mkdir()
    a, b, c = (load_image(files[k]) for k in (0, 2, 6))
    truth = {
        _save(np.fliplr(a), q / "fig1_flip.png").name: files[0],
        _save(b[40:400, 60:560], q / "fig2_crop.png").name: files[2],
        _save(c, q / "fig3_jpeg.jpg", quality=70).name: files[6],
    }
    for k, p in enumerate(dsb_images[500:502]):
        shutil.copy(p, q / f"other{k}{p.suffix}")
    res = scan(
        q, model=cosine_model, index=out, cache_dir=None, faiss_k=4, top_k=10, verify_per_image=2
    )
    assert res.stats["index_images"] == 8 and res.stats["index_candidates"] <= 8
    top = res.pairs[: len(truth)]
    found = {Path(p.path_a).name: Path(p.path_b) for p in top}
    assert found == {k: v.resolve() for k, v in truth.items()}
    assert all(p.verdict == "same" for p in top), [(p.path_a, p.decided_by) for p in top]


def test_model_mismatch_and_damaged_index_are_refused(refs, cosine_model, tiny_model, tmp_path):
    out = tmp_path / "idx"
    build_index(sorted(refs.iterdir())[:2], out, cosine_model, workers=0)
    with pytest.raises(ModelMismatchError, match="built with model"):
        add_to_index(out, [refs], tiny_model, workers=0)
    assert load(out).n_live == 2  # nothing written by the refused call
    with pytest.raises(IndexFormatError, match="not a reference index"):
        load(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "format": "other/9"}))
    with pytest.raises(IndexFormatError, match="format"):
        load(out)


def test_interrupted_write_leaves_the_old_index(refs, cosine_model, tmp_path, monkeypatch):
    from bta_core.index import store

    out = tmp_path / "idx"
    build_index(sorted(refs.iterdir())[:2], out, cosine_model, workers=0)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(store, "commit", boom)
    with pytest.raises(OSError, match="disk full"):
        add_to_index(out, [refs], cosine_model, workers=0)
    monkeypatch.undo()
    assert load(out).n_live == 2  # the new segment is not part of the index
    res = add_to_index(out, [refs], cosine_model, workers=0)  # and the next writer tidies up
    assert res["added"] == 6
    idx = load(out)
    on_disk = sorted(p.name for p in out.iterdir() if "seg-" in p.name)
    assert on_disk == idx.manifest["segments"] and len(on_disk) == 2


def test_cli_index_build_add_info_and_scan(refs, tiny_model, tmp_path, capsys):
    from bta_core.checkpoint import save_checkpoint
    from bta_core.cli import main

    ckpt = str(save_checkpoint(tiny_model, tmp_path / "tiny.safetensors"))
    files = sorted(refs.iterdir())
    out = str(tmp_path / "lab.index")
    opts = ["--checkpoint", ckpt, "--device", "cpu", "--quiet", "--workers", "0"]
    assert main(["index", "build", *map(str, files[:3]), "--out", out, *opts]) == 0
    assert main(["index", "add", out, str(refs), *opts]) == 0
    assert main(["index", "info", out, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["images"] == 8
    q = tmp_path / "q"
    q.mkdir()
    shutil.copy(files[1], q / "copy.png")
    argv = ["scan", str(q), "--index", out, "--checkpoint", ckpt, "--device", "cpu", "--quiet"]
    assert main([*argv, "--no-cache", "--verify", "0", "--out", str(tmp_path / "s")]) == 0
    pairs = (tmp_path / "s" / "pairs.csv").read_text()
    assert str(files[1].resolve()) in pairs  # the copied reference is among the pairs
    # a shard only embeds, so an index there would be silently ignored: refused up front
    assert main([*argv, "--shard", "1/2", "--out", str(tmp_path / "sh")]) == 2
    assert "--index does not combine with --shard" in capsys.readouterr().err
    assert not (tmp_path / "sh").exists()
    # a damaged index or a missing one: one clear line, exit 1
    assert main(["index", "info", str(tmp_path)]) == 1
    assert "not a reference index" in capsys.readouterr().err


def test_attach_refuses_tta_embeddings(refs, cosine_model, tmp_path):
    import torch

    from bta_core.scan.embed import Embedded

    out = tmp_path / "idx"
    build_index(sorted(refs.iterdir())[:2], out, cosine_model, workers=0)
    emb = Embedded([], torch.zeros(1, 8, 1280), [], {}, np.zeros((1, 8, 32), np.uint8))
    with pytest.raises(ValueError, match="tta"):
        attach_index(emb, out, cosine_model)


def test_d4_phash_equals_imagehash_of_each_orientation(bccd_images, dsb_images):
    """The stored pHashes (one DCT, orientations by sign flips) are imagehash's, bit for bit."""
    import imagehash

    from bta_core.dihedral import apply_d4
    from bta_core.fingerprint import PHASH_SIZE, _grey_uint8, d4_phash

    for path in [*bccd_images[:2], *dsb_images[::200]]:
        rgb = load_image(path)
        grey = Image.fromarray(_grey_uint8(rgb)).resize((64, 64), Image.LANCZOS)
        want = [
            np.packbits(
                imagehash.phash(Image.fromarray(apply_d4(np.asarray(grey), k)), PHASH_SIZE).hash
            )
            for k in range(8)
        ]
        np.testing.assert_array_equal(d4_phash(rgb), np.stack(want), err_msg=path.name)
        old_grey = np.clip(rgb.mean(axis=-1) * 255, 0, 255).astype(np.uint8)  # numpy's mean
        np.testing.assert_array_equal(_grey_uint8(rgb), old_grey)


def test_decode_stream_in_processes_keeps_order_and_reports_bad_files(bccd_images, tmp_path):
    from bta_core.scan.loader import decode_stream

    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    paths = [bccd_images[0], bad, bccd_images[1], bccd_images[2]]
    out = list(decode_stream(paths, planes=False, image_size=32, workers=1))
    assert [i for i, _, _ in out] == [0, 1, 2, 3]
    assert out[1][1] is None and "not an image" in out[1][2]
    tag, x, fp = out[2][1][0]
    assert x.shape == (32, 32, 3) and len(fp.pixel_hash) == 64
    stream = decode_stream(paths * 4, planes=False, image_size=32, workers=1)
    next(stream)
    stream.close()  # stopping early shuts the worker down (the test would hang otherwise)


def test_cancelled_build_keeps_finished_segments_and_add_resumes(
    refs, cosine_model, tmp_path, monkeypatch
):
    from bta_core.index import build
    from bta_core.runtime import Cancelled

    monkeypatch.setattr(build, "SEGMENT_ROWS", 3)
    calls = {"n": 0}

    def stop_in_second_segment() -> bool:
        calls["n"] += 1
        return calls["n"] > 1  # one batch of 3 images, then stop

    out = tmp_path / "idx"
    with pytest.raises(Cancelled):
        build_index(
            [refs], out, cosine_model, workers=0, batch_size=3, should_stop=stop_in_second_segment
        )
    assert load(out).n_live == 3  # the finished segment survived
    res = add_to_index(out, [refs], cosine_model, workers=0)
    assert (res["added"], res["unchanged"]) == (5, 3)


def test_index_cli_help_names_the_full_command(capsys):
    from bta_core import cli

    for action in ("build", "add", "info"):
        with pytest.raises(SystemExit):
            cli.main(["index", action, "--help"])
        assert capsys.readouterr().out.startswith(f"usage: bta-core index {action} ")


def test_scan_checks_the_index_before_embedding(
    refs, cosine_model, tiny_model, tmp_path, monkeypatch
):
    """A missing index or another model's index fails before any query image is embedded."""
    from bta_core.scan import pipeline

    out = tmp_path / "idx"
    build_index(sorted(refs.iterdir())[:2], out, cosine_model, workers=0)

    def no_embedding(*a, **k):
        raise AssertionError("embedded before the index was checked")

    monkeypatch.setattr(pipeline, "embed_folders", no_embedding)
    kw = dict(cache_dir=None, verify_per_image=0)
    with pytest.raises(ModelMismatchError, match="built with model"):
        pipeline.scan(refs, model=tiny_model, index=out, **kw)
    with pytest.raises(IndexFormatError, match="nowhere: not found"):
        pipeline.scan(refs, model=cosine_model, index=tmp_path / "nowhere", **kw)
    with pytest.raises(ValueError, match="tta"):
        pipeline.scan(refs, model=cosine_model, index=out, tta="d4", **kw)


def test_an_index_of_no_images_is_refused(cosine_model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no images found"):
        build_index([empty], tmp_path / "idx", cosine_model, workers=0)
    assert not (tmp_path / "idx").exists()


def test_a_deleted_indexed_file_is_reported_and_pruned(
    refs, cosine_model, tmp_path, capsys, monkeypatch
):
    """An indexed reference deleted after indexing: its crop is still listed, the pair says it
    was not keypoint-checked and why, skipped.csv names the file, and prune retires it."""
    from bta_core.cli import main
    from bta_core.cli import scan as scan_cli
    from bta_core.scan import scan

    archive = tmp_path / "archive"
    shutil.copytree(refs, archive)
    files = sorted(archive.iterdir())
    out = tmp_path / "idx"
    build_index(files, out, cosine_model, workers=0)
    q = tmp_path / "manuscript"
    q.mkdir()
    _save(load_image(files[2])[40:400, 60:560], q / "fig2_crop.png")
    kw = dict(model=cosine_model, index=out, cache_dir=None, faiss_k=4, verify_per_image=2)
    before = scan(q, **kw)
    assert before.pairs[0].verdict == "same" and before.stats["index_missing"] == 0
    files[2].unlink()  # the archive loses the source after indexing
    assert index_info(out, check_files=True)["missing_files"] == 1
    assert index_info(out)["missing_files"] is None  # not checked unless asked
    after = scan(q, **kw)
    assert after.stats["index_missing"] == 1
    assert [s.path for s in after.skipped] == [str(files[2].resolve())]
    assert "indexed file missing" in after.skipped[0].problem
    pair = next(p for p in after.pairs if p.path_b == str(files[2].resolve()))
    assert pair.verdict != "same" and "is missing" in pair.decision.evidence.not_checked
    assert pair.decision.evidence.verified is None  # not checked: an empty cell, not a 0
    assert "not keypoint-checked" in pair.decision.explain()
    from bta_core.scan.report import evidence_lines

    assert any("not keypoint-checked" in line for line in evidence_lines(pair, 0.5))
    monkeypatch.setattr(scan_cli, "load_checkpoint", lambda *a, **k: cosine_model)
    argv = ["scan", str(q), "--index", str(out), "--device", "cpu"]
    assert main([*argv, "--no-cache", "--out", str(tmp_path / "s")]) == 0
    captured = capsys.readouterr()
    assert "1 indexed image nearest to the scanned files is missing" in captured.err
    assert "1 skipped (1 of them indexed file that is missing)" in captured.out
    # an unmounted archive looks like every file gone: refused, nothing retired
    from bta_core.index import prune_index

    moved = tmp_path / "archive_elsewhere"
    archive.rename(moved)
    with pytest.raises(ValueError, match="is the archive's drive mounted"):
        prune_index(out)
    assert load(out).n_live == len(files)
    moved.rename(archive)
    assert main(["index", "prune", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["retired"] == [str(files[2].resolve())] and res["images"] == len(files) - 1
    assert index_info(out, check_files=True)["missing_files"] == 0
    pruned = scan(q, **kw)
    assert pruned.stats["index_missing"] == 0
    assert str(files[2].resolve()) not in {p.path_b for p in pruned.pairs}


HOLD_LOCK = """
import sys
from bta_core.index.store import writer_lock
with writer_lock(sys.argv[1]):
    print("holding", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_is_refused_while_one_writes(refs, cosine_model, tmp_path, capsys):
    """Two writers at once would delete each other's half-written segments: while one holds the
    index (another process, or another open file of this one), add, prune and the CLI refuse at
    once, naming the index and the holder, and the index stays as it was."""
    import subprocess
    import sys

    from bta_core.cli import main
    from bta_core.index import IndexBusyError, prune_index
    from bta_core.index.store import writer_lock

    files = sorted(refs.iterdir())
    out = tmp_path / "idx"
    build_index(files[:3], out, cosine_model, workers=0)
    before = json.loads((out / "manifest.json").read_text())
    holder = subprocess.Popen(  # another process writing the index, until its stdin closes
        [sys.executable, "-c", HOLD_LOCK, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(
            IndexBusyError, match=rf"idx: another bta-core command .*pid {holder.pid},"
        ):
            add_to_index(out, [refs], cosine_model, workers=0)
        with pytest.raises(IndexBusyError, match="wait for it to finish"):
            prune_index(out)
        assert main(["index", "prune", str(out)]) == 1
        err = capsys.readouterr().err
        assert "idx: another bta-core command is writing this index" in err
        assert "Traceback" not in err
        # add is refused before its model loads (here a checkpoint that does not exist)
        missing = str(tmp_path / "missing.safetensors")
        assert main(["index", "add", str(out), str(refs), "--checkpoint", missing]) == 1
        err = capsys.readouterr().err
        assert "writing this index" in err and "missing.safetensors" not in err
        assert json.loads((out / "manifest.json").read_text()) == before
    finally:
        holder.communicate("", timeout=60)  # the holder ends: the OS releases its lock
    assert add_to_index(out, [refs], cosine_model, workers=0)["added"] == len(files) - 3
    with writer_lock(out):
        with pytest.raises(IndexBusyError):  # one process, two writers: refused too
            prune_index(out)
    # the lock file does not make a fresh folder look used, nor survive as index content
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".lock").write_text("pid 1")
    assert build_index(files[:2], fresh, cosine_model, workers=0)["added"] == 2


def test_a_file_system_without_locks_warns_and_writes(tmp_path, monkeypatch):
    """Some network mounts refuse file locks (ENOLCK): the writer warns and goes on, instead of
    making build, add and prune impossible there."""
    import errno
    import fcntl

    from bta_core.index.store import writer_lock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ran = []
    with pytest.warns(UserWarning, match="cannot lock files; make sure no other bta-core"):
        with writer_lock(tmp_path):
            ran.append(True)
    assert ran == [True] and (tmp_path / ".lock").read_text().startswith("pid ")


def test_a_folder_that_whitens_itself_compares_index_neighbours_as_they_are(
    refs, cosine_model, tmp_path, bccd_images
):
    """A folder of 16+ images is whitened with its own statistics; its index neighbours were
    never fitted. Leaving them out too broke the covariance: collection similarities of
    +-1e13 decided verdicts. Every value must be a cosine, and a copy must still look alike."""
    from bta_core.scan import scan

    files = sorted(refs.iterdir())
    out = tmp_path / "idx"
    build_index(files, out, cosine_model, workers=1)
    q = tmp_path / "submission"
    q.mkdir()
    for p in bccd_images[100:118]:
        shutil.copy(p, q / p.name)
    _save(np.fliplr(load_image(files[0])), q / "fig_flip.png")
    res = scan(q, model=cosine_model, index=out, cache_dir=None, faiss_k=4, top_k=10)
    assert res.stats.get("index_background") is None  # big enough to describe itself
    values = [
        p.evidence.collection_similarity
        for p in res.pairs
        if p.evidence.collection_similarity is not None
    ]
    across = [p for p in res.pairs if Path(p.path_b).parent.resolve() == refs.resolve()]
    assert across and len(values) == len(res.pairs)
    assert max(abs(v) for v in values) <= 1.0 + 1e-4
    flip = next(p for p in across if Path(p.path_a).name == "fig_flip.png")
    unrelated = [p.evidence.collection_similarity for p in across if p is not flip]
    assert flip.evidence.collection_similarity > max(unrelated)


def test_a_small_folder_leaves_out_the_neighbours_its_borrowed_fit_holds(
    refs, cosine_model, tmp_path, bccd_images
):
    """A folder of fewer than 16 images is whitened with a sample of the index; the index
    neighbours in that sample are in the fit and must be left out of their pairs like the
    folder's own images (their collection similarity equals a refit without the pair). A
    folder image indexed under another path is not fitted twice."""
    import torch

    from bta_core.scan.collection import collection_similarities, collection_whitening
    from bta_core.scan.embed import embed_folders
    from bta_core.whitening import fit_whitening

    files = sorted(refs.iterdir())
    q = tmp_path / "small"
    q.mkdir()
    for p in bccd_images[200:204]:
        shutil.copy(p, q / p.name)
    idx_src = tmp_path / "published"
    idx_src.mkdir()
    for p in [*files, *bccd_images[300:316]]:  # enough for a whitening with the folder
        shutil.copy(p, idx_src / p.name)
    shutil.copy(bccd_images[200], idx_src / "same_pixels_elsewhere.jpg")
    out = tmp_path / "idx"
    build_index(sorted(idx_src.iterdir()), out, cosine_model, workers=0)
    emb = attach_index(embed_folders(cosine_model, [q], workers=0), out, cosine_model, k=4)
    assert emb.stats["index_background"] == len(files) + 16  # the duplicate is not borrowed
    fitted = emb.fitted()
    refs_rows = range(emb.fit_rows, len(emb.items))
    names = [Path(emb.items[r].path).name for r in refs_rows]
    assert "same_pixels_elsewhere.jpg" not in [
        n for n, r in zip(names, refs_rows, strict=True) if fitted[r]
    ]
    assert any(fitted[r] for r in refs_rows)
    w = collection_whitening(emb.z, emb.fit_rows, emb.background)
    r = next(r for r in refs_rows if fitted[r])
    got = collection_similarities(w, emb.z, [(0, r)], fitted)[0]
    rest = torch.cat([emb.z[1 : emb.fit_rows], emb.background])
    keep = [k for k in range(len(rest)) if not torch.equal(rest[k], emb.z[r])]
    refit = fit_whitening(rest[keep])
    want = (refit.apply(emb.z[:1]) * refit.apply(emb.z[r : r + 1])).sum().item()
    assert got == pytest.approx(want, abs=0.03)
