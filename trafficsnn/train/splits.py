"""Train/validation/test splits that never put one capture (or one session) on both sides.

Samples of one capture share its network, its hosts and often its label (per-pcap
labelling), so a split at the sample or flow level measures memorised captures. The
grouped split assigns whole *units* to a side: a unit is one capture file, or several
captures that are cuts of one session (given as glob patterns). Units are assigned
greedily to the side whose per-class quota is furthest from being met (stratified as far
as the groups allow), in an order fixed by the seed.

``paper_split`` is the reference paper's random window-level 65/15/20 split. It leaks
(overlapping windows of one flow land on both sides) and exists only for comparison.
"""
from __future__ import annotations

import fnmatch
import json
import warnings
from pathlib import Path, PurePath
from typing import Sequence

import numpy as np

from ..errors import ConfigError

SPLIT_NAMES = ("train", "val", "test")

# Cuts of one session among the nDPI developer captures (data/ndpi/README.md).
NDPI_SESSION_GROUPS: list[list[str]] = [
    ["openvpn*"],
    ["wa_voice*", "wa_video*"],
    ["whatsapp_login_call*", "whatsapp_login_chat*"],
    ["KakaoTalk_*"],
    ["reddit*", "tumblr*"],
    ["tls_1.2_unidirectional_*"],
]

PAPER_SPLIT_WARNING = (
    "--split paper reproduces the paper's random window-level split: overlapping windows of the "
    "same flow and capture land in train and test, so its scores are optimistic (leakage). "
    "Use it only to compare with the paper; report grouped splits."
)


class LeakySplitWarning(UserWarning):
    """The paper split mixes windows of one flow across train and test."""


def units_of(captures: Sequence[str], session_groups: Sequence[Sequence[str]] = ()) -> dict[str, str]:
    """Capture -> unit name: the first session group whose pattern matches its file name, else itself."""
    out = {}
    for cap in captures:
        name = PurePath(cap).name
        unit = cap
        for pats in session_groups:
            if any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(cap, p) for p in pats):
                unit = "session:" + "|".join(pats)
                break
        out[cap] = unit
    return out


def _greedy_assign(unit_counts: np.ndarray, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Assign units (rows: per-class sample counts) to sides with quotas ``fractions``."""
    n_units, n_classes = unit_counts.shape
    total = unit_counts.sum(axis=0).astype(np.float64)
    target = fractions[:, None] * total[None, :]
    current = np.zeros_like(target)
    # big units (in share of their class) first, with seeded jitter so seeds give different splits
    share = (unit_counts / np.maximum(total, 1)).max(axis=1)
    order = np.argsort(-share * rng.uniform(0.5, 1.5, n_units), kind="stable")
    side = np.empty(n_units, np.int64)
    units_per_side_class = np.zeros((len(fractions), n_classes))
    for u in order:
        w = unit_counts[u] / np.maximum(total, 1)
        deficit = (target - current) / np.maximum(total, 1)
        # prefer the side lacking these classes most; a side with no unit of a class yet gets a bonus
        first_of_class = ((units_per_side_class == 0) & (w > 0)).sum(axis=1) * (fractions > 0)
        need = (deficit * (w > 0)).sum(axis=1) + 0.5 * first_of_class
        # spread big units: prefer the side that is least full relative to its share
        fill = current.sum(axis=1) / np.maximum(fractions * total.sum(), 1e-9)
        need = need - 0.25 * fill
        need = np.where(fractions > 0, need, -np.inf)
        s = int(np.argmax(need + 0.05 * rng.random(len(fractions))))
        side[u] = s
        current[s] += unit_counts[u]
        units_per_side_class[s] += unit_counts[u] > 0
    return side


def grouped_split(
    captures: Sequence[str],
    labels: Sequence[int],
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    session_groups: Sequence[Sequence[str]] = (),
) -> np.ndarray:
    """Split index per sample (0 train, 1 val, 2 test); whole units go to one side."""
    fr = np.asarray(fractions, np.float64)
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    s_unit, counts = _unit_class_counts(captures, labels, session_groups)
    side = _greedy_assign(counts, fr, np.random.default_rng(seed))
    return side[s_unit]


def _unit_class_counts(captures: Sequence[str], labels: Sequence[int],
                       session_groups: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Unit index of each sample and the (unit, class) sample counts that the greedy split balances."""
    captures = [str(c) for c in captures]
    labels = np.asarray(labels, np.int64)
    unit_of = units_of(sorted(set(captures)), session_groups)
    units = sorted(set(unit_of.values()))
    uidx = {u: i for i, u in enumerate(units)}
    s_unit = np.array([uidx[unit_of[c]] for c in captures], np.int64)
    n_classes = int(labels.max()) + 1 if labels.size else 1
    counts = np.zeros((len(units), n_classes), np.int64)
    np.add.at(counts, (s_unit, labels), 1)
    return s_unit, counts


def grouped_kfold(
    captures: Sequence[str], labels: Sequence[int], k: int = 5, seed: int = 0,
    session_groups: Sequence[Sequence[str]] = (),
) -> np.ndarray:
    """Fold index (0..k-1) per sample, grouped by unit and stratified as far as groups allow."""
    if k < 2:
        raise ConfigError("k-fold needs k >= 2")
    s_unit, counts = _unit_class_counts(captures, labels, session_groups)
    side = _greedy_assign(counts, np.full(k, 1.0 / k), np.random.default_rng(seed))
    return side[s_unit]


def paper_split(n_samples: int, seed: int | None = 0, warn: bool = True) -> np.ndarray:
    """The paper's random window-level 65/15/20 train/val/test split (leaky; see module doc)."""
    if warn:
        warnings.warn(PAPER_SPLIT_WARNING, LeakySplitWarning, stacklevel=2)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_samples)
    n_train = int(n_samples * 0.65)
    n_test = int(n_samples * 0.20)
    side = np.full(n_samples, 1, np.int64)          # validation takes the rounding remainder
    side[perm[:n_train]] = 0
    side[perm[n_train:n_train + n_test]] = 2
    return side


def manifest(
    side: np.ndarray, captures: Sequence[str], flows: Sequence[str], labels: Sequence[int],
    classes: Sequence[str], kind: str, seed: int | None, extra: dict | None = None,
) -> dict:
    """JSON-able record of a split: sample -> flow -> capture -> side, plus per-side counts."""
    side = np.asarray(side)
    labels = np.asarray(labels)
    cap_sides: dict[str, set] = {}
    for c, s in zip(captures, side):
        cap_sides.setdefault(str(c), set()).add(SPLIT_NAMES[int(s)])
    counts = {
        SPLIT_NAMES[s]: {classes[k]: int(((side == s) & (labels == k)).sum()) for k in range(len(classes))}
        for s in range(3)
    }
    return {
        "kind": kind, "seed": seed, "classes": list(classes),
        "leaky": kind == "paper",
        "counts": counts,
        "captures": {c: sorted(v) for c, v in sorted(cap_sides.items())},
        "samples": [
            {"sample": i, "flow": str(f), "capture": str(c), "label": classes[int(y)], "split": SPLIT_NAMES[int(s)]}
            for i, (f, c, y, s) in enumerate(zip(flows, captures, labels, side))
        ],
        **(extra or {}),
    }


def save_manifest(path: str | Path, m: dict) -> None:
    Path(path).write_text(json.dumps(m, indent=1))


def check_grouped(side: np.ndarray, captures: Sequence[str], session_groups: Sequence[Sequence[str]] = ()) -> None:
    """Raise if a capture or session group has samples on more than one side."""
    unit_of = units_of(sorted(set(map(str, captures))), session_groups)
    seen: dict[str, int] = {}
    for c, s in zip(captures, side):
        u = unit_of[str(c)]
        if seen.setdefault(u, int(s)) != int(s):
            raise AssertionError(f"unit {u} is on more than one side of the split")
