"""The network: parameter count, readout closed form, golden vectors, fast-vs-reference parity, streaming."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trafficsnn.errors import ConfigError
from trafficsnn.snn import kernels
from trafficsnn.snn.device import resolve_device
from trafficsnn.snn.encoding import ImprovedEncoder, PaperEncoder, SparseBatch, collate
from trafficsnn.snn.neurons import ReadoutParameters, readout_closed_form, readout_loop_scores
from trafficsnn.snn.presets import PRESETS, build_model, count_parameters

BACKENDS = ["torch"] + (["c"] if kernels.c_kernel() is not None else [])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


def test_paper_parameter_count_and_init():
    torch.manual_seed(0)
    m = build_model("paper")
    assert count_parameters(m) == 31_516
    assert m.n_classes == 14 and m.n_inputs == 300 and m.n_hidden == 100
    assert m.hidden.weight.std().item() == pytest.approx(0.15 / np.sqrt(300), rel=0.05)
    assert m.readout.weight.std().item() == pytest.approx(0.15 / np.sqrt(100), rel=0.1)
    assert m.hidden.beta.item() == pytest.approx(0.7) and m.hidden.b.eq(1).all()
    t = PRESETS["paper"]["training"]
    assert (t["lr"], t["weight_decay"], t["grad_clip_value"], t["batch_size"], t["epochs"]) == (5e-4, 1e-5, 5.0, 128, 30)
    assert t["scheduler"]["monitor"] == "train_loss" and t["scheduler"]["start_epoch"] == 5
    assert t["selection"] == "last_epoch" and t["sampler"] == "balanced"


def test_improved_preset_needs_classes_and_overrides():
    with pytest.raises(ConfigError):
        build_model("improved")
    m = build_model("improved", 6, n_hidden=32)
    assert m.n_classes == 6 and m.n_hidden == 32 and m.preset == "improved"
    assert PRESETS["improved"]["training"]["selection"].startswith("best_val")
    with pytest.raises(ConfigError):
        build_model("improved", 6, hidden=3)
    with pytest.raises(ConfigError):
        build_model("nope", 3)


def test_clamp_parameters():
    m = build_model("paper")
    with torch.no_grad():
        m.hidden.beta.fill_(1.3); m.readout.beta.fill_(-0.2); m.hidden.b[0] = -1
    m.clamp_parameters()
    assert m.hidden.beta.item() == 1.0 and m.readout.beta.item() == 0.0 and m.hidden.b.min() == 0


def test_readout_closed_form_equals_loop():
    g = torch.Generator().manual_seed(1)
    spikes = (torch.rand(3, 300, 100, generator=g, dtype=torch.float64) < 0.1).to(torch.float64)
    for beta in (0.0, 0.3, 0.7, 1.0):
        p = ReadoutParameters(torch.tensor([beta], dtype=torch.float64, requires_grad=True),
                              torch.rand(14, generator=g, dtype=torch.float64),
                              torch.randn(100, 14, generator=g, dtype=torch.float64))
        a, b = readout_loop_scores(spikes, p), readout_closed_form(spikes, p)
        assert rel(b, a) < 1e-12
        ga, = torch.autograd.grad(a.sum(), p.beta)
        gb, = torch.autograd.grad(b.sum(), p.beta)
        assert torch.allclose(ga, gb, rtol=1e-10, atol=1e-12)


def _golden_model(g) -> torch.nn.Module:
    m = build_model("paper").double()
    with torch.no_grad():
        for layer, name in ((m.hidden, "hidden"), (m.readout, "readout")):
            layer.weight.copy_(torch.from_numpy(g[f"{name}_w"]))
            layer.b.copy_(torch.from_numpy(g[f"{name}_b"]))
            layer.beta.copy_(torch.from_numpy(g[f"{name}_beta"]))
    return m


@pytest.mark.parametrize("path", ["reference", "dense"] + [f"sparse-{b}" for b in BACKENDS])
def test_golden_vectors_float64(shared_data, path):
    g = np.load(shared_data / "paper_golden" / "golden.npz")
    m = _golden_model(g)
    n = len(g["kinds"])
    if path in ("reference", "dense"):
        x = torch.from_numpy(g["histograms"])
    else:
        m.kernel = path.split("-")[1]
        enc = PaperEncoder()
        x = collate([enc.sample(*[g[f"{k}_{i}"] for k in ("t1", "s1", "t2", "s2")]) for i in range(n)],
                    300, 300, dtype=torch.float64)
    out = m.run(x, reference=(path == "reference"))
    loss = F.cross_entropy(out.logits, torch.from_numpy(g["labels"]))
    loss.backward()
    assert rel(out.logits.detach(), torch.from_numpy(g["outputs"])) < 1e-9
    assert abs(loss.item() - float(g["loss"])) / float(g["loss"]) < 1e-9
    assert torch.equal(out.hidden_counts, torch.from_numpy(g["hidden_spike_counts"]))
    for layer, name in ((m.hidden, "hidden"), (m.readout, "readout")):
        for pname, key in (("weight", "w"), ("b", "b"), ("beta", "beta")):
            grad = getattr(layer, pname).grad
            assert rel(grad, torch.from_numpy(g[f"grad_{name}_{key}"])) < 1e-9, (name, pname)


def _random_batch(seed: int, n: int = 8, steps: int = 300) -> SparseBatch:
    """Realistic sparse windows: bursts of a few hundred packets, counts > 1 in busy bins."""
    rng = np.random.default_rng(seed)
    enc = ImprovedEncoder(n_steps=steps)
    samples = []
    for _ in range(n):
        k = int(rng.integers(50, 400))
        ts = np.sort(rng.uniform(0, steps * 0.2, k))
        ts[: k // 3] = np.sort(rng.uniform(3, 4, k // 3))       # a burst early
        ts[-(k // 4):] = rng.uniform(steps * 0.2 - 1, steps * 0.2, k // 4)   # and one at the end
        size = np.where(rng.random(k) < 0.5, rng.integers(40, 100, k), rng.integers(1000, 1500, k))
        samples.append(enc.sample(ts, size, rng.integers(0, 2, k)))
    return collate(samples, steps, 300)


def _excite(m, scale: float = 6.0):
    """Scale the input weights up so that hidden neurons actually spike on random data."""
    with torch.no_grad():
        m.hidden.weight.mul_(scale).add_(0.02)
        m.hidden.b.uniform_(0.2, 1.0)
    return m


@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_path_matches_reference_float32(backend):
    torch.manual_seed(4)
    m = _excite(build_model("paper"))
    m.kernel = backend
    x = _random_batch(4)
    y = torch.randint(0, 14, (x.n_samples,))
    res = {}
    for ref in (True, False):
        m.zero_grad()
        out = m.run(x, reference=ref)
        F.cross_entropy(out.logits, y).backward()
        res[ref] = (out.logits.detach(), out.hidden_counts, {k: p.grad.clone() for k, p in m.named_parameters()})
    assert res[True][1].sum() > 100, "test inputs must make the hidden layer spike"
    assert torch.equal(res[True][1], res[False][1])
    assert rel(res[False][0], res[True][0]) < 1e-4
    for k in res[True][2]:
        assert rel(res[False][2][k], res[True][2][k]) < 1e-4, k


@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_and_sparse_inputs_agree(backend):
    torch.manual_seed(5)
    m = _excite(build_model("improved", 6))
    m.kernel = backend
    x = _random_batch(5, n=4)
    with torch.no_grad():
        a, b = m(x), m(x.to_dense())
    assert rel(a, b) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streaming_pieces_equal_whole(backend, dtype):
    torch.manual_seed(6)
    m = _excite(build_model("improved", 5)).to(dtype)
    m.kernel = backend
    x = _random_batch(6, n=5).to(dtype=dtype)
    with torch.no_grad():
        whole = m.run(x)
    st = m.init_state(x.n_samples)
    cuts = [0, 1, 17, 18, 100, 250, 300]
    for a, b in zip(cuts[:-1], cuts[1:]):
        st = m.advance(st, x.steps(a, b))
        if b == 17:   # anytime verdict = whole verdict on the first 17 steps
            part = m.init_state(x.n_samples)
            part = m.advance(part, x.steps(0, 17))
            assert torch.allclose(m.logits(st), m.logits(part))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert rel(m.logits(st), whole.logits) < tol
    assert torch.equal(st.counts, whole.hidden_counts)
    assert st.steps.eq(300).all()


def test_stream_state_index_put():
    m = build_model("improved", 3)
    st = m.init_state(4)
    x = _random_batch(7, n=2, steps=10)
    sub = m.advance(st.index(torch.tensor([1, 3])), x)
    st.put(torch.tensor([1, 3]), sub)
    assert st.steps.tolist() == [0, 10, 0, 10]


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError):
            resolve_device("cuda")


def test_kernel_backend_fallback(monkeypatch):
    monkeypatch.setenv("TRAFFICSNN_KERNEL", "torch")
    assert kernels.pick_backend(torch.zeros(1)) == "torch"
    monkeypatch.delenv("TRAFFICSNN_KERNEL")
    assert kernels.pick_backend(torch.zeros(1, dtype=torch.int64)) == "torch"


def test_no_compiler_falls_back_to_torch(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("TRAFFICSNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kernels, "_LIB", None)
    monkeypatch.setattr(kernels, "_LIB_TRIED", False)
    with pytest.warns(RuntimeWarning):
        assert kernels.c_kernel() is None
    assert kernels.pick_backend(torch.zeros(1)) == "torch"
    m = build_model("improved", 3)
    x = _random_batch(8, n=2, steps=20)
    out = m(x)
    out.sum().backward()
    assert out.shape == (2, 3) and m.hidden.weight.grad is not None


def test_prefix_logits_equal_streaming():
    torch.manual_seed(9)
    m = _excite(build_model("improved", 4))
    x = _random_batch(9, n=4, steps=40)
    k = torch.tensor([40, 7, 1, 7])
    with torch.no_grad():
        got = m.prefix_logits(x, k)
        for i in range(4):
            st = m.advance(m.init_state(1), x.select([i]).steps(0, int(k[i])))
            assert torch.allclose(got[i], m.logits(st)[0], rtol=1e-5, atol=1e-6)
        assert torch.allclose(got[0], m(x)[0], rtol=1e-5, atol=1e-6)
    sel = x.select([2, 0])
    assert torch.equal(sel.to_dense(), x.to_dense()[[2, 0]])


@pytest.mark.skipif("c" not in BACKENDS, reason="no C compiler")
def test_c_kernel_threads_agree():
    torch.manual_seed(10)
    m = _excite(build_model("paper"))
    x = _random_batch(10, n=6)
    y = torch.randint(0, 14, (6,))
    res = []
    old = torch.get_num_threads()
    try:
        for nt in (1, 3):
            torch.set_num_threads(nt)
            m.zero_grad()
            out = m.run(x)
            F.cross_entropy(out.logits, y).backward()
            res.append((out.logits.detach(), out.hidden_counts, [p.grad.clone() for p in m.parameters()]))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(res[0][0], res[1][0]) and torch.equal(res[0][1], res[1][1])
    for a, b in zip(res[0][2], res[1][2]):
        assert rel(b, a) < 1e-5


@pytest.mark.parametrize("field", ["neuron", "step", "sample"])
def test_out_of_range_events_are_rejected(field):
    m = build_model("improved", 3)
    x = _random_batch(11, n=2, steps=10)
    bad = getattr(x, field).clone()
    bad[0] = {"neuron": 300, "step": 10, "sample": 2}[field]
    kw = {f: getattr(x, f) for f in ("sample", "step", "neuron", "value")}
    kw[field] = bad
    with pytest.raises(ValueError):
        m(SparseBatch(**kw, n_samples=2, n_steps=10, n_inputs=300))


@pytest.mark.skipif("c" not in BACKENDS, reason="no C compiler")
@pytest.mark.parametrize("beta,negative_b", [(1.0, False), (0.0, False), (0.7, True)])
def test_c_kernel_edge_parameters_match_torch(beta, negative_b):
    """beta at its bounds and b < 0 (before clamping) disable or stress the silent-step skip."""
    torch.manual_seed(12)
    m = _excite(build_model("paper")).double()
    with torch.no_grad():
        m.hidden.beta.fill_(beta)
        if negative_b:
            m.hidden.b[:10] = -0.1
    x = _random_batch(12, n=3).to(dtype=torch.float64)
    y = torch.tensor([1, 2, 3])
    res = {}
    for backend in ("torch", "c"):
        m.kernel = backend
        m.zero_grad()
        out = m.run(x)
        F.cross_entropy(out.logits, y).backward()
        res[backend] = (out.logits.detach(), out.hidden_counts, [p.grad.clone() for p in m.parameters()])
    assert torch.equal(res["c"][1], res["torch"][1])
    assert rel(res["c"][0], res["torch"][0]) < 1e-12
    for a, b in zip(res["c"][2], res["torch"][2]):
        assert rel(a, b) < 1e-9


def test_improved_preset_learns_a_toy_task():
    """Small packets vs large packets: a few Adam steps of the preset's recipe separate them."""
    torch.manual_seed(13)
    rng = np.random.default_rng(13)
    enc = ImprovedEncoder(n_steps=50)
    samples, labels = [], []
    for i in range(64):
        k = int(rng.integers(20, 60))
        size = rng.integers(40, 90, k) if i % 2 == 0 else rng.integers(1000, 1500, k)
        samples.append(enc.sample(np.sort(rng.uniform(0, 10, k)), size, rng.integers(0, 2, k)))
        labels.append(i % 2)
    x, y = collate(samples, 50, 300), torch.tensor(labels)
    m = build_model("improved", 2, n_steps=50)
    tr = PRESETS["improved"]["training"]
    opt = torch.optim.Adam(m.parameters(), lr=tr["lr"] * 5, weight_decay=tr["weight_decay"])
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        torch.nn.utils.clip_grad_value_(m.parameters(), tr["grad_clip_value"])
        opt.step()
        m.clamp_parameters()
    with torch.no_grad():
        acc = (m(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.9


def test_golden_vectors_float32_fast_path(shared_data):
    """In float32 the fused path stays within 1e-4 of the authors' float64 numbers."""
    g = np.load(shared_data / "paper_golden" / "golden.npz")
    m = _golden_model(g).float()
    enc = PaperEncoder()
    x = collate([enc.sample(*[g[f"{k}_{i}"] for k in ("t1", "s1", "t2", "s2")]) for i in range(len(g["kinds"]))],
                300, 300)
    out = m.run(x)
    F.cross_entropy(out.logits, torch.from_numpy(g["labels"])).backward()
    assert rel(out.logits.double(), torch.from_numpy(g["outputs"])) < 1e-4
    assert torch.equal(out.hidden_counts.double(), torch.from_numpy(g["hidden_spike_counts"]))
    for layer, name in ((m.hidden, "hidden"), (m.readout, "readout")):
        for pname, key in (("weight", "w"), ("b", "b"), ("beta", "beta")):
            assert rel(getattr(layer, pname).grad.double(), torch.from_numpy(g[f"grad_{name}_{key}"])) < 1e-4
