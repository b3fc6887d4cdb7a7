"""Metrics against scikit-learn; calibration; the paper's sub-tasks without the VPN-subset bug."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support)

from trafficsnn.train.metrics import (classification_report, confusion, expected_calibration_error,
                                      fit_temperature, nll, paper_subtasks, softmax)
from trafficsnn.train.labels import LabelRules


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn(seed):
    rng = np.random.default_rng(seed)
    n_cls = 6
    y = rng.integers(0, n_cls, 400)
    p = np.where(rng.random(400) < 0.6, y, rng.integers(0, n_cls, 400))
    p[p == 5] = 4                                   # a class never predicted: zero_division = 0
    r = classification_report(y, p, [str(i) for i in range(n_cls)])
    assert np.array_equal(np.asarray(r["confusion"]["matrix"]), confusion_matrix(y, p, labels=range(n_cls)))
    assert r["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    assert r["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    pr, rc, f1, sup = precision_recall_fscore_support(y, p, labels=range(n_cls), zero_division=0)
    for i in range(n_cls):
        pc = r["per_class"][str(i)]
        assert (pc["precision"], pc["recall"], pc["f1"], pc["support"]) == pytest.approx((pr[i], rc[i], f1[i], sup[i]))


def test_confusion_orientation_true_rows():
    c = confusion([0, 0, 1], [1, 1, 1], 2)
    assert c.tolist() == [[0, 2], [0, 1]]          # C[true, pred]


def test_temperature_scaling_reduces_nll_and_ece():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 2000)
    logits = rng.normal(size=(2000, 4))
    logits[np.arange(2000), y] += 1.0
    logits *= 4.0                                   # over-confident
    t = fit_temperature(logits, y)
    assert t > 1.5
    assert nll(logits, y, t) < nll(logits, y)
    assert expected_calibration_error(softmax(logits, t), y) < expected_calibration_error(softmax(logits), y)


def test_ece_perfectly_calibrated_is_small():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.3, 1.0, 20000)
    correct = rng.random(20000) < conf
    probs = np.stack([conf, 1 - conf], 1)
    y = np.where(correct, 0, 1)
    assert expected_calibration_error(probs, y) < 0.02


def test_paper_subtasks_vpn_denominator():
    classes = LabelRules.load().classes("all")
    idx = {c: i for i, c in enumerate(classes)}
    c = np.zeros((14, 14), np.int64)
    c[idx["Video_VPN"], idx["Video_VPN"]] = 6
    c[idx["Video_VPN"], idx["Browsing_nonVPN"]] = 2    # VPN sample predicted as Browsing: an error
    c[idx["Chat_VPN"], idx["Chat_nonVPN"]] = 2         # right app, wrong encryption: right for the subtask
    c[idx["Chat_Tor"], idx["Chat_Tor"]] = 5
    s = paper_subtasks(c, classes)
    vpn = s["per_encryption"]["VPN"]
    assert vpn["n"] == 10                               # the authors' code would count 8
    assert vpn["accuracy"] == pytest.approx(0.8)
    assert s["encryption"]["n"] == 15
    assert s["encryption"]["accuracy"] == pytest.approx((6 + 5) / 15)
    assert s["application"]["accuracy"] == pytest.approx(13 / 15)
    assert s["one_vs_all"]["app:Browsing"]["precision"] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sklearn_backed_scores_agree_with_the_confusion_formulas(seed):
    """classification_report / macro_f1 (scikit-learn) == scores_from_confusion (numpy), incl. absent classes."""
    from trafficsnn.train.metrics import macro_f1, scores_from_confusion

    rng = np.random.default_rng(seed)
    n_cls = 6
    y = rng.integers(0, n_cls, 300)
    y[y == 2] = 1                                   # class 2 absent from the truth ...
    p = np.where(rng.random(300) < 0.5, y, rng.integers(0, n_cls, 300))   # ... but predicted sometimes
    p[p == 4] = 3                                   # class 4 never predicted
    names = [f"c{i}" for i in range(n_cls)]
    a = classification_report(y, p, names)
    b = scores_from_confusion(confusion(y, p, n_cls), names)
    for k in ("n", "accuracy", "balanced_accuracy", "macro_f1", "weighted_f1"):
        assert a[k] == pytest.approx(b[k], abs=1e-12), k
    for c in names:
        assert a["per_class"][c] == pytest.approx(b["per_class"][c], abs=1e-12)
    assert macro_f1(y, p, n_cls) == pytest.approx(b["macro_f1"], abs=1e-12)
    assert np.array_equal(confusion(y, p, n_cls), np.bincount(y * n_cls + p, minlength=36).reshape(6, 6))


def test_empty_inputs_give_zeros():
    from trafficsnn.train.metrics import macro_f1

    r = classification_report(np.zeros(0, int), np.zeros(0, int), ["a", "b"])
    assert r["n"] == 0 and r["macro_f1"] == 0.0 and r["confusion"]["matrix"] == [[0, 0], [0, 0]]
    assert macro_f1([], [], 3) == 0.0
