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
from .datasets import EvalData, load_eval_data, report_skipped
from .methods import BASELINES, Method, ModelMethod, build_methods
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
from .report import POOLED_NOTES, json_ready, markdown_report, plot_reuse_bars, plot_roc
from .views import ViewStore

PROTOCOLS = ("paper", "reuse", "scan")
PAPER_SEEDS = tuple(range(10))
PAPER_VIEW_SEED = 10_000


def _mean_std(rows: list[dict]) -> dict[str, dict[str, float]]:
    keys = rows[0].keys()
    return {
        k: {
            "mean": float(np.nanmean([r[k] for r in rows])),
            "std": float(np.nanstd([r[k] for r in rows])),
        }
        for k in keys
    }


def _bar(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=quiet, leave=False)


def _decode_progress(desc: str, quiet: bool):
    """A ProgressFn drawing a tqdm bar (created on the first call, closed on the last)."""
    bars: list = []

    def on_progress(done: int, total: int, _info=None) -> None:
        if not bars:
            bars.append(_bar(total, desc, quiet))
        bars[0].update(done - bars[0].n)
        if done >= total:
            bars[0].close()

    return on_progress


def paper_views(images: torch.Tensor, size: int, chunk: int = 128) -> tuple[torch.Tensor, ...]:
    """View A and view B of every image through the paper's two pipelines (drawn once)."""
    out = []
    for k, cfg in enumerate(PAPER_VIEWS):
        g = torch.Generator().manual_seed(PAPER_VIEW_SEED + k)
        parts = [
            apply_view(images[s : s + chunk], cfg, size, g) for s in range(0, len(images), chunk)
        ]
        out.append(torch.cat(parts))
    return tuple(out)


def run_paper(
    eval_data: EvalData,
    methods: Sequence[Method],
    size: int,
    seeds: Sequence[int] = PAPER_SEEDS,
    p_same: float = P_SAME,
    log: Callable[[str], None] = print,
    store: ViewStore | None = None,
    quiet: bool = True,
) -> dict:
    """The paper's protocol: one pair per image, p_same = 0.4, over resamples with fixed seeds.

    Every image has one view A and one view B (drawn once); a resample pairs view A of each
    image with view B of itself or of its drawn partner, so the backbone sees each view once.
    """
    store = store or ViewStore()
    per_method: dict[str, list[dict]] = {m.name: [] for m in methods}
    pooled: dict[str, tuple[list, list]] = {m.name: ([], []) for m in methods}
    label_rate = []
    bar = _bar(len(seeds) + 1, "paper", quiet)
    idx = np.arange(len(eval_data.groups))
    views: list[torch.Tensor] = []

    def view(k: int) -> torch.Tensor:
        if not views:
            views.extend(paper_views(eval_data.images, size))
        return views[k]

    if store.cache:
        rep_a = store.reps(("paper", "A", size), lambda: view(0), methods)
        rep_b = store.reps(("paper", "B", size), lambda: view(1), methods)
        views.clear()
    bar.update()
    for seed in seeds:
        rng = np.random.default_rng(seed)
        partner, label = sample_partners(eval_data.groups, rng, p_same)
        label_rate.append(float(label.mean()))
        if not store.cache:  # reference: the pair batches themselves through every method
            rep_a = store.represent(view(0), methods)
            rep_b = store.represent(view(1)[torch.as_tensor(partner)], methods)
        ib = partner if store.cache else idx
        for m in methods:
            s = m.score(rep_a[m.name], rep_b[m.name], idx, ib)
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
        bar.update()
        log(f"paper: seed {seed} done ({len(idx)} pairs, {label.mean():.2f} same)")
    bar.close()
    out = {
        "n_pairs_per_resample": int(len(eval_data.groups)),
        "seeds": list(seeds),
        "views": "one view A and one view B per image, shared by the resamples",
        "label_rate": float(np.mean(label_rate)),
        "methods": {},
    }
    for m in methods:
        y = np.concatenate(pooled[m.name][0])
        s = np.concatenate(pooled[m.name][1])
        out["methods"][m.name] = {**m.describe(), "metrics": _mean_std(per_method[m.name])}
        out["methods"][m.name]["_roc"] = (y, s)
    return out


def _originals(eval_data: EvalData, size: int, store: ViewStore, methods) -> dict:
    return store.reps(("orig", size), lambda: resize_batch(eval_data.images, size), methods)


def run_reuse(
    eval_data: EvalData,
    methods: Sequence[Method],
    size: int,
    manipulations: Sequence[str] = MANIPULATIONS,
    negatives_per_image: int = 32,
    target_fpr: float = TARGET_FPR,
    seed: int = 0,
    log: Callable[[str], None] = print,
    store: ViewStore | None = None,
    quiet: bool = True,
) -> dict:
    """Recall at ``target_fpr`` on hard negatives and ROC AUC per manipulation."""
    store = store or ViewStore()
    rng = np.random.default_rng(seed)
    na, nb = hard_negative_pairs(eval_data.groups, eval_data.population, rng, negatives_per_image)
    if len(na) == 0:
        raise ValueError("reuse protocol needs at least two groups in one data set and modality")
    idx = np.arange(len(eval_data.groups))
    bar = _bar(len(manipulations) + 1, "reuse", quiet)
    reps = _originals(eval_data, size, store, methods)
    bar.update()
    res: dict = {
        "n_images": len(idx),
        "n_negatives": int(len(na)),
        "target_fpr": target_fpr,
        "manipulations": list(manipulations),
        "methods": {m.name: {**m.describe(), "per_manipulation": {}} for m in methods},
    }
    pooled: dict[str, tuple[list, list]] = {m.name: ([], []) for m in methods}
    for k, name in enumerate(manipulations):
        bar.set_postfix_str(name)
        if name == "identity" and store.cache:  # the identity copy is the resized original
            reps_m = reps
        else:
            mk_seed = seed * 1000 + k
            reps_m = store.reps(
                ("manip", name, mk_seed, size),
                lambda name=name, mk_seed=mk_seed: manipulate(
                    eval_data.images, name, size, seed=mk_seed
                ),
                methods,
            )
        for m in methods:
            pos = m.score(reps[m.name], reps_m[m.name], idx, idx)
            neg = m.score(reps[m.name], reps_m[m.name], na, nb)
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
        bar.update()
        log(f"reuse: {name} done")
    bar.close()
    sf = eval_data.same_field
    res["n_same_field_pairs"] = int(len(sf))
    for m in methods:
        entry = res["methods"][m.name]
        # mean and min over the manipulations without the trivial identity copy (as the
        # leave-one-out protocol's ``reuse_mean``); identity keeps its own row
        per = entry["per_manipulation"]
        rows = [v for k, v in per.items() if k != "identity"] or list(per.values())
        entry["mean_recall@fpr"] = float(np.mean([v["recall@fpr"] for v in rows]))
        entry["min_recall@fpr"] = float(np.min([v["recall@fpr"] for v in rows]))
        entry["mean_auc"] = float(np.mean([v["auc"] for v in rows]))
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


def _score_blocks(m: Method, rep_o, rep_c, n: int, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Scores of pairs ``ia < ib`` over originals (index < n) followed by copies."""
    s = np.empty(len(ia))
    oo, cc = ib < n, ia >= n
    oc = ~(oo | cc)
    s[oo] = m.score(rep_o, rep_o, ia[oo], ib[oo])
    s[oc] = m.score(rep_o, rep_c, ia[oc], ib[oc] - n)
    s[cc] = m.score(rep_c, rep_c, ia[cc] - n, ib[cc] - n)
    return s


def run_scan(
    eval_data: EvalData,
    methods: Sequence[Method],
    size: int,
    planted_fraction: float = 0.25,
    manipulations: Sequence[str] = MANIPULATIONS,
    seed: int = 0,
    log: Callable[[str], None] = print,
    store: ViewStore | None = None,
    quiet: bool = True,
) -> dict:
    """Rank all pairs of the images plus planted copies; AP and recall@k of the planted pairs."""
    store = store or ViewStore()
    rng = np.random.default_rng(seed)
    n = len(eval_data.groups)
    n_plant = max(1, int(round(planted_fraction * n)))
    src = np.sort(rng.choice(n, n_plant, replace=False))
    kinds = [manipulations[k % len(manipulations)] for k in range(n_plant)]

    def make_copies() -> torch.Tensor:
        copies = torch.empty(n_plant, 3, size, size)
        for k, name in enumerate(manipulations):
            sel = [i for i, kind in enumerate(kinds) if kind == name]
            if sel:
                copies[sel] = manipulate(
                    eval_data.images[torch.as_tensor(src[sel])], name, size, seed + k
                )
        return copies

    bar = _bar(len(methods) + 2, "scan", quiet)
    rep_o = _originals(eval_data, size, store, methods)
    bar.update()
    rep_c = store.reps(("scan-copies", seed, planted_fraction, size), make_copies, methods)
    bar.update()
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
        s = _score_blocks(m, rep_o[m.name], rep_c[m.name], n, ia, ib)
        res["methods"][m.name] = {
            **m.describe(),
            "average_precision": average_precision(y, s),
            "recall@k": recall_at_k(y, s, n_plant),
            "recall@2k": recall_at_k(y, s, 2 * n_plant),
            "auc": roc_auc(y, s),
            "_roc": (y, s),
        }
        bar.update()
        log(f"scan: {m.name} done")
    bar.close()
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
    store: ViewStore | None = None,
    decoded: dict | None = None,
) -> None:
    """Give every method without a stored calibrated threshold one fitted on ``split`` pairs."""
    todo = [m for m in methods if m.calibrated is None]
    if not todo:
        return
    store = store or ViewStore()
    eval_data = load_eval_data(
        data, split, 2 * size, limit, _decode_progress("decode " + split, True), decoded
    )
    xa, xb, label = calibration_pairs(eval_data, size)
    idx = np.arange(len(label))
    n = len(eval_data.groups)
    if store.cache:  # xa repeats the resized originals: represent them once
        rep_a, ia = store.represent(xa[:n], todo), idx % n
    else:
        rep_a, ia = store.represent(xa, todo), idx
    del xa
    rep_b = store.represent(xb, todo)
    for m in todo:
        s = m.score(rep_a[m.name], rep_b[m.name], ia, idx)
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
    cache: bool = True,
) -> dict:
    """Run ``protocols`` for every method on the same pairs; write the outputs to ``out``.

    ``models`` adds already-loaded ``(label, model)`` pairs (tests). ``limit`` caps images per
    source. Methods without a stored calibrated threshold get one fitted on
    ``calibration_split`` (skipped when None or when the data has no such split). Returns the
    results dict that ``metrics.json`` holds, with the seconds spent per stage. Every view of
    an image is represented once per method and shared by resamples and protocols
    (``cache=False``: recomputed for every use, the slow reference path).
    """
    log = (lambda _msg: None) if quiet else (lambda msg: print(msg, flush=True))
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"unknown protocol {unknown} (choose from {', '.join(PROTOCOLS)})")
    t0 = time.perf_counter()
    stages: dict[str, float] = {}

    def stage(name: str, since: float) -> float:
        now = time.perf_counter()
        stages[name] = round(stages.get(name, 0.0) + now - since, 2)
        return now

    store = ViewStore(cache=cache)
    methods = build_methods(checkpoints, baselines, device, image_size, models)
    sizes = [m.model.config.image_size for m in methods if isinstance(m, ModelMethod)]
    size = int(image_size or (max(sizes) if sizes else 224))
    t = stage("load methods", t0)
    decoded: dict = {}  # every image decoded once, whichever splits need it
    eval_data = load_eval_data(
        data, split, 2 * size, limit, _decode_progress("decode", quiet), decoded
    )
    t = stage("decode", t)
    report_skipped(eval_data.skipped, quiet)
    log(
        f"{len(eval_data.groups)} images ({', '.join(eval_data.population_names)}), views at {size} px"
        + (f"; {len(eval_data.skipped)} unreadable files skipped" if eval_data.skipped else "")
    )
    if calibration_split and any(m.calibrated is None for m in methods):
        try:
            calibrate_methods(methods, data, calibration_split, size, limit, log, store, decoded)
        except ValueError as exc:  # e.g. folders without splits
            log(f"no calibration on {calibration_split!r}: {exc}")
        t = stage("calibration", t)
    results: dict = {
        "data": [str(d) for d in data],
        "split": split,
        "image_size": size,
        "n_images": len(eval_data.groups),
        "skipped": [{"path": p, "problem": why} for p, why in eval_data.skipped],
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
            r = run_paper(eval_data, methods, size, seeds, log=log, store=store, quiet=quiet)
        elif proto == "reuse":
            r = run_reuse(
                eval_data,
                methods,
                size,
                manipulations=manipulations,
                negatives_per_image=negatives_per_image,
                log=log,
                store=store,
                quiet=quiet,
            )
        else:
            r = run_scan(
                eval_data,
                methods,
                size,
                manipulations=manipulations,
                log=log,
                store=store,
                quiet=quiet,
            )
        results["protocols"][proto] = r
        if out_dir is not None:
            curves = {n: v["_roc"] for n, v in r["methods"].items()}
            title = f"{proto} protocol ({split or 'all'})"
            plot_roc(curves, out_dir / f"roc_{proto}.png", title, POOLED_NOTES.get(proto, ""))
            if proto == "reuse":
                plot_reuse_bars(r, out_dir / "reuse_recall.png")
        t = stage(proto, t)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["stage_seconds"] = stages
    results["work_seconds"] = {k: round(v, 2) for k, v in store.seconds.items()}
    del decoded
    log("seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    clean = json_ready(results)
    md = markdown_report(results)
    if out_dir is not None:
        atomic_write_text(out_dir / "metrics.json", json.dumps(clean, indent=2) + "\n")
        atomic_write_text(out_dir / "metrics.md", md)
    log(md)
    return clean
