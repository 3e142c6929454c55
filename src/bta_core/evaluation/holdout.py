"""Leave-one-data-set-out protocol (issue 11): generalisation to a data set never trained on.

For every data set with a feature cache (``tools/cache_views.py``): train the projector and
head on the train splits of all the *other* data sets (``bta_core.training.features``), calibrate
the threshold on their val splits (FPR <= 1%), then test on the held-out set's test split:

* paper protocol: view A vs (p_same 0.4) view B of the same image or of another image of the
  same population (data set + modality), other group (negatives from the *same* data set and
  modality, unlike ``protocols.run_paper``, which draws them from any other group); accuracy
  and F1 at the calibrated threshold (1 % FPR: near the majority-class baseline, also
  reported) and, for the model, at the paper's operating point 0.5 (``paper_at_0.5``);
  ROC AUC; mean over 10 seeds;
* reuse suite (model score alone): per manipulation, clean image vs its manipulated copy
  against clean image vs the manipulated copy of up to 32 same-population images of other
  groups (hard negatives); ROC AUC, recall at 1% FPR (threshold from those negatives) and
  recall at the calibrated threshold; ``reuse_mean`` averages the manipulations without the
  trivial identity row (as ``protocols.run_reuse`` does);
* identity: s(x, x) of every test image (target >= 0.99);
* unrelated pairs: share of all clean test pairs of different groups called same at the
  calibrated threshold, overall and within one population;
* reliability: ECE (10 bins) and the bin table on the paper-protocol pairs.

``backbone-cosine`` (cosine of the frozen features, threshold calibrated the same way) is
scored on the same pairs for context. The adapted scorers (:class:`CollectionScorer`) whiten
with the clean test images only; copies and views are compared from outside that fit.

``checkpoints``: evaluate saved fold models (``without_<name>.safetensors``, as
``tools/train_default.py --datasets`` writes them) instead of training them again.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..training.features import (
    FeatureSet,
    FeatureTrainConfig,
    calibrate_on_val,
    embed,
    load_feature_set,
    negative_partners,
    pair_scores,
    train_on_features,
)
from ..whitening import MIN_IMAGES, fit_whitening, pair_similarity
from .calibrate import fit_collection_threshold
from .metrics import TARGET_FPR, reliability, roc_auc, threshold_at_fpr

P_SAME = 0.4
PAPER_THRESHOLD = 0.5
"""The paper's operating point: a pair is "same" when the head's probability reaches 0.5."""


def _recall_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float = TARGET_FPR) -> float:
    return float((pos >= threshold_at_fpr(neg, fpr)).mean())


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    return roc_auc(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])


class Scorer:
    """Scores pairs of cached features with a trained model or the backbone cosine."""

    def __init__(self, projector=None, head=None) -> None:
        self.projector, self.head = projector, head

    def rep(self, y: torch.Tensor) -> torch.Tensor:
        if self.projector is None:
            return F.normalize(y.float(), dim=-1)
        return embed(self.projector, y)

    def pairs(
        self, za: torch.Tensor, zb: torch.Tensor, a_in_fit: bool = True, b_in_fit: bool = True
    ) -> np.ndarray:
        """Row-wise scores (``*_in_fit`` only matter to :class:`CollectionScorer`)."""
        if self.head is None:
            return (za * zb).sum(-1).double().numpy()
        return pair_scores(self.head, za, zb)


class CollectionScorer(Scorer):
    """The collection similarity as a scan computes it (``scan.collection``): ``base``'s vectors
    whitened with the collection being scanned, each pair left out of the fit
    (``whitening.pair_similarity``).

    :func:`evaluate_heldout` fits it once, on the clean test images only: a realistic folder
    holds the clean images and the few copies being compared, so a manipulated copy (or a
    paper-protocol view) is compared from outside the fit, and the clean image of a pair is
    left out of it. Fitting on every image's copy under the manipulation being scored would
    let the whitening learn and discount that manipulation's systematic shift (optimistic:
    the figures published until 2026-11-29 did that)."""

    def __init__(self, base: Scorer) -> None:
        super().__init__()
        self.base = base
        self.whitening = None

    def rep(self, y: torch.Tensor) -> torch.Tensor:
        return self.base.rep(y)

    def fit(self, vectors: torch.Tensor) -> None:
        """Whiten with ``vectors``, the collection (the clean images of the folder)."""
        self.whitening = fit_whitening(vectors)
        if self.whitening is None:
            raise ValueError(f"need at least {MIN_IMAGES} images to adapt, got {len(vectors)}")

    def pairs(
        self, za: torch.Tensor, zb: torch.Tensor, a_in_fit: bool = True, b_in_fit: bool = True
    ) -> np.ndarray:
        """Whitened cosines; ``a_in_fit``/``b_in_fit``: whether that side's images were fitted
        (those are left out for their pair; a vector never fitted is not taken out)."""
        w = self.whitening
        return pair_similarity(w, za, zb, a_in_fit, b_in_fit).double().numpy()


def evaluate_heldout(
    s: FeatureSet,
    scorer: Scorer,
    threshold: float,
    seed: int = 0,
    gate: tuple[Scorer, float] | None = None,
) -> dict:
    """All held-out metrics of one scorer on the test split of ``s``.

    ``gate``: a second scorer and threshold that a pair must also reach to be called (the
    product's rule: model score and collection similarity, ``verdict.Policy``); it changes the
    thresholded figures (recall, FPR, accuracy, F1), not the ROC AUCs of ``scorer``.
    """
    idx = s.test_index
    groups, pop = s.groups[idx], s.population[idx]
    rep = {"c": scorer.rep(s.clean[idx]), "m": scorer.rep(s.manip)}
    grep = {"c": gate[0].rep(s.clean[idx]), "m": gate[0].rep(s.manip)} if gate else None

    # the collection a scan of the test folder whitens with: the clean images, nothing else
    for sc, reps in ((scorer, rep), (gate[0] if gate else None, grep)):
        if isinstance(sc, CollectionScorer):
            sc.fit(reps["c"])

    def scored(a: tuple, b: tuple) -> tuple[np.ndarray, np.ndarray]:
        """Scores of row-wise pairs and whether each is called; ``a``/``b``: (view, key).
        Clean images ("c") are in the collection's fit, copies and views ("m") are not."""

        def pick(reps: dict, view: tuple) -> torch.Tensor:
            kind, key = view
            return reps[kind][key]

        fitted = (a[0] == "c", b[0] == "c")
        p = scorer.pairs(pick(rep, a), pick(rep, b), *fitted)
        called = p >= threshold
        if grep is not None:
            called &= gate[0].pairs(pick(grep, a), pick(grep, b), *fitted) >= gate[1]
        return p, called

    names = s.test_views
    rng = np.random.default_rng(seed)
    ia, ib = negative_partners(groups, pop, rng)
    every = slice(None)
    out: dict = {"n_test_images": int(len(idx))}
    # identity
    ident, _ = scored(("c", every), ("c", every))
    out["identity"] = {"min": float(ident.min()), "mean": float(ident.mean())}
    # reuse suite
    reuse = {}
    for name in ["identity", *[n for n in names if not n.startswith("paper_")]]:
        col = every if name == "identity" else (every, names.index(name))
        kind = "c" if name == "identity" else "m"
        pos, pos_called = scored(("c", every), (kind, col))
        neg_col = ib if name == "identity" else (ib, names.index(name))
        neg, neg_called = scored(("c", ia), (kind, neg_col))
        reuse[name] = {
            "auc": _auc(pos, neg),
            "recall@1%fpr": _recall_at_fpr(pos, neg),
            "recall@thr": float(pos_called.mean()),
            "fpr@thr": float(neg_called.mean()),
        }
    out["reuse"] = reuse
    manips = [k for k in reuse if k != "identity"]
    out["reuse_mean"] = {
        k: float(np.mean([reuse[m][k] for m in manips]))
        for k in ("auc", "recall@1%fpr", "recall@thr", "fpr@thr")
    }
    # unrelated clean pairs
    iu, ju = np.triu_indices(len(idx), k=1)
    keep = groups[iu] != groups[ju]
    iu, ju = iu[keep], ju[keep]
    su, su_called = scored(("c", iu), ("c", ju))
    same_pop = pop[iu] == pop[ju]
    out["unrelated"] = {
        "n_pairs": int(len(su)),
        "fpr@thr": float(su_called.mean()),
        "fpr@thr_same_population": float(su_called[same_pop].mean()),
        "max": float(su.max()),
        "p99": float(np.quantile(su, 0.99)),
    }
    # paper protocol
    ka, kb = names.index("paper_a"), names.index("paper_b")
    at_half = scorer.head is not None and gate is None  # a probability: 0.5 means something
    rows, rows_half, all_y, all_p = [], [], [], []

    def counts(pred: np.ndarray, y: np.ndarray) -> dict:
        tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
        fn = int((~pred & (y == 1)).sum())
        return {
            "accuracy": float((pred == y).mean()),
            "f1": 2 * tp / max(2 * tp + fp + fn, 1),
            "precision": tp / max(tp + fp, 1),
            "recall": tp / max(tp + fn, 1),
        }

    for sd in range(10):
        r = np.random.default_rng(sd)
        partner = np.arange(len(idx))
        same = r.random(len(idx)) < P_SAME
        for i in np.flatnonzero(~same):
            cand = np.flatnonzero((groups != groups[i]) & (pop == pop[i]))
            if len(cand) == 0:
                cand = np.flatnonzero(groups != groups[i])
            partner[i] = cand[r.integers(len(cand))]
        p, pred = scored(("m", (every, ka)), ("m", (partner, kb)))
        y = same.astype(int)
        rows.append(
            {
                **counts(pred, y),
                "auc": _auc(p[y == 1], p[y == 0]),
                "majority_accuracy": float(1 - y.mean()),
            }
        )
        if at_half:
            rows_half.append(counts(p >= PAPER_THRESHOLD, y))
        all_y.append(y)
        all_p.append(p)
    # accuracy / F1 at the calibrated threshold (1 % FPR on the training sets' val pairs): few
    # pairs are called, so accuracy sits near the majority-class baseline ("all different")
    out["paper"] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["paper_std"] = {k: float(np.std([r[k] for r in rows])) for k in rows[0]}
    if at_half:  # the paper's operating point
        out["paper_at_0.5"] = {k: float(np.mean([r[k] for r in rows_half])) for k in rows_half[0]}
    if scorer.head is not None:
        e, table = reliability(np.concatenate(all_y), np.concatenate(all_p))
        out["ece"], out["reliability"] = e, table
    return out


def run_holdout(
    cache: Path,
    cfg: FeatureTrainConfig,
    only: list[str] | None = None,
    log: Callable[[str], None] = print,
    checkpoints: Path | None = None,
) -> dict:
    """Train on all cached data sets but one, test on that one, for each in turn
    (``checkpoints``: a folder of saved fold models evaluated instead of training them)."""
    paths = sorted(p for p in cache.glob("*.safetensors"))
    sets = [load_feature_set(p) for p in paths]
    res = {
        "protocol": "leave-one-data-set-out",
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, CPU, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "recipe": asdict(cfg),
        "datasets": [s.name for s in sets],
        "heldout": {},
    }
    if checkpoints is not None:
        res["fold_models"] = str(checkpoints)
    for h, held in enumerate(sets):
        if only and held.name not in only:
            continue
        train_sets = [s for k, s in enumerate(sets) if k != h]
        t0 = time.time()
        if checkpoints is not None:
            proj, head, train_log = load_fold_model(Path(checkpoints), held.name, train_sets)
        else:
            proj, head, train_log = train_on_features(
                train_sets,
                cfg,
                on_progress=lambda st, tot, row, held=held: log(
                    f"  [{held.name}] step {st}/{tot} loss {row['loss']:.4f} bce {row['bce']:.4f} "
                    f"pos {row['bce_pos']:.3f} neg {row['bce_neg']:.3f} "
                    f"hard {row.get('bce_hard', 0):.3f}"
                ),
            )
        cal = calibrate_on_val(proj, head, train_sets, TARGET_FPR)
        model = evaluate_heldout(held, Scorer(proj, head), cal["threshold"])
        cos = Scorer()
        cos_thr = calibrate_cosine(train_sets)
        base = evaluate_heldout(held, cos, cos_thr)
        # adapted: whitened with the held-out images of each block (unlabelled), as a scan of
        # them does; the threshold from the training sets' val splits, as `calibrate` fits it
        adapted = {}
        for key, scorer in (("adapted_model", Scorer(proj)), ("adapted_backbone", cos)):
            thr = calibrate_adapted(scorer, train_sets)
            adapted[key] = {
                "threshold": thr,
                **evaluate_heldout(held, CollectionScorer(scorer), thr),
            }
        # the product's rule in a scan: model score and collection similarity both reached
        gate = (CollectionScorer(Scorer(proj)), adapted["adapted_model"]["threshold"])
        adapted["model_in_collection"] = {
            "collection_threshold": gate[1],
            **evaluate_heldout(held, Scorer(proj, head), cal["threshold"], gate=gate),
        }
        res["heldout"][held.name] = {
            "trained_on": [s.name for s in train_sets],
            ("load_seconds" if checkpoints is not None else "train_seconds"): time.time() - t0,
            "calibration": cal,
            "model": model,
            "backbone_cosine": {"threshold": cos_thr, **base},
            **adapted,
            "train_log": train_log[-1:],
        }
        log(table_for(held.name, res["heldout"][held.name]))
    return res


def load_fold_model(folder: Path, name: str, train_sets: list[FeatureSet]) -> tuple:
    """Projector and head of ``folder/without_<name>.safetensors``; checks that the fold model
    was trained on exactly ``train_sets`` (its recipe's ``data``)."""
    from ..checkpoint import load_checkpoint

    path = folder / f"without_{name}.safetensors"
    model = load_checkpoint(path, torch.device("cpu"))
    trained = sorted(model.config.recipe.get("data") or [])
    if trained != sorted(s.name for s in train_sets):
        raise ValueError(f"{path} was trained on {trained}, not on the other data sets")
    model.projector.eval()
    model.head.eval()
    log = [model.config.recipe.get("last_log", {})]
    return model.projector, model.head, [{**log[0], "checkpoint": str(path)}]


def calibrate_cosine(sets: list[FeatureSet]) -> float:
    """Backbone-cosine threshold at 1% FPR on the same val negatives as the model."""
    rng = np.random.default_rng(0)
    neg = []
    for s in sets:
        idx, rows = s.split_rows("val")
        zc = F.normalize(s.clean[idx], dim=1)
        zv = F.normalize(s.views[rows], dim=-1)
        ia, ib = negative_partners(s.groups[idx], s.population[idx], rng)
        kk = torch.as_tensor(rng.integers(0, zv.shape[1], len(ib)))
        neg += [(zc[ia] * zv[ib, kk]).sum(1).numpy(), (zc[ia] * zc[ib]).sum(1).numpy()]
    return threshold_at_fpr(np.concatenate(neg), TARGET_FPR)


def calibrate_adapted(base: Scorer, sets: list[FeatureSet]) -> float:
    """Collection-similarity threshold at 1% FPR on the val splits of ``sets``, fitted as
    ``bta-core calibrate`` fits it (``evaluation.calibrate.fit_collection_threshold``)."""
    zc, names, groups = [], [], []
    for s in sets:
        idx, _ = s.split_rows("val")
        zc.append(base.rep(s.clean[idx]))
        names += [s.name] * len(idx)
        groups.append(s.groups[idx] + (0 if not groups else max(g.max() for g in groups) + 1))
    rec = fit_collection_threshold(
        torch.cat(zc), torch.empty(0), np.zeros(0), np.asarray(names), np.concatenate(groups)
    )
    if rec is None:
        raise ValueError("no val split has enough images to calibrate the collection threshold")
    return rec["threshold"]


def table_for(name: str, r: dict) -> str:
    """Text table of one held-out data set: the model, the backbone cosine and, where
    measured, both adapted to the held-out images (``model-ad``, ``bb-ad``)."""
    cols = [("model", r["model"]), ("bb-cos", r["backbone_cosine"])]
    adapted = (
        ("model-ad", "adapted_model"),
        ("bb-ad", "adapted_backbone"),
        ("m+coll", "model_in_collection"),
    )
    cols += [(c, r[k]) for c, k in adapted if k in r]
    lines = [
        f"== held out: {name} (trained on {', '.join(r['trained_on'])}; threshold "
        f"{r['calibration']['threshold']:.4f}, val FPR {r['calibration']['fpr']:.4f})",
        f"{'metric':34s} " + " ".join(f"{c:>8s}" for c, _ in cols),
    ]

    def row(label: str, *path: str) -> None:
        vals = []
        for _, v in cols:
            for k in path:
                v = v[k]
            vals.append(f"{v:8.3f}")
        lines.append(f"{label:34s} " + " ".join(vals))

    row("paper accuracy", "paper", "accuracy")
    row("paper F1", "paper", "f1")
    row("paper ROC AUC", "paper", "auc")
    row("reuse mean ROC AUC", "reuse_mean", "auc")
    row("reuse mean recall@1%FPR", "reuse_mean", "recall@1%fpr")
    row("reuse mean recall@thr", "reuse_mean", "recall@thr")
    row("identity min", "identity", "min")
    row("unrelated FPR@thr", "unrelated", "fpr@thr")
    row("unrelated FPR@thr same population", "unrelated", "fpr@thr_same_population")
    lines.append(f"{'ECE (paper pairs)':34s} {r['model']['ece']:8.3f}")
    lines.append("per manipulation: ROC AUC / recall@1%FPR, " + ", ".join(c for c, _ in cols))
    for man in r["model"]["reuse"]:
        cells = [
            f"{v['reuse'][man]['auc']:.3f}/{v['reuse'][man]['recall@1%fpr']:.3f}" for _, v in cols
        ]
        lines.append(f"  {man:12s} " + "  ".join(cells))
    return "\n".join(lines)


def evaluate_holdout(
    root: str | Path,
    cache: str | Path,
    out: str | Path,
    cfg: FeatureTrainConfig | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """``bta-core eval --protocol holdout``: cache missing data sets, run, write JSON + tables.

    ``root`` holds one folder per data set (each with ``splits.csv``); every one of them is
    held out in turn. Writes ``holdout.json`` and ``holdout.md`` into ``out``.
    """
    import json

    from ..checkpoint import atomic_write_text
    from ..training.view_cache import build_caches

    build_caches(root, cache, log=log)
    res = run_holdout(Path(cache), cfg or FeatureTrainConfig(), log=log)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "holdout.json", json.dumps(res, indent=1))
    tables = [table_for(name, r) for name, r in res["heldout"].items()]
    atomic_write_text(out / "holdout.md", "```\n" + "\n\n".join(tables) + "\n```\n")
    return res
