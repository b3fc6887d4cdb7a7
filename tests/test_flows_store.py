"""The extract file round-trips, refuses foreign files, and JSON lines are readable."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from test_flows_helpers import random_batch
from trafficsnn.errors import TrafficSNNError
from trafficsnn.flows import FlowTable, read_columns, read_flows, write_flows, write_jsonl


def _flows():
    t = FlowTable(idle_timeout=1.0)
    rng = np.random.default_rng(5)
    out = t.add(random_batch(rng, 500, n_keys=25))
    return sorted(out + t.flush(), key=lambda f: f.flow_id)


def test_roundtrip(tmp_path):
    flows = _flows()
    p = tmp_path / "f.npz"
    assert write_flows(p, flows, {"inputs": ["x.pcap"]}) == len(flows)
    back = read_flows(p)
    assert len(back) == len(flows) and back.meta["inputs"] == ["x.pcap"]
    assert back.meta["n_packets"] == sum(len(f.ts) for f in flows)
    for a, b in zip(flows, back):
        assert a.key == b.key and a.flow_id == b.flow_id and a.end_reason == b.end_reason
        assert (a.c2s_pkts, a.s2c_pkts, a.c2s_bytes, a.s2c_bytes) == (b.c2s_pkts, b.s2c_pkts, b.c2s_bytes, b.s2c_bytes)
        for c in ("ts", "size", "direction", "wire_len", "tcp_flags"):
            assert np.array_equal(getattr(a, c), getattr(b, c)) and getattr(a, c).dtype == getattr(b, c).dtype
    cols, meta = read_columns(p)
    assert len(cols["offsets"]) == len(flows) + 1


def test_empty_and_bad_files(tmp_path):
    p = tmp_path / "e.npz"
    write_flows(p, [], {})
    assert len(read_flows(p)) == 0
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(TrafficSNNError, match="bad.npz"):
        read_flows(bad)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(TrafficSNNError, match="not a trafficsnn flow file"):
        read_flows(other)
    with pytest.raises(TrafficSNNError, match="no such"):
        read_flows(tmp_path / "missing.npz")


def test_jsonl():
    flows = _flows()
    buf = io.StringIO()
    assert write_jsonl(buf, flows) == len(flows)
    rows = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert rows[0]["client_ip"] == flows[0].key.client_ip
    assert len(rows[0]["t"]) == len(rows[0]["size"]) == len(flows[0].ts) and rows[0]["t"][0] == 0.0


def test_columnar_blocks_equal_whole_flows(tmp_path):
    from trafficsnn.flows import Columnar, FlowBlock

    rng = np.random.default_rng(9)
    b = random_batch(rng, 800, n_keys=40)
    t1, t2 = FlowTable(idle_timeout=1.0), FlowTable(idle_timeout=1.0, policy=Columnar())
    flows = t1.add(b) + t1.flush()
    blocks = t2.add(b) + t2.flush()
    assert all(isinstance(x, FlowBlock) for x in blocks)
    write_flows(tmp_path / "a.npz", flows)
    write_flows(tmp_path / "b.npz", blocks)
    a, c = read_columns(tmp_path / "a.npz")[0], read_columns(tmp_path / "b.npz")[0]
    assert a.keys() == c.keys()
    for k in a:
        assert np.array_equal(a[k], c[k]) and a[k].dtype == c[k].dtype, k
    assert [f.key for f in blocks[0].flows()] == [f.key for f in flows[: len(blocks[0])]]


def test_spilled_file_equals_in_memory_file(tmp_path):
    from trafficsnn.flows import Columnar
    from trafficsnn.flows.store import FlowFileWriter

    rng = np.random.default_rng(12)
    t = FlowTable(idle_timeout=0.5, policy=Columnar())
    w = FlowFileWriter(tmp_path / "s.npz", spill_bytes=2000)       # spills almost every add
    everything = []
    t0 = 0.0
    for _ in range(6):
        b = random_batch(rng, 400, n_keys=30, t0=t0)
        t0 = float(b.ts[-1]) + 2
        out = t.add(b)
        everything += out
        w.add(out)
    out = t.flush()
    everything += out
    w.add(out)
    assert w._dir is not None
    w.close({"x": 1})
    write_flows(tmp_path / "m.npz", everything, {"x": 1})
    a, ma = read_columns(tmp_path / "s.npz")
    c, mc = read_columns(tmp_path / "m.npz")
    assert ma == mc and a.keys() == c.keys()
    for k in a:
        assert np.array_equal(a[k], c[k]) and a[k].dtype == c[k].dtype, k
    assert [p.name for p in tmp_path.iterdir()] and not any(p.name.startswith(".") for p in tmp_path.iterdir())
