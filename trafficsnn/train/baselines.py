"""Baselines trained and evaluated on the same samples (and folds) as the SNN.

- ``PooledMLP``: an ANN on the SNN's own input (the same sparse (step, size-bin) counts),
  with the time axis pooled into coarser bins and log1p counts; the first layer is an
  ``EmbeddingBag`` so the sparse input is never densified. Trained by ``loop.fit_torch``,
  saved as safetensors.
- scikit-learn baselines, one small interface (``SklearnBaseline``): ``inputs(ds)`` says what
  the model reads from a ``SampleSet``; ``fit(x, y)``; ``decision(x)`` -> (n, n_classes) logits
  (``predict_logits`` is the same); ``save(dir, spec)``; ``load(dir)`` -> (model, spec).
  - ``gbt``: ``HistGradientBoostingClassifier`` on the flow statistics of ``features``
    (nfstream's set: sizes, inter-arrival times, durations, TCP-flag counts per direction
    and both, L4 protocol), balanced class weights;
  - ``rf``: ``RandomForestClassifier`` on the same statistics, balanced class weights;
  - ``knn`` / ``knn1``: k-NN / 1-NN on the first 10 packets (signed size by direction, log10
    inter-arrival time; ``features.sequence_features``), standardised on the training set.
  ``BASELINES`` maps names to classes: the CLI, training and evaluation take names from it.

Persistence: retrain on load, no pickle, no scikit-learn internals.
  ``save`` writes ``model.json`` (kind, hyper-parameters, seed, scikit-learn version, the
  probe hash) and ``train.npz`` (the training inputs and labels, plus probe rows and the
  logits the fitted model gave on them). ``load`` reads both with ``json`` and
  ``np.load(allow_pickle=False)``, checks names, types and shapes, refits the estimator
  with the same seed (every fit here is deterministic: no early stopping, fixed
  ``random_state``, brute-force neighbours), and refuses the model (``ModelError``) unless
  the refitted model gives the stored probe logits (same arg-max, |diff| <= 1e-6) and the
  stored probe logits match the hash in ``model.json``.
  Why not skops (0.16 installs here, with a trusted-types check): its loader still
  rebuilds arbitrary objects graphs from a file and has had code-execution bypasses of that
  check (CVE-2025-54412/54413, fixed in 0.12); its files follow scikit-learn's private
  attributes, so they break across scikit-learn versions just as copying ``_predictors``
  did. A file of plain arrays and JSON can never execute code, survives scikit-learn
  upgrades (a changed algorithm is detected by the probe check, never silently used), and
  costs little here: refitting takes about a second on the nDPI task (tens of seconds for
  ISCX-sized training sets), and the stored training data are flow statistics / packet
  sizes, never payload or addresses.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError

BASELINE_NPZ = "train.npz"
N_PROBES = 64
KNN_PACKETS = 10


# ---------------------------------------------------------------- MLP
def make_mlp(n_cols: int, n_classes: int, hidden: int = 128, dropout: float = 0.2):
    import torch
    from torch import nn

    class PooledMLP(nn.Module):
        """Sparse pooled counts -> hidden (ReLU) -> hidden (ReLU) -> classes."""

        def __init__(self):
            super().__init__()
            self.config = {"n_cols": n_cols, "n_classes": n_classes, "hidden": hidden, "dropout": dropout}
            self.embed = nn.EmbeddingBag(n_cols, hidden, mode="sum")
            self.bias = nn.Parameter(torch.zeros(hidden))
            self.head = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(),
                                      nn.Dropout(dropout), nn.Linear(hidden, n_classes))
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

        def forward(self, x):
            cols, offsets, weights = x
            return self.head(self.embed(cols, offsets, per_sample_weights=weights) + self.bias)

    return PooledMLP()


def mlp_inputs(ds, idx, pool: int, device=None):
    """EmbeddingBag input (cols, offsets, weights) of samples ``idx`` with ``pool`` steps per bin."""
    import torch

    from .datasets import csr_take

    take, lens = csr_take(ds.ev_off, idx)
    col = (ds.ev_step[take].astype(np.int64) // pool) * ds.n_inputs + ds.ev_neuron[take].astype(np.int64)
    val = ds.ev_value[take].astype(np.float32)
    if ds.encoding.get("value", "count") == "count":
        val = np.log1p(val)                      # log-compress raw counts (log1p inputs already are)
    offsets = np.r_[0, np.cumsum(lens)[:-1]].astype(np.int64)
    t = lambda a, dt: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    return t(col, torch.long), t(offsets, torch.long), t(val, torch.float32)


def mlp_n_cols(n_steps: int, n_inputs: int, pool: int) -> int:
    return ((n_steps + pool - 1) // pool) * n_inputs


# ---------------------------------------------------------------- prefixes
def prefix_samples(ds, k: int | None):
    """``ds`` as the baselines see it after the first ``k`` packets of each sample (None: unchanged).

    Features are recomputed from the stored packet heads (``features.prefix_features``) and the
    heads cut to ``k`` packets, so every baseline (statistics or per-packet) reads only those.
    The SNN's events are left as they are: for the SNN, re-extract with ``max_packets=k``.
    """
    import dataclasses

    from .features import prefix_features

    if k is None:
        return ds
    if ds.head is None:
        raise ModelError("these samples carry no packet heads (built by an older trafficsnn): re-extract them")
    head = ds.head.copy()
    head[:, k:] = np.nan
    return dataclasses.replace(ds, features=prefix_features(ds.head, k), head=head)


# ---------------------------------------------------------------- scikit-learn baselines
def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, np.float64).tobytes()).hexdigest()


class SklearnBaseline:
    """A scikit-learn classifier with trafficsnn's interface and retrain-on-load persistence."""

    kind = ""
    input = "features"                     # what ``inputs`` reads: features | sequence
    defaults: dict[str, Any] = {}
    grid: tuple[dict, ...] = ({},)         # the tiny grid ``select_params`` tries (fixed before any result)

    def __init__(self, n_classes: int, seed: int = 0, **params):
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ModelError(f"{self.kind}: unknown hyper-parameter(s) {sorted(unknown)} "
                             f"(known: {sorted(self.defaults)})")
        for k, v in params.items():
            if not isinstance(v, (int, float, str, type(None))) or isinstance(v, bool) != isinstance(
                    self.defaults[k], bool):
                raise ModelError(f"{self.kind}: hyper-parameter {k}={v!r} has the wrong type")
        self.n_classes = int(n_classes)
        self.seed = int(seed)
        self.params = {**self.defaults, **params}
        self.clf = None
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None

    # what the model reads from a SampleSet
    def inputs(self, ds) -> np.ndarray:
        if self.input == "sequence":
            from .features import sequence_features

            if ds.head is None:
                raise ModelError(f"{self.kind}: these samples carry no packet heads: re-extract them")
            return sequence_features(ds.head, KNN_PACKETS)
        return np.asarray(ds.features, np.float32)

    def _make(self, n_train: int):
        raise NotImplementedError

    def fit(self, x: np.ndarray, y: np.ndarray) -> "SklearnBaseline":
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.int64)
        if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ModelError(f"{self.kind}: need a non-empty (n, d) input and n labels, got {x.shape} / {y.shape}")
        self.clf = self._make(len(y))
        self.clf.fit(x.astype(np.float64), y)
        self._x, self._y = x, y
        return self

    def _raw(self, x: np.ndarray) -> np.ndarray:
        p = self.clf.predict_proba(x)
        return np.log(np.clip(p, 1e-4, None))

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Logits (n, n_classes); classes never seen in training get -30."""
        if self.clf is None:
            raise ModelError(f"{self.kind} baseline is not fitted")
        x = np.asarray(x, np.float32).astype(np.float64)
        out = np.full((x.shape[0], self.n_classes), -30.0)
        if x.shape[0] == 0:
            return out
        raw = self._raw(x)
        seen = np.asarray(self.clf.classes_, np.int64)
        if raw.ndim == 1:                  # binary decision_function: one logit for classes_[1]
            out[:, seen[0]], out[:, seen[1]] = 0.0, raw
        else:
            out[:, seen] = raw
        return out

    predict_logits = decision

    # ---- persistence (see module doc)
    def _probes(self) -> np.ndarray:
        x = self._x
        i = np.linspace(0, len(x) - 1, N_PROBES).astype(np.int64)
        j = np.random.default_rng(12345).integers(0, len(x), N_PROBES)
        return np.concatenate([x[i], 0.5 * (x[i] + x[j])]).astype(np.float32)   # seen rows and midpoints

    def save(self, out: str | Path, spec: dict) -> None:
        import sklearn

        if self.clf is None:
            raise ModelError(f"{self.kind} baseline is not fitted")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        probe = self._probes()
        logits = self.decision(probe)
        np.savez(out / BASELINE_NPZ, x=self._x, y=self._y, probe_x=probe, probe_logits=logits)
        info = {"kind": self.kind, "params": self.params, "seed": self.seed, "n_classes": self.n_classes,
                "input": self.input, "n_train": int(len(self._y)), "sklearn": sklearn.__version__,
                "persistence": "retrain on load from train.npz; verified on probe rows",
                "probe_sha256": _sha(logits)}
        (out / "model.json").write_text(json.dumps({**spec, "model_kind": self.kind, "baseline": info,
                                                    "n_classes": self.n_classes}, indent=1, default=str))

    @classmethod
    def load(cls, path: str | Path) -> tuple["SklearnBaseline", dict]:
        """Refit from ``train.npz`` and verify on the stored probes; never unpickles anything."""
        path = Path(path)
        try:
            spec = json.loads((path / "model.json").read_text())
            with np.load(path / BASELINE_NPZ, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("x", "y", "probe_x", "probe_logits")}
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"{path}: cannot read the {cls.kind} baseline ({err})")
        info = spec.get("baseline")
        if not isinstance(info, dict) or info.get("kind") != cls.kind:
            raise ModelError(f"{path}: model.json does not describe a {cls.kind} baseline")
        x, y, px, pl = arrays["x"], arrays["y"], arrays["probe_x"], arrays["probe_logits"]
        n_cls = int(info.get("n_classes", 0))
        ok = (x.dtype.kind == "f" and y.dtype.kind in "iu" and px.dtype.kind == "f" and pl.dtype.kind == "f"
              and x.ndim == 2 and y.shape == (x.shape[0],) and px.ndim == 2 and px.shape[1] == x.shape[1]
              and pl.shape == (px.shape[0], n_cls) and n_cls >= 1 and x.shape[0] > 0
              and int(y.min()) >= 0 and int(y.max()) < n_cls)
        if not ok:
            raise ModelError(f"{path}: {BASELINE_NPZ} has unexpected arrays (shapes, dtypes or labels)")
        if _sha(pl) != info.get("probe_sha256"):
            raise ModelError(f"{path}: the probe logits in {BASELINE_NPZ} do not match model.json's hash")
        params = info.get("params", {})
        if not isinstance(params, dict):
            raise ModelError(f"{path}: baseline hyper-parameters must be a JSON object")
        m = cls(n_cls, seed=int(info.get("seed", 0)), **params).fit(x, y)
        got = m.decision(px)
        if not (np.array_equal(got.argmax(1), pl.argmax(1)) and np.allclose(got, pl, rtol=0, atol=1e-6)):
            import sklearn

            raise ModelError(
                f"{path}: refitting the {cls.kind} baseline does not reproduce the saved model "
                f"(max |logit diff| {np.abs(got - pl).max():.3g}; saved with scikit-learn {info.get('sklearn')}, "
                f"this is {sklearn.__version__}): retrain it with `trafficsnn train`")
        return m, spec


class HGBBaseline(SklearnBaseline):
    """Histogram gradient boosting on flow statistics (balanced class weights, no early stopping)."""

    kind = "gbt"
    defaults = {"max_iter": 200, "learning_rate": 0.1, "max_leaf_nodes": 31, "min_samples_leaf": 0,
                "l2_regularization": 0.0}
    grid = ({}, {"learning_rate": 0.05, "max_leaf_nodes": 15}, {"max_leaf_nodes": 7, "l2_regularization": 1.0},
            {"learning_rate": 0.03, "max_iter": 300, "max_leaf_nodes": 15, "l2_regularization": 1.0})

    def _make(self, n_train):
        from sklearn.ensemble import HistGradientBoostingClassifier

        p = self.params
        leaf = p["min_samples_leaf"] or int(min(20, max(2, n_train // 20)))   # 0: small data sets still split
        return HistGradientBoostingClassifier(
            max_iter=p["max_iter"], learning_rate=p["learning_rate"], max_leaf_nodes=p["max_leaf_nodes"],
            min_samples_leaf=leaf, l2_regularization=p["l2_regularization"], class_weight="balanced",
            early_stopping=False, random_state=self.seed)

    def _raw(self, x):
        return self.clf.decision_function(x)


class RFBaseline(SklearnBaseline):
    """Random forest on flow statistics (balanced class weights)."""

    kind = "rf"
    defaults = {"n_estimators": 300, "min_samples_leaf": 1, "max_features": "sqrt"}
    grid = ({}, {"min_samples_leaf": 3}, {"max_features": 0.3})

    def _make(self, n_train):
        from sklearn.ensemble import RandomForestClassifier

        p = self.params
        return RandomForestClassifier(n_estimators=p["n_estimators"], min_samples_leaf=p["min_samples_leaf"],
                                      max_features=p["max_features"], class_weight="balanced",
                                      random_state=self.seed, n_jobs=1)


class KNNBaseline(SklearnBaseline):
    """k-NN on the first 10 packets (signed size, log inter-arrival time), standardised on the training set."""

    kind = "knn"
    input = "sequence"
    defaults = {"n_neighbors": 5, "weights": "distance"}
    grid = ({"n_neighbors": 3}, {}, {"n_neighbors": 9})

    def _make(self, n_train):
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        p = self.params
        return make_pipeline(StandardScaler(), KNeighborsClassifier(
            n_neighbors=min(int(p["n_neighbors"]), n_train), weights=p["weights"], algorithm="brute"))


class KNN1Baseline(KNNBaseline):
    """1-NN on the first 10 packets."""

    kind = "knn1"
    defaults = {"n_neighbors": 1, "weights": "uniform"}
    grid = ({},)


BASELINES: dict[str, type[SklearnBaseline]] = {c.kind: c for c in (HGBBaseline, RFBaseline, KNNBaseline,
                                                                   KNN1Baseline)}
GBTBaseline = HGBBaseline                  # the name earlier code imported


def select_params(kind: str, train, val, seed: int = 0, grid=None) -> tuple[dict, list[float]]:
    """The hyper-parameters of ``grid`` (default: the class's) with the best validation macro-F1.

    Fitted on ``train``, scored on ``val`` (two ``SampleSet``s, e.g. the grouped train/validation
    sides inside one cross-validation fold: the test fold is never looked at). Ties go to the
    earlier entry. Returns (params, validation macro-F1 of every entry).
    """
    from .metrics import macro_f1

    cls = baseline(kind)
    grid = list(cls.grid if grid is None else grid)
    n_cls = len(train.classes)
    if len(grid) == 1 or len(val) == 0:
        return dict(grid[0]), []
    scores = []
    for g in grid:
        m = cls(n_cls, seed=seed, **g)
        m.fit(m.inputs(train), train.y)
        scores.append(macro_f1(val.y, m.decision(m.inputs(val)).argmax(1), n_cls))
    return dict(grid[int(np.argmax(scores))]), scores


def baseline(kind: str) -> type[SklearnBaseline]:
    try:
        return BASELINES[kind]
    except KeyError:
        raise ModelError(f"unknown baseline {kind!r} (known: {', '.join(BASELINES)})") from None
