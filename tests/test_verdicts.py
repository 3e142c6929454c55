"""One evidence cascade, one decision: identical and near-exact copies are certain, look-alikes
are not "same", and ``score``, ``match`` and ``scan`` give a pair the same verdict (real images)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bta_core.assess import assess_pair
from bta_core.cli import main as cli_main
from bta_core.imageio import load_image, to_uint8
from bta_core.scan import scan
from bta_core.verdict import DEFAULT_PHASH_MAX_DISTANCE, Evidence, Policy, decide


@pytest.fixture(scope="module")
def copies(shared_data, tmp_path_factory) -> dict[str, Path]:
    """A real BCCD smear, its byte copy, lossless PNG re-save, JPEG re-encode and half-size
    copy, and two unrelated smears of the same modality (other field-of-view groups)."""
    with open(shared_data / "bccd" / "same_source_groups.csv", newline="") as fh:
        singles = [r["file"] for r in csv.DictReader(fh) if r["group_size"] == "1"]
    src, other1, other2 = (shared_data / "bccd" / "images" / f for f in singles[5:30:12])
    folder = tmp_path_factory.mktemp("verdicts")
    rgb = to_uint8(load_image(src))
    out = {"original": folder / "smear.jpg", "byte copy": folder / "copy of smear.jpg"}
    shutil.copy(src, out["original"])
    shutil.copy(src, out["byte copy"])
    out["lossless"] = folder / "smear resaved.png"
    Image.fromarray(rgb).save(out["lossless"])
    out["jpeg"] = folder / "smear q40.jpg"
    Image.fromarray(rgb).save(out["jpeg"], quality=40)
    out["half"] = folder / "smear half.png"
    Image.fromarray(rgb).resize((rgb.shape[1] // 2, rgb.shape[0] // 2), Image.LANCZOS).save(
        out["half"]
    )
    out["look-alike 1"] = folder / "other smear 1.jpg"
    out["look-alike 2"] = folder / "other smear 2.jpg"
    shutil.copy(other1, out["look-alike 1"])
    shutil.copy(other2, out["look-alike 2"])
    return out


EXPECTED = {
    ("original", "byte copy"): ("same", "identical pixels"),
    ("original", "lossless"): ("same", "identical pixels"),
    ("original", "jpeg"): ("same", "perceptual hash"),
    ("original", "half"): ("same", "perceptual hash"),
}


def test_self_pair_is_certain(copies, tiny_model):
    image = load_image(copies["original"])
    d = assess_pair(tiny_model, image, image, verify=False).decision
    assert (d.verdict, d.decided_by, d.probability) == ("same", "identical pixels", 1.0)


def test_scan_verdicts_and_ranking(copies, tiny_model):
    folder = copies["original"].parent
    res = scan(folder, model=tiny_model, cache_dir=None, top_k=100, verify_per_image=1)
    by_pair = {frozenset((Path(p.path_a).name, Path(p.path_b).name)): p for p in res.pairs}
    for (a, b), expected in EXPECTED.items():
        p = by_pair[frozenset((copies[a].name, copies[b].name))]
        assert (p.verdict, p.decided_by) == expected, (a, b)
    look_alike = by_pair[frozenset((copies["look-alike 1"].name, copies["look-alike 2"].name))]
    assert look_alike.verdict != "same"
    assert look_alike.evidence.phash_distance > DEFAULT_PHASH_MAX_DISTANCE
    assert not look_alike.evidence.identical_pixels
    # every copy of the smear outranks every pair of unrelated images
    family = {copies[k].name for k in ("original", "byte copy", "lossless", "jpeg", "half")}
    ranks = {
        frozenset((Path(p.path_a).name, Path(p.path_b).name)): r for r, p in enumerate(res.pairs)
    }
    copy_ranks = [r for key, r in ranks.items() if key <= family]
    other_ranks = [r for key, r in ranks.items() if not key <= family]
    assert len(copy_ranks) == 10 and max(copy_ranks) < min(other_ranks)
    assert res.stats["n_checked"] >= 1  # look-alike candidates went through keypoint matching


def test_score_cli_and_scan_agree(copies, tiny_model, tmp_path, capsys):
    from bta_core.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")
    res = scan(
        copies["original"].parent, model=tiny_model, cache_dir=None, top_k=100, verify_per_image=0
    )
    by_pair = {frozenset((p.path_a, p.path_b)): p for p in res.pairs}
    for a, b in [("original", "lossless"), ("original", "half"), ("look-alike 1", "look-alike 2")]:
        pa, pb = str(copies[a]), str(copies[b])
        argv = ["score", pa, pb, "--checkpoint", str(ckpt), "--device", "cpu", "--json"]
        assert cli_main(argv + ["--no-verify"]) == 0
        out = json.loads(capsys.readouterr().out)
        in_scan = by_pair[frozenset((pa, pb))]
        assert out["verdict"] == in_scan.verdict and out["decided_by"] == in_scan.decided_by
        assert out["decision"]["phash_distance"] == in_scan.evidence.phash_distance
        assert out["score"] == pytest.approx(in_scan.score, abs=1e-4)


def test_match_cli_prints_the_decision(copies, capsys):
    argv = ["match", str(copies["original"]), str(copies["half"]), "--no-model", "--json"]
    assert cli_main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decision"]["verdict"] == "same"
    assert out["decision"]["decided_by"] == "perceptual hash"
    assert out["found"]  # and the half-size copy is located
    assert np.isclose(out["transform"]["scale"], 2.0, atol=0.05)  # B shows A at half size


def test_collection_similarity_gates_model_only_suspects():
    """A high model score alone is 'suspect' only if the pair also stands out in the scanned
    collection; without collection evidence (single pair, old checkpoint) the score decides."""
    from bta_core.verdict import Evidence, Policy, decide, rank_key

    gated = Policy(threshold=0.9, collection_threshold=0.25)
    high = dict(model_score=0.95, model_probability=0.7)
    assert decide(Evidence(**high, collection_similarity=0.6), gated).verdict == "suspect"
    look_alike = decide(Evidence(**high, collection_similarity=0.05), gated)
    assert look_alike.verdict == "different" and look_alike.decided_by == "collection look-alike"
    assert look_alike.probability < 0.5 and "0.05 alike" in look_alike.explain()
    lower = decide(
        Evidence(model_score=0.92, model_probability=0.6, collection_similarity=0.0), gated
    )
    assert (
        rank_key(look_alike) > rank_key(lower) > rank_key(decide(Evidence(model_score=0.5), gated))
    )
    assert decide(Evidence(**high), gated).verdict == "suspect"  # not measured
    assert decide(Evidence(**high, collection_similarity=0.05), Policy(0.9)).verdict == "suspect"
    # the stronger evidence still decides whatever the collection says
    copy = Evidence(**high, collection_similarity=-0.2, phash_distance=3)
    assert decide(copy, gated).verdict == "same"
    with pytest.raises(ValueError, match="collection threshold"):
        Policy(threshold=0.9, collection_threshold=float("nan"))


def _microtissue_fields(shared_data: Path, n: int = 24) -> list[str]:
    """The first ``n`` phase-contrast microtissue files of one camera, one per field-of-view
    group (no two show the same field)."""
    with open(shared_data / "phase_culture" / "splits.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["modality"] == "phase-contrast-microtissue"]
    first_of_group: dict[str, str] = {}
    for r in rows:
        first_of_group.setdefault(r["group_id"], r["file"])
    return sorted(first_of_group.values())[:n]


def test_scan_records_collection_similarity_and_spares_look_alikes(shared_data, tmp_path):
    """The bundled model on 24 real phase-contrast microtissues of one camera (one image per
    field-of-view group, no copies): the score alone flags look-alikes, the collection evidence
    flags fewer; pairs.csv carries the collection similarity."""
    from bta_core.checkpoint import load_checkpoint

    files = _microtissue_fields(shared_data)
    assert len(files) == 24
    for f in files:
        shutil.copy(shared_data / "phase_culture" / f, tmp_path / Path(f).name)
    model = load_checkpoint(None)
    kw = dict(model=model, cache_dir=None, verify_per_image=0, top_k=50)
    alone = scan(tmp_path, collection=False, **kw)
    gated = scan(tmp_path, out_dir=tmp_path / "out", **kw)
    assert alone.stats["n_suspect"] > 0, "the score alone should flag some look-alikes"
    assert gated.stats["n_suspect"] < alone.stats["n_suspect"]
    assert gated.stats["collection_whitening"] and gated.stats["collection_threshold"] > 0
    with open(tmp_path / "out" / "pairs.csv", encoding="utf-8", newline="") as fh:
        sims = [float(r["collection_similarity"]) for r in csv.DictReader(fh)]
    assert len(sims) >= 50 and all(-1.0 <= s <= 1.0 for s in sims)


def test_a_small_folder_looked_up_in_an_index_borrows_its_statistics(shared_data, tmp_path):
    """Four real microtissue images (too few to whiten with) against an index of 20 others of
    that camera: the scan whitens with a sample of the index, so its pairs carry a collection
    similarity and the look-alikes the score alone flags are fewer; a folder scanned on its own
    has no collection evidence."""
    from bta_core.checkpoint import load_checkpoint
    from bta_core.index import build_index

    files = _microtissue_fields(shared_data)
    refs, folder = tmp_path / "published", tmp_path / "manuscript"
    refs.mkdir()
    folder.mkdir()
    for k, f in enumerate(files):
        shutil.copy(shared_data / "phase_culture" / f, (folder if k < 4 else refs) / Path(f).name)
    model = load_checkpoint(None)
    build_index([refs], tmp_path / "index", model, workers=0)
    kw = dict(model=model, cache_dir=None, verify_per_image=0, top_k=50, within=False)
    alone = scan(folder, collection=False, index=tmp_path / "index", **kw)
    borrowed = scan(folder, index=tmp_path / "index", **kw)
    assert borrowed.stats["index_background"] == 20
    assert borrowed.stats["collection_whitening"] and borrowed.stats["collection_images"] == 24
    assert all(p.evidence.collection_similarity is not None for p in borrowed.pairs)
    assert alone.stats["n_suspect"] > 0, "the score alone should flag some look-alikes"
    assert borrowed.stats["n_suspect"] < alone.stats["n_suspect"]
    assert not scan(folder, **{**kw, "within": True}).stats["collection_whitening"]


def test_hash_and_matcher_name_a_turn_the_same_way(bccd_images):
    """B = A turned by np.rot90: the perceptual hash, the matcher and the explanation all say
    rot90 (how B looks relative to A), never the inverse turn."""
    from bta_core.assess import fingerprint_evidence
    from bta_core.dihedral import D4_NAMES, apply_d4
    from bta_core.match import match_images
    from bta_core.verdict import Policy, decide

    a = load_image(bccd_images[5])
    b = apply_d4(a, D4_NAMES.index("rot90"))
    ev = fingerprint_evidence(a, b)
    assert ev.phash_orientation == "rot90" and ev.phash_distance <= 4
    assert fingerprint_evidence(b, a).phash_orientation == "rot270"  # A is B turned back
    assert "B is A turned 90 degrees counter-clockwise" in decide(ev, Policy()).explain()
    assert match_images(a, b).transform.dihedral == "rot90"


def test_a_retouched_copy_is_same_and_says_where_it_differs(bccd_images, tmp_path, capsys):
    """A real smear with a cell cloned over another: still reuse (`same`), and the verdict line,
    the JSON and a scan's pairs.csv say that B differs locally from A."""
    rgb = to_uint8(load_image(bccd_images[7]))
    edited = rgb.copy()
    edited[200:260, 300:360] = rgb[100:160, 150:210]
    a, b = tmp_path / "a.png", tmp_path / "retouched.png"
    Image.fromarray(rgb).save(a)
    Image.fromarray(edited).save(b)
    assert cli_main(["score", str(a), str(b), "--quiet", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "same" and doc["decision"]["local_edits"] >= 1
    assert cli_main(["score", str(a), str(a), "--quiet", "--json"]) == 0
    assert not json.loads(capsys.readouterr().out)["decision"]["local_edits"]
    # a scan checks near copies of the hash too: the edit is in pairs.csv and the report
    res = scan(tmp_path, cache_dir=None, out_dir=tmp_path / "out")
    pair = next(
        p for p in res.pairs if {Path(p.path_a).name, Path(p.path_b).name} == {a.name, b.name}
    )
    assert pair.verdict == "same" and pair.evidence.local_edits >= 1
    with open(tmp_path / "out" / "pairs.csv", encoding="utf-8", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["path_b"].endswith("retouched.png"))
    assert int(row["local_edits"]) >= 1
    assert "local difference" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


def test_tta_orientation_uses_the_same_convention(bccd_images):
    """With --tta d4 the model's best orientation of a turned copy is named as the hash and the
    matcher name it: how B looks relative to A, whichever image the scorer turned."""
    from bta_core.checkpoint import load_checkpoint
    from bta_core.dihedral import D4_NAMES, apply_d4
    from bta_core.model import embed_images
    from bta_core.scoring import orientation_name, pair_scores

    model = load_checkpoint(None)
    a = load_image(bccd_images[5])
    for name in ("rot90", "rot270", "flip_rot90"):
        b = apply_d4(a, D4_NAMES.index(name))
        z = embed_images(model, [a, b], tta="d4").to(model.device)
        _, code = pair_scores(model, z[:1], z[1:], "d4")
        assert orientation_name(int(code[0])) == name
        _, code = pair_scores(model, z[1:], z[:1], "d4")  # A and B swapped: the inverse turn
        assert orientation_name(int(code[0])) == D4_NAMES[invert(name)]


def invert(name: str) -> int:
    from bta_core.dihedral import D4_NAMES, invert_d4

    return invert_d4(D4_NAMES.index(name))


def test_a_never_calibrated_checkpoint_shows_no_probability(tiny_model):
    """A checkpoint without a Platt mapping has no P(same source): the raw score stands in for
    ranking, and the verdict line says the model is not calibrated instead of printing a P."""
    from bta_core.assess import set_model_score

    ev = set_model_score(Evidence(), tiny_model, 0.83)
    assert ev.model_score == 0.83 and ev.model_probability is None
    d = decide(ev, Policy(threshold=0.5))
    assert d.verdict == "suspect" and d.probability == 0.83  # ranks by the raw score
    assert "raw score, no calibrated P in this checkpoint" in d.explain()
    assert "P 0.83" not in d.explain()
    calibrated = decide(Evidence(model_score=0.83, model_probability=0.7), Policy(threshold=0.5))
    assert "(P 0.70)" in calibrated.explain() and "not calibrated" not in calibrated.explain()
