"""Training loop for the SNN presets and the torch MLP baseline (+ the tree baseline fit).

One loop for every torch model: a class-balanced sampler (inverse class frequency, with
replacement, one training-set's worth of samples per epoch, as the paper) or shuffled
epochs with a class-weighted loss (recipe ``sampler``/``class_weight``), cross-entropy,
gradient clipping by value, per-epoch train/validation loss and macro-F1 in a JSON-lines
log, model selection on validation (improved preset, MLP) or the last epoch (paper
preset), and resumable state written after each epoch without pickle (safetensors for
tensors + JSON for the rest). Temperature scaling is fitted on validation at the end.
Under ``train --nproc`` (``distributed``) each rank runs this loop on its shard of every
global batch; with one process the loop is exactly what it always was.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError
from .metrics import expected_calibration_error, fit_temperature, macro_f1, softmax

log = logging.getLogger(__name__)

# Training recipes. The SNN presets' recipes come from snn.presets.PRESETS[...]["training"]
# (paper_model.md §4.7 for "paper"); these are the fallbacks and the MLP baseline's recipe.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"epochs": 30, "batch_size": 128, "lr": 5e-4, "weight_decay": 1e-5, "clip": 5.0,
              "plateau_on": "train", "plateau_from": 5, "factor": 0.1, "sched_patience": 3,
              "select": "last", "patience": None},
    "improved": {"epochs": 40, "batch_size": 128, "lr": 1e-3, "weight_decay": 1e-5, "clip": 5.0,
                 "plateau_on": "val", "plateau_from": 0, "factor": 0.3, "sched_patience": 3,
                 "select": "best", "patience": 8},
    "mlp": {"epochs": 40, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-4, "clip": 5.0,
            "plateau_on": "val", "plateau_from": 0, "factor": 0.3, "sched_patience": 3,
            "select": "best", "patience": 8},
}


def recipe_from_preset(training: dict[str, Any]) -> dict[str, Any]:
    """Translate snn.presets' ``training`` block into the loop's recipe keys."""
    r: dict[str, Any] = {}
    for k in ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "augment", "min_batches", "sampler",
              "class_weight", "anytime_loss", "select_metric", "select_from_epoch"):
        if k in training:
            r[k] = training[k]
    if "grad_clip_value" in training:
        r["clip"] = training["grad_clip_value"]
    sch = training.get("scheduler") or {}
    if sch:
        r["plateau_on"] = "train" if sch.get("monitor") == "train_loss" else "val"
        r["plateau_from"] = int(sch.get("start_epoch", 0))
        r["factor"] = float(sch.get("factor", 0.1))
        r["sched_patience"] = int(sch.get("patience", 3))
    sel = training.get("selection")
    if sel:
        r["select"] = "last" if sel == "last_epoch" else "best"
    es = training.get("early_stopping")
    r["patience"] = int(es["patience"]) if es else None
    return r


def balance_recipe(balance: str) -> dict[str, Any]:
    """``--balance``: loss = every sample once per epoch + class-weighted cross-entropy;
    sampler = the paper's class-balanced sampler with replacement, unweighted loss."""
    if balance == "loss":
        return {"sampler": "shuffle", "class_weight": "balanced"}
    if balance == "sampler":
        return {"sampler": "balanced", "class_weight": None}
    raise ConfigError(f"unknown balance {balance!r} (use loss or sampler)")


def recipe_overrides(augment=None, weight_decay=None, label_smoothing=None, min_batches=None,
                     balance=None) -> dict[str, Any]:
    """Recipe keys set by command-line options; None leaves the preset's choice
    (``augment=False`` switches augmentation off)."""
    r: dict[str, Any] = {}
    if augment is not None:
        r["augment"] = {"prefix": 0.5, "drop": 0.1} if augment else None
    if weight_decay is not None:
        r["weight_decay"] = weight_decay
    if label_smoothing is not None:
        r["label_smoothing"] = label_smoothing
    if min_batches is not None:
        r["min_batches"] = min_batches
    if balance is not None:
        r.update(balance_recipe(balance))
    return r


@dataclass
class TrainConfig:
    preset: str = "packet"
    model: str = "snn"               # snn | mlp | gbt
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    seed: int = 0
    device: str = "auto"
    select: str | None = None        # best | last
    patience: int | None = None
    mlp_pool: int = 10               # MLP: steps summed per time bin
    quiet: bool = False
    extra: dict = field(default_factory=dict)

    def recipe(self) -> dict[str, Any]:
        if self.model == "mlp":
            base = dict(RECIPES["mlp"])
        else:
            from ..snn.presets import preset

            base = dict(RECIPES[self.preset] if self.preset in RECIPES else RECIPES["improved"])
            base.update(recipe_from_preset(preset(self.preset).get("training", {})))
        for k in ("epochs", "batch_size", "lr", "weight_decay", "select", "patience"):
            v = getattr(self, k)
            if v is not None:
                base[k] = v
        base.update(self.extra)
        return base


def seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def balanced_indices(y: np.ndarray, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """One epoch of the paper's WeightedRandomSampler: weight 1/count(class), with replacement.

    ``n`` samples (default: the training-set size, as the paper)."""
    counts = np.bincount(y)
    w = 1.0 / counts[y]
    return rng.choice(len(y), size=len(y) if n is None else int(n), replace=True, p=w / w.sum())


def capture_balanced_indices(y: np.ndarray, capture: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw ``n`` samples with replacement: every class the same total weight and, inside a
    class, a capture with m flows weighs sqrt(m) instead of m, so a few large captures
    (63 gnutella flows) do not teach the network one capture instead of its class."""
    _, cap_id, cap_n = np.unique(capture, return_inverse=True, return_counts=True)
    w = 1.0 / np.sqrt(cap_n[cap_id])
    per_class = np.bincount(y, weights=w)
    w = w / per_class[y]
    return rng.choice(len(y), size=int(n), replace=True, p=w / w.sum())


def augment(ds, idx, rng: np.random.Generator, prefix: float = 0.5, drop: float = 0.1, **encoder_params):
    """Training-time copies of samples ``idx``: random flow prefixes and packet thinning.

    With probability ``prefix`` a sample is cut at a random step (as if the flow had been
    seen only that long: the anytime case); each count is thinned binomially with keep
    probability 1 - ``drop`` (lost/unseen packets). At least one event always stays.
    Only for count-valued inputs. Other keys (e.g. ``jitter``, ``drop_packets``) go to the
    encoder's own ``perturb`` (the packet encoder's). Returns a SampleSet of len(idx) samples.
    """
    sub = ds.subset(np.asarray(idx))
    off = sub.ev_off
    n = len(sub)
    row = np.repeat(np.arange(n), np.diff(off))
    step = sub.ev_step.astype(np.int64)
    keep = np.ones(step.size, bool)
    if any(encoder_params.values()):
        from ..snn.registry import encoder_for

        keep, step, neuron = encoder_for(ds.encoding).perturb(row, step, sub.ev_neuron, rng, **encoder_params)
        sub.ev_step, sub.ev_neuron = step.astype(sub.ev_step.dtype), neuron.astype(sub.ev_neuron.dtype)
    if prefix > 0 and step.size:
        lo = np.full(n, np.iinfo(np.int64).max)
        hi = np.full(n, -1)
        np.minimum.at(lo, row, step)
        np.maximum.at(hi, row, step)
        cut = np.where(rng.random(n) < prefix, rng.integers(lo, hi + 1, endpoint=True) if n else lo, hi + 1)
        keep &= step < np.maximum(cut, lo + 1)[row]
    val = sub.ev_value.copy()
    if drop > 0 and val.size and ds.encoding.get("value", "count") == "count":
        val = rng.binomial(np.maximum(val, 0).astype(np.int64), 1.0 - drop).astype(np.float32)
        first = off[:-1][np.diff(off) > 0]          # first event of each non-empty sample
        val[first] = np.maximum(val[first], 1.0)
        keep &= val > 0
    lens = np.bincount(row[keep], minlength=n)
    sub.ev_off = np.r_[0, np.cumsum(lens)].astype(np.int64)
    sub.ev_step, sub.ev_neuron, sub.ev_value = sub.ev_step[keep], sub.ev_neuron[keep], val[keep]
    return sub


# ---------------------------------------------------------------- resumable state (no pickle)
def _flatten_optimizer(opt) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        meta["state"][str(pid)] = {}
        for k, v in st.items():
            if hasattr(v, "shape"):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
                meta["state"][str(pid)][k] = "tensor"
            else:
                meta["state"][str(pid)][k] = v
    return tensors, meta


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state = {}
    for pid, st in meta["state"].items():
        state[int(pid)] = {k: (tensors[f"opt.{pid}.{k}"] if v == "tensor" else v) for k, v in st.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def save_state(path: Path, model, opt, sched, meta: dict, best_state: dict | None) -> None:
    """Everything needed to resume: weights, optimiser, scheduler, RNG, history (atomic)."""
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if best_state is not None:
        tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best_state.items()})
    ot, ometa = _flatten_optimizer(opt)
    tensors.update(ot)
    tensors["rng.torch"] = torch.get_rng_state()
    tmp = path / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, path / "state.safetensors")
    doc = {**meta, "optimizer": ometa, "scheduler": sched.state_dict() if sched is not None else None,
           "has_best": best_state is not None}
    tmpj = path / "state.json.tmp"
    tmpj.write_text(json.dumps(doc, default=float))
    os.replace(tmpj, path / "state.json")


def load_state(path: Path):
    from safetensors.torch import load_file

    f, j = path / "state.safetensors", path / "state.json"
    if not (f.exists() and j.exists()):
        raise ConfigError(f"--resume: no saved training state in {path}")
    return load_file(str(f)), json.loads(j.read_text())


# ---------------------------------------------------------------- the loop
@dataclass
class FitResult:
    model: Any
    history: list[dict]
    best_epoch: int
    temperature: float
    val_logits: np.ndarray
    recipe: dict
    seconds: float


def fit_torch(
    model,
    make_input: Callable,
    train_set,
    val_set,
    cfg: TrainConfig,
    out: Path,
    resume: bool = False,
    clamp: Callable | None = None,
    group=None,
) -> FitResult:
    """Train ``model`` on ``train_set`` (SampleSet); ``make_input(ds, idx, device)`` builds a batch.

    ``group`` (a ``distributed.Group``): this rank computes its shard of every global batch
    and of the validation set; gradients and metrics are summed over ranks, and only rank 0
    writes the log, state and plots. None = one process.
    """
    import torch
    import torch.nn.functional as F

    from ..snn.device import resolve_device
    from .distributed import SINGLE

    group = group or SINGLE
    r = cfg.recipe()
    device = resolve_device(cfg.device)
    model.to(device)
    seed_everything(cfg.seed)
    group.broadcast(model)
    opt = torch.optim.Adam(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=r["factor"],
                                                       patience=r["sched_patience"], threshold=1e-4)
    n_cls = len(train_set.classes)
    history: list[dict] = []
    best = {"f1": -1.0, "loss": math.inf, "epoch": -1}
    best_state = None
    start_epoch = 0
    state_dir = out / "state"
    log_path = out / "train_log.jsonl"
    if resume:
        tensors, meta = load_state(state_dir)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        opt.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
        if meta.get("scheduler") is not None:
            sched.load_state_dict(meta["scheduler"])
        if meta.get("has_best"):
            best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        torch.set_rng_state(tensors["rng.torch"])
        history, best, start_epoch = meta["history"], meta["best"], meta["epoch"] + 1
        model.to(device)
    elif log_path.exists() and group.main:
        log_path.unlink()

    def run_eval(ds) -> tuple[float, np.ndarray]:
        model.eval()
        mine = group.shard(len(ds))     # every sample when alone
        outs = []
        with torch.no_grad():
            for a in range(0, len(mine), 256):
                outs.append(model(make_input(ds, mine[a:a + 256], device)).float().cpu())
        logits = torch.cat(outs) if outs else torch.zeros(0, n_cls)
        if group.world > 1:             # each rank fills its rows; the sum is exact (the others add 0)
            full = torch.zeros(len(ds), n_cls, device=group.device)
            full[torch.as_tensor(mine, device=group.device)] = logits.to(group.device)
            logits = group.sum(full).cpu()
        loss = float(F.cross_entropy(logits, torch.as_tensor(ds.y), reduction="mean")) if len(ds) else 0.0
        return loss, logits.numpy()

    cls_w = None
    if r.get("class_weight") == "balanced":   # n / (k * count): inverse class frequency in the loss
        cnt = np.bincount(train_set.y, minlength=n_cls).astype(np.float64)
        cls_w = torch.as_tensor(len(train_set.y) / (n_cls * np.maximum(cnt, 1)), dtype=torch.float32,
                                device=device)
    t_start = time.time()
    bs = int(r["batch_size"])
    bar = None
    if not cfg.quiet and group.main:
        from tqdm import tqdm

        bar = tqdm(total=r["epochs"], initial=start_epoch, desc=f"train {cfg.model}/{cfg.preset}", unit="epoch",
                   disable=None)
    stopped = False
    for epoch in range(start_epoch, r["epochs"]):
        model.train()
        # small data sets: at least ``min_batches`` optimiser steps per epoch (not in the paper recipe)
        n_epoch = max(len(train_set.y), int(r.get("min_batches") or 0) * bs)
        ep_rng = np.random.default_rng([cfg.seed, epoch])
        if r.get("sampler", "balanced") == "shuffle":   # plain epochs (pair with class_weight)
            order = np.resize(ep_rng.permutation(len(train_set.y)), n_epoch)
        elif r.get("sampler") == "capture":
            order = capture_balanced_indices(train_set.y, train_set.capture, ep_rng, n_epoch)
        else:
            order = balanced_indices(train_set.y, ep_rng, n_epoch)
        aug_rng = np.random.default_rng([cfg.seed, epoch, 1])
        tot_loss, preds = 0.0, np.zeros(len(order), np.int64)
        ls = float(r.get("label_smoothing", 0.0))
        w_any = float(r.get("anytime_loss") or 0.0)
        for a in range(0, len(order), bs):
            idx = order[a:a + bs]
            mine = group.shard(len(idx))    # this rank's positions in the global batch (all when alone)
            y = torch.as_tensor(train_set.y[idx[mine]], device=device)
            src, pos = train_set, idx[mine]
            if r.get("augment"):   # on the global batch: every rank draws what one process would draw
                src, pos = augment(train_set, idx, aug_rng, **r["augment"]), mine
            x = make_input(src, pos, device) if len(mine) else None
            if group.world > 1 and hasattr(model, "batch_shard"):
                keep_rng_in_step(model, x, mine, len(idx), group,
                                 lambda: make_input(src, np.arange(1) if r.get("augment") else idx[:1], device))
            loss, logits = batch_loss(model, x, y, cls_w, ls, w_any, group)
            opt.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
            group.sum_grads(model.parameters())
            if r.get("clip"):
                torch.nn.utils.clip_grad_value_(model.parameters(), r["clip"])
            opt.step()
            if clamp is not None:
                clamp()
            tot_loss += float(loss.detach()) * len(idx)     # a group sums its ranks' parts below
            if len(mine):
                preds[a + mine] = logits.argmax(1).cpu().numpy()
        if group.world > 1:
            tot = group.sum(torch.tensor([tot_loss], dtype=torch.float64, device=group.device))
            tot_loss = float(tot[0])
            preds = group.sum(torch.as_tensor(preds, device=group.device)).cpu().numpy()
        train_loss = tot_loss / max(len(order), 1)
        train_f1 = macro_f1(train_set.y[order], preds, n_cls)
        val_loss, val_logits = run_eval(val_set)
        val_f1 = macro_f1(val_set.y, val_logits.argmax(1), n_cls) if len(val_set) else 0.0
        if epoch >= r["plateau_from"]:
            sched.step(train_loss if r["plateau_on"] == "train" or not len(val_set) else val_loss)
        rec = {"epoch": epoch, "train_loss": train_loss, "train_macro_f1": train_f1, "val_loss": val_loss,
               "val_macro_f1": val_f1, "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t_start, 2)}
        history.append(rec)
        if group.main:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        if epoch < int(r.get("select_from_epoch") or 0):
            improved = False        # a small validation side can peak on a barely trained model
        elif r.get("select_metric") == "val_loss":   # smoother than macro-F1 on a small validation side
            improved = val_loss < best["loss"] - 1e-9
        else:
            improved = (val_f1 > best["f1"] + 1e-9) or (abs(val_f1 - best["f1"]) <= 1e-9 and val_loss < best["loss"])
        if improved:
            best = {"f1": val_f1, "loss": val_loss, "epoch": epoch}
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if r.get("patience") and r["select"] == "best" and epoch - best["epoch"] >= r["patience"]:
            stopped = True
        if group.main:
            save_state(state_dir, model, opt, sched, {"epoch": epoch, "history": history, "best": best,
                                                      "config": asdict(cfg), "recipe": r}, best_state)
        if bar is not None:
            bar.set_postfix(loss=f"{train_loss:.3f}", val_f1=f"{val_f1:.3f}")
            bar.update(1)
            if bar.disable:     # no terminal (a log, CI, a pipe): one line per epoch instead of the bar
                kept = f" (kept: epoch {best['epoch'] + 1}, {best['f1']:.3f})" if best["f1"] >= 0 else ""
                print(f"train {cfg.model}/{cfg.preset}: epoch {epoch + 1}/{r['epochs']} loss {train_loss:.3f} "
                      f"val macro-F1 {val_f1:.3f}{kept}, {time.time() - t_start:.0f} s", file=sys.stderr, flush=True)
        if stopped:
            log.info("early stop at epoch %d (best %d)", epoch, best["epoch"])
            break
    if bar is not None:
        bar.close()
    if hasattr(model, "batch_shard"):
        model.batch_shard = None
    if r["select"] == "best" and best_state is not None:
        model.load_state_dict(best_state)
        best_epoch = best["epoch"]
    else:
        best_epoch = history[-1]["epoch"] if history else -1
    model.to(device)
    _, val_logits = run_eval(val_set)
    temp = fit_temperature(val_logits, val_set.y) if len(val_set) else 1.0
    if group.main:
        plot_curves(history, out / "curves.png", best_epoch)
    return FitResult(model, history, best_epoch, temp, val_logits, r, time.time() - t_start)


def keep_rng_in_step(model, x, mine, n: int, group, one_sample: Callable) -> None:
    """Make a shard draw the dropout masks one process draws for the global batch (models with
    ``batch_shard``): the masks of all ``n`` rows, for the global batch's longest sample; a rank
    without a sample (short last batch) runs one sample for nothing to draw them too."""
    import torch

    t = torch.tensor([int(model.lengths(x).max()) if x is not None else 0], device=group.device)
    group.max(t)
    model.batch_shard = (int(mine[0]) if len(mine) else 0, n, int(t[0]))
    if x is None:
        with torch.no_grad():
            model.train_logits(one_sample()) if hasattr(model, "train_logits") else model(one_sample())


def batch_loss(model, x, y, cls_w, ls: float, w_any: float, group):
    """The training loss of this rank's part of a global batch, and its scores (train metrics).

    The loss is cross-entropy on the final scores, plus (anytime loss, weight ``w_any``) on
    the scores after the first 1, 2, 3, 5, ... packets; ensemble members are each scored.
    Alone: F.cross_entropy's batch means, as ever. In a group each term is this shard's sum
    over the term's normaliser (sum of the targets' class weights) over the whole global
    batch, so the gradients summed over ranks are the one-process gradient of the global
    mean whatever the shard sizes. ``x`` None: this rank has no sample (a short last batch).
    """
    import torch
    import torch.nn.functional as F

    logits, terms = None, []
    if x is not None:
        if w_any > 0 and hasattr(model, "train_logits"):
            logits, early, mask = model.train_logits(x)
            ye = y.unsqueeze(1).expand_as(mask)[mask]
            if logits.dim() == 3:   # (B, K, C): K ensemble members, each on its own loss
                nk, nc = logits.shape[1], logits.shape[2]
                terms = [(logits.reshape(-1, nc), y.repeat_interleave(nk)),
                         (early[mask].reshape(-1, nc), ye.repeat_interleave(nk))]
                logits = logits.mean(1)
            else:
                terms = [(logits, y), (early[mask], ye)]
        else:
            logits = model(x)
            terms = [(logits, y)]
    if group.world == 1:
        loss = F.cross_entropy(*terms[0], weight=cls_w, label_smoothing=ls)
        if len(terms) > 1 and terms[1][1].numel():
            loss = (1 - w_any) * loss + w_any * F.cross_entropy(*terms[1], weight=cls_w, label_smoothing=ls)
        return loss, logits
    anytime = w_any > 0 and hasattr(model, "train_logits")
    sums, norms = [], torch.zeros(2, dtype=torch.float64, device=group.device)
    for i, (lg, t) in enumerate(terms):
        sums.append(F.cross_entropy(lg, t, weight=cls_w, label_smoothing=ls, reduction="sum"))
        norms[i] = float(cls_w[t].sum()) if cls_w is not None else float(t.numel())
    norms = group.sum(norms).tolist()
    if not sums:
        return torch.zeros(()), logits
    loss = sums[0] / norms[0]
    if anytime and norms[1] > 0:
        loss = (1 - w_any) * loss + w_any * (sums[1] / norms[1])
    return loss, logits


def unknown_threshold(val_logits: np.ndarray, y: np.ndarray, temperature: float, keep: float = 0.9) -> float:
    """Confidence below which a verdict says ``unknown`` (open-set rejection), chosen on validation.

    The (1 - keep) quantile of the calibrated confidence of the validation verdicts that
    were right: at least ``keep`` of them stay, and what falls below is mostly wrong or
    unlike anything seen in training. 0 (never unknown) without validation samples.
    """
    if not len(y):
        return 0.0
    p = softmax(np.asarray(val_logits, np.float64) / float(temperature))
    right = p.argmax(1) == np.asarray(y)
    if not right.any():
        return 0.0
    return float(np.quantile(p.max(1)[right], 1.0 - keep))


def calibration_summary(val_logits: np.ndarray, y: np.ndarray, temperature: float) -> dict:
    return {
        "temperature": float(temperature), "fitted_on": "validation",
        "val_ece_before": expected_calibration_error(softmax(val_logits), y) if len(y) else None,
        "val_ece_after": expected_calibration_error(softmax(val_logits, temperature), y) if len(y) else None,
    }


def plot_curves(history: list[dict], path: Path, best_epoch: int | None = None) -> None:
    """Train/validation loss and macro-F1 per epoch (PNG)."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot(ep, [h["train_loss"] for h in history], label="train")
    ax[0].plot(ep, [h["val_loss"] for h in history], label="validation")
    ax[0].set_xlabel("epoch"), ax[0].set_ylabel("cross-entropy"), ax[0].legend()
    ax[1].plot(ep, [h["train_macro_f1"] for h in history], label="train")
    ax[1].plot(ep, [h["val_macro_f1"] for h in history], label="validation")
    ax[1].set_xlabel("epoch"), ax[1].set_ylabel("macro-F1"), ax[1].set_ylim(0, 1), ax[1].legend()
    if best_epoch is not None and best_epoch >= 0:
        for a in ax:
            a.axvline(best_epoch, color="grey", ls=":", lw=1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
