"""The evaluation protocols (paper, reuse, scan) run for every method on the same pairs."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..augment import PAPER_VIEWS, apply_view
from ..checkpoint import atomic_write_text
from ..model import BTAModel
from .calibrate import calibration_pairs, fit_threshold
from .datasets import EvalData, load_eval_data
from .methods import BASELINES, BackboneFeatures, Method, ModelMethod, build_methods
from .metrics import (
    TARGET_FPR,
    average_precision,
    recall_at_fpr,
    recall_at_k,
    roc_auc,
    threshold_metrics,
)
from .pairs import (
    MANIPULATIONS,
    P_SAME,
    hard_negative_pairs,
    manipulate,
    resize_batch,
    sample_partners,
)
from .report import json_ready, markdown_report, plot_reuse_bars, plot_roc

PROTOCOLS = ("paper", "reuse", "scan")
PAPER_SEEDS = tuple(range(10))


def _mean_std(rows: list[dict]) -> dict[str, dict[str, float]]:
    keys = rows[0].keys()
    return {
        k: {
            "mean": float(np.nanmean([r[k] for r in rows])),
            "std": float(np.nanstd([r[k] for r in rows])),
        }
        for k in keys
    }


def run_paper(
    eval_data: EvalData,
    methods: Sequence[Method],
    size: int,
    seeds: Sequence[int] = PAPER_SEEDS,
    p_same: float = P_SAME,
    log: Callable[[str], None] = print,
) -> dict:
    """The paper's protocol: one pair per image, p_same = 0.4, over resamples with fixed seeds."""
    per_method: dict[str, list[dict]] = {m.name: [] for m in methods}
    pooled: dict[str, tuple[list, list]] = {m.name: ([], []) for m in methods}
    label_rate = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        partner, label = sample_partners(eval_data.groups, rng, p_same)
        label_rate.append(float(label.mean()))
        g = torch.Generator().manual_seed(10_000 + seed)
        xa = BackboneFeatures(apply_view(eval_data.images, PAPER_VIEWS[0], size, g))
        xb = BackboneFeatures(
            apply_view(eval_data.images[torch.as_tensor(partner)], PAPER_VIEWS[1], size, g)
        )
        idx = np.arange(len(partner))
        for m in methods:
            s = m.score(m.represent(xa), m.represent(xb), idx, idx)
            row = {"auc": roc_auc(label, s)}
            row.update(
                {f"{k}@default": v for k, v in threshold_metrics(label, s, m.threshold).items()}
            )
            if m.calibrated is not None:
                cal = threshold_metrics(label, s, m.calibrated)
                row.update({f"{k}@calibrated": v for k, v in cal.items()})
            per_method[m.name].append(row)
            pooled[m.name][0].append(label)
            pooled[m.name][1].append(s)
        log(f"paper: seed {seed} done ({len(idx)} pairs, {label.mean():.2f} same)")
    out = {
        "n_pairs_per_resample": int(len(eval_data.groups)),
        "seeds": list(seeds),
        "label_rate": float(np.mean(label_rate)),
        "methods": {},
    }
    for m in methods:
        y = np.concatenate(pooled[m.name][0])
        s = np.concatenate(pooled[m.name][1])
        out["methods"][m.name] = {**m.describe(), "metrics": _mean_std(per_method[m.name])}
        out["methods"][m.name]["_roc"] = (y, s)
    return out


def run_reuse(
    eval_data: EvalData,
    methods: Sequence[Method],
    size: int,
    manipulations: Sequence[str] = MANIPULATIONS,
    negatives_per_image: int = 32,
    target_fpr: float = TARGET_FPR,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Recall at ``target_fpr`` on hard negatives and ROC AUC per manipulation."""
    rng = np.random.default_rng(seed)
    na, nb = hard_negative_pairs(eval_data.groups, eval_data.population, rng, negatives_per_image)
    if len(na) == 0:
        raise ValueError("reuse protocol needs at least two groups in one data set and modality")
    idx = np.arange(len(eval_data.groups))
    orig = BackboneFeatures(resize_batch(eval_data.images, size))
    reps = {m.name: m.represent(orig) for m in methods}
    res: dict = {
        "n_images": len(idx),
        "n_negatives": int(len(na)),
        "target_fpr": target_fpr,
        "manipulations": list(manipulations),
        "methods": {m.name: {**m.describe(), "per_manipulation": {}} for m in methods},
    }
    pooled: dict[str, tuple[list, list]] = {m.name: ([], []) for m in methods}
    for k, name in enumerate(manipulations):
        xm = BackboneFeatures(manipulate(eval_data.images, name, size, seed=seed * 1000 + k))
        for m in methods:
            rep_m = m.represent(xm)
            pos = m.score(reps[m.name], rep_m, idx, idx)
            neg = m.score(reps[m.name], rep_m, na, nb)
            y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
            s = np.r_[pos, neg]
            recall, thr = recall_at_fpr(y, s, target_fpr)
            res["methods"][m.name]["per_manipulation"][name] = {
                "recall@fpr": recall,
                "auc": roc_auc(y, s),
                "threshold": thr,
            }
            pooled[m.name][0].append(y)
            pooled[m.name][1].append(s)
        log(f"reuse: {name} done")
    sf = eval_data.same_field
    res["n_same_field_pairs"] = int(len(sf))
    for m in methods:
        entry = res["methods"][m.name]
        per = entry["per_manipulation"]
        entry["mean_recall@fpr"] = float(np.mean([v["recall@fpr"] for v in per.values()]))
        entry["min_recall@fpr"] = float(np.min([v["recall@fpr"] for v in per.values()]))
        entry["mean_auc"] = float(np.mean([v["auc"] for v in per.values()]))
        y = np.concatenate(pooled[m.name][0])
        s = np.concatenate(pooled[m.name][1])
        entry["_roc"] = (y, s)
        if len(sf):
            neg = m.score(reps[m.name], reps[m.name], na, nb)
            pos = m.score(reps[m.name], reps[m.name], sf[:, 0], sf[:, 1])
            yy = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
            recall, thr = recall_at_fpr(yy, np.r_[pos, neg], target_fpr)
            entry["same_field"] = {
                "recall@fpr": recall,
                "auc": roc_auc(yy, np.r_[pos, neg]),
                "threshold": thr,
            }
    return res


def run_scan(
    eval_data: EvalData,
    methods: Sequence[Method],
    size: int,
    planted_fraction: float = 0.25,
    manipulations: Sequence[str] = MANIPULATIONS,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Rank all pairs of the images plus planted copies; AP and recall@k of the planted pairs."""
    rng = np.random.default_rng(seed)
    n = len(eval_data.groups)
    n_plant = max(1, int(round(planted_fraction * n)))
    src = np.sort(rng.choice(n, n_plant, replace=False))
    kinds = [manipulations[k % len(manipulations)] for k in range(n_plant)]
    copies = torch.empty(n_plant, 3, size, size)
    for k, name in enumerate(manipulations):
        sel = [i for i, kind in enumerate(kinds) if kind == name]
        if sel:
            copies[sel] = manipulate(
                eval_data.images[torch.as_tensor(src[sel])], name, size, seed + k
            )
    allx = BackboneFeatures(torch.cat([resize_batch(eval_data.images, size), copies]))
    owner = np.r_[np.arange(n), src]  # the original image each entry shows
    group = eval_data.groups[owner]
    ia, ib = np.triu_indices(n + n_plant, k=1)
    planted = (owner[ia] == owner[ib]) & (ib >= n)
    keep = planted | (group[ia] != group[ib])
    ia, ib, y = ia[keep], ib[keep], planted[keep].astype(np.int64)
    res: dict = {
        "n_images": n,
        "n_planted": n_plant,
        "n_pairs": int(len(ia)),
        "planted_manipulations": dict(zip(*np.unique(kinds, return_counts=True), strict=True)),
        "methods": {},
    }
    res["planted_manipulations"] = {k: int(v) for k, v in res["planted_manipulations"].items()}
    for m in methods:
        rep = m.represent(allx)
        s = m.score(rep, rep, ia, ib)
        res["methods"][m.name] = {
            **m.describe(),
            "average_precision": average_precision(y, s),
            "recall@k": recall_at_k(y, s, n_plant),
            "recall@2k": recall_at_k(y, s, 2 * n_plant),
            "auc": roc_auc(y, s),
            "_roc": (y, s),
        }
        log(f"scan: {m.name} done")
    return res


# ---------------------------------------------------------------------------------------------
# calibration of methods without a stored threshold


def calibrate_methods(
    methods: Sequence[Method],
    data: Sequence[str | os.PathLike],
    split: str,
    size: int,
    limit: int | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Give every method without a stored calibrated threshold one fitted on ``split`` pairs."""
    todo = [m for m in methods if m.calibrated is None]
    if not todo:
        return
    eval_data = load_eval_data(data, split, decode_size=2 * size, limit=limit)
    xa, xb, label = calibration_pairs(eval_data, size)
    fa, fb = BackboneFeatures(xa), BackboneFeatures(xb)
    idx = np.arange(len(label))
    for m in todo:
        s = m.score(m.represent(fa), m.represent(fb), idx, idx)
        info = fit_threshold(label, s)
        m.calibrated = info["threshold"]
        m.calibration = {**info, "split": split, "source": "fitted by bta-core eval"}


def evaluate(
    data: Sequence[str | os.PathLike],
    protocols: Sequence[str] = PROTOCOLS,
    checkpoints: Sequence[str | os.PathLike] = (),
    baselines: Sequence[str] = BASELINES,
    split: str | None = "test",
    out: str | os.PathLike | None = "eval",
    image_size: int | None = None,
    seeds: Sequence[int] = PAPER_SEEDS,
    limit: int | None = None,
    calibration_split: str | None = "val",
    device: str = "cpu",
    models: Sequence[tuple[str, BTAModel]] = (),
    negatives_per_image: int = 32,
    manipulations: Sequence[str] = MANIPULATIONS,
    quiet: bool = False,
) -> dict:
    """Run ``protocols`` for every method on the same pairs; write the outputs to ``out``.

    ``models`` adds already-loaded ``(label, model)`` pairs (tests). ``limit`` caps images per
    source. Methods without a stored calibrated threshold get one fitted on
    ``calibration_split`` (skipped when None or when the data has no such split). Returns the
    results dict that ``metrics.json`` holds.
    """
    log = (lambda _msg: None) if quiet else (lambda msg: print(msg, flush=True))
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"unknown protocol {unknown} (choose from {', '.join(PROTOCOLS)})")
    t0 = time.perf_counter()
    methods = build_methods(checkpoints, baselines, device, image_size, models)
    sizes = [m.model.config.image_size for m in methods if isinstance(m, ModelMethod)]
    size = int(image_size or (max(sizes) if sizes else 224))
    eval_data = load_eval_data(data, split, decode_size=2 * size, limit=limit)
    log(
        f"{len(eval_data.groups)} images ({', '.join(eval_data.population_names)}), views at {size} px"
    )
    if calibration_split and any(m.calibrated is None for m in methods):
        try:
            calibrate_methods(methods, data, calibration_split, size, limit, log)
        except ValueError as exc:  # e.g. folders without splits
            log(f"no calibration on {calibration_split!r}: {exc}")
    results: dict = {
        "data": [str(d) for d in data],
        "split": split,
        "image_size": size,
        "n_images": len(eval_data.groups),
        "populations": eval_data.population_names,
        "methods": [m.name for m in methods],
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "protocols": {},
    }
    out_dir = Path(out) if out is not None else None
    for proto in protocols:
        if proto == "paper":
            r = run_paper(eval_data, methods, size, seeds, log=log)
        elif proto == "reuse":
            r = run_reuse(
                eval_data,
                methods,
                size,
                manipulations=manipulations,
                negatives_per_image=negatives_per_image,
                log=log,
            )
        else:
            r = run_scan(eval_data, methods, size, manipulations=manipulations, log=log)
        results["protocols"][proto] = r
        if out_dir is not None:
            curves = {n: v["_roc"] for n, v in r["methods"].items()}
            plot_roc(curves, out_dir / f"roc_{proto}.png", f"{proto} protocol ({split or 'all'})")
            if proto == "reuse":
                plot_reuse_bars(r, out_dir / "reuse_recall.png")
    results["seconds"] = round(time.perf_counter() - t0, 1)
    clean = json_ready(results)
    md = markdown_report(results)
    if out_dir is not None:
        atomic_write_text(out_dir / "metrics.json", json.dumps(clean, indent=2) + "\n")
        atomic_write_text(out_dir / "metrics.md", md)
    log(md)
    return clean
