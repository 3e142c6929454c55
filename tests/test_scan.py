"""bta-core scan on a folder of real images with planted copies and broken files."""

from __future__ import annotations

import csv
import html.parser
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bta_core.dihedral import D4_NAMES
from bta_core.imageio import load_image, to_uint8
from bta_core.runtime import Cancelled
from bta_core.scan import candidates as scan_candidates
from bta_core.scan import merge, scan
from bta_core.scan.outputs import PAIR_COLUMNS
from bta_core.verdict import Evidence, Policy, decide

# --------------------------------------------------------------------------------------------
# A folder of real images with planted copies


def _save(rgb: np.ndarray, path: Path, quality: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(to_uint8(rgb))
    if quality is not None:
        im.save(path, format="JPEG", quality=quality)
    else:
        im.save(path)


def _plant(rgb: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, int | None]:
    """A reused copy of ``rgb``: (image, JPEG quality or None)."""
    h, w = rgb.shape[:2]
    if kind == "flip":
        return rgb[:, ::-1], None
    if kind == "rot90":
        return np.rot90(rgb), None
    if kind == "crop":
        return rgb[h // 8 : h - h // 8, w // 10 : w - w // 6], None
    if kind == "jitter":
        return np.clip((rgb - 0.5) * 1.25 + 0.55, 0, 1), None
    if kind == "noise":
        return np.clip(rgb + rng.normal(0, 0.04, rgb.shape), 0, 1), None
    if kind == "jpeg":
        return rgb, 30
    raise ValueError(kind)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data) -> dict:
    """``q/``: 11 real images, 6 planted copies, corrupt, empty and truncated files (odd names);
    ``ref/``: 4 other real images and one planted copy of a ``q/`` image."""
    root = tmp_path_factory.mktemp("scan corpus ü")
    rng = np.random.default_rng(0)
    with open(shared_data / "bccd" / "same_source_groups.csv", newline="") as fh:
        singles = [r["file"] for r in csv.DictReader(fh) if r["group_size"] == "1"]
    with open(shared_data / "dsb2018" / "splits.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_mod: dict[str, list[str]] = {}
    for r in rows:
        by_mod.setdefault(r["modality"], []).append(r["file"])
    sources = [shared_data / "bccd" / "images" / f for f in singles[::30][:9]]
    for mod in ("fluorescence", "tissue-colour", "brightfield-grey"):
        sources += [shared_data / "dsb2018" / f for f in by_mod[mod][::7][:2]]
    names = [
        "blood smear 01.jpg",
        "sub dir/frotis sanguíneo 02.jpg",
        "血液 03.jpg",
        "blood_04.jpg",
        "blood_05.jpg",
        "nested/deeper/blood_06.jpg",
        "blood_07.jpg",
        "blood_08.jpg",
        "ref:blood_09.jpg",
        "núcleos fluo 1.png",
        "ref:fluo 2.png",
        "tissue 1.png",
        "ref:tissue 2.png",
        "bright field 1.png",
        "ref:bright field 2.png",
    ]
    q, ref = root / "q", root / "ref"
    originals: dict[str, Path] = {}
    for src, name in zip(sources, names, strict=True):
        dest = ref / name[4:] if name.startswith("ref:") else q / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
        originals[name] = dest
    plants = [
        ("blood smear 01.jpg", "flip", "copie retournée 01.png"),
        ("núcleos fluo 1.png", "rot90", "rotated copy.png"),
        ("tissue 1.png", "crop", "sub dir/crop ✂ 1.png"),
        ("blood_04.jpg", "jitter", "jittered 04.png"),
        ("bright field 1.png", "noise", "noisy bright.png"),
        ("血液 03.jpg", "jpeg", "再利用 03.jpg"),
    ]
    planted = []
    for src_name, kind, new_name in plants:
        img, quality = _plant(load_image(originals[src_name]), kind, rng)
        _save(img, q / new_name, quality)
        planted.append((str(originals[src_name]), str(q / new_name)))
    # a cross-folder copy: a q image reused in the reference folder
    _save(load_image(originals["blood_05.jpg"])[::-1], ref / "archive copy 05.png")
    cross = (str(originals["blood_05.jpg"]), str(ref / "archive copy 05.png"))
    corrupt = q / "broken ✗.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(300))
    empty = q / "empty.tif"
    empty.write_bytes(b"")
    truncated = q / "truncated.jpg"
    truncated.write_bytes(originals["blood_07.jpg"].read_bytes()[:500])
    return {
        "root": root,
        "q": q,
        "ref": ref,
        "planted": planted,
        "cross": cross,
        "bad": [str(corrupt), str(empty), str(truncated)],
        "n_q_images": sum(not n.startswith("ref:") for n in names) + len(plants),
        "n_ref_images": sum(n.startswith("ref:") for n in names) + 1,
    }


def _read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _pair_set(pairs) -> set[frozenset]:
    return {frozenset((p.path_a, p.path_b)) for p in pairs}


class _HTMLCheck(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "img":
            self.images.append(dict(attrs)["src"])


# --------------------------------------------------------------------------------------------
# Tests


def test_scan_writes_outputs_and_skips_broken_files(corpus, tiny_model, tmp_path):
    out = tmp_path / "out dir ü"
    seen = []
    result = scan(
        corpus["q"],
        model=tiny_model,
        out_dir=out,
        cache_dir=None,
        top_k=10,
        threshold=0.99,
        verify_per_image=0,
        on_progress=lambda step, total, info: seen.append(info["stage"]),
    )
    assert result.stats["n_images"] == corpus["n_q_images"]
    assert {"embed", "score"} <= set(seen)
    skipped = _read_csv(out / "skipped.csv")
    assert sorted(r["path"] for r in skipped) == sorted(corpus["bad"])
    assert all(r["problem"] and "\n" not in r["problem"] for r in skipped)

    rows = _read_csv(out / "pairs.csv")
    assert list(rows[0]) == list(PAIR_COLUMNS)
    # every row's verdict is the one decision rule applied to the evidence in its own columns
    for r in rows:
        ev = Evidence(
            model_score=float(r["score"]),
            identical_pixels=r["identical_pixels"] == "1",
            phash_distance=int(r["phash_distance"]),
        )
        assert decide(ev, Policy(threshold=0.99)).verdict == r["verdict"], r
    # ranked by the kind of evidence, then the probability
    tiers = {"identical pixels": 5, "perceptual hash": 4, "model score": 1, "no evidence": 0}
    keys = [(tiers[r["decided_by"]], float(r["probability"])) for r in rows]
    assert keys == sorted(keys, reverse=True)
    assert len(rows) >= 10  # the 10 best model scores are always listed, besides hash matches
    planted = {frozenset(p) for p in corpus["planted"]}
    by_hash = {frozenset((r["path_a"], r["path_b"])) for r in rows if r["verdict"] == "same"}
    assert by_hash <= planted and len(by_hash) >= 3  # flip, JPEG q30, noise: near-exact copies
    names = {r["path_a"] for r in rows} | {r["path_b"] for r in rows}
    assert all(Path(n).exists() for n in names)  # unicode and spaces survive the round trip

    doc = json.loads((out / "pairs.json").read_text(encoding="utf-8"))
    assert len(doc["pairs"]) == len(rows) and doc["stats"]["n_skipped"] == 3
    assert doc["pairs"][0]["path_a"] == rows[0]["path_a"]
    assert doc["pairs"][0]["verdict"] == rows[0]["verdict"]
    assert doc["pairs"][0]["decided_by"] == rows[0]["decided_by"]

    page = (out / "report.html").read_text(encoding="utf-8")
    check = _HTMLCheck()
    check.feed(page)
    review = [r for r in rows if r["verdict"] != "different"]  # the report's default cards
    assert check.tags.get("section", 0) == len(review) >= 3 and check.tags.get("script") == 1
    assert len(check.images) == 2 * len(review)
    assert all(src.startswith("data:image/jpeg;base64,") for src in check.images)
    assert "broken ✗.png" in page  # the skipped files are listed in the report too
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_planted_pairs_rank_near_top_with_frozen_features(corpus, cosine_model):
    """Ranking logic with ImageNet features + cosine (no trained head): the easy copies lead."""
    result = scan(corpus["q"], model=cosine_model, cache_dir=None, top_k=20, verify_per_image=0)
    planted = {frozenset(p) for p in corpus["planted"]}
    ranked = [frozenset((p.path_a, p.path_b)) for p in result.pairs]
    assert set(ranked[:3]) <= planted
    assert planted <= set(ranked[: len(planted) + 2])


def test_planted_pairs_rank_first_with_trained_model(corpus, trained_checkpoint, tmp_path):
    from bta_core.checkpoint import load_checkpoint

    model = load_checkpoint(trained_checkpoint, device="cpu")
    result = scan(
        corpus["q"], model=model, cache_dir=None, out_dir=tmp_path, tta="d4", verify_per_image=1
    )
    planted = {frozenset(p) for p in corpus["planted"]}
    top = {frozenset((p.path_a, p.path_b)) for p in result.pairs[: len(planted)]}
    assert top == planted
    assert all(p.same for p in result.pairs[: len(planted)])
    assert {p.decided_by for p in result.pairs[: len(planted)]} <= {
        "perceptual hash",
        "verified overlap",
    }
    assert not any(p.same or p.verified for p in result.pairs[len(planted) :])
    assert result.stats["n_checked"] > 0
    header = (tmp_path / "pairs.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == ",".join(PAIR_COLUMNS) + ",orientation"


def test_rescan_hits_cache_and_resumes_after_cancel(corpus, tiny_model, tmp_path):
    folder = tmp_path / "q"
    shutil.copytree(corpus["q"], folder)
    cache = tmp_path / "cache"
    n = corpus["n_q_images"]

    calls = {"n": 0}

    def stop_after_first_batch() -> bool:
        calls["n"] += 1
        return calls["n"] > 3  # hashing polls once, two batches embed, then cancel

    with pytest.raises(Cancelled):
        scan(
            folder,
            model=tiny_model,
            cache_dir=cache,
            batch_size=4,
            verify_per_image=0,
            should_stop=stop_after_first_batch,
        )
    resumed = scan(folder, model=tiny_model, cache_dir=cache, batch_size=4, verify_per_image=0)
    assert 0 < resumed.stats["n_cached"] < n
    assert resumed.stats["n_embedded"] + resumed.stats["n_cached"] == n

    again = scan(folder, model=tiny_model, cache_dir=cache, verify_per_image=0)
    assert again.stats["n_embedded"] == 0 and again.stats["n_cached"] == n
    assert [(p.path_a, p.path_b) for p in again.pairs] == [
        (p.path_a, p.path_b) for p in resumed.pairs
    ]
    np.testing.assert_allclose(
        [p.score for p in again.pairs], [p.score for p in resumed.pairs], atol=1e-6
    )

    # a new file: only it is embedded; a renamed file is found by content
    shutil.copy(corpus["ref"] / "archive copy 05.png", folder / "new file.png")
    (folder / "blood_07.jpg").rename(folder / "renamed 07.jpg")
    third = scan(folder, model=tiny_model, cache_dir=cache, verify_per_image=0)
    assert third.stats["n_embedded"] == 1 and third.stats["n_images"] == n + 1

    # another model never reads these entries
    other = scan(folder, model=_perturbed(tiny_model), cache_dir=cache, verify_per_image=0)
    assert other.stats["n_embedded"] == n + 1


def _perturbed(model):
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        m.head.first.bias.add_(0.01)
    return m


def test_shard_and_merge_equal_single_scan(corpus, tiny_model, tmp_path):
    kw = dict(model=tiny_model, cache_dir=None, top_k=10**6, threshold=0.0, verify_per_image=0)
    single = scan(corpus["q"], [corpus["ref"]], out_dir=tmp_path / "single", **kw)
    shard_dirs = [tmp_path / f"shard {i}" for i in range(3)]
    counts = []
    for i, d in enumerate(shard_dirs):
        r = scan(corpus["q"], [corpus["ref"]], shard=f"{i}/3", out_dir=d, **kw)
        counts.append(r.stats["n_images"])
        assert r.pairs == [] and (d / "embeddings.npy").exists()
    assert sum(counts) == single.stats["n_images"] and max(counts) < single.stats["n_images"]
    merged = merge(
        shard_dirs,
        model=tiny_model,
        top_k=10**6,
        threshold=0.0,
        verify_per_image=0,
        out_dir=tmp_path / "merged",
    )
    a = {(p.path_a, p.path_b): p.score for p in single.pairs}
    b = {(p.path_a, p.path_b): p.score for p in merged.pairs}
    assert a.keys() == b.keys()
    np.testing.assert_allclose([b[k] for k in a], list(a.values()), atol=1e-5)
    assert sorted(s.path for s in merged.skipped) == sorted(s.path for s in single.skipped)
    assert _read_csv(tmp_path / "merged" / "skipped.csv") == _read_csv(
        tmp_path / "single" / "skipped.csv"
    )

    with pytest.raises(ValueError, match="missing .* pass --allow-partial"):
        merge(shard_dirs[:2], model=tiny_model)
    with pytest.raises(ValueError, match="model"):
        merge(shard_dirs, model=_perturbed(tiny_model))


def test_reference_mode_pairs_only_across(corpus, tiny_model):
    refs = {str(p) for p in corpus["ref"].rglob("*") if p.is_file()}
    kw = dict(model=tiny_model, cache_dir=None, top_k=10**6, threshold=0.0, verify_per_image=0)
    res = scan(corpus["q"], [corpus["ref"]], **kw)
    nq, nr = corpus["n_q_images"], corpus["n_ref_images"]
    assert len(res.pairs) == nq * (nq - 1) // 2 + nq * nr
    assert not any(p.path_a in refs and p.path_b in refs for p in res.pairs)
    assert all(p.path_a not in refs for p in res.pairs)  # a query image always comes first

    cross = scan(corpus["q"], [corpus["ref"]], within=False, **kw)
    assert len(cross.pairs) == nq * nr
    assert all(p.path_a not in refs and p.path_b in refs for p in cross.pairs)
    assert frozenset(corpus["cross"]) in _pair_set(cross.pairs)


def test_faiss_candidates_give_the_exact_top_pairs(corpus, cosine_model, tmp_path):
    kw = dict(
        model=cosine_model, cache_dir=tmp_path / "cache", top_k=8, threshold=1.1, verify_per_image=0
    )
    exact = scan(corpus["q"], [corpus["ref"]], **kw)
    approx = scan(corpus["q"], [corpus["ref"]], faiss_above=5, faiss_k=4, **kw)
    assert exact.stats["method"] == "exact" and approx.stats["method"] == "faiss"
    assert approx.stats["n_pairs_scored"] < exact.stats["n_pairs_scored"]
    assert [(p.path_a, p.path_b) for p in approx.pairs] == [
        (p.path_a, p.path_b) for p in exact.pairs
    ]
    np.testing.assert_allclose(
        [p.score for p in approx.pairs], [p.score for p in exact.pairs], atol=1e-5
    )


def test_tta_scores_are_max_over_orientations(tiny_model):
    torch.manual_seed(1)
    za, zb = torch.randn(3, 8, tiny_model.embed_dim), torch.randn(4, 8, tiny_model.embed_dim)
    s, code = scan_candidates.block_scores(tiny_model, za, zb, "d4")
    with torch.no_grad():
        ref = torch.stack(
            [tiny_model.score_matrix(za[:, 0], zb[:, o]) for o in range(8)]
            + [tiny_model.score_matrix(za[:, o], zb[:, 0]) for o in range(1, 8)]
        )
    torch.testing.assert_close(s, ref.max(0).values)
    assert int(code.min()) >= 0 and int(code.max()) < 16
    rows, _ = scan_candidates.pair_scores(tiny_model, za[:3], zb[:3], "d4")
    torch.testing.assert_close(rows, s.diagonal())


def test_tta_and_planes_scan(tmp_path, bccd_images, tiny_model):
    import tifffile

    folder = tmp_path / "stacks"
    folder.mkdir()
    rgb = [to_uint8(load_image(p)) for p in bccd_images[:3]]
    stack = np.stack([np.stack([im[..., 0], im[..., 1]]) for im in rgb[:2]])  # (Z=2, C=2, Y, X)
    tifffile.imwrite(folder / "stack ü.tif", stack, metadata={"axes": "ZCYX"})
    Image.fromarray(rgb[2]).save(folder / "single.png")
    res = scan(
        folder,
        model=tiny_model,
        cache_dir=None,
        planes=True,
        tta="d4",
        verify_per_image=0,
        out_dir=tmp_path / "o",
    )
    names = sorted(it.name for it in res.items)
    assert len(names) == 5 and any(n.endswith("stack ü.tif[c=1,z=1]") for n in names)
    assert all(p.orientation in D4_NAMES for p in res.pairs)
    rows = _read_csv(tmp_path / "o" / "pairs.csv")
    assert "orientation" in rows[0] and len(rows) == 10
    check = _HTMLCheck()
    check.feed((tmp_path / "o" / "report.html").read_text(encoding="utf-8"))
    review = [r for r in rows if r["verdict"] != "different"]  # the report's cards
    assert len(check.images) == 2 * len(review) and all(src for src in check.images)


def test_cli_scan_shards_and_merge(corpus, tiny_model, tmp_path, capsys):
    from bta_core.checkpoint import save_checkpoint
    from bta_core.cli import main

    ckpt = save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")
    base = ["scan", "--checkpoint", str(ckpt), "--device", "cpu", "--quiet", "--top", "5"]
    base += ["--verify-per-image", "0"]
    assert main(base + [str(corpus["q"]), "--out", str(tmp_path / "cli"), "--no-cache"]) == 0
    assert len(_read_csv(tmp_path / "cli" / "pairs.csv")) >= 5
    cache = str(tmp_path / "cache")
    for i in range(2):
        argv = base + [
            str(corpus["q"]),
            "--shard",
            f"{i}/2",
            "--out",
            str(tmp_path / f"s{i}"),
            "--cache",
            cache,
        ]
        assert main(argv) == 0
    merged = tmp_path / "merged"
    assert (
        main(base + ["--merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(merged)])
        == 0
    )
    merged_rows, single_rows = (
        _read_csv(merged / "pairs.csv"),
        _read_csv(tmp_path / "cli" / "pairs.csv"),
    )
    # the whitening sees the same embeddings batched differently: its cosines may differ in the
    # last digit; everything else is identical
    for m_row, s_row in zip(merged_rows, single_rows, strict=True):
        cm, cs = m_row.pop("collection_similarity"), s_row.pop("collection_similarity")
        assert float(cm) == pytest.approx(float(cs), abs=2e-3)
        assert m_row == s_row
    assert (
        main(base + ["--out", str(tmp_path / "x")]) == 2
    )  # no folder: usage error, before any work
    assert "FOLDER" in capsys.readouterr().err


def test_collector_keeps_threshold_and_top_k():
    c = scan_candidates.PairCollector(threshold=0.5, top_k=3, max_pairs=100)
    s = torch.tensor([0.1, 0.9, 0.6, 0.2, 0.3, 0.55])
    idx = torch.arange(6)
    c.add(s, idx, idx + 10, torch.full((6,), -1))
    rows = c.result()
    assert rows[:, 0].tolist() == pytest.approx([0.9, 0.6, 0.55])
    c.add(torch.tensor([0.4]), torch.tensor([7]), torch.tensor([8]), torch.tensor([-1]))
    c2 = scan_candidates.PairCollector(threshold=0.95, top_k=2, max_pairs=100)
    c2.add(s, idx, idx + 10, torch.full((6,), -1))
    assert c2.result()[:, 0].tolist() == pytest.approx([0.9, 0.6])


def test_report_match_overlay_for_top_pairs(corpus, tiny_model, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    src, copy = corpus["planted"][1]  # a rotated copy of a small fluorescence image
    shutil.copy(src, folder / "a.png")
    shutil.copy(copy, folder / "b.png")
    scan(folder, model=tiny_model, cache_dir=None, out_dir=tmp_path / "o", match_top=1)
    check = _HTMLCheck()
    check.feed((tmp_path / "o" / "report.html").read_text(encoding="utf-8"))
    # the pair is a near copy: one card whose match figure replaces the two thumbnails
    assert check.tags.get("figure") == 1 and len(check.images) == 1
    assert check.images[0].startswith("data:image/jpeg;base64,")


def test_per_image_best_keeps_each_images_top_k():
    """Each image's k best partners, whether pairs arrive as dense blocks or as lists."""
    rng = np.random.default_rng(0)
    n, k = 9, 2
    full = rng.random((n, n))
    full = np.triu(full, 1) + np.triu(full, 1).T  # symmetric scores, zero diagonal
    truth = set()
    for i in range(n):
        order = [j for j in np.argsort(-full[i]) if j != i][:k]
        truth |= {(min(i, int(j)), max(i, int(j))) for j in order}
    dense = scan_candidates.PerImageBest(n, k)
    for i0 in range(0, n, 4):  # row blocks of the upper triangle, as score_all feeds them
        i1 = min(n, i0 + 4)
        s = torch.from_numpy(full[i0:i1, i0:])
        a = torch.arange(i0, i1)[:, None]
        b = torch.arange(i0, n)[None, :]
        s = torch.where(b > a, s, torch.full_like(s, -np.inf))
        dense.add_block(s, torch.arange(i0, i1), torch.arange(i0, n), torch.zeros_like(s).long())
    ia, ib = np.triu_indices(n, 1)
    listed = scan_candidates.PerImageBest(n, k)
    for part in np.array_split(rng.permutation(len(ia)), 3):  # pairs in any order, in chunks
        a, b = torch.from_numpy(ia[part]), torch.from_numpy(ib[part])
        s = torch.from_numpy(full[ia[part], ib[part]])
        listed.add(torch.cat([a, b]), torch.cat([b, a]), s.repeat(2), torch.zeros(2 * len(a)))
    for best in (dense, listed):
        rows = best.rows()
        got = {(int(i), int(j)) for i, j in rows[:, 1:3].tolist()}
        assert got == truth
        np.testing.assert_allclose(rows[:, 0].numpy(), full[rows[:, 1].long(), rows[:, 2].long()])


def test_hash_candidates_follow_the_pairing_rules():
    """Identical and near-copy candidates: query x reference always, query x query only
    ``within``, reference x reference never."""
    from bta_core.scan.evidence import identical_pixel_pairs, near_copy_pairs
    from bta_core.scan.records import ScanImage

    roles = ["query", "query", "reference", "reference"]
    items = [ScanImage(f"i{k}", f"i{k}", r, f"c{k}", 0, "same pixels") for k, r in enumerate(roles)]
    assert identical_pixel_pairs(items, within=True) == {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3)}
    assert identical_pixel_pairs(items, within=False) == {(0, 2), (0, 3), (1, 2), (1, 3)}
    rng = np.random.default_rng(0)
    phash = rng.integers(0, 256, (4, 8, 32), dtype=np.uint8)
    phash[3] = phash[2]  # the two references are copies: never a candidate
    phash[1, 5] = phash[0, 0]  # query 1 mirrored-and-rotated is query 0
    assert near_copy_pairs(phash, roles, 10, within=True) == {(0, 1)}
    assert near_copy_pairs(phash, roles, 10, within=False) == set()
    phash[2, 0] = phash[0, 0]
    assert near_copy_pairs(phash, roles, 10, within=False) == {(0, 2)}


def test_verification_budget_counts_per_query_image_only():
    """With many references (an index), the checks stay ``per_image`` per query image."""
    from bta_core.scan.records import Pair
    from bta_core.scan.verify import select_for_verification

    roles = ["query", "query"] + ["reference"] * 6
    keys = [(0, 1)] + [(q, r) for q in (0, 1) for r in range(2, 8)]
    rng = np.random.default_rng(0)
    pairs = [
        Pair(f"i{i}", f"i{j}", decide(Evidence(model_score=float(s))), None)
        for (i, j), s in zip(keys, rng.uniform(0.1, 0.9, len(keys)), strict=True)
    ]
    chosen = select_for_verification(keys, pairs, len(roles), 2, roles)
    per_query = {q: sum(q in keys[m] for m in chosen) for q in (0, 1)}
    assert len(chosen) <= 4 and all(n <= 2 for n in per_query.values())
    for q in (0, 1):  # each query keeps its own 2 best candidates
        best = sorted((m for m, k in enumerate(keys) if q in k), key=lambda m: -pairs[m].score)
        assert set(best[:2]) <= set(chosen)
    every = select_for_verification(keys, pairs, len(roles), 2)  # all counted: references add
    assert len(every) > len(chosen)


def test_keypoint_votes_bring_copies_the_model_misses_to_verification(corpus, tiny_model):
    """With a model that ranks nothing (random projector and head), the local-feature votes
    alone make every planted copy a verified or hashed ``same``; without them the one check per
    image goes to the model's random picks and the crop is missed."""
    planted = {frozenset(p) for p in corpus["planted"]}
    kw = dict(model=tiny_model, cache_dir=None, top_k=10**6, verify_per_image=1)
    found = scan(corpus["q"], **kw)
    same = {frozenset((p.path_a, p.path_b)) for p in found.pairs if p.same}
    assert planted <= same
    assert same <= planted  # no look-alike smear is verified
    assert found.stats["n_keypoint_candidates"] >= len(planted)
    without = scan(corpus["q"], keypoint_candidates=False, **kw)
    same_without = {frozenset((p.path_a, p.path_b)) for p in without.pairs if p.same}
    crop = next(p for p in planted if any("crop" in x for x in p))
    assert crop not in same_without


def test_ratio_votes_skip_the_image_itself_and_count_every_close_image():
    from bta_core.scan.keypoint_votes import ratio_votes

    q_owner = np.array([0, 0, 1])
    # neighbours of each query descriptor: (image, squared distance)
    owners = np.array([[0, 2, 3, 3], [1, 2, 4, 3], [1, 0, 2, 2]])
    dist = np.array([[0.0, 0.1, 0.5, 0.6], [0.2, 0.21, 0.25, 0.3], [0.0, 0.05, 0.06, 0.9]])
    rows = ratio_votes(q_owner, dist, owners)
    # descriptor 0: itself skipped; 0.1 < 0.64 * 0.6 -> image 2 (3 is the background)
    # descriptor 1: every neighbour about as close as the farthest: no vote
    # descriptor 2: itself skipped; 0.05 and 0.06 < 0.64 * 0.9 -> images 0 and 2, one vote each
    assert sorted(rows.tolist()) == [[0, 2], [1, 0], [1, 2]]


def test_keypoint_votes_find_a_crop_and_skip_cleanly_without_faiss(bccd_images, monkeypatch):
    """Real smears and a crop of one: the crop's top-voted partner is its source. Above the
    exact-search limit without FAISS the votes are skipped with a warning, not run out of
    memory."""
    import sys

    from bta_core.imageio import load_image
    from bta_core.scan import keypoint_votes
    from bta_core.scan.records import ScanImage
    from bta_core.scan.verify import iter_scan_images

    paths = [str(p) for p in bccd_images[:6]]
    rgb = load_image(paths[2])
    h, w = rgb.shape[:2]
    items = [ScanImage(p, p, "query", f"h{k}") for k, p in enumerate(paths)]
    crop = rgb[h // 4 : h - h // 8, w // 5 : w - w // 10]

    def images(its):
        yield from iter_scan_images(its[:-1])
        yield len(its) - 1, crop

    items.append(ScanImage("crop", "crop", "query", "hc"))
    votes = keypoint_votes.keypoint_candidates(items, True, 1, images)
    best_of_crop = [key for key in votes if 6 in key]
    assert best_of_crop == [(2, 6)]
    monkeypatch.setattr(keypoint_votes, "EXACT_MAX", 100)
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.warns(RuntimeWarning, match="need FAISS"):
        assert keypoint_votes.keypoint_candidates(items, True, 1, images) == {}


def test_a_rescan_reuses_the_keypoint_checks_of_the_same_pixels(corpus, tiny_model, tmp_path):
    """Checks are kept in the cache: a second scan repeats none and decides every pair the
    same; a damaged entry is checked again."""
    cache = tmp_path / "cache"
    kw = dict(model=tiny_model, cache_dir=cache, verify_per_image=2)
    first = scan(corpus["q"], **kw)
    assert first.stats["n_checked"] > 0 and first.stats["n_checked_from_cache"] == 0
    entries = sorted((cache / "verify").rglob("*.json"))
    assert len(entries) == first.stats["n_checked"]
    again = scan(corpus["q"], **kw)
    assert again.stats["n_checked_from_cache"] == again.stats["n_checked"] == len(entries)
    from bta_core.cli.scan import cached_checks

    assert f"({len(entries)} from the cache: " in cached_checks(again.stats)

    def decided(r):
        return {(p.path_a, p.path_b): (p.verdict, p.decided_by, p.transform) for p in r.pairs}

    assert decided(again) == decided(first)
    entries[0].write_text("{not json", encoding="utf-8")
    third = scan(corpus["q"], **kw)
    assert third.stats["n_checked_from_cache"] == len(entries) - 1
    assert decided(third) == decided(first)


def test_copies_of_one_image_form_one_group(tmp_path, bccd_images, dsb_images, cosine_model):
    """Four versions of one smear (a PNG re-save, a JPEG, a quarter turn, a crop) make six
    `same` pairs but one group of four images, three versions of a nuclei image a second group:
    pairs.csv numbers them, pairs.json lists them, the report shows each once (file names
    escaped), and unrelated images stay out."""
    import json

    src = load_image(bccd_images[3])
    folder = tmp_path / "figures"
    folder.mkdir()
    _save(src, folder / "orig.png")
    _save(src, folder / "resaved.jpg", quality=80)
    _save(np.rot90(src).copy(), folder / "turned.png")
    _save(src[60:420, 80:560], folder / "cropped.png")
    nuclei = load_image(dsb_images[7])
    _save(nuclei, folder / "nuclei.png")
    _save(nuclei[:, ::-1], folder / "nuclei_mirrored.png")
    _save(nuclei, folder / 'fig <b>&"3".jpg', quality=90)
    for k, p in enumerate([bccd_images[40], dsb_images[200]]):
        _save(load_image(p), folder / f"other_{k}.png")
    out = tmp_path / "out"
    result = scan(folder, model=cosine_model, out_dir=out, cache_dir=None, verify_per_image=3)
    from bta_core.scan.groups import copy_groups

    groups = copy_groups(result.pairs)
    four = {str(folder / n) for n in ("orig.png", "resaved.jpg", "turned.png", "cropped.png")}
    three = {str(folder / n) for n in ("nuclei.png", "nuclei_mirrored.png", 'fig <b>&"3".jpg')}
    assert [set(g.members) for g in groups] == [four, three]  # largest first
    assert sum(g.n_same_pairs for g in groups) == sum(p.verdict == "same" for p in result.pairs)
    rows = _read_csv(out / "pairs.csv")
    for r in rows:  # pairs.csv numbers each same pair by its group, and only same pairs
        want = "1" if r["path_a"] in four else "2" if r["path_a"] in three else "?"
        assert r["group"] == (want if r["verdict"] == "same" else "")
    doc = json.loads((out / "pairs.json").read_text())
    assert [set(g["files"]) for g in doc["groups"]] == [four, three]
    csv_groups = [r["group"] for r in rows]
    assert [str(p["group"] or "") for p in doc["pairs"]] == csv_groups  # one numbering
    page = (out / "report.html").read_text()
    assert 'id="group-1"' in page and "4 images of one source" in page
    assert 'id="group-2"' in page and "3 images of one source" in page
    assert page.count('href="#group-1"') == groups[0].n_same_pairs  # each card links to it
    assert "fig &lt;b&gt;&amp;&quot;3&quot;.jpg" in page and "<b>&" not in page


def test_planes_of_one_file_are_paired_only_with_within_files(tmp_path, bccd_images, tiny_model):
    """review 8, item 3: the frames of an ordinary time-lapse all look alike, so a --planes scan
    called its 10 frame pairs 'same'. Off by default on the command line: only planes of
    different files are paired (a PNG of frame 2 still matches it); on, every pair again."""
    import tifffile

    rgb = to_uint8(load_image(bccd_images[0]))[..., 1]
    rng = np.random.default_rng(0)
    frames = [np.clip(rgb + rng.integers(-3, 4, rgb.shape), 0, 255) for _ in range(5)]
    folder = tmp_path / "lapse"
    folder.mkdir()
    tifffile.imwrite(
        folder / "lapse.tif", np.stack(frames).astype(np.uint8), metadata={"axes": "TYX"}
    )
    Image.fromarray(frames[2].astype(np.uint8)).save(folder / "frame2.png")
    kw = dict(model=tiny_model, cache_dir=None, planes=True, top_k=50, verify_per_image=1)

    def stack_pairs(res):
        return [p for p in res.pairs if "lapse.tif" in p.path_a and "lapse.tif" in p.path_b]

    apart = scan(folder, within_files=False, **kw)
    assert len(apart.items) == 6 and not stack_pairs(apart)
    assert apart.stats["n_pairs_scored"] == 5 and apart.stats["within_files"] is False
    copy = next(p for p in apart.pairs if p.path_b.endswith("lapse.tif[t=2]"))
    assert copy.path_a.endswith("frame2.png") and copy.decided_by == "identical pixels"
    together = scan(folder, **kw)  # the core's default: as the napari panel documents it
    assert len(stack_pairs(together)) == 10 and together.stats["n_pairs_scored"] == 15


@pytest.mark.parametrize("faiss_above", [100, 0])
def test_score_all_leaves_out_pairs_within_one_file(tiny_model, faiss_above):
    """Exact blocks and FAISS candidates alike: no pair of two planes of one file (a file
    that is both scanned and a reference is not paired with itself either)."""
    z = torch.randn(7, tiny_model.embed_dim)
    roles = ["query"] * 5 + ["reference"] * 2
    files = [0, 0, 0, 1, 2, 2, 3]
    rows, stats = scan_candidates.score_all(
        tiny_model,
        z,
        roles,
        threshold=0.0,
        top_k=100,
        faiss_above=faiss_above,
        faiss_k=6,
        per_image=3,
        files=files,
    )
    pairs = {(int(i), int(j)) for _, i, j, _ in rows.tolist()}
    assert pairs and not [(i, j) for i, j in pairs if files[i] == files[j]]
    if faiss_above:
        # within: 10 query pairs less 3 of file 0; across: 5 x 2 less query 4 x reference 5
        assert stats["n_pairs_scored"] == stats["n_pairs_total"] == 7 + 9
        assert pairs == {(i, j) for i in range(5) for j in range(i + 1, 7) if files[i] != files[j]}


def test_a_pair_too_small_to_match_says_why_it_was_not_checked(tmp_path, bccd_images, tiny_model):
    """review 8, item 8: a 4x4 image got verified=0 and an empty not_checked, while `score`
    says "keypoint verification skipped: image too small"; the scan now says it too."""
    folder = tmp_path / "q"
    folder.mkdir()
    for k, src in enumerate(bccd_images[:2]):
        shutil.copy(src, folder / f"img{k}.jpg")
    Image.new("RGB", (4, 4), (120, 30, 60)).save(folder / "tiny.png")
    res = scan(folder, model=tiny_model, cache_dir=None, verify_per_image=3, out_dir=tmp_path / "o")
    tiny = [p for p in res.pairs if "tiny.png" in p.path_a + p.path_b]
    assert len(tiny) == 2
    for p in tiny:
        assert p.verified is None and p.match_confidence is None
        assert p.evidence.not_checked == (
            f"keypoint verification skipped: {folder / 'tiny.png'}: image too small to match "
            "(4x4 pixels)"
        )
    rows = [
        r
        for r in _read_csv(tmp_path / "o" / "pairs.csv")
        if "tiny.png" in r["path_a"] + r["path_b"]
    ]
    assert [r["verified"] for r in rows] == ["", ""]
    assert all(r["not_checked"].startswith("keypoint verification skipped") for r in rows)
