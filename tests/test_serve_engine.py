"""The streaming engine: pieces == whole, bounded per-flow state, verdict policy, gap counting."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trafficsnn import wire
from trafficsnn.flows.records import FlowKey, FlowUpdate
from trafficsnn.serve.demo import make_random_model
from trafficsnn.serve.engine import ModelHandle, StreamingClassifier
from trafficsnn.snn.encoding import collate


@pytest.fixture(scope="module")
def handle(tmp_path_factory) -> ModelHandle:
    d = make_random_model(tmp_path_factory.mktemp("model"), classes=["a", "b", "c", "d"], seed=3)
    return ModelHandle.load(d, "cpu")


def _flow(rng, fid: int, n: int, span: float, t0: float = 1000.0):
    ts = t0 + np.sort(rng.uniform(0, span, n))
    ts[0] = t0
    size = rng.integers(40, 1500, n).astype(np.uint32)
    d = rng.integers(0, 2, n).astype(np.uint8)
    key = FlowKey(0, 6, 0, 100 + fid, 1000 + fid, 0, 7, 443)
    return key, ts, size, d


def _updates(key, fid, ts, size, d, cuts):
    parts = np.split(np.arange(len(ts)), cuts)
    out = []
    for j, p in enumerate(parts):
        last = j == len(parts) - 1
        out.append(FlowUpdate(flow_id=fid, key=key, start_ts=float(ts[0]), seq=int(p[0]) if len(p) else len(ts),
                              ts=ts[p], size=size[p], direction=d[p], final=last, reason="fin" if last else ""))
    return out


def _whole(handle, ts, size, d, upto_step=None) -> np.ndarray:
    enc = handle.loaded.encoder
    rel = ts - ts[0]
    if upto_step is not None:
        keep = enc.steps_of(rel) < upto_step
        rel, size, d = rel[keep], size[keep], d[keep]
    smp = enc.sample(rel, size, d)
    n_steps = enc.n_steps if upto_step is None else upto_step
    b = collate([(smp.step[smp.step < n_steps], smp.neuron[smp.step < n_steps], smp.value[smp.step < n_steps])],
                n_steps, enc.n_inputs)
    with torch.no_grad():
        return torch.softmax(handle.model(b), 1)[0].numpy()


def test_pieces_equal_whole_interleaved_flows(handle):
    rng = np.random.default_rng(0)
    eng = StreamingClassifier(handle, emit="update")
    flows, streams = {}, []
    for fid, (n, span) in enumerate([(200, 70.0), (50, 5.0), (3, 0.1), (120, 30.0), (1, 0.0)]):
        key, ts, size, d = _flow(rng, fid, n, span)
        flows[fid] = (ts, size, d)
        cuts = np.sort(rng.choice(np.arange(1, n), min(n - 1, 9), replace=False)) if n > 1 else []
        streams.append(_updates(key, fid, ts, size, d, cuts))
    # interleave the flows' updates into micro-batches of random size, several messages each
    order = [u for round_ in range(12) for s in streams for u in s[round_:round_ + 1]]
    final = {}
    i = 0
    while i < len(order):
        k = int(rng.integers(1, 6))
        msgs = [wire.decode(wire.encode_updates([u], sensor="s")) for u in order[i:i + k]]
        for v in eng.process(msgs):
            if v.final:
                final[v.flow_id] = v
        i += k
    assert set(final) == set(flows)
    for fid, (ts, size, d) in flows.items():
        got = np.array([final[fid].probabilities[c] for c in handle.classes])
        np.testing.assert_allclose(got, _whole(handle, ts, size, d), rtol=1e-4, atol=1e-6)
        assert final[fid].packets == len(ts)
    assert eng.active_flows == 0  # state freed at flow end
    assert eng.counters["packets"] == sum(len(f[0]) for f in flows.values())


def test_anytime_verdict_uses_only_complete_steps(handle):
    rng = np.random.default_rng(1)
    key, ts, size, d = _flow(rng, 0, 80, 20.0)
    eng = StreamingClassifier(handle, emit="update")
    ups = _updates(key, 0, ts, size, d, [40])
    v = eng.process([wire.decode(wire.encode_updates([ups[0]]))])
    assert len(v) == 1 and not v[0].final
    enc = handle.loaded.encoder
    open_step = int(enc.steps_of(np.array([ts[39] - ts[0]]))[0])
    assert v[0].steps == open_step  # the step of the newest packet is still open
    got = np.array([v[0].probabilities[c] for c in handle.classes])
    np.testing.assert_allclose(got, _whole(handle, ts[:40], size[:40], d[:40], upto_step=open_step),
                               rtol=1e-4, atol=1e-6)


def test_state_is_bounded_lru_and_counted(handle):
    eng = StreamingClassifier(handle, max_flows=16, emit="final")
    rng = np.random.default_rng(2)
    for fid in range(100):
        key, ts, size, d = _flow(rng, fid, 4, 2.0)
        eng.process([wire.decode(wire.encode_updates(_updates(key, fid, ts, size, d, [2])[:1]))])
        assert eng.active_flows <= 16
    assert eng.counters["state_evicted"] >= 84
    assert eng.store.rows <= 16
    # an evicted flow that continues is counted, not fatal
    key, ts, size, d = _flow(rng, 0, 4, 2.0)
    eng.process([wire.decode(wire.encode_updates(_updates(key, 0, ts, size, d, [2])[1:]))])
    assert eng.drops["flow_start_missed"] == 1
    # the empty final word of an evicted flow costs no state (and evicts nobody)
    before = eng.counters["state_evicted"]
    end = FlowUpdate(flow_id=5, key=key, start_ts=1000.0, seq=4, ts=ts[:0], size=size[:0], direction=d[:0],
                     final=True, reason="idle")
    assert eng.process([wire.decode(wire.encode_updates([end]))]) == []
    assert eng.drops["final_without_state"] == 1 and eng.counters["state_evicted"] == before


def test_policy_first_and_gaps(handle):
    rng = np.random.default_rng(3)
    key, ts, size, d = _flow(rng, 0, 60, 10.0)
    ups = _updates(key, 0, ts, size, d, [20, 40])
    eager = StreamingClassifier(handle, emit="first", min_confidence=0.0)
    out = [v for u in ups for v in eager.process([wire.decode(wire.encode_updates([u]))])]
    assert len(out) == 1 and not out[0].final  # once, as soon as there is a verdict
    patient = StreamingClassifier(handle, emit="first", min_confidence=1.0)
    out = [v for u in ups for v in patient.process([wire.decode(wire.encode_updates([u]))])]
    assert len(out) == 1 and out[0].final and out[0].reason == "fin"
    gappy = StreamingClassifier(handle, emit="final")
    for u in (ups[0], ups[2]):  # the middle update was lost upstream
        gappy.process([wire.decode(wire.encode_updates([u]))])
    assert gappy.drops["gap_updates"] == 1 and gappy.drops["gap_packets"] == 20


@pytest.fixture(scope="module")
def packet_handle(tmp_path_factory) -> ModelHandle:
    d = make_random_model(tmp_path_factory.mktemp("pmodel"), classes=["a", "b", "c"], seed=5, n_hidden=24,
                          preset="packet")
    return ModelHandle.load(d, "cpu")


def test_packet_clocked_model_streams_pieces_equal_whole_and_answers_after_every_packet(packet_handle):
    h = packet_handle
    rng = np.random.default_rng(4)
    eng = StreamingClassifier(h, emit="update")
    key, ts, size, d = _flow(rng, 1, 40, 3.0)
    flags = rng.choice([0x10, 0x18, 0x11], len(ts)).astype(np.uint8)
    cuts = [1, 2, 3, 7, 20]
    ups = _updates(key, 1, ts, size, d, cuts)
    for u in ups:
        u.tcp_flags = flags[u.seq:u.seq + len(u)]
    got = []
    for u in ups:
        vs = eng.process([wire.decode(wire.encode_updates([u], sensor="s"))])
        assert len(vs) == 1 and vs[0].steps == min(u.seq + len(u), h.n_steps)   # one step per packet
        got.append(np.array([vs[0].probabilities[c] for c in h.classes]))
    enc = h.encoder
    from trafficsnn.snn.streaming import is_ipv6
    smp = enc.sample(ts, size, d, flags, proto=key.proto, ipv6=bool(is_ipv6(key.client_hi, key.client_lo)))
    b = collate([smp], enc.n_steps, enc.n_inputs)
    with torch.no_grad():
        whole = torch.softmax(h.model(b) / h.temperature, 1)[0].numpy()
        ends = [len(u) + u.seq for u in ups]
        bb = collate([smp] * len(ends), enc.n_steps, enc.n_inputs)
        prefix = torch.softmax(h.model.prefix_logits(bb, ends) / h.temperature, 1).numpy()
    np.testing.assert_allclose(got[-1], whole, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.stack(got), prefix, rtol=1e-4, atol=1e-6)
    assert np.ptp(np.stack(got), axis=0).max() > 1e-3   # the verdict moves as packets arrive
    assert eng.active_flows == 0


def test_unknown_verdict_below_the_models_threshold(packet_handle):
    import dataclasses

    from trafficsnn.train.loop import unknown_threshold

    rng = np.random.default_rng(9)
    key, ts, size, d = _flow(rng, 2, 12, 1.0)
    msg = [wire.decode(wire.encode_updates(_updates(key, 2, ts, size, d, []), sensor="s"))]
    sure = StreamingClassifier(dataclasses.replace(packet_handle, unknown_below=0.0), emit="final").process(msg)
    never = StreamingClassifier(dataclasses.replace(packet_handle, unknown_below=1.01), emit="final")
    v = never.process(msg)
    assert sure[0].label in packet_handle.classes
    assert v[0].label == "unknown" and v[0].to_dict()["best_class"] == sure[0].label
    assert never.verdicts_by_class["unknown"] == 1
    # chosen on validation: keeps 90 % of the right verdicts
    logits = np.array([[3.0, 0, 0], [0.2, 0, 0], [0, 2.0, 0], [0, 0, 0.1], [1.0, 0, 0]])
    t = unknown_threshold(logits, np.array([0, 0, 1, 0, 2]), 1.0)
    assert 0.33 < t < 0.5


def test_new_flows_placed_in_bulk_exactly_as_one_by_one(handle, monkeypatch):
    """The bulk placement of new flows takes the very slots the per-flow loop takes (free list first,
    newest freed first), so states, eviction order and verdicts do not depend on which path ran."""
    rng = np.random.default_rng(7)
    flows = [_flow(rng, fid, int(rng.integers(1, 12)), 3.0) for fid in range(60)]
    ups = [_updates(k, fid, ts, size, d, sorted({int(c) for c in rng.integers(1, max(2, len(ts)), 2)} - {len(ts)}))
           for fid, (k, ts, size, d) in enumerate(flows)]
    # rounds: new flows arrive while earlier ones end, freeing slots; a small table makes eviction happen;
    # one round mixes a flow's first and second update and two sensors (the per-flow loop's cases)
    rounds = [[u[0] for u in ups[:20]], [u[0] for u in ups[20:35]] + [u[1] for u in ups[:20] if len(u) > 1],
              [u[0] for u in ups[35:50]], [u for us in ups[50:] for u in us]]

    def run(bulk: bool):
        eng = StreamingClassifier(handle, max_flows=40, emit="update", min_confidence=0.0)
        if not bulk:
            monkeypatch.setattr(eng, "_place_new", lambda *a: False)
        out = []
        for r, us in enumerate(rounds):
            msgs = [wire.decode(wire.encode_updates(us, sensor="a"))]
            if r == 3:
                msgs.append(wire.decode(wire.encode_updates([ups[0][0]], sensor="b")))
            out += [(v.sensor, v.flow_id, v.label, v.packets, round(v.confidence, 6)) for v in eng.process(msgs, now=0.0)]
        return out, {s: dict(d) for s, d in eng._index.items()}, list(eng._free), eng._next, dict(eng.counters)

    bulk, loop = run(True), run(False)
    assert bulk == loop
    assert bulk[4]["state_evicted"] > 0 and bulk[4]["flows_ended"] > 0 and len(bulk[0]) > 50
