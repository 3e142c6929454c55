"""bta-core eval / calibrate: metrics vs scikit-learn, the pair sampler, end to end on real images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from bta_core.evaluation import metrics as mt
from bta_core.evaluation import pairs
from bta_core.evaluation.calibrate import calibrate, checkpoint_is_half
from bta_core.evaluation.methods import BackboneFeatures, ModelMethod
from bta_core.evaluation.protocols import evaluate


@pytest.fixture(scope="module")
def known_scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    y = rng.random(400) < 0.4
    s = np.round(rng.normal(y * 1.0, 1.0), 1)  # rounding makes ties
    return y.astype(int), s


def test_threshold_metrics_match_sklearn(known_scores):
    y, s = known_scores
    pred = s >= 0.5
    m = mt.threshold_metrics(y, s, 0.5)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    empty = mt.threshold_metrics(y, s, 99.0)
    assert empty["precision"] == 0.0 and empty["f1"] == 0.0


def test_ranking_metrics_match_sklearn(known_scores):
    y, s = known_scores
    assert mt.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s))
    assert mt.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s))
    fpr, tpr, thr = mt.roc_curve(y, s)
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    # best-F1 threshold: no other threshold does better
    t, f1 = mt.best_f1_threshold(y, s)
    assert f1 == pytest.approx(max(skm.f1_score(y, s >= u) for u in np.unique(s)))
    assert skm.f1_score(y, s >= t) == pytest.approx(f1)


def test_recall_at_fpr_and_at_k():
    y = np.r_[np.ones(10), np.zeros(200)]
    s = np.r_[np.linspace(0.5, 1.0, 10), np.linspace(0.0, 0.9, 200)]
    recall, thr = mt.recall_at_fpr(y, s, 0.01)
    neg = s[y == 0]
    assert np.mean(neg >= thr) <= 0.01
    assert recall == pytest.approx(np.mean(s[y == 1] >= thr))
    assert mt.recall_at_k(y, s, 10) == pytest.approx(np.sum(np.argsort(-s)[:10] < 10) / 10)


def test_sampler_label_rate_and_no_bad_negatives():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(300), 2)  # every field photographed twice
    population = np.arange(600) % 3
    rates = []
    for _ in range(5):
        partner, label = pairs.sample_partners(groups, rng, 0.4, population=population)
        neg = label == 0
        assert np.all(partner[label == 1] == np.flatnonzero(label == 1))
        assert not np.any(partner[neg] == np.flatnonzero(neg))  # no self-negatives
        assert not np.any(groups[partner[neg]] == groups[neg])  # no same-group negatives
        assert np.all(population[partner[neg]] == population[neg])  # hard negatives
        rates.append(label.mean())
    assert np.mean(rates) == pytest.approx(0.4, abs=0.03)
    ia, ib = pairs.hard_negative_pairs(groups, population, rng, per_image=5)
    assert np.all(groups[ia] != groups[ib]) and np.all(population[ia] == population[ib])


def test_model_pair_scores_match_model(tiny_model):
    torch.manual_seed(0)
    x = torch.rand(6, 3, 64, 64)
    method = ModelMethod("tiny", tiny_model, "memory")
    feats = BackboneFeatures(x)
    rep = method.represent(feats)
    ia, ib = np.array([0, 1, 2, 5]), np.array([3, 4, 2, 0])
    with torch.no_grad():
        z = tiny_model(x)
        ref = tiny_model.score_pairs(z[ia], z[ib]).numpy()
    np.testing.assert_allclose(method.score(rep, rep, ia, ib), ref, atol=1e-5)


@pytest.mark.parametrize("name", pairs.MANIPULATIONS)
def test_manipulations_shape(name):
    x = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    y = pairs.manipulate(x, name, 32)
    assert y.shape == (2, 3, 32, 32) and y.dtype == torch.float32
    assert float(y.min()) >= 0 and float(y.max()) <= 1


MANIPS = ("identity", "rot90", "crop25", "jpeg30", "combo")


@pytest.fixture(scope="module")
def eval_run(shared_data, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    data = [shared_data / "bccd" / "splits.csv", shared_data / "dsb2018" / "splits.csv"]
    res = evaluate(
        data,
        protocols=("paper", "reuse", "scan"),
        models=[("tiny", tiny_model)],
        baselines=("phash", "crhash", "backbone-cosine"),
        split="test",
        out=out,
        seeds=(0, 1),
        limit=6,
        calibration_split="val",
        negatives_per_image=4,
        manipulations=MANIPS,
        quiet=True,
    )
    return out, res


def test_end_to_end_writes_all_outputs(eval_run):
    out, res = eval_run
    for name in ("metrics.json", "metrics.md", "roc_paper.png", "roc_reuse.png", "roc_scan.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "reuse_recall.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["methods"] == ["tiny", "phash", "crhash", "backbone-cosine"]
    paper = saved["protocols"]["paper"]["methods"]
    for m in saved["methods"]:
        assert 0 <= paper[m]["metrics"]["auc"]["mean"] <= 1
        assert "f1@calibrated" in paper[m]["metrics"]  # fitted on val for uncalibrated methods
    reuse = saved["protocols"]["reuse"]["methods"]["phash"]["per_manipulation"]
    assert set(reuse) == set(MANIPS)
    assert reuse["identity"]["auc"] == pytest.approx(1.0)  # exact copies: phash is perfect
    scan = saved["protocols"]["scan"]["methods"]["backbone-cosine"]
    assert 0 < scan["average_precision"] <= 1
    md = (out / "metrics.md").read_text()
    assert "| metric | tiny | phash | crhash | backbone-cosine |" in md
    assert "ROC AUC" in md and "| crop25 |" in md


def test_calibrate_round_trip(shared_data, tiny_model, tmp_path, capsys, monkeypatch):
    from bta_core.checkpoint import read_config, save_checkpoint
    from bta_core.evaluation import calibrate as calibrate_mod

    ckpt = save_checkpoint(tiny_model, tmp_path / "tiny.safetensors", half=True)
    before = ckpt.read_bytes()
    data = [shared_data / "bccd" / "splits.csv", shared_data / "dsb2018" / "splits.csv"]
    # a random head cannot tell images apart: the max-F1 threshold would call most unrelated
    # pairs suspect, so nothing is written (in place by default: the file stays as it was)
    with pytest.raises(ValueError, match=r"not calibrated, nothing written.*--target-fpr 0.01"):
        calibrate(ckpt, data, split="val", limit=5, repeats=2, quiet=True)
    assert ckpt.read_bytes() == before
    # below that bar but above 5 % FPR it is written, with a warning
    monkeypatch.setattr(calibrate_mod, "USELESS_FPR", 1.0)
    out = tmp_path / "tiny-cal.safetensors"
    info = calibrate(ckpt, data, split="val", out=out, limit=5, repeats=2, quiet=False)
    assert info["fpr"] > 0.05
    assert "of the unrelated pairs through" in capsys.readouterr().err
    cfg = read_config(out)
    assert cfg.threshold == pytest.approx(info["threshold"]) and cfg.threshold != 0.5
    assert cfg.calibration["method"] == "max-f1" and cfg.calibration["split"] == "val"
    assert cfg.calibration["n_pairs"] == info["n_pairs"] > 0

    assert checkpoint_is_half(out)  # same precision as the input
    fpr_info = calibrate(out, data, split="val", target_fpr=0.05, limit=5, repeats=1, quiet=True)
    assert fpr_info["fpr"] <= 0.05
    assert read_config(out).calibration["method"] == "fpr<=0.05"


def _numbers(tree, prefix=""):
    """Flatten the numeric leaves of a results dict (timings left out)."""
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k not in ("seconds", "stage_seconds", "work_seconds", "date", "_roc"):
                out.update(_numbers(v, f"{prefix}/{k}"))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(_numbers(v, f"{prefix}/{i}"))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        out[prefix] = float(tree)
    return out


def test_cached_views_give_the_uncached_metrics(shared_data, tiny_model):
    """Views represented once and reused give the metrics of recomputing every pair batch."""
    data = [shared_data / "bccd" / "splits.csv", shared_data / "dsb2018" / "splits.csv"]
    kw = dict(
        protocols=("paper", "reuse", "scan"),
        models=[("tiny", tiny_model)],
        baselines=("phash", "crhash", "backbone-cosine"),
        split="test",
        out=None,
        seeds=(0, 1, 2),
        limit=5,
        calibration_split="val",
        negatives_per_image=4,
        manipulations=("identity", "rot90", "crop25", "jpeg30"),
        quiet=True,
    )
    cached = _numbers(evaluate(data, cache=True, **kw))
    uncached = _numbers(evaluate(data, cache=False, **kw))
    assert cached.keys() == uncached.keys()
    assert len(cached) > 100
    for k, v in cached.items():
        assert v == pytest.approx(uncached[k], abs=1e-6, nan_ok=True), k


def test_fast_crop_hash_is_imagehash(bccd_images, dsb_images):
    """The segment hashes of crophash equal imagehash.crop_resistant_hash's (any order)."""
    import imagehash
    from PIL import Image

    from bta_core.evaluation.crophash import crop_resistant_bits

    images = []
    for path in [bccd_images[0], dsb_images[0], dsb_images[360]]:
        im = Image.open(path).convert("RGB").resize((224, 224))
        # brightened and inverted copies: several bright and dark segments
        images += [im, im.point(lambda v: min(255, 3 * v)), im.point(lambda v: 255 - v)]
    n_segments = 0
    for im in images:
        ref = imagehash.crop_resistant_hash(im, segmentation_image_size=224, min_segment_size=278)
        want = sorted(np.packbits(s.hash.ravel()).tobytes() for s in ref.segment_hashes)
        got = sorted(np.packbits(b).tobytes() for b in crop_resistant_bits(im, 224, 278))
        assert got == want
        n_segments += len(got)
    assert n_segments > len(images)  # some images have several segments


def test_calibrate_keeps_threshold_and_stores_anchored_probability(
    shared_data, trained_checkpoint, tmp_path, capsys
):
    from bta_core.calibration import score_probability
    from bta_core.checkpoint import read_config

    before = read_config(trained_checkpoint)
    data = [shared_data / "bccd" / "splits.csv", shared_data / "dsb2018" / "splits.csv"]
    out = tmp_path / "cal.safetensors"
    info = calibrate(trained_checkpoint, data, out=out, limit=12, repeats=2, keep_threshold=True)
    err = capsys.readouterr().err
    assert "calibrate: scoring the pairs" in err and "fewer than 100" in err  # 48 pairs
    cfg = read_config(out)
    assert cfg.threshold == before.threshold == info["threshold"]
    rec = cfg.calibration["probability"]
    assert rec["pairs"] == 48 and rec["platt"][0] > 0 and "bccd, dsb2018" in rec["fitted_on"]
    assert score_probability(cfg.calibration, cfg.threshold) == pytest.approx(0.5)
    assert 0 <= rec["ece_at_prior"] <= 1 and 0 <= rec["ece_score"] <= 1


def test_eval_without_checkpoint_scores_the_bundled_model(monkeypatch, tmp_path):
    """As every other command: no --checkpoint means the bundled model; 'none' the baselines."""
    from bta_core.cli import eval as eval_cli
    from bta_core.cli import main

    seen = []
    monkeypatch.setattr(eval_cli, "evaluate", lambda data, **kw: seen.append(kw["checkpoints"]))
    argv = ["eval", str(tmp_path), "--out", str(tmp_path / "e"), "--quiet"]
    assert main(argv) == 0
    assert main([*argv, "--checkpoint", "none"]) == 0
    assert main([*argv, "--checkpoint", "a.safetensors"]) == 0
    assert seen == [["default"], [], ["a.safetensors"]]


def test_eval_and_calibrate_name_the_files_they_skip(bccd_images, tiny_model, tmp_path, capsys):
    """An unreadable file in the evaluated folder is left out and named, with its problem, on
    stderr and in metrics.json; calibrate names it too (image-io.md's batch-job rule)."""
    import json
    import shutil

    from bta_core.checkpoint import save_checkpoint
    from bta_core.cli import main as cli_main

    folder = tmp_path / "figs"
    folder.mkdir()
    for p in bccd_images[:6]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 40)
    out = tmp_path / "eval"
    argv = ["eval", str(folder), "--checkpoint", "none", "--baselines", "phash"]
    assert cli_main([*argv, "--protocol", "reuse", "--out", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"skipped {folder / 'broken.tif'}: " in err
    saved = json.loads((out / "metrics.json").read_text())
    assert [s["path"] for s in saved["skipped"]] == [str(folder / "broken.tif")]
    assert saved["n_images"] == 6
    ckpt = save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")
    calibrate(ckpt, [folder], split=None, out=tmp_path / "cal.safetensors", repeats=1)
    assert f"skipped {folder / 'broken.tif'}: " in capsys.readouterr().err


def _toy_feature_set(shift: float = 3.0):
    """A held-out test split of 24 images whose manipulated copies all share one systematic
    shift (what a whitening fitted on the copies would learn and discount)."""
    from bta_core.training.features import FeatureSet

    g = torch.Generator().manual_seed(0)
    n, d = 24, 32
    clean = torch.randn(n, d, generator=g)
    offset = shift * torch.randn(d, generator=g)
    copies = [clean + offset + 0.5 * torch.randn(n, d, generator=g)]
    copies += [clean + 0.8 * torch.randn(n, d, generator=g) for _ in range(2)]
    return FeatureSet(
        name="toy",
        clean=clean,
        views=torch.zeros(0, 1, d),
        manip=torch.stack(copies, 1),
        groups=np.arange(n) // 2,
        splits=np.array(["test"] * n),
        population=np.array(["toy/a", "toy/b"] * (n // 2)),
        trainval_index=np.zeros(0, dtype=np.int64),
        test_index=np.arange(n),
        test_views=["shifted", "paper_a", "paper_b"],
        files=[f"{i}.png" for i in range(n)],
    )


def test_holdout_collection_whitening_fits_the_clean_images_only(monkeypatch):
    """The adapted (collection) scores of the leave-one-out protocol whiten with the clean test
    images only, as a scan of a folder of clean images and a few copies would: the copies stay
    outside the fit and each pair's clean image is left out. Fitting the copies too (the
    optimistic protocol used until 2026-11-29) would fail both checks below."""
    import torch.nn.functional as F

    from bta_core.evaluation import holdout
    from bta_core.training.features import negative_partners
    from bta_core.whitening import fit_whitening, pair_similarity

    fs = _toy_feature_set()
    fitted = []

    def spy(x, *args, **kwargs):
        fitted.append(x.clone())
        return fit_whitening(x, *args, **kwargs)

    monkeypatch.setattr(holdout, "fit_whitening", spy)
    adapted = holdout.evaluate_heldout(fs, holdout.CollectionScorer(holdout.Scorer()), 0.5)
    assert adapted["identity"]["min"] == pytest.approx(1.0)
    gate = (holdout.CollectionScorer(holdout.Scorer()), 0.2)  # the scan's rule, as a gate
    holdout.evaluate_heldout(fs, holdout.Scorer(), 0.5, gate=gate)
    zc = F.normalize(fs.clean, dim=-1)
    assert fitted and all(torch.equal(f, zc) for f in fitted)
    # the same figures by hand: clean source in the fit and left out, copy outside it
    res = holdout.evaluate_heldout(fs, holdout.CollectionScorer(holdout.Scorer()), 0.5)
    zm = F.normalize(fs.manip[:, 0], dim=-1)
    w = fit_whitening(zc)
    ia, ib = negative_partners(fs.groups, fs.population, np.random.default_rng(0))
    pos = pair_similarity(w, zc, zm, True, False).double().numpy()
    neg = pair_similarity(w, zc[ia], zm[ib], True, False).double().numpy()
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    assert res["reuse"]["shifted"]["auc"] == pytest.approx(skm.roc_auc_score(y, np.r_[pos, neg]))
    assert res["reuse"]["shifted"]["recall@thr"] == pytest.approx(float((pos >= 0.5).mean()))
    # fitted on the clean images plus every shifted copy, the shift is discounted: the copies'
    # whitened cosines rise (what the protocol must not measure)
    w_both = fit_whitening(torch.cat([zc, zm]))
    optimistic = pair_similarity(w_both, zc, zm).double().numpy()
    assert optimistic.mean() > pos.mean() + 0.1
    # reuse_mean leaves the trivial identity row out
    manips = [k for k in res["reuse"] if k != "identity"]
    assert res["reuse_mean"]["auc"] == pytest.approx(
        np.mean([res["reuse"][m]["auc"] for m in manips])
    )
    assert "paper_at_0.5" not in res  # a whitened cosine is no probability
