"""Classification metrics, calibration and the paper's sub-tasks.

Label-based scores come from scikit-learn (``confusion_matrix``, ``accuracy_score``,
``balanced_accuracy_score``, ``precision_recall_fscore_support``, ``f1_score``);
``scores_from_confusion`` computes the same numbers from a (possibly summed) confusion
matrix in numpy, where scikit-learn has no entry point (tests check that both agree).

Orientation used everywhere here: ``C[true, pred]`` (rows = ground truth, columns =
prediction, like scikit-learn). The paper's code uses ``C[pred, true]``; its numbers can
be compared after a transpose. Per-class scores with no support or no predictions are 0
(scikit-learn's ``zero_division=0``); macro averages run over classes *present in the
ground truth* of the evaluated set, so an absent class does not count as a zero.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix ``C[true, pred]`` of integer labels 0..n_classes-1."""
    from sklearn.metrics import confusion_matrix

    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    if y_true.size == 0 or not np.isin(y_true, np.arange(n_classes)).any():
        return np.zeros((n_classes, n_classes), np.int64)     # scikit-learn refuses these
    return confusion_matrix(y_true, y_pred, labels=np.arange(n_classes)).astype(np.int64)


def scores_from_confusion(c: np.ndarray, classes: Sequence[str] | None = None) -> dict:
    """Accuracy, balanced accuracy, macro-F1 and per-class P/R/F1 from ``C[true, pred]``."""
    c = np.asarray(c, np.float64)
    n = c.shape[0]
    classes = list(classes) if classes is not None else [str(i) for i in range(n)]
    tp = np.diag(c)
    support = c.sum(axis=1)
    predicted = c.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(predicted > 0, tp / predicted, 0.0)
        rec = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    present = support > 0
    total = c.sum()
    return {
        "n": int(total),
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "balanced_accuracy": float(rec[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "weighted_f1": float((f1 * support).sum() / total) if total else 0.0,
        "per_class": {
            classes[i]: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                         "support": int(support[i]), "predicted": int(predicted[i])}
            for i in range(n)
        },
    }


def classification_report(y_true, y_pred, classes: Sequence[str]) -> dict:
    """``scores_from_confusion``'s dict (same keys and numbers) from scikit-learn, plus the confusion matrix."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_recall_fscore_support

    classes = list(classes)
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    n = len(classes)
    c = confusion(y_true, y_pred, n)
    if y_true.size == 0:
        out = scores_from_confusion(c, classes)
    else:
        labels = np.arange(n)
        present = np.flatnonzero(c.sum(axis=1) > 0)
        prec, rec, f1, sup = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        out = {
            "n": int(y_true.size),
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(rec[present].mean()) if present.size else 0.0,
            "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
            "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
            "per_class": {
                classes[i]: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                             "support": int(sup[i]), "predicted": int(c[:, i].sum())}
                for i in range(n)
            },
        }
        if set(np.unique(y_pred)) <= set(present.tolist()):   # scikit-learn's own, where it is defined the same
            out["balanced_accuracy"] = float(balanced_accuracy_score(y_true, y_pred))
    out["confusion"] = {"orientation": "C[true, pred]: rows = true class, columns = predicted class",
                        "classes": list(classes), "matrix": c.tolist()}
    return out


def macro_f1(y_true, y_pred, n_classes: int) -> float:
    """Macro-F1 over the classes present in ``y_true`` (scikit-learn ``f1_score``, ``zero_division=0``)."""
    from sklearn.metrics import f1_score

    y_true = np.asarray(y_true, np.int64)
    present = np.unique(y_true[(y_true >= 0) & (y_true < n_classes)])
    if present.size == 0:
        return 0.0
    return float(f1_score(y_true, np.asarray(y_pred, np.int64), labels=present, average="macro", zero_division=0))


# ---------------------------------------------------------------- calibration
def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins (Guo et al. 2017)."""
    probs = np.asarray(probs, np.float64)
    if probs.shape[0] == 0:
        return 0.0
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def nll(logits: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
    p = softmax(logits, temperature)
    return float(-np.log(np.clip(p[np.arange(len(y_true)), np.asarray(y_true)], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) (1.0 when there is no data)."""
    logits = np.asarray(logits, np.float64)
    if logits.shape[0] == 0:
        return 1.0
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda lt: nll(logits, y_true, float(np.exp(lt))), bounds=(-4.0, 4.0), method="bounded")
    return float(np.exp(res.x))


# ---------------------------------------------------------------- paper sub-tasks
def paper_subtasks(c14: np.ndarray, classes: Sequence[str]) -> dict:
    """The paper's derived tasks from one multi-class model, computed correctly.

    Classes must be named ``<Application>_<Encryption>``. Returns:
    - ``per_encryption[E]``: samples whose *true* encryption is E, predictions collapsed to
      their application (whatever encryption was predicted). The matrix keeps every
      predicted application as a column, so a VPN sample predicted as Browsing counts as an
      error (the authors' code drops such samples: the VPN-subset bug).
    - ``encryption``: the 3-class nonVPN/VPN/Tor task (prediction and truth collapsed).
    - ``application``: the 5-class task.
    - ``one_vs_all[group]``: precision/recall/F1 of each application and encryption group
      (instead of the paper's true-negative-dominated accuracy).
    """
    c = np.asarray(c14)
    apps: list[str] = []
    encs: list[str] = []
    for name in classes:
        a, e = name.rsplit("_", 1)
        if a not in apps:
            apps.append(a)
        if e not in encs:
            encs.append(e)
    app_of = np.array([apps.index(n.rsplit("_", 1)[0]) for n in classes])
    enc_of = np.array([encs.index(n.rsplit("_", 1)[1]) for n in classes])

    def collapse(rows_of, cols_of, n_r, n_c, row_mask=None):
        out = np.zeros((n_r, n_c), np.int64)
        for i in range(c.shape[0]):
            if row_mask is not None and not row_mask[i]:
                continue
            for j in range(c.shape[1]):
                out[rows_of[i], cols_of[j]] += c[i, j]
        return out

    res: dict = {"orientation": "C[true, pred]", "per_encryption": {}, "one_vs_all": {}}
    for ei, e in enumerate(encs):
        m = collapse(app_of, app_of, len(apps), len(apps), enc_of == ei)
        present = [a for k, a in enumerate(apps) if m[k].sum() > 0]
        s = scores_from_confusion(m, apps)
        s["classes_present"] = present
        s["confusion"] = m.tolist()
        res["per_encryption"][e] = s
    for name, of, labels in (("encryption", enc_of, encs), ("application", app_of, apps)):
        m = collapse(of, of, len(labels), len(labels))
        s = scores_from_confusion(m, labels)
        s["confusion"] = m.tolist()
        s["classes"] = labels
        res[name] = s
    for name, of, labels in (("app", app_of, apps), ("enc", enc_of, encs)):
        for k, lab in enumerate(labels):
            inside = of == k
            tp = c[np.ix_(inside, inside)].sum()
            fp = c[np.ix_(~inside, inside)].sum()
            fn = c[np.ix_(inside, ~inside)].sum()
            p = tp / (tp + fp) if tp + fp else 0.0
            r = tp / (tp + fn) if tp + fn else 0.0
            res["one_vs_all"][f"{name}:{lab}"] = {
                "precision": float(p), "recall": float(r), "f1": float(2 * p * r / (p + r)) if p + r else 0.0,
                "support": int(tp + fn),
            }
    return res
