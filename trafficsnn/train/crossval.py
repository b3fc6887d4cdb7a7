"""Grouped k-fold cross-validation of several model kinds on the same samples.

For each seed, captures (and session groups) are dealt into k folds; each fold is the
test side once, the validation side is carved out of the remaining units (grouped
again), and every model kind is fitted on the same train/validation samples. Reported:
macro-F1 of the pooled out-of-fold predictions per seed (all flows and cap20 flows),
mean +- std over seeds, plus the per-fold mean +- std.
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
from .metrics import confusion, macro_f1, scores_from_confusion
from .runner import TrainOptions, fit_predictor
from .splits import grouped_kfold, grouped_split


def crossval(
    ds: SampleSet, opts: TrainOptions, models: Sequence[str] = ("snn", "mlp", "gbt"),
    k: int = 5, seeds: Sequence[int] = (0, 1, 2), log_path: str | Path | None = None,
    prefix: int | None = None, params: dict[str, dict] | None = None, tune: bool = False,
) -> dict:
    """Grouped k-fold CV of ``models`` on ``ds`` (see module doc).

    ``prefix``: the scikit-learn baselines see only the first ``prefix`` packets of each sample
    (``baselines.prefix_samples``; folds are still built from ``ds``, so they are the very
    folds of the whole-flow run). ``params``: baseline hyper-parameters per model name.
    ``tune``: each baseline picks its hyper-parameters from its tiny ``grid`` by macro-F1 on the
    fold's grouped validation side (``baselines.select_params``), never on the test fold.
    """
    n_cls = len(ds.classes)
    if prefix is not None:
        from .baselines import prefix_samples

        if set(models) & {"snn", "mlp"}:
            raise ValueError("prefix applies to the scikit-learn baselines; for snn/mlp use max_packets")
        ds_in = prefix_samples(ds, prefix)
    else:
        ds_in = ds
    res: dict = {"k": k, "seeds": list(seeds), "models": {}, "n": len(ds), "classes": ds.classes,
                 "max_packets": opts.max_packets, "preset": opts.preset, "prefix": prefix,
                 "params": params or {}, "tune": tune}
    for m in models:
        res["models"][m] = {"seed_macro_f1": [], "seed_macro_f1_cap20": [], "fold_macro_f1": [], "seconds": 0.0,
                            "confusion_sum": np.zeros((n_cls, n_cls), np.int64)}
    for seed in seeds:
        folds = grouped_kfold(ds.capture, ds.y, k, seed, opts.session_groups)
        oof = {m: np.full(len(ds), -1, np.int64) for m in models}
        for f in range(k):
            test_idx = np.flatnonzero(folds == f)
            rest = np.flatnonzero(folds != f)
            side = grouped_split(ds.capture[rest], ds.y[rest], (0.8, 0.2, 0.0), seed * 100 + f, opts.session_groups)
            train, val = ds_in.subset(rest[side == 0]), ds_in.subset(rest[side == 1])
            test = ds_in.subset(test_idx)
            for m in models:
                t0 = time.time()
                chosen = dict((params or {}).get(m, {}))
                if tune and m not in ("snn", "mlp"):
                    from .baselines import select_params

                    chosen, _ = select_params(m, train, val, seed * 1000 + f)
                    res["models"][m].setdefault("chosen_params", []).append(chosen)
                with tempfile.TemporaryDirectory() as tmp:
                    o = replace(opts, model=m, seed=seed * 1000 + f, quiet=True, resume=False,
                                baseline_params=chosen)
                    pred, _ = fit_predictor(train, val, o, Path(tmp))
                    p = pred.logits(test).argmax(1)
                oof[m][test_idx] = p
                f1 = macro_f1(test.y, p, n_cls)
                res["models"][m]["fold_macro_f1"].append(f1)
                res["models"][m]["seconds"] += time.time() - t0
                if log_path:
                    with open(log_path, "a") as fh:
                        fh.write(json.dumps({"seed": seed, "fold": f, "model": m, "max_packets": opts.max_packets,
                                             "prefix": prefix, "params": chosen, "macro_f1": f1,
                                             "n_test": len(test)}) + "\n")
        for m in models:
            res["models"][m]["seed_macro_f1"].append(macro_f1(ds.y, oof[m], n_cls))
            res["models"][m]["confusion_sum"] += confusion(ds.y, oof[m], n_cls)
            c = ds.cap20
            res["models"][m]["seed_macro_f1_cap20"].append(macro_f1(ds.y[c], oof[m][c], n_cls))
    for m, r in res["models"].items():
        sc = scores_from_confusion(r["confusion_sum"], ds.classes)
        r["per_class_f1_pooled_over_seeds"] = {k: v["f1"] for k, v in sc["per_class"].items()}
        r["confusion_sum"] = {"orientation": "C[true, pred], summed over seeds", "matrix": r["confusion_sum"].tolist()}
        for key in ("seed_macro_f1", "seed_macro_f1_cap20", "fold_macro_f1"):
            v = np.asarray(r[key])
            r[key.replace("seed_", "") + "_mean"] = float(v.mean())
            r[key.replace("seed_", "") + "_std"] = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return res


def format_table(results: list[dict]) -> str:
    """Markdown table: one row per (model, max_packets)."""
    lines = ["| model | packets | macro-F1 all flows | macro-F1 cap20 | per-fold macro-F1 |", "|---|---|---|---|---|"]
    for res in results:
        pk = res.get("prefix") or res["max_packets"] or "all"
        for m, r in res["models"].items():
            lines.append(f"| {m} | {pk} | {r['macro_f1_mean']:.3f} ± {r['macro_f1_std']:.3f} | "
                         f"{r['macro_f1_cap20_mean']:.3f} ± {r['macro_f1_cap20_std']:.3f} | "
                         f"{r['fold_macro_f1_mean']:.3f} ± {r['fold_macro_f1_std']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m trafficsnn.train.crossval DATA --labels CSV ...`` (used for the model card numbers)."""
    import argparse

    from .runner import expand_session_groups, load_samples

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data")
    ap.add_argument("--labels")
    ap.add_argument("--preset", default="packet")
    ap.add_argument("--models", default="snn,mlp,gbt")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-packets", default="all", help="comma-separated: all,10,30")
    ap.add_argument("--session-group", action="append", default=["ndpi"])
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--bin-s", type=float, default=None)
    ap.add_argument("--input-value", default=None, choices=["count", "log1p"])
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                    help="prefix/thinning augmentation for the SNN and the MLP (default: the SNN "
                         "follows its preset, improved: on; the MLP has none)")
    ap.add_argument("--weight-decay", type=float, default=None)
    ap.add_argument("--label-smoothing", type=float, default=None)
    ap.add_argument("--balance", choices=["loss", "sampler"], default=None,
                    help="loss: shuffled epochs + class-weighted loss; sampler: balanced sampler "
                         "(default: the preset's for the SNN, the sampler for the MLP)")
    ap.add_argument("--steps", type=int, default=None, help="improved encoding: time steps per sample")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--recipe", default=None,
                    help='JSON recipe overrides, e.g. \'{"sampler": "shuffle", "class_weight": "balanced"}\'')
    ap.add_argument("--model-json", default=None, help='SNN model overrides, e.g. \'{"beta_init": 0.9}\'')
    ap.add_argument("--prefixes", default=None,
                    help="scikit-learn baselines only: comma-separated first-k-packet prefixes (e.g. "
                         "1,2,3,5,10,20,30,50,all) computed from the cached samples' packet heads, on the folds "
                         "of the whole-flow samples (--max-packets must then be 'all')")
    ap.add_argument("--params", default=None,
                    help='baseline hyper-parameters per model, JSON, e.g. \'{"gbt": {"learning_rate": 0.05}}\'')
    ap.add_argument("--tune", action="store_true",
                    help="baselines pick hyper-parameters from their tiny grid on each fold's validation side")
    ap.add_argument("--out", default="crossval.json")
    a = ap.parse_args(argv)
    from .loop import recipe_overrides

    recipe = recipe_overrides(a.augment, a.weight_decay, a.label_smoothing, balance=a.balance)
    if a.recipe:
        recipe.update(json.loads(a.recipe))
    results = []
    for mp in a.max_packets.split(","):
        opts = TrainOptions(preset=a.preset, labels_csv=a.labels, session_groups=expand_session_groups(a.session_group),
                            max_packets=None if mp == "all" else int(mp), epochs=a.epochs, batch_size=a.batch_size,
                            cache_dir=a.cache_dir,
                            quiet=True, device="cpu", n_hidden=a.hidden, bin_s=a.bin_s, input_value=a.input_value,
                            n_steps=a.steps, lr=a.lr, model_overrides=json.loads(a.model_json or "{}"),
                            recipe=recipe)
        ds = load_samples(a.data, opts)
        for pf in (a.prefixes.split(",") if a.prefixes else [None]):
            res = crossval(ds, opts, a.models.split(","), a.k, [int(s) for s in a.seeds.split(",")],
                           log_path=Path(a.out).with_suffix(".log.jsonl"),
                           prefix=None if pf in (None, "all") else int(pf), params=json.loads(a.params or "{}"),
                           tune=a.tune)
            results.append(res)
            print(format_table([res]), flush=True)
    Path(a.out).write_text(json.dumps(results, indent=1))
    print(format_table(results))


if __name__ == "__main__":
    main()
