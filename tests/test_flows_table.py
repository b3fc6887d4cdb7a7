"""FlowTable behaviour: compared packet by packet against a plain reference table."""
from __future__ import annotations

import numpy as np
import pytest

from test_flows_helpers import RefTable, make_batch, random_batch
from trafficsnn.flows import EveryK, FlowTable
from trafficsnn.packets.batch import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, PacketBatch

ACK, SYN, FIN, RST = TCP_ACK, TCP_SYN, TCP_FIN, TCP_RST


pytestmark = pytest.mark.usefixtures("both_kernels")         # every test on both flow-table paths


def _batches(rng, n_batches=6, tcp_close=True):
    out, t0 = [], 0.0
    for _ in range(n_batches):
        b = random_batch(rng, int(rng.integers(1, 200)), n_keys=int(rng.integers(1, 30)), t0=t0,
                         rate=float(rng.choice([1, 10, 100])), tcp_close=tcp_close)
        out.append(b)
        t0 = float(b.ts[-1]) + float(rng.choice([0, 1, 5]))
    return out


def _run_both(table, ref, batches):
    """Feed ``batches`` to a FlowTable and a RefTable, flush both: (flows by flow_id, reference flows)."""
    out = []
    for b in batches:
        out += table.add(b)
        ref.add(b)
    out += table.flush()
    out.sort(key=lambda f: f.flow_id)
    return out, ref.flush()


@pytest.mark.parametrize("seed", range(12))
def test_matches_reference(seed):
    rng = np.random.default_rng(seed)
    for trial in range(6):
        idle = [None, 0.5, 2.0][trial % 3]
        act = [None, 3.0, 10.0][(trial + seed) % 3]
        tc = bool((trial + seed) % 2)
        t = FlowTable(idle_timeout=idle, active_timeout=act, tcp_close=tc, max_flows=None)
        out, ref = _run_both(t, RefTable(idle, act, tc), _batches(rng, tcp_close=tc))
        assert [f.flow_id for f in out] == [g["fid"] for g in ref]
        for f, g in zip(out, ref):
            assert f.end_reason == g["reason"]
            assert f.ts.tolist() == g["ts"]
            assert f.direction.tolist() == g["dir"]
            assert f.size.tolist() == g["size"]
            assert f.c2s_pkts == g["dir"].count(0) and f.s2c_pkts == g["dir"].count(1)
        assert t.stats["flows_created"] == len(ref) == t.stats["flows_ended"]
        assert len(t) == 0


def test_batching_does_not_matter():
    rng = np.random.default_rng(7)
    whole = PacketBatch.concat(_batches(rng))
    res = []
    for cuts in ([len(whole)], [1] * 50 + [len(whole)], [37, 200, len(whole)]):
        t = FlowTable(idle_timeout=1.0, active_timeout=5.0)
        out, a = [], 0
        for c in cuts:
            b = whole.take(np.arange(a, min(c, len(whole))))
            a = min(c, len(whole))
            if len(b):
                out += t.add(b)
        out += t.flush()
        res.append(sorted((f.flow_id, f.end_reason, tuple(f.ts)) for f in out))
    assert res[0] == res[1] == res[2]


def test_client_is_first_sender_or_syn_sender():
    b = make_batch([
        (0.0, 1, 1000, 2, 80, 6, 60, SYN),          # flow A: client 1
        (0.1, 2, 80, 1, 1000, 6, 60, SYN | ACK),
        (0.2, 4, 443, 3, 2000, 6, 60, SYN | ACK),   # flow B: SYN missed -> client is 3
        (0.3, 3, 2000, 4, 443, 6, 52, ACK),
        (0.4, 6, 53, 5, 3000, 17, 100, 0),          # flow C (UDP): first sender 6
    ])
    t = FlowTable()
    flows = sorted(t.add(b) + t.flush(), key=lambda f: f.flow_id)
    ka, kb, kc = (f.key for f in flows)
    assert (ka.client_lo, ka.client_port, ka.server_port) == (1, 1000, 80)
    assert flows[0].direction.tolist() == [0, 1]
    assert (kb.client_lo, kb.client_port) == (3, 2000)
    assert flows[1].direction.tolist() == [1, 0]
    assert (kc.client_lo, kc.client_port) == (6, 53)
    assert kc.client_ip == "0.0.0.6" or kc.client_ip.endswith("6")


def test_idle_gap_inside_one_batch_splits():
    b = make_batch([(0, 1, 1, 2, 2, 17, 50, 0), (1, 2, 2, 1, 1, 17, 50, 0),
                    (200, 1, 1, 2, 2, 17, 50, 0), (201, 1, 1, 2, 2, 17, 50, 0)])
    t = FlowTable(idle_timeout=120)
    fl = t.add(b)
    assert [(f.end_reason, len(f.ts)) for f in fl] == [("idle", 2)]
    rest = t.flush()
    assert [(r.end_reason, len(r.ts)) for r in rest] == [("eof", 2)]


def test_tcp_close_fin_both_sides_and_rst():
    b = make_batch([(0, 1, 5, 2, 80, 6, 60, SYN), (1, 2, 80, 1, 5, 6, 60, SYN | ACK),
                    (2, 1, 5, 2, 80, 6, 52, FIN | ACK), (3, 2, 80, 1, 5, 6, 52, FIN | ACK),
                    (4, 1, 5, 2, 80, 6, 52, ACK),        # last ACK: stays in the closing flow
                    (5, 1, 6, 2, 80, 6, 52, ACK), (6, 2, 80, 1, 6, 6, 40, RST)])
    t = FlowTable(tcp_close=True)
    fl = t.add(b)               # the clock (6) is past the FIN grace (3 + 2): the flow is out
    assert sorted((f.end_reason, f.packets) for f in fl) == [("fin", 5), ("rst", 2)]
    assert t.flush() == []
    t2 = FlowTable(tcp_close=False)
    assert t2.add(b) == [] and sorted(f.packets for f in t2.flush()) == [2, 5]


_TEARDOWN = [(0.0, 1, 5, 2, 80, 6, 60, SYN), (0.1, 2, 80, 1, 5, 6, 60, SYN | ACK),
             (0.2, 1, 5, 2, 80, 6, 52, ACK), (0.3, 1, 5, 2, 80, 6, 500, ACK),
             (0.4, 1, 5, 2, 80, 6, 52, FIN | ACK), (0.5, 2, 80, 1, 5, 6, 52, FIN | ACK),
             (0.6, 1, 5, 2, 80, 6, 52, ACK)]


@pytest.mark.parametrize("cut", range(1, len(_TEARDOWN) + 1))
def test_fin_fin_ack_is_one_flow_across_batches(cut):
    t = FlowTable(tcp_close=True)
    out = t.add(make_batch(_TEARDOWN[:cut]))
    if cut < len(_TEARDOWN):
        out += t.add(make_batch(_TEARDOWN[cut:]))
    assert out == [] and len(t) == 1            # closing, within the grace: not out yet
    out = t.advance(0.5 + t.fin_grace + 0.01)   # the clock passes the grace
    assert [(f.end_reason, f.packets, f.direction.tolist()) for f in out] == [
        ("fin", 7, [0, 1, 0, 0, 0, 1, 0])]
    assert len(t) == 0 and t.stats["flows_created"] == 1


def test_closing_flow_ends_at_flush_as_fin():
    t = FlowTable(tcp_close=True)
    t.add(make_batch(_TEARDOWN))
    assert [(f.end_reason, f.packets) for f in t.flush()] == [("fin", 7)]


def test_new_syn_after_close_starts_a_new_flow():
    reuse = [(0.7, 1, 5, 2, 80, 6, 60, SYN), (0.8, 2, 80, 1, 5, 6, 60, SYN | ACK)]
    for rows in ([_TEARDOWN + reuse], [_TEARDOWN, reuse]):
        t = FlowTable(tcp_close=True)
        out = []
        for r in rows:
            out += t.add(make_batch(r))
        assert [(f.end_reason, f.packets) for f in out] == [("fin", 7)]
        rest = t.flush()
        assert [(f.end_reason, f.packets, f.key.client_lo) for f in rest] == [("eof", 2, 1)]


def test_packet_after_the_grace_starts_a_new_flow():
    late = [(0.5 + 2.5, 1, 5, 2, 80, 6, 52, ACK)]
    for rows in ([_TEARDOWN + late], [_TEARDOWN, late]):
        t = FlowTable(tcp_close=True, fin_grace=2.0)
        out = []
        for r in rows:
            out += t.add(make_batch(r))
        assert [(f.end_reason, f.packets) for f in out] == [("fin", 7)]
        assert [(f.end_reason, f.packets) for f in t.flush()] == [("eof", 1)]


def test_rst_still_ends_at_once():
    rows = [(0.0, 1, 5, 2, 80, 6, 60, SYN), (0.1, 2, 80, 1, 5, 6, 60, SYN | ACK),
            (0.2, 1, 5, 2, 80, 6, 40, RST), (0.3, 1, 5, 2, 80, 6, 52, ACK)]
    t = FlowTable(tcp_close=True)
    out = t.add(make_batch(rows))
    assert [(f.end_reason, f.packets) for f in out] == [("rst", 3)]
    assert [(f.end_reason, f.packets) for f in t.flush()] == [("eof", 1)]


def test_fin_grace_is_validated():
    with pytest.raises(ValueError, match="fin_grace"):
        FlowTable(fin_grace=-1)


@pytest.mark.parametrize("grace", [0.0, 0.3, 5.0])
def test_matches_reference_with_other_graces(grace):
    rng = np.random.default_rng(int(grace * 10) + 100)
    for trial in range(4):
        idle = [None, 0.5, 2.0][trial % 3]
        act = [None, 3.0][trial % 2]
        t = FlowTable(idle_timeout=idle, active_timeout=act, max_flows=None, fin_grace=grace)
        out, ref = _run_both(t, RefTable(idle, act, True, grace=grace), _batches(rng))
        assert [(f.flow_id, f.end_reason, f.ts.tolist()) for f in out] == [
            (g["fid"], g["reason"], g["ts"]) for g in ref]


def test_advance_expires_quiet_flows():
    t = FlowTable(idle_timeout=10, active_timeout=None)
    assert t.add(make_batch([(100, 1, 1, 2, 2, 17, 50, 0)])) == []
    assert t.advance(105) == []
    out = t.advance(111)
    assert [f.end_reason for f in out] == ["idle"] and len(t) == 0


def test_lru_cap_evicts_oldest_and_counts():
    rows = [(float(i), 10 + i, 1, 2, 2, 17, 50, 0) for i in range(10)]
    t = FlowTable(max_flows=4)
    out = t.add(make_batch(rows))
    assert sorted(f.key.client_lo for f in out) == [10, 11, 12, 13, 14, 15]
    assert all(f.end_reason == "evicted" for f in out)
    assert t.stats["evicted"] == 6 and len(t) == 4


def test_max_packets_keeps_counters():
    rows = [(0.01 * i, 1, 1, 2, 2, 17, 50 + i, 0) for i in range(100)]
    t = FlowTable(max_packets=10)
    t.add(make_batch(rows[:55]))
    t.add(make_batch(rows[55:]))
    (f,) = t.flush()
    assert len(f.ts) == 10 and f.packets == 100 and f.size[-1] == 59
    assert t.stats["packets_not_stored"] == 90


def test_vlan_and_proto_separate_flows():
    b = make_batch([(0, 1, 1, 2, 2, 17, 50, 0, 0), (1, 1, 1, 2, 2, 17, 50, 0, 7), (2, 1, 1, 2, 2, 6, 50, 0, 0)])
    t = FlowTable()
    t.add(b)
    assert len(t.flush()) == 3


def test_memory_is_compacted():
    rng = np.random.default_rng(3)
    t = FlowTable(idle_timeout=0.5, active_timeout=None)
    t0 = 0.0
    for _ in range(40):
        b = random_batch(rng, 5000, n_keys=500, t0=t0, rate=2000)
        t0 = float(b.ts[-1]) + 1.0
        t.add(b)
    assert t._store.n < 4 * 5000 + (1 << 17)


@pytest.mark.parametrize("window", [None, 1.0])
def test_every_k_updates_reassemble_the_flow(window):
    rng = np.random.default_rng(11)
    bs = _batches(rng, n_batches=8)
    whole = FlowTable(idle_timeout=2.0, active_timeout=10.0)
    stream = FlowTable(idle_timeout=2.0, active_timeout=10.0, policy=EveryK(5, window_s=window))
    flows, ups = [], []
    for b in bs:
        flows += whole.add(b)
        ups += stream.add(b)
    flows += whole.flush()
    ups += stream.flush()
    by = {}
    for u in ups:
        by.setdefault(u.flow_id, []).append(u)
    assert sorted(by) == sorted(f.flow_id for f in flows)
    for f in flows:
        us = by[f.flow_id]
        assert us[-1].final and us[-1].reason == f.end_reason
        assert sum(u.final for u in us) == 1
        seq = 0
        for u in us:
            assert u.seq == seq and u.key == f.key and u.start_ts == f.first_ts
            seq += len(u)
            assert len(u) <= 5
            if window is None and not u.final:
                assert len(u) == 5
            if window is not None and len(u):
                w = np.floor((u.ts - f.first_ts) / window)
                assert w.min() == w.max()
        assert np.array_equal(np.concatenate([u.ts for u in us]), f.ts)
        assert np.array_equal(np.concatenate([u.direction for u in us]), f.direction)


def test_every_k_window_flush_by_clock():
    t = FlowTable(idle_timeout=100, policy=EveryK(10, window_s=5.0))
    assert t.add(make_batch([(0, 1, 1, 2, 2, 17, 50, 0), (1, 2, 2, 1, 1, 17, 60, 0)])) == []
    (u,) = t.advance(5.5)
    assert (u.seq, len(u), u.final) == (0, 2, False)
    (v,) = t.flush()
    assert v.final and len(v) == 0 and v.seq == 2


def test_bad_options():
    with pytest.raises(ValueError):
        FlowTable(idle_timeout=0)
    with pytest.raises(ValueError):
        EveryK(0)
    with pytest.raises(ValueError):
        FlowTable().flush(reason="bogus")


def test_hash_collisions_fall_back_and_stay_correct(monkeypatch, both_kernels):
    import trafficsnn.flows.table as tbl
    from trafficsnn.flows import table_kernel

    real = tbl._hash5
    monkeypatch.setattr(tbl, "_hash5", lambda *c: real(*c) & np.uint64(0x3))   # 4 hash values
    monkeypatch.setattr(table_kernel, "HASH_MASK", 0x3)
    rng = np.random.default_rng(21)
    t = FlowTable(idle_timeout=2.0, active_timeout=10.0)
    out, ref = _run_both(t, RefTable(2.0, 10.0, True), _batches(rng))
    assert t.kernel == both_kernels
    assert t.stats["hash_collisions"] > 0 or both_kernels == "c"     # the numpy path's sort fallback ran
    assert [(f.end_reason, f.ts.tolist(), f.direction.tolist()) for f in out] == \
        [(g["reason"], g["ts"], g["dir"]) for g in ref]


@pytest.mark.parametrize("window", [None, 0.7])
def test_every_k_cuts_do_not_depend_on_batching(window):
    rng = np.random.default_rng(4)
    whole = PacketBatch.concat(_batches(rng))
    res = []
    for step in (len(whole), 7, 61):
        t = FlowTable(idle_timeout=1.5, active_timeout=8.0, policy=EveryK(4, window_s=window))
        ups = []
        for a in range(0, len(whole), step):
            ups += t.add(whole.take(np.arange(a, min(a + step, len(whole)))))
        ups += t.flush()
        if window is None:
            res.append(sorted((u.flow_id, u.seq, len(u), u.final, u.reason) for u in ups))
        else:
            finals = sorted((u.flow_id, u.reason) for u in ups if u.final)
            assert len(finals) == len({f for f, _ in finals})
            res.append((finals, sorted((u.flow_id, u.seq, len(u)) for u in ups if len(u))))
    assert res[0] == res[1] == res[2]


def test_active_timeout_cuts_at_the_crossing_packet_and_by_clock():
    rows = [(float(t), 1, 1, 2, 2, 17, 50, 0) for t in (0, 4, 8, 12, 16)]
    t = FlowTable(idle_timeout=None, active_timeout=10.0)
    out = t.add(make_batch(rows))
    assert [(f.end_reason, f.ts.tolist()) for f in out] == [("active", [0.0, 4.0, 8.0])]
    assert [(f.end_reason, f.ts.tolist()) for f in t.advance(22.5)] == [("active", [12.0, 16.0])]


def test_eviction_with_every_k_sends_a_final_update():
    t = FlowTable(max_flows=1, policy=EveryK(3))
    ups = t.add(make_batch([(0, 1, 1, 2, 2, 17, 50, 0), (1, 3, 1, 2, 2, 17, 50, 0)]))
    assert [(u.key.client_lo, u.final, u.reason, len(u)) for u in ups] == [(1, True, "evicted", 1)]
    assert t.stats["evicted"] == 1 and t.stats["ended"]["evicted"] == 1


def test_empty_batch_and_stats():
    t = FlowTable()
    assert t.add(PacketBatch.empty()) == [] and t.flush() == []
    t.add(make_batch([(0, 1, 1, 2, 2, 17, 50, 0)]))
    t.flush()
    assert t.stats["packets"] == 1 and t.stats["flows_created"] == 1 and t.stats["ended"]["eof"] == 1


def test_flows_never_import_torch():
    import subprocess
    import sys

    code = "import sys, trafficsnn.flows, trafficsnn.commands.extract; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_timestamps_monotonic_within_flow_and_counted():
    """A packet older than its flow's predecessor (merged captures) keeps its place and takes the
    predecessor's time, inside a batch and across batches; other flows are untouched."""
    a = [(1.0, 1, 1000, 2, 80, 17, 100, 0), (3.0, 2, 80, 1, 1000, 17, 200, 0), (2.0, 1, 1000, 2, 80, 17, 300, 0),
         (0.5, 5, 7, 6, 8, 17, 50, 0), (4.0, 1, 1000, 2, 80, 17, 400, 0)]
    b = [(3.5, 1, 1000, 2, 80, 17, 500, 0), (5.0, 2, 80, 1, 1000, 17, 600, 0)]
    t = FlowTable(idle_timeout=None, active_timeout=None)
    out = t.add(make_batch(a)) + t.add(make_batch(b)) + t.flush()
    by_size = {int(f.size[0]): f for f in out}
    f = by_size[100]
    assert f.ts.tolist() == [1.0, 3.0, 3.0, 4.0, 4.0, 5.0]
    assert f.size.tolist() == [100, 200, 300, 400, 500, 600]      # capture order kept
    assert by_size[50].ts.tolist() == [0.5]
    assert t.stats["ts_clamped"] == 2
    assert all((np.diff(x.ts) >= 0).all() for x in out)
