"""Baselines trained and evaluated on the same samples as the SNN.

- ``PooledMLP``: an ANN on the SNN's own input (the same sparse (step, size-bin) counts),
  with the time axis pooled into coarser bins and log1p counts; the first layer is an
  ``EmbeddingBag`` so the sparse input is never densified.
- ``GBTBaseline``: scikit-learn histogram gradient boosting on classic flow statistics
  (``features.FEATURE_NAMES``), balanced class weights. The fitted trees are exported to
  plain arrays (``.npz``) and evaluated with numpy, so saved baselines need no pickle.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ModelError

GBT_NODE_FIELDS = ("value", "feature_idx", "num_threshold", "missing_go_to_left", "left", "right", "is_leaf")


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


# ---------------------------------------------------------------- gradient boosting
class GBTBaseline:
    """Gradient-boosted trees on flow statistics, stored as arrays (no pickle)."""

    kind = "gbt"

    def __init__(self, n_classes: int, max_iter: int = 200, learning_rate: float = 0.1, max_leaf_nodes: int = 31,
                 seed: int = 0):
        self.n_classes = n_classes
        self.params = {"max_iter": max_iter, "learning_rate": learning_rate, "max_leaf_nodes": max_leaf_nodes,
                       "seed": seed}
        self.arrays: dict[str, np.ndarray] | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> "GBTBaseline":
        from sklearn.ensemble import HistGradientBoostingClassifier

        p = self.params
        clf = HistGradientBoostingClassifier(
            max_iter=p["max_iter"], learning_rate=p["learning_rate"], max_leaf_nodes=p["max_leaf_nodes"],
            class_weight="balanced", early_stopping=False, random_state=p["seed"],
            min_samples_leaf=int(min(20, max(2, len(y) // 20))),  # small data sets still split
        )
        clf.fit(np.asarray(x, np.float64), np.asarray(y))
        self._export(clf)
        self.sk_classes = clf.classes_
        return self

    def _export(self, clf) -> None:
        nodes, offsets, tree_col = [], [0], []
        for it in clf._predictors:
            for k, pred in enumerate(it):
                nodes.append(pred.nodes)
                offsets.append(offsets[-1] + pred.nodes.shape[0])
                tree_col.append(k)
        allnodes = np.concatenate(nodes)
        arrays = {f: np.ascontiguousarray(allnodes[f]) for f in GBT_NODE_FIELDS}
        arrays["tree_offset"] = np.asarray(offsets[:-1], np.int64)
        arrays["tree_col"] = np.asarray(tree_col, np.int64)
        arrays["baseline"] = np.asarray(clf._baseline_prediction, np.float64).ravel()
        arrays["classes"] = np.asarray(clf.classes_, np.int64)
        self.arrays = arrays

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Raw scores (n, n_classes); classes never seen in training get -inf-like scores."""
        a = self.arrays
        if a is None:
            raise ModelError("gradient-boosting baseline is not fitted")
        x = np.asarray(x, np.float64)
        n = x.shape[0]
        n_trees = a["tree_offset"].shape[0]
        node = np.repeat(a["tree_offset"][:, None], n, axis=1)  # (trees, n)
        rows = np.arange(n)[None, :]
        for _ in range(64):
            leaf = a["is_leaf"][node].astype(bool)
            if leaf.all():
                break
            xv = x[rows, a["feature_idx"][node]]
            left = np.where(np.isnan(xv), a["missing_go_to_left"][node].astype(bool), xv <= a["num_threshold"][node])
            nxt = a["tree_offset"][:, None] + np.where(left, a["left"][node], a["right"][node])
            node = np.where(leaf, node, nxt)
        vals = a["value"][node]                                  # (trees, n)
        n_cols = int(a["tree_col"].max()) + 1 if n_trees else 1
        raw = np.tile(a["baseline"][:n_cols], (n, 1)) if a["baseline"].size >= n_cols else np.zeros((n, n_cols))
        for k in range(n_cols):
            raw[:, k] += vals[a["tree_col"] == k].sum(axis=0)
        seen = a["classes"]
        out = np.full((n, self.n_classes), -30.0)
        if n_cols == 1:                                          # binary: one logit for classes_[1]
            out[:, seen[0]] = 0.0
            out[:, seen[1]] = raw[:, 0]
        else:
            out[:, seen] = raw
        return out

    def save(self, out: str | Path, spec: dict) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "model.npz", **self.arrays)
        (out / "model.json").write_text(json.dumps({**spec, "model_kind": "gbt", "gbt_params": self.params,
                                                    "n_classes": self.n_classes}, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> tuple["GBTBaseline", dict]:
        path = Path(path)
        try:
            spec = json.loads((path / "model.json").read_text())
            with np.load(path / "model.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            raise ModelError(f"{path}: cannot read the gradient-boosting baseline ({err})")
        m = cls(int(spec["n_classes"]), **{k: v for k, v in spec.get("gbt_params", {}).items()})
        m.arrays = arrays
        return m, spec
