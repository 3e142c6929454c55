"""Calibration of the probability mapping on a data set the model never saw (issue 11).

For each data set X, the fold model ``without_X.safetensors`` (trained on the other data sets'
train splits; benchmarks/holdout.py, tools/train_default.py --datasets) gets a Platt mapping as
``bta-core calibrate --keep-threshold`` fits it (``evaluation.calibrate.fit_probability``,
anchored at the fold's threshold) on the reuse-style `val` pairs of the *other* data sets. The
mapping is then tested on X's own `val` pairs (``calibrate.calibration_pairs``: the image
against a reuse view of itself with p 0.4, else of another group of its data set and modality,
3 repeats), reweighted to the mapping's prior (the share of reused pairs at which the threshold
is the even-odds point, as the in-sample figure of the model card is reported) and as sampled.
ECE: 10 equal-width bins (``metrics.reliability``).

Each data set's pairs are drawn once (seed ``CALIBRATION_SEED``) and shared by the folds; the
training sets' pairs of a fold are the union of theirs (``bta-core calibrate`` on both val
splits at once draws the same kind of pairs, not the same ones).

    python benchmarks/heldout_ece.py --out benchmarks/heldout_ece_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bta_core.calibration import platt_probability
from bta_core.checkpoint import load_checkpoint
from bta_core.evaluation.calibrate import calibration_pairs, fit_probability
from bta_core.evaluation.datasets import load_eval_data
from bta_core.evaluation.methods import BackboneFeatures, ModelMethod
from bta_core.evaluation.metrics import reliability

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--models", default="/work/cache/heldout", help="without_<name>.safetensors")
    p.add_argument("--datasets", default="bccd,dsb2018,phase_culture")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/heldout_ece_cpu.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    names = args.datasets.split(",")
    size = 224
    pairs = {}
    for name in names:  # each data set's val pairs, drawn once, backbone features shared
        ev = load_eval_data([Path(args.data) / name / "splits.csv"], "val", decode_size=2 * size)
        xa, xb, label = calibration_pairs(ev, size)
        pairs[name] = (BackboneFeatures(xa), BackboneFeatures(xb), label.astype(bool))
        print(f"{name}: {len(label)} val pairs ({int(label.sum())} same)", flush=True)
    out = {
        "machine": f"{platform.node()} {platform.machine()}, CPU, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "protocol": __doc__.split("\n\n")[1].replace("\n", " "),
        "heldout": {},
    }
    for held in names:
        path = Path(args.models) / f"without_{held}.safetensors"
        model = load_checkpoint(path, torch.device("cpu"))
        method = ModelMethod(path.stem, model, str(path))
        thr = float(model.config.threshold)

        def scores(name: str, method=method) -> np.ndarray:
            fa, fb, label = pairs[name]
            idx = np.arange(len(label))
            return method.score(method.represent(fa), method.represent(fb), idx, idx)

        others = [n for n in names if n != held]
        s_fit = np.concatenate([scores(n) for n in others])
        y_fit = np.concatenate([pairs[n][2] for n in others])
        prob = fit_probability(y_fit, s_fit, thr, f"val pairs of {', '.join(others)}")
        s, y = scores(held), pairs[held][2]
        p_held = platt_probability(s, prob["platt"])
        base, prior = float(y.mean()), prob["prior"]
        w = np.where(y, prior / base, (1 - prior) / (1 - base))
        out["heldout"][held] = {
            "checkpoint": str(path),
            "threshold": thr,
            "mapping": {k: prob[k] for k in ("platt", "prior", "pairs", "positives", "fitted_on")},
            "in_sample": {"ece_at_prior": prob["ece_at_prior"]},
            "n_pairs": int(len(y)),
            "n_positive": int(y.sum()),
            "ece_at_prior": reliability(y, p_held, weights=w)[0],
            "ece_score_at_prior": reliability(y, s, weights=w)[0],
            "ece_as_sampled": reliability(y, p_held)[0],
            "ece_score_as_sampled": reliability(y, s)[0],
            "reliability_at_prior": reliability(y, p_held, weights=w)[1],
        }
        r = out["heldout"][held]
        print(
            f"held out {held}: mapping sigmoid({prob['platt'][0]:.3f} logit(s) "
            f"{prob['platt'][1]:+.3f}), prior {prior:.3f}; ECE at prior: probability "
            f"{r['ece_at_prior']:.3f}, raw score {r['ece_score_at_prior']:.3f}; as sampled "
            f"({base:.0%} same): probability {r['ece_as_sampled']:.3f}, raw score "
            f"{r['ece_score_as_sampled']:.3f} (in sample {prob['ece_at_prior']:.3f})",
            flush=True,
        )
    out["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(out, indent=1), encoding="utf-8")
    print(f"wrote {args.out} ({out['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
