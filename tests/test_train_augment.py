"""Training-time augmentation: random prefixes and thinned counts, never an empty sample."""
from __future__ import annotations

import numpy as np

from trafficsnn.train.datasets import SampleSet
from trafficsnn.train.loop import augment, balanced_indices


def _set(n=50, seed=0):
    rng = np.random.default_rng(seed)
    offs, steps, neurons, vals = [0], [], [], []
    for _ in range(n):
        k = int(rng.integers(1, 30))
        st = np.sort(rng.choice(300, k, replace=False))
        steps.append(st)
        neurons.append(rng.integers(0, 300, k))
        vals.append(rng.integers(1, 5, k).astype(np.float32))
        offs.append(offs[-1] + k)
    cat = np.concatenate
    return SampleSet(["a", "b"], np.arange(n) % 2, np.array(["c"] * n), np.array([str(i) for i in range(n)]),
                     np.zeros(n, np.int32), np.ones(n, bool), np.array(offs, np.int64), cat(steps).astype(np.int16),
                     cat(neurons).astype(np.int16), cat(vals), np.zeros((n, 3), np.float32),
                     {"kind": "improved", "value": "count"}, 300, 300)


def test_augment_prefix_and_thinning():
    ds = _set()
    idx = np.arange(len(ds))[::-1]
    a = augment(ds, idx, np.random.default_rng(0), prefix=1.0, drop=0.3)
    b = augment(ds, idx, np.random.default_rng(0), prefix=1.0, drop=0.3)
    assert np.array_equal(a.ev_value, b.ev_value) and np.array_equal(a.ev_off, b.ev_off)
    assert len(a) == len(ds)
    lens = np.diff(a.ev_off)
    assert (lens >= 1).all()
    for j, i in enumerate(idx):
        orig, new = ds.sample(int(i)), a.sample(j)
        assert new.step.min() == orig.step.min()                  # a prefix: starts where the flow starts
        assert new.value.sum() <= orig.value.sum()
    assert a.ev_value.sum() < ds.ev_value.sum()


def test_no_augmentation_is_identity():
    ds = _set(seed=1)
    a = augment(ds, np.arange(len(ds)), np.random.default_rng(0), prefix=0.0, drop=0.0)
    assert np.array_equal(a.ev_value, ds.ev_value) and np.array_equal(a.ev_step, ds.ev_step)


def test_balanced_sampler():
    y = np.array([0] * 90 + [1] * 10)
    idx = balanced_indices(y, np.random.default_rng(0))
    assert len(idx) == 100
    assert 0.35 < (y[idx] == 1).mean() < 0.65


def test_balanced_sampler_epoch_length():
    y = np.array([0] * 30 + [1] * 5)
    assert len(balanced_indices(y, np.random.default_rng(0), 640)) == 640
