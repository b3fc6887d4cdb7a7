"""Input encodings: the paper's size-edge table and histogram, the improved encoder, batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trafficsnn.errors import ConfigError
from trafficsnn.snn.encoding import (IMPROVED_SIZE_EDGES, ImprovedEncoder, PaperEncoder, SparseBatch,
                                     calibration_bins_size, collate, improved_size_bins,
                                     paper_histogram, paper_size_bins, paper_size_edges)
from trafficsnn.snn.registry import encoder_for


def test_paper_size_edges_table():
    e = paper_size_edges()
    assert e.shape == (301,)
    _, shift = calibration_bins_size(300, [1, 10, 20], 40)
    assert shift == 1590
    assert e[0] == 0 and e[1] == 40 and e[51] == 90 and e[101] == 590 and e[151] == 1590
    assert e[-1] == 1530 + 1590
    assert np.all(np.diff(e) > 0)


def test_paper_bin_indices_of_spec_section_10():
    assert paper_size_bins(np.array([40, 89, 90, 1570])).tolist() == [1, 50, 51, 150]
    assert paper_size_bins(np.array([0, 39])).tolist() == [0, 0]
    assert paper_size_bins(np.array([0, 49, 50, 1530, 1531]), direction2=True).tolist() == [151, 200, 201, 299, -1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paper_histogram_equals_numpy_and_sparse(seed):
    rng = np.random.default_rng(seed)
    n1, n2 = rng.integers(1, 400, 2)
    t1 = np.sort(rng.uniform(0, 60, n1)); t1[0] = 0
    t2 = np.sort(rng.uniform(0, 55, n2)); t2[0] = 0
    s1 = rng.integers(0, 1700, n1); s2 = rng.integers(0, 1700, n2)
    s1[:3] = [1589, 1590, 40]
    h = paper_histogram(t1, s1, t2, s2)
    ref, _, _ = np.histogram2d(np.r_[t1, t2], np.r_[s1, s2 + 1590.0], bins=[300, paper_size_edges()])
    assert np.array_equal(h, ref)
    assert np.array_equal(PaperEncoder().sample(t1, s1, t2, s2).to_dense(300, 300), ref)


def test_paper_histogram_single_time_and_unpaired():
    # all packets at one instant: numpy widens the range by +-0.5
    h = paper_histogram([0.0, 0.0], [60, 60], [0.0], [0])
    assert h.sum() == 3 and h[150, 21] == 2 and h[150, 151] == 1
    s = PaperEncoder().sample([0.0, 0.0], [60, 60], [0.0], [0])
    assert np.array_equal(s.to_dense(300, 300), h)


def test_paper_histogram_matches_golden(shared_data):
    g = np.load(shared_data / "paper_golden" / "golden.npz")
    assert np.array_equal(paper_size_edges(), g["size_edges"])
    assert int(g["dir2_shift"]) == 1590
    for i in range(len(g["kinds"])):
        args = [g[f"{k}_{i}"] for k in ("t1", "s1", "t2", "s2")]
        assert np.array_equal(paper_histogram(*args), g["histograms"][i])
        assert np.array_equal(PaperEncoder().sample(*args).to_dense(300, 300), g["histograms"][i])


def test_improved_size_bins_symmetric_table():
    assert len(IMPROVED_SIZE_EDGES) == 150
    sizes = np.array([0, 39, 40, 89, 90, 589, 590, 1500, 1549, 1550, 65535])
    assert improved_size_bins(sizes).tolist() == [0, 0, 1, 50, 51, 100, 101, 146, 148, 149, 149]


def test_improved_encoder_events_and_sample():
    enc = ImprovedEncoder()
    ts = np.array([0.0, 0.05, 0.199, 0.2, 59.99, 60.0, 75.0])
    size = np.array([60, 60, 1500, 40, 100, 100, 100])
    dirn = np.array([0, 0, 1, 1, 0, 0, 1])
    step, neuron = enc.events(ts, size, dirn)
    assert step.tolist() == [0, 0, 0, 1, 299]
    assert neuron.tolist() == [21, 21, 150 + 146, 151, 52]
    s = enc.sample(ts, size, dirn)
    assert s.nnz == 4 and s.value.tolist() == [2.0, 1.0, 1.0, 1.0]
    # a later window uses its own start t0 on the same clock
    step2, _ = enc.events(ts, size, dirn, t0=15.0)
    assert step2.tolist() == [224, 225]  # 75 s is the end of [15, 75)
    assert ImprovedEncoder(value="log1p").sample(ts, size, dirn).value[0] == pytest.approx(np.log1p(2))


def test_improved_encoder_validates():
    with pytest.raises(ConfigError):
        ImprovedEncoder(bin_s=0)
    with pytest.raises(ConfigError):
        ImprovedEncoder(value="sqrt")


def test_encoder_for_specs():
    assert isinstance(encoder_for("paper"), PaperEncoder)
    e = encoder_for({"encoding": {"kind": "improved", "bin_s": 0.1, "n_steps": 50}})
    assert isinstance(e, ImprovedEncoder) and e.n_steps == 50 and e.bin_s == 0.1
    assert encoder_for(e.spec()).spec() == e.spec()
    with pytest.raises(ConfigError):
        encoder_for({"kind": "nope"})


def test_collate_and_dense_roundtrip():
    rng = np.random.default_rng(3)
    enc = ImprovedEncoder(n_steps=20)
    samples = []
    for _ in range(4):
        n = rng.integers(0, 50)
        samples.append(enc.sample(np.sort(rng.uniform(0, 5, n)), rng.integers(40, 1500, n), rng.integers(0, 2, n)))
    b = collate(samples, 20, 300)
    assert isinstance(b, SparseBatch) and b.n_samples == 4
    dense = b.to_dense()
    for i, s in enumerate(samples):
        assert torch.equal(dense[i], torch.from_numpy(s.to_dense(20, 300, np.float32)))
    b2 = SparseBatch.from_dense(dense)
    assert torch.equal(b2.to_dense(), dense)
    with pytest.raises(ValueError):
        collate(samples, 2, 300)
    empty = collate([enc.sample([], [], [])], 20, 300)
    assert empty.nnz == 0 and empty.to_dense().shape == (1, 20, 300)
