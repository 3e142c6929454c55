"""Evaluation outputs: metrics.md tables, ROC and recall plots, JSON-ready results."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write
from .datasets import describe_selection
from .metrics import roc_auc, roc_curve

PAPER_ROWS = [
    ("accuracy@default", "accuracy (fixed thr.)"),
    ("precision@default", "precision (fixed thr.)"),
    ("recall@default", "recall (fixed thr.)"),
    ("f1@default", "F1 (fixed thr.)"),
    ("auc", "ROC AUC"),
    ("accuracy@calibrated", "accuracy (calibrated thr.)"),
    ("precision@calibrated", "precision (calibrated thr.)"),
    ("recall@calibrated", "recall (calibrated thr.)"),
    ("f1@calibrated", "F1 (calibrated thr.)"),
]


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown_report(results: dict) -> str:
    """metrics.md: one table per protocol, methods as columns, metrics as rows."""
    parts = [f"# bta-core eval ({describe_selection(results['data'], results['split'])})\n"]
    for proto, r in results["protocols"].items():
        names = list(r["methods"])
        meth = r["methods"]
        if proto == "paper":
            parts.append(
                f"## paper protocol ({r['n_pairs_per_resample']} pairs x {len(r['seeds'])} "
                f"resamples, same-pair rate {r['label_rate']:.3f}; mean ± std)\n"
            )
            rows = []
            for key, label in PAPER_ROWS:
                row = [label]
                for n in names:
                    v = meth[n]["metrics"].get(key)
                    row.append(f"{v['mean']:.3f} ± {v['std']:.3f}" if v else "—")
                rows.append(row)
            rows.append(["threshold (fixed)"] + [_fmt(meth[n]["threshold"]) for n in names])
            rows.append(
                ["threshold (calibrated)"] + [_fmt(meth[n]["calibrated_threshold"]) for n in names]
            )
            parts.append(_table(["metric", *names], rows))
        elif proto == "reuse":
            parts.append(
                f"## reuse protocol ({r['n_images']} positives per manipulation, "
                f"{r['n_negatives']} hard negatives; recall at {r['target_fpr']:.0%} FPR / ROC AUC)\n"
            )
            rows = []
            for man in r["manipulations"]:
                rows.append(
                    [man]
                    + [
                        f"{_fmt(meth[n]['per_manipulation'][man]['recall@fpr'])} / "
                        f"{_fmt(meth[n]['per_manipulation'][man]['auc'])}"
                        for n in names
                    ]
                )
            rows.append(
                ["**mean** (without identity)"]
                + [
                    f"{_fmt(meth[n]['mean_recall@fpr'])} / {_fmt(meth[n]['mean_auc'])}"
                    for n in names
                ]
            )
            rows.append(
                ["**min recall** (without identity)"]
                + [_fmt(meth[n]["min_recall@fpr"]) for n in names]
            )
            if r["n_same_field_pairs"]:
                rows.append(
                    [f"same field, other photo ({r['n_same_field_pairs']} pairs)"]
                    + [
                        f"{_fmt(meth[n]['same_field']['recall@fpr'])} / "
                        f"{_fmt(meth[n]['same_field']['auc'])}"
                        for n in names
                    ]
                )
            parts.append(_table(["manipulation", *names], rows))
        else:
            parts.append(
                f"## scan protocol ({r['n_images']} images + {r['n_planted']} planted copies, "
                f"{r['n_pairs']} pairs ranked; k = {r['n_planted']})\n"
            )
            rows = [
                [label] + [_fmt(meth[n][key]) for n in names]
                for key, label in (
                    ("average_precision", "average precision"),
                    ("recall@k", "recall@k"),
                    ("recall@2k", "recall@2k"),
                    ("auc", "ROC AUC"),
                )
            ]
            parts.append(_table(["metric", *names], rows))
        parts.append("")
    return "\n".join(parts) + "\n"


POOLED_NOTES = {
    "paper": "pairs of all resamples pooled; metrics.md gives the mean over resamples",
    "reuse": "pairs of all manipulations pooled; metrics.md gives the mean of their AUCs",
}
"""Why a protocol's curve AUC differs from its table: the curve pools what the table averages."""


def plot_roc(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str, note: str = ""
) -> None:
    """One ROC curve per method on one PNG (``note``: a second title line, e.g. pooling)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (y, s) in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        auc = f"{'pooled ' if note else ''}AUC {roc_auc(y, s):.3f}"
        ax.plot(fpr, tpr, label=f"{name} ({auc})", lw=1.6)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=10 if not note else 8.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)


MODEL_RECALL_TARGET = 0.8
"""The project's goal for the learned model alone: mean recall at 1 % FPR on the reuse suite."""


def plot_reuse_bars(res: dict, path: Path) -> None:
    """Grouped bars: recall at the target FPR per manipulation, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["methods"])
    mans = list(res["manipulations"])
    has_sf = res.get("n_same_field_pairs", 0) > 0
    labels = mans + (["same field"] if has_sf else [])
    width = 0.8 / max(len(names), 1)
    wide = min(16.0, max(8.0, 3.0 + 0.12 * len(labels) * max(1, len(names))))
    fig, ax = plt.subplots(figsize=(wide, 4.8))
    x = np.arange(len(labels))
    for k, n in enumerate(names):
        per = res["methods"][n]["per_manipulation"]
        vals = [per[m]["recall@fpr"] for m in mans]
        if has_sf:
            vals.append(res["methods"][n]["same_field"]["recall@fpr"])
        ax.bar(x + (k - (len(names) - 1) / 2) * width, vals, width, label=n)
    ax.axhline(
        MODEL_RECALL_TARGET,
        color="black",
        lw=0.8,
        ls="--",
        label=f"goal for their mean: {MODEL_RECALL_TARGET} (learned model alone)",
    )
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"recall at {res['target_fpr']:.0%} FPR")
    ax.set_title("reuse protocol: recall per manipulation (hard negatives)")
    ax.legend(
        fontsize=7,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.08),
        ncol=min(5, len(names) + 1),
        frameon=False,
    )
    fig.tight_layout()
    _save_fig(fig, path)


def _save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def json_ready(obj):
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
