"""What `trafficsnn train` and `trafficsnn evaluate` do, as library functions.

``train_run``: samples (datasets) -> split (splits) -> fit (loop / baselines) -> model
directory (H3's checkpoint format for the SNN; the same file names for the baselines)
plus the split manifest, the training log and curves, and a test-set report.
``evaluate_run``: a model directory + labelled data -> report.json, report.md,
confusion matrix (PNG + JSON).
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, ModelError
from .datasets import SampleCache, SampleSet, build_dataset
from .metrics import (classification_report, expected_calibration_error, paper_subtasks, softmax)
from .splits import (NDPI_SESSION_GROUPS, PAPER_SPLIT_WARNING, SPLIT_NAMES, LeakySplitWarning, grouped_split,
                     manifest, paper_split, save_manifest)

log = logging.getLogger(__name__)
BASELINE_FORMAT = "trafficsnn-baseline"
ENCRYPTIONS = {"nonVPN", "VPN", "Tor"}


def expand_session_groups(specs: Sequence[str]) -> list[list[str]]:
    """``ndpi`` -> the nDPI README's session groups; otherwise comma-separated globs per group."""
    out: list[list[str]] = []
    for s in specs:
        if s.strip().lower() == "ndpi":
            out += [list(g) for g in NDPI_SESSION_GROUPS]
        elif s.strip():
            out.append([p.strip() for p in s.split(",") if p.strip()])
    return out


# ---------------------------------------------------------------- predictors
@dataclass
class Predictor:
    """A trained model of any kind, as evaluation needs it."""

    kind: str                      # snn | mlp | a baselines.BASELINES name (gbt, rf, knn, knn1)
    classes: list[str]
    encoding: dict
    temperature: float
    spec: dict
    impl: Any = None
    device: str = "cpu"
    mlp_pool: int = 10

    def logits(self, ds: SampleSet, batch_size: int = 256) -> np.ndarray:
        if self.kind not in ("snn", "mlp"):       # scikit-learn baselines read what they declare
            return self.impl.decision(self.impl.inputs(ds))
        from .baselines import mlp_inputs

        if self.kind == "snn":
            return self._batched(ds, batch_size, lambda m, x, n: m(x))
        return self._batched(ds, batch_size, lambda m, x, n: m(x),
                             lambda idx: mlp_inputs(ds, idx, self.mlp_pool, self.device))

    def prefix_logits(self, ds: SampleSet, k: int, batch_size: int = 256) -> np.ndarray:
        """The SNN's anytime scores after each sample's first ``k`` packets (packet-clocked encodings)."""
        if self.kind != "snn" or ds.encoding.get("kind") != "packet":
            raise ConfigError("anytime scores after k packets need an SNN with the packet-clocked encoding")
        return self._batched(ds, batch_size, lambda m, x, n: m.prefix_logits(x, [k] * n))

    def _batched(self, ds: SampleSet, batch_size: int, score, make_input=None) -> np.ndarray:
        """``score(model, batch, n)`` over ``ds`` in batches (torch models), as one float64 array."""
        import torch

        model = self.impl
        model.eval()
        dtype = next(model.parameters()).dtype
        outs = []
        with torch.no_grad():
            for a in range(0, len(ds), batch_size):
                idx = np.arange(a, min(a + batch_size, len(ds)))
                x = make_input(idx) if make_input else ds.batch(idx, device=self.device, dtype=dtype)
                outs.append(score(model, x, len(idx)).double().cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, len(self.classes)))


def load_predictor(path: str | Path, device: str = "cpu") -> Predictor:
    p = Path(path)
    d = p.parent if p.suffix == ".json" else p
    j = d / "model.json"
    if not j.is_file():
        raise ModelError(f"model {d}: model.json is missing (pass the directory `trafficsnn train --out` wrote)")
    try:
        spec = json.loads(j.read_text())
    except ValueError as err:
        raise ModelError(f"model {j}: not valid JSON ({err})")
    kind = spec.get("model_kind", "snn")
    if spec.get("format") == BASELINE_FORMAT and kind != "mlp":
        from .baselines import baseline

        m, spec = baseline(kind).load(d)
        return Predictor(kind, list(spec["classes"]), spec["encoding"], float(spec.get("temperature", 1.0)), spec, m)
    if spec.get("format") == BASELINE_FORMAT and kind == "mlp":
        from safetensors.torch import load_file

        from .baselines import make_mlp

        c = spec["mlp"]
        model = make_mlp(int(c["n_cols"]), int(c["n_classes"]), int(c["hidden"]), float(c["dropout"]))
        try:
            model.load_state_dict(load_file(str(d / "model.safetensors")))
        except Exception as err:  # noqa: BLE001 - corrupt or mismatched file
            raise ModelError(f"model {d}: cannot load the MLP weights ({err})")
        model.to(device)
        return Predictor("mlp", list(spec["classes"]), spec["encoding"], float(spec.get("temperature", 1.0)), spec,
                         model, device, int(spec.get("mlp_pool", 10)))
    from ..snn.checkpoint import load_checkpoint

    lm = load_checkpoint(d, device=device)
    return Predictor("snn", lm.classes, lm.spec["encoding"], lm.temperature, lm.spec, lm.model, device)


# ---------------------------------------------------------------- reports
def evaluation_report(logits: np.ndarray, ds: SampleSet, temperature: float = 1.0, subset: str = "") -> dict:
    """Metrics of ``logits`` against ``ds.y`` (plus cap20 and paper sub-tasks where they apply)."""
    classes = ds.classes
    y = ds.y
    pred = logits.argmax(1) if len(y) else np.zeros(0, np.int64)
    rep: dict[str, Any] = {"subset": subset, "classes": list(classes)}
    rep.update(classification_report(y, pred, classes))
    if len(y):
        rep["calibration"] = {
            "temperature": float(temperature), "bins": 15,
            "ece_before": expected_calibration_error(softmax(logits), y),
            "ece_after": expected_calibration_error(softmax(logits, temperature), y),
        }
    if not ds.cap20.all():
        m = ds.cap20
        r20 = classification_report(y[m], pred[m], classes)
        rep["cap20"] = {k: r20[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1")}
        rep["cap20"]["per_class_f1"] = {k: v["f1"] for k, v in r20["per_class"].items()}
    if all("_" in c and c.rsplit("_", 1)[1] in ENCRYPTIONS for c in classes) and len(classes) > 3:
        rep["paper_subtasks"] = paper_subtasks(np.asarray(rep["confusion"]["matrix"]), classes)
    rep["flows"] = int(len(set(ds.flow.tolist())))
    rep["captures"] = int(len(set(ds.capture.tolist())))
    return rep


def plot_confusion(c: np.ndarray, classes: Sequence[str], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = np.asarray(c, np.float64)
    norm = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 0.55 * n), max(4.0, 1.2 + 0.5 * n)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted class"), ax.set_ylabel("true class")
    for i in range(n):
        for j in range(n):
            if c[i, j]:
                ax.text(j, i, int(c[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title or "confusion matrix C[true, pred]\n(colour: row-normalised recall)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _md_report(rep: dict, meta: dict) -> str:
    lines = [f"# Evaluation report{(' — ' + meta['model_kind']) if meta.get('model_kind') else ''}", ""]
    for k in ("model", "data", "preset", "model_kind", "subset", "max_packets"):
        if meta.get(k) is not None:
            lines.append(f"- {k}: `{meta[k]}`")
    lines += [f"- samples: {rep['n']} from {rep['flows']} flows in {rep['captures']} captures", "",
              "| metric | value |", "|---|---|"]
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1"):
        lines.append(f"| {k} | {rep[k]:.4f} |")
    if "cap20" in rep:
        lines.append(f"| macro_f1 (cap20 flows, n={rep['cap20']['n']}) | {rep['cap20']['macro_f1']:.4f} |")
    if "calibration" in rep:
        c = rep["calibration"]
        lines.append(f"| ECE before temperature scaling | {c['ece_before']:.4f} |")
        lines.append(f"| ECE after (T = {c['temperature']:.3f}, fitted on validation) | {c['ece_after']:.4f} |")
    lines += ["", "## Per class", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for k, v in rep["per_class"].items():
        lines.append(f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |")
    lines += ["", "Confusion matrix `C[true, pred]` (rows = true class, columns = predicted): "
              "`confusion.json`, `confusion.png`.", ""]
    if "paper_subtasks" in rep:
        ps = rep["paper_subtasks"]
        lines += ["## Paper sub-tasks (from the one multi-class model, computed correctly)", "",
                  "| task | accuracy | macro-F1 | n |", "|---|---|---|---|"]
        for e, s in ps["per_encryption"].items():
            lines.append(f"| categorisation within {e} | {s['accuracy']:.4f} | {s['macro_f1']:.4f} | {s['n']} |")
        for t in ("encryption", "application"):
            s = ps[t]
            lines.append(f"| {t} ({len(s['classes'])} classes) | {s['accuracy']:.4f} | {s['macro_f1']:.4f} "
                         f"| {s['n']} |")
        lines += ["", "Within-encryption rows keep every predicted application (a VPN sample predicted "
                  "as Browsing is an error; the authors' code drops it).", ""]
    return "\n".join(lines) + "\n"


def write_report(rep: dict, out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"meta": meta, **rep}, indent=1))
    (out / "confusion.json").write_text(json.dumps(rep["confusion"], indent=1))
    plot_confusion(np.asarray(rep["confusion"]["matrix"]), rep["classes"], out / "confusion.png")
    (out / "report.md").write_text(_md_report(rep, meta))


# ---------------------------------------------------------------- train
@dataclass
class TrainOptions:
    preset: str = "packet"
    model: str = "snn"
    labels_csv: str | None = None
    rules: str | None = None
    task: str = "all"
    source: str = "auto"
    split: str = "grouped"
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    session_groups: list[list[str]] = field(default_factory=list)
    seed: int = 0
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    device: str = "auto"
    max_packets: int | None = None
    min_packets: int = 10
    resume: bool = False
    cache_dir: str | None = None
    no_cache: bool = False
    quiet: bool = False
    mlp_pool: int = 10
    n_hidden: int | None = None
    manifest: str | None = None     # reuse a saved split manifest instead of computing one
    recipe: dict = field(default_factory=dict)   # recipe overrides (augment, label_smoothing, ...)
    bin_s: float | None = None      # improved encoding overrides
    n_steps: int | None = None
    input_value: str | None = None
    jobs: int = 1                   # worker processes for sample extraction (cache misses)
    model_overrides: dict = field(default_factory=dict)   # SNN model fields (beta_init, ...); experiments
    baseline_params: dict = field(default_factory=dict)   # scikit-learn baseline hyper-parameters


def load_samples(data, opts: TrainOptions, encoding=None, classes=None) -> SampleSet:
    from ..snn.registry import encoder_for

    if encoding is None:
        from ..snn.presets import preset

        encoding = preset(opts.preset)["encoding"]
        for key, v in (("bin_s", opts.bin_s), ("n_steps", opts.n_steps), ("value", opts.input_value)):
            if v is not None:
                if encoding["kind"] != "improved" and not (key == "n_steps" and encoding["kind"] != "paper"):
                    raise ConfigError(f"--{key.replace('_', '-')} applies to the improved preset only")
                encoding[key] = v
    enc = encoder_for(encoding)
    cache = SampleCache(opts.cache_dir, enabled=not opts.no_cache)
    return build_dataset(data, enc, labels_csv=opts.labels_csv, rules=opts.rules, task=opts.task,
                         source=opts.source, classes=classes, max_packets=opts.max_packets,
                         min_packets=opts.min_packets, cache=cache, progress=not opts.quiet, jobs=opts.jobs)


def split_samples(ds: SampleSet, opts: TrainOptions) -> tuple[np.ndarray, dict]:
    if opts.manifest:
        m = json.loads(Path(opts.manifest).read_text())
        side_of = {c: SPLIT_NAMES.index(v[0]) for c, v in m["captures"].items() if len(v) == 1}
        if m.get("kind") == "paper":
            raise ConfigError("--manifest: reusing a paper (window-level) manifest is not supported")
        missing = sorted({c for c in ds.capture if c not in side_of})
        if missing:
            raise ConfigError(f"--manifest {opts.manifest} does not place capture(s) {missing[:3]}...")
        side = np.array([side_of[c] for c in ds.capture], np.int64)
        kind = "manifest"
    elif opts.split == "paper":
        warnings.warn(PAPER_SPLIT_WARNING, LeakySplitWarning, stacklevel=2)
        side = paper_split(len(ds), opts.seed, warn=False)
        kind = "paper"
    elif opts.split == "grouped":
        side = grouped_split(ds.capture, ds.y, opts.fractions, opts.seed, opts.session_groups)
        kind = "grouped"
    else:
        raise ConfigError(f"unknown split {opts.split!r} (use grouped or paper)")
    man = manifest(side, ds.capture, ds.flow, ds.y, ds.classes, kind, opts.seed,
                   {"session_groups": opts.session_groups, "fractions": list(opts.fractions)})
    return side, man


def fit_predictor(train: SampleSet, val: SampleSet, opts: TrainOptions, out: Path,
                  group=None) -> tuple[Predictor, dict]:
    """Fit one model kind on ``train`` (selecting on ``val``) and save it into ``out``.

    ``group``: a ``distributed.Group`` when this is one rank of ``train --nproc`` (torch
    models only); rank 0 alone saves.
    """
    from .distributed import SINGLE

    group = group or SINGLE
    from .loop import TrainConfig, calibration_summary, fit_torch, seed_everything, unknown_threshold

    out.mkdir(parents=True, exist_ok=True)
    seed_everything(opts.seed)   # before any model is built: its initial weights
    n_cls = len(train.classes)
    common = {"classes": list(train.classes), "encoding": train.encoding, "max_packets": opts.max_packets,
              "training_data": train.summary, "task": opts.task}
    if opts.model not in ("snn", "mlp"):
        from .baselines import baseline
        from .metrics import fit_temperature

        m = baseline(opts.model)(n_cls, seed=opts.seed, **opts.baseline_params)
        m.fit(m.inputs(train), train.y)
        vl = m.decision(m.inputs(val)) if len(val) else np.zeros((0, n_cls))
        temp = fit_temperature(vl, val.y) if len(val) else 1.0
        spec = {"format": BASELINE_FORMAT, "preset": opts.preset, **common, "temperature": temp,
                "calibration": calibration_summary(vl, val.y, temp)}
        m.save(out, spec)
        return Predictor(opts.model, list(train.classes), train.encoding, temp, spec, m), {"history": []}
    cfg = TrainConfig(preset=opts.preset, model=opts.model, epochs=opts.epochs, batch_size=opts.batch_size,
                      lr=opts.lr, seed=opts.seed, device=opts.device, quiet=opts.quiet, mlp_pool=opts.mlp_pool,
                      extra=dict(opts.recipe))
    if opts.model == "snn":
        from ..snn.presets import build_model

        over = dict(opts.model_overrides)
        if opts.n_hidden:
            over["n_hidden"] = opts.n_hidden
        if opts.preset != "paper":
            over["n_steps"] = train.n_steps
        model = build_model(opts.preset, n_cls, **over)

        def make_input(ds, idx, device):
            return ds.batch(idx, device=device)

        res = fit_torch(model, make_input, train, val, cfg, out, resume=opts.resume, clamp=model.clamp_parameters,
                        group=group)
        from ..snn.checkpoint import save_checkpoint

        spec = {"preset": opts.preset, "model_kind": "snn", **common, "temperature": res.temperature,
                "unknown_threshold": unknown_threshold(res.val_logits, val.y, res.temperature),
                "calibration": calibration_summary(res.val_logits, val.y, res.temperature),
                "training": {"recipe": res.recipe, "best_epoch": res.best_epoch, "epochs_run": len(res.history),
                             "seed": opts.seed, "seconds": round(res.seconds, 1), "split": opts.split}}
        model.cpu()
        if group.main:
            save_checkpoint(out, model, spec)
        pred = Predictor("snn", list(train.classes), train.encoding, res.temperature, spec, model, "cpu")
        return pred, {"history": res.history, "best_epoch": res.best_epoch}
    if opts.model == "mlp":
        from safetensors.torch import save_file

        from .baselines import make_mlp, mlp_inputs, mlp_n_cols

        model = make_mlp(mlp_n_cols(train.n_steps, train.n_inputs, opts.mlp_pool), n_cls)

        def make_input(ds, idx, device):
            return mlp_inputs(ds, idx, opts.mlp_pool, device)

        res = fit_torch(model, make_input, train, val, cfg, out, resume=opts.resume, group=group)
        model.cpu()
        if group.main:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
        spec = {"format": BASELINE_FORMAT, "model_kind": "mlp", "preset": opts.preset, **common,
                "mlp": model.config, "mlp_pool": opts.mlp_pool, "temperature": res.temperature,
                "calibration": calibration_summary(res.val_logits, val.y, res.temperature),
                "training": {"recipe": res.recipe, "best_epoch": res.best_epoch, "epochs_run": len(res.history),
                             "seed": opts.seed}}
        if group.main:
            (out / "model.json").write_text(json.dumps(spec, indent=1, default=str))
        pred = Predictor("mlp", list(train.classes), train.encoding, res.temperature, spec, model, "cpu",
                         opts.mlp_pool)
        return pred, {"history": res.history, "best_epoch": res.best_epoch}
    raise ConfigError(f"unknown model kind {opts.model!r} (use snn, mlp or gbt)")


def train_run(data: str | Path, out: str | Path, opts: TrainOptions, group=None) -> dict:
    """Build samples, split, fit, save the model and a test report; returns a summary dict.

    ``group``: this process is one rank of ``train --nproc`` (``distributed.launch``):
    every rank trains, rank 0 alone writes files and scores the test side.
    """
    from .distributed import SINGLE

    group = group or SINGLE
    if group.world > 1 and opts.model not in ("snn", "mlp"):
        raise ConfigError(f"--model {opts.model} trains in one process (no --nproc)")
    out = Path(out)
    if group.main and not opts.resume and (out / "model.json").is_file():
        log.warning("--out %s already holds a model: it is replaced, and files of the old run this one does "
                    "not write stay beside it (use a new folder to keep runs apart)", out)
    out.mkdir(parents=True, exist_ok=True)
    from ..snn.presets import PRESETS

    if opts.preset not in PRESETS:
        raise ConfigError(f"unknown preset {opts.preset!r} (use one of {', '.join(PRESETS)})")
    ds = load_samples(data, opts)
    if len(ds.classes) < 2:
        raise ConfigError(f"need at least two classes to train, found {ds.classes}")
    side, man = split_samples(ds, opts)
    damaged = ds.summary.get("damaged_captures", {})   # cut or unreadable captures: which and why
    man["damaged_captures"] = damaged
    if group.main:
        save_manifest(out / "split.json", man)
    train, val, test = (ds.subset(np.flatnonzero(side == s)) for s in range(3))
    if len(train) == 0:
        raise ConfigError("the split left no training samples (too few captures?)")
    pred, info = fit_predictor(train, val, opts, out, group)
    summary: dict[str, Any] = {"model": str(out), "model_kind": opts.model, "preset": opts.preset,
                               "samples": {"train": len(train), "val": len(val), "test": len(test)},
                               "classes": ds.classes, "split": man["kind"], "seed": opts.seed,
                               "damaged_captures": damaged}
    meta = {"model": str(out), "data": str(data), "preset": opts.preset, "model_kind": opts.model,
            "subset": "test side of split.json", "max_packets": opts.max_packets, "damaged_captures": damaged}
    if not group.main:
        return summary
    if len(test):
        rep = evaluation_report(pred.logits(test), test, pred.temperature, "test")
        write_report(rep, out / "test_report", meta)
        summary["test"] = {k: rep[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}
        if "cap20" in rep:
            summary["test"]["macro_f1_cap20"] = rep["cap20"]["macro_f1"]
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


# ---------------------------------------------------------------- evaluate
def evaluate_run(model: str | Path, data: str | Path, out: str | Path, opts: TrainOptions,
                 side: str | None = None) -> dict:
    """Evaluate a saved model on labelled data (optionally one side of a split manifest)."""
    from ..snn.device import resolve_device

    pred = load_predictor(model, str(resolve_device(opts.device)))
    if opts.max_packets is None and pred.spec.get("max_packets"):
        opts.max_packets = int(pred.spec["max_packets"])
    ds = load_samples(data, opts, encoding=pred.encoding, classes=pred.classes)
    subset = "all samples"
    if opts.manifest:
        s, _ = split_samples(ds, opts)
        want = SPLIT_NAMES.index(side or "test")
        ds = ds.subset(np.flatnonzero(s == want))
        subset = f"{SPLIT_NAMES[want]} side of {opts.manifest}"
        if len(ds) == 0:
            raise ConfigError(f"no samples on the {SPLIT_NAMES[want]} side of {opts.manifest}")
    damaged = ds.summary.get("damaged_captures", {})   # cut or unreadable captures: which and why
    rep = evaluation_report(pred.logits(ds), ds, pred.temperature, subset)
    rep["damaged_captures"] = damaged
    rep["left_out_classes"] = ds.summary.get("left_out_classes", {})   # flows of classes the model lacks
    meta = {"model": str(model), "data": str(data), "preset": pred.spec.get("preset"), "model_kind": pred.kind,
            "subset": subset, "max_packets": opts.max_packets}
    write_report(rep, Path(out), meta)
    return rep
