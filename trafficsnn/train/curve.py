"""Early-classification curve: macro-F1 against packets seen, for the SNN and the baselines.

Grouped k-fold cross-validation on identical folds for every model (the folds of
``crossval``: captures and session groups dealt into k folds, validation carved out
of the rest). The SNN is trained once per fold on whole samples and asked for its
anytime verdict after the first k packets (what the daemon reports at that point);
each scikit-learn baseline is re-fitted per prefix on features of the first k packets
only (``baselines.prefix_samples``), which favours the baselines. Also reported, from
the pooled out-of-fold whole-sample predictions: expected calibration error after
temperature scaling (the temperature fitted on each fold's validation side), and the
open-set ``unknown`` rule (threshold from validation): how many verdicts it withholds
and how accurate the kept and withheld ones are.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .datasets import SampleSet
from .metrics import expected_calibration_error, macro_f1, softmax
from .runner import TrainOptions, fit_predictor
from .splits import grouped_kfold, grouped_split

PREFIXES = (1, 2, 3, 5, 10, 20, 30, 50, None)   # None = all the packets the sample holds


def _label(p) -> str:
    return "all" if p is None else str(p)


def early_curve(ds: SampleSet, opts: TrainOptions, models: Sequence[str] = ("snn", "gbt", "rf", "knn"),
                k: int = 5, seeds: Sequence[int] = (0,), prefixes: Sequence[int | None] = PREFIXES,
                log_path: str | Path | None = None, progress: bool = False) -> dict:
    from .loop import unknown_threshold

    n_cls = len(ds.classes)
    labels = [_label(p) for p in prefixes]
    res: dict = {"k": k, "seeds": list(seeds), "prefixes": labels, "classes": ds.classes, "n": len(ds),
                 "preset": opts.preset, "encoding": ds.encoding, "models": {}}
    for m in models:
        res["models"][m] = {"seed_macro_f1": {lb: [] for lb in labels}, "seed_macro_f1_cap20": {lb: [] for lb in labels},
                            "seed_ece": [], "seed_ece_raw": [], "seed_unknown_rate": [], "seed_acc_kept": [],
                            "seed_acc_unknown": [], "seconds": 0.0}
    prefixed = {}
    if set(models) - {"snn"}:    # the baselines' view of every prefix, built once for all folds and seeds
        from .baselines import prefix_samples

        prefixed = {lb: prefix_samples(ds, p) for p, lb in zip(prefixes, labels)}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(seeds) * k * len(models), desc="curve", unit="fit", disable=None)
    for seed in seeds:
        folds = grouped_kfold(ds.capture, ds.y, k, seed, opts.session_groups)
        oof = {m: {lb: np.full(len(ds), -1, np.int64) for lb in labels} for m in models}
        probs = {m: np.zeros((len(ds), n_cls)) for m in models}
        raw = {m: np.zeros((len(ds), n_cls)) for m in models}
        unk = {m: np.zeros(len(ds)) for m in models}
        for f in range(k):
            test_idx = np.flatnonzero(folds == f)
            rest = np.flatnonzero(folds != f)
            side = grouped_split(ds.capture[rest], ds.y[rest], (0.8, 0.2, 0.0), seed * 100 + f, opts.session_groups)
            tr_idx, va_idx = rest[side == 0], rest[side == 1]
            for m in models:
                t0 = time.time()
                o = replace(opts, model=m, seed=seed * 1000 + f, quiet=True, resume=False)
                if m == "snn":
                    with tempfile.TemporaryDirectory() as tmp:
                        pred, _ = fit_predictor(ds.subset(tr_idx), ds.subset(va_idx), o, Path(tmp))
                    test = ds.subset(test_idx)
                    for p, lb in zip(prefixes, labels):
                        lg = pred.logits(test) if p is None else pred.prefix_logits(test, p)
                        oof[m][lb][test_idx] = lg.argmax(1)
                        if p is None:
                            whole = lg
                    temp = pred.temperature
                    thr = float(pred.spec.get("unknown_threshold", 0.0) or 0.0)
                else:
                    for p, lb in zip(prefixes, labels):
                        dp = prefixed[lb]
                        with tempfile.TemporaryDirectory() as tmp:
                            pred, _ = fit_predictor(dp.subset(tr_idx), dp.subset(va_idx), o, Path(tmp))
                            lg = pred.logits(dp.subset(test_idx))
                        oof[m][lb][test_idx] = lg.argmax(1)
                        if p is None:
                            whole, temp = lg, pred.temperature
                            va = dp.subset(va_idx)
                            thr = unknown_threshold(pred.logits(va), va.y, temp) if len(va) else 0.0
                probs[m][test_idx] = softmax(whole / temp)
                raw[m][test_idx] = softmax(whole)
                unk[m][test_idx] = thr
                res["models"][m]["seconds"] += time.time() - t0
                if bar is not None:
                    bar.update(1)
                if log_path:
                    with open(log_path, "a") as fh:
                        fh.write(json.dumps({"seed": seed, "fold": f, "model": m, "macro_f1": {
                            lb: macro_f1(ds.y[test_idx], oof[m][lb][test_idx], n_cls) for lb in labels}}) + "\n")
        for m in models:
            r = res["models"][m]
            for lb in labels:
                r["seed_macro_f1"][lb].append(macro_f1(ds.y, oof[m][lb], n_cls))
                c = ds.cap20
                r["seed_macro_f1_cap20"][lb].append(macro_f1(ds.y[c], oof[m][lb][c], n_cls))
            r["seed_ece"].append(expected_calibration_error(probs[m], ds.y))
            r["seed_ece_raw"].append(expected_calibration_error(raw[m], ds.y))
            conf, pred_c = probs[m].max(1), probs[m].argmax(1)
            is_unk = conf < unk[m]
            right = pred_c == ds.y
            r["seed_unknown_rate"].append(float(is_unk.mean()))
            r["seed_acc_kept"].append(float(right[~is_unk].mean()) if (~is_unk).any() else None)
            r["seed_acc_unknown"].append(float(right[is_unk].mean()) if is_unk.any() else None)
    if bar is not None:
        bar.close()
    for m, r in res["models"].items():
        r["macro_f1_mean"] = {lb: float(np.mean(v)) for lb, v in r["seed_macro_f1"].items()}
        r["macro_f1_std"] = {lb: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for lb, v in r["seed_macro_f1"].items()}
        r["macro_f1_cap20_mean"] = {lb: float(np.mean(v)) for lb, v in r["seed_macro_f1_cap20"].items()}
        r["ece_mean"] = float(np.mean(r["seed_ece"]))
        r["ece_raw_mean"] = float(np.mean(r["seed_ece_raw"]))
    if "snn" in res["models"]:
        s = res["models"]["snn"]["seed_macro_f1"]
        res["paired_snn_minus"] = {}
        for m in models:
            if m != "snn":
                b = res["models"][m]["seed_macro_f1"]
                res["paired_snn_minus"][m] = {lb: [float(x - y) for x, y in zip(s[lb], b[lb])] for lb in labels}
    return res


def format_curve(res: dict) -> str:
    """Markdown: one row per model, macro-F1 (mean ± std over seeds) per packets seen, then ECE."""
    labels = res["prefixes"]
    head = "| model | " + " | ".join(f"{lb} pkt" for lb in labels) + " | ECE (T-scaled) | unknown rate |"
    lines = [head, "|" + "---|" * (len(labels) + 3)]
    for m, r in res["models"].items():
        cells = [f"{r['macro_f1_mean'][lb]:.3f} ± {r['macro_f1_std'][lb]:.3f}" for lb in labels]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {r['ece_mean']:.3f} | {np.mean(r['seed_unknown_rate']):.2f} |")
    return "\n".join(lines)


def plot_curve(res: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = res["prefixes"]
    xs = list(range(len(labels)))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for m, r in res["models"].items():
        mu = np.array([r["macro_f1_mean"][lb] for lb in labels])
        sd = np.array([r["macro_f1_std"][lb] for lb in labels])
        ax.plot(xs, mu, marker="o", label=m, lw=2.2 if m == "snn" else 1.4)
        ax.fill_between(xs, mu - sd, mu + sd, alpha=0.12)
    ax.set_xticks(xs, labels)
    ax.set_xlabel("packets seen")
    ax.set_ylabel("macro-F1 (out-of-fold, grouped by capture)")
    ax.set_title(f"Early classification, {res['k']}-fold grouped CV, {len(res['seeds'])} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
