"""Packet-clocked encoder and the recurrent ALIF architecture: exactness of the seams."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trafficsnn.snn.alif import RecurrentALIF
from trafficsnn.snn.encoding import collate
from trafficsnn.snn.packet_encoding import N_INPUTS, PacketEncoder, gap_bins, payload_length
from trafficsnn.snn.presets import build_model
from trafficsnn.snn.registry import architecture_names, encoder_for, encoder_names
from trafficsnn.snn.streaming import StreamInput


def _flow(rng, n=40, proto=6):
    ts = 100.0 + np.cumsum(rng.exponential(0.05, n))
    size = rng.integers(40, 1500, n).astype(np.uint32)
    d = rng.integers(0, 2, n).astype(np.uint8)
    fl = rng.choice([0x10, 0x18, 0x02, 0x11, 0x04], n).astype(np.uint8)
    return ts, size, d, fl


def test_registry_knows_builtins_and_round_trips_specs():
    assert {"paper", "improved", "packet"} <= set(encoder_names())
    assert {"lif", "alif"} <= set(architecture_names())
    e = PacketEncoder(32)
    assert encoder_for(e.spec()).spec() == e.spec()
    assert isinstance(build_model("packet", 6), RecurrentALIF)


def test_ipv4_and_ipv6_encode_identically():
    rng = np.random.default_rng(1)
    ts, size, d, fl = _flow(rng)
    enc = PacketEncoder(64)
    v4 = enc.sample(ts, size, d, fl, proto=6, ipv6=False)
    v6 = enc.sample(ts, size + 20, d, fl, proto=6, ipv6=True)   # same payloads, 20 more header bytes
    for a, b in zip(v4, v6):
        np.testing.assert_array_equal(a, b)
    assert payload_length([60, 80], [6, 6], [False, True]).tolist() == [20, 20]


def test_one_step_per_packet_and_the_inputs_it_codes():
    enc = PacketEncoder(8)
    ts = np.array([0.0, 0.0, 0.001, 10.0])
    s = enc.sample(ts, np.array([60, 1500, 52, 40]), np.array([0, 1, 0, 1]), np.array([0x02, 0x12, 0x10, 0x11]),
                   proto=6)
    assert sorted(set(s.step.tolist())) == [0, 1, 2, 3]
    assert s.neuron.max() < N_INPUTS and (s.value == 1).all()
    assert gap_bins(np.array([np.nan, 0.0, 1e-3, 1e9])).tolist()[0] == 0
    # ten packets, a window of 8: 8 steps
    s = enc.sample(np.arange(10.0), np.full(10, 100), np.zeros(10), None, proto=17)
    assert int(s.step.max()) == 7


def _stream_pieces(enc, ts, size, d, fl, cuts):
    """Feed a flow in pieces, carrying steps/previous time/held packets like the daemon."""
    done, prev, held = 0, np.nan, np.zeros(0, np.int64)
    steps, neurons, values = [], [], []
    bounds = [0, *cuts, len(ts)]
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        idx = np.concatenate([held, np.arange(a, b)])
        x = StreamInput(np.zeros(len(idx), np.int64), ts[idx], size[idx], d[idx], fl[idx], ts[:1], np.array([prev]),
                        np.array([done]), np.array([6]), np.array([False]), np.array([i == len(bounds) - 2]))
        ev = enc.stream(x)
        steps.append(ev.step)
        neurons.append(ev.neuron)
        values.append(ev.value)
        done = int(ev.target[0])
        fed = idx[~ev.hold]
        if len(fed):
            prev = ts[fed[-1]]
        held = idx[ev.hold]
    return np.concatenate(steps), np.concatenate(neurons), np.concatenate(values)


@pytest.mark.parametrize("kind", ["packet", "improved"])
def test_streaming_in_pieces_equals_whole(kind):
    rng = np.random.default_rng(2)
    ts, size, d, fl = _flow(rng, 60)
    enc = encoder_for({"kind": kind, "n_steps": 50, "bin_s": 0.1})
    for cuts in ([], [1], [3, 4, 20], list(range(1, 60, 7))):
        st, ne, va = _stream_pieces(enc, ts, size, d, fl, cuts)
        order = np.lexsort((ne, st))
        if kind == "packet":
            whole = enc.sample(ts, size, d, fl, proto=6)
        else:
            whole = enc.sample(ts - ts[0], size, d)
        np.testing.assert_array_equal(st[order], whole.step)
        np.testing.assert_array_equal(ne[order], whole.neuron)
        np.testing.assert_allclose(va[order], whole.value)


def _batch(n=5, T=30, seed=3):
    rng = np.random.default_rng(seed)
    enc = PacketEncoder(T)
    samples = []
    for i in range(n):
        ts, size, d, fl = _flow(rng, int(rng.integers(3, 45)))
        samples.append(enc.sample(ts, size, d, fl, proto=6 if i % 2 else 17))
    return collate(samples, T, enc.n_inputs), samples, enc


@pytest.mark.parametrize("skip", [False, True])
def test_alif_fast_path_equals_reference_loop_and_gradients_flow(skip):
    torch.manual_seed(0)
    x, _, enc = _batch()
    m = RecurrentALIF(enc.n_inputs, 4, n_steps=enc.n_steps, n_hidden=16, n_layers=2, dropout=0.0,
                      input_skip=skip, members=1 + int(skip) * 2).double()
    xb = x.to(dtype=torch.float64)
    torch.testing.assert_close(m(xb), m(xb, reference=True), rtol=1e-9, atol=1e-9)
    m(xb).sum().backward()
    g = m.w_in[0].grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert m.tau_mem[0].grad is not None


@pytest.mark.parametrize("skip", [False, True])
def test_alif_streaming_equals_forward_and_prefix(skip):
    torch.manual_seed(1)
    x, samples, enc = _batch(4, T=30)
    m = RecurrentALIF(enc.n_inputs, 3, n_steps=enc.n_steps, n_hidden=12, dropout=0.0, input_skip=skip, members=1 + int(skip) * 2).double().eval()
    xb = x.to(dtype=torch.float64)
    lens = m.lengths(xb)
    whole = m(xb)
    for i in range(4):
        one = xb.select([i])
        st = m.init_state(1)
        t, L = 0, int(lens[i])
        for k in (1, 2, 5, 100):
            k = min(k, L - t)
            if k <= 0:
                break
            st = m.advance(st, one.steps(t, t + k))
            t += k
            torch.testing.assert_close(m.logits(st), m.prefix_logits(one, [t]), rtol=1e-9, atol=1e-9)
        st = m.advance(st, one.steps(t, L))
        torch.testing.assert_close(m.logits(st)[0], whole[i], rtol=1e-9, atol=1e-9)


def test_perturb_drops_whole_packets_renumbers_and_jitters_within_groups():
    from trafficsnn.snn.packet_encoding import N_SIZE, OFF_FLAGS, OFF_GAP

    rng = np.random.default_rng(5)
    x, samples, enc = _batch(6, T=40)
    row = x.sample.numpy()
    step, neuron = x.step.numpy(), x.neuron.numpy()
    keep, st2, ne2 = enc.perturb(row, step, neuron, rng, jitter=0.0, drop_packets=0.3)
    for r in range(6):
        s = st2[keep & (row == r)]
        n_kept = len(np.unique(step[keep & (row == r)]))
        assert sorted(set(s.tolist())) == list(range(n_kept))        # contiguous after renumbering
        assert 0 in step[keep & (row == r)]                           # the first packet always stays
    keep, st3, ne3 = enc.perturb(row, step, neuron, rng, jitter=1.0, drop_packets=0.0)
    assert keep.all() and (st3 == step).all()
    size = neuron < OFF_GAP
    assert (ne3[size] // N_SIZE == neuron[size] // N_SIZE).all()       # never crosses direction
    assert (ne3[~size & (neuron < OFF_FLAGS)] >= OFF_GAP).all()
    assert (ne3[neuron >= OFF_FLAGS] == neuron[neuron >= OFF_FLAGS]).all()
    assert (ne3 != neuron).mean() > 0.3


def test_stream_events_of_many_flows_sorted_and_as_coded_packet_by_packet():
    """Several flows in one call, some past the window: each packet's events as the module docstring
    codes them, ordered by (flow, step, neuron), the order the fused serving step sums in."""
    from trafficsnn.snn.packet_encoding import FLAG_BITS, N_SIZE, OFF_FLAGS, OFF_GAP, OFF_PROTO, size_bins

    rng = np.random.default_rng(4)
    enc = PacketEncoder(16)
    n = 5
    counts = rng.integers(0, 12, n)
    f = np.repeat(np.arange(n), counts)
    ts = np.concatenate([np.sort(rng.uniform(0, 5, c)) for c in counts])
    size = rng.integers(20, 1500, len(f)).astype(np.uint32)
    d = rng.integers(0, 2, len(f)).astype(np.uint8)
    fl = rng.choice([0, 0x10, 0x18, 0x02, 0x11, 0x04, 0x0F], len(f)).astype(np.uint8)
    done = np.array([0, 3, 10, 15, 16])
    prev = np.where(done > 0, -1.0, np.nan)
    proto = np.array([6, 17, 6, 47, 6])
    ipv6 = np.array([False, True, False, False, True])
    ev = enc.stream(StreamInput(f, ts, size, d, fl, np.zeros(n), prev, done, proto, ipv6, np.zeros(n, bool)))
    want = []
    for i in range(len(f)):
        g = f[i]
        r = i - np.flatnonzero(f == g)[0]
        step = done[g] + r
        if step >= 16:
            continue
        p = ts[i - 1] if r else prev[g]
        nn_ = [int(d[i]) * N_SIZE + int(size_bins(payload_length([size[i]], [proto[g]], [ipv6[g]]))[0]),
               OFF_GAP + int(gap_bins(np.array([ts[i] - p]))[0])]
        nn_ += [OFF_FLAGS + j for j, (_, bit) in enumerate(FLAG_BITS) if fl[i] & bit]
        nn_.append(OFF_PROTO + {6: 0, 17: 1}.get(int(proto[g]), 2))
        want += [(g, step, x) for x in sorted(nn_)]
    assert list(zip(ev.flow.tolist(), ev.step.tolist(), ev.neuron.tolist())) == want
    assert ev.after_window == len(f) - len({(g, s) for g, s, _ in want})
    np.testing.assert_array_equal(ev.target, done + np.minimum(counts, np.maximum(16 - done, 0)))
