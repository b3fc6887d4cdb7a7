"""The fused C streaming step of RecurrentALIF equals the torch path (state and verdicts within 1e-5)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trafficsnn.serve.engine import ModelHandle, StateStore, StreamingClassifier
from trafficsnn.snn import alif_fused
from trafficsnn.snn.alif import RecurrentALIF
from trafficsnn.snn.encoding import SparseBatch

ROOT = Path(__file__).resolve().parents[1]
NDPI = ROOT.parent / "shared" / "data" / "ndpi"

needs_kernel = pytest.mark.skipif(alif_fused.library() is None, reason="no C compiler")


def _events(rng, n_flows: int, done: np.ndarray, k: np.ndarray, n_inputs: int, integer: bool):
    """A few input events per step, sorted by flow, step and neuron (as the encoder gives them)."""
    fl, st, ne, va = [], [], [], []
    for f in range(n_flows):
        for t in range(int(k[f])):
            nn_ = np.sort(rng.choice(n_inputs, int(rng.integers(0, 6)), replace=False))
            fl += [f] * len(nn_)
            st += [int(done[f]) + t] * len(nn_)
            ne += nn_.tolist()
            va += ([1.0] * len(nn_)) if integer else rng.uniform(0.2, 3.0, len(nn_)).tolist()
    return (np.array(fl, np.int64), np.array(st, np.int64), np.array(ne, np.int64), np.array(va, np.float32))


@needs_kernel
@pytest.mark.parametrize("cfg", [
    dict(n_hidden=64),                                                   # the shipped shape
    dict(n_hidden=24, n_layers=2, members=3, input_skip=True, current="leaky"),
    dict(n_hidden=16, recurrent=False, members=2),
])
@pytest.mark.parametrize("integer", [True, False])
def test_fused_advance_equals_torch_advance(cfg, integer):
    torch.manual_seed(1)
    rng = np.random.default_rng(2)
    model = RecurrentALIF(40, 5, n_steps=128, **cfg).eval()
    with torch.no_grad():   # some adaptation and a strong recurrence, so neurons fire and adapt
        for b in model.beta:
            b.uniform_(0.0, 1.5)
        for b in model.bias:
            b.uniform_(-0.3, 0.6)
    store = StateStore(model, 64)
    n = 37
    rows = rng.permutation(64)[:n].astype(np.int64)
    # a history first (through the torch path), then both paths advance from that same state
    done = rng.integers(0, 20, n).astype(np.int64)
    k = rng.integers(0, 12, n).astype(np.int64)
    k[:3] = 0
    k[3] = 40
    for f in range(n):
        if done[f]:
            ef, es, en, ev = _events(rng, 1, np.zeros(1, np.int64), done[f:f + 1], 40, integer)
            t = torch.as_tensor
            st = model.advance(store.unpack(store.slab[rows[f]:rows[f] + 1]),
                               SparseBatch(t(ef), t(es), t(en), t(ev), 1, int(done[f]), 40))
            store.slab[rows[f]] = store.pack(st)[0]
    ef, es, en, ev = _events(rng, n, done, k, 40, integer)
    ref = store.slab.clone()
    for f in range(n):     # torch: one flow at a time, its k steps in one advance
        if k[f]:
            m = ef == f
            t = torch.as_tensor
            st = model.advance(store.unpack(ref[rows[f]:rows[f] + 1]),
                               SparseBatch(t(ef[m] * 0), t(es[m] - done[f]), t(en[m]), t(ev[m]), 1, int(k[f]), 40))
            ref[rows[f]] = store.pack(st)[0]
    got = store.slab.clone()
    off = np.r_[0, np.cumsum(np.bincount(ef, minlength=n))]
    model.fused_stepper().run(got, store.offsets(), rows, done, k, off, es, en, ev)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    s_col = store.offsets()["s"]
    assert got[:, s_col:s_col + model.n_hidden].sum() > 0   # neurons did fire: the test compares spikes too
    assert torch.equal(got[np.setdiff1d(np.arange(64), rows)], store.slab[np.setdiff1d(np.arange(64), rows)])


@needs_kernel
def test_fused_refuses_events_outside_their_steps():
    model = RecurrentALIF(10, 3, n_hidden=8).eval()
    store = StateStore(model, 4)
    run = model.fused_stepper().run
    one = np.ones(1, np.int64)
    with pytest.raises(ValueError):   # step 5 is not among the flow's new steps 0..1
        run(store.slab, store.offsets(), np.zeros(1, np.int64), np.zeros(1, np.int64), 2 * one,
            np.array([0, 1]), np.array([5]), np.array([3]), np.ones(1, np.float32))
    with pytest.raises(ValueError):   # row out of the slab
        run(store.slab, store.offsets(), np.array([4]), np.zeros(1, np.int64), one,
            np.array([0, 0]), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def test_no_fused_step_when_training_or_turned_off(monkeypatch):
    model = RecurrentALIF(10, 3, n_hidden=8)
    assert model.train().fused_stepper() is None
    monkeypatch.setenv("TRAFFICSNN_KERNEL", "torch")
    assert model.eval().fused_stepper() is None


def _same_verdicts(a, b):
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert (x["flow_id"], x["class"], x["packets"], x["steps"], x["final"]) == \
               (y["flow_id"], y["class"], y["packets"], y["steps"], y["final"])
        np.testing.assert_allclose(list(x["probabilities"].values()), list(y["probabilities"].values()),
                                   rtol=0, atol=1e-5)


def _classify(monkeypatch, kernel: str, src, **kw):
    from trafficsnn.api import Classifier

    monkeypatch.setenv("TRAFFICSNN_KERNEL", kernel)
    clf = Classifier(ROOT / "models" / "ndpi6-snn", device="cpu", emit="update", min_confidence=0.0, **kw)
    assert (StreamingClassifier(clf.handle, max_flows=10)._stepper is None) == (kernel == "torch")
    return clf.classify(src)


@needs_kernel
def test_shipped_model_verdicts_equal_torch_path_synthetic(monkeypatch, tmp_path):
    from trafficsnn.serve.demo import write_demo_pcap

    pcap = tmp_path / "d.pcap"
    write_demo_pcap(pcap, n_flows=400, packets_per_flow=40, duration=20.0, seed=5, heavy=True)
    _same_verdicts(_classify(monkeypatch, "torch", pcap, every=3), _classify(monkeypatch, "c", pcap, every=3))


@needs_kernel
@pytest.mark.skipif(not NDPI.exists(), reason="../shared/data/ndpi not present")
@pytest.mark.parametrize("name", ["netflix.pcap", "wechat.pcap", "wireguard.pcap", "quic_q50.pcap"])
def test_shipped_model_verdicts_equal_torch_path_real_captures(monkeypatch, name):
    pcap = NDPI / "developer" / "pcap" / name
    if not pcap.exists():
        pytest.skip(f"{pcap} not present")
    _same_verdicts(_classify(monkeypatch, "torch", pcap), _classify(monkeypatch, "c", pcap))


def test_engine_uses_the_torch_loop_without_the_kernel(monkeypatch, tmp_path):
    from trafficsnn.serve.demo import make_random_model

    monkeypatch.setenv("TRAFFICSNN_KERNEL", "torch")
    h = ModelHandle.load(make_random_model(tmp_path / "m", classes=["a", "b"], seed=1, preset="packet"), "cpu")
    assert StreamingClassifier(h)._stepper is None
