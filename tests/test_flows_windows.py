"""Paper windows (paper_model.md §2.2) and the one-clock helpers."""
from __future__ import annotations

import numpy as np

from trafficsnn.flows import Flow, FlowKey, flow_prefix, flow_windows, paper_windows

KEY = FlowKey(0, 6, 0, 1, 1000, 0, 2, 443)


def _flow(ts, direction, size=None):
    ts = np.asarray(ts, float)
    d = np.asarray(direction, np.uint8)
    size = np.full(len(ts), 100, np.uint32) if size is None else np.asarray(size, np.uint32)
    o = np.argsort(ts, kind="stable")
    return Flow(0, KEY, ts[o], size[o], d[o], size[o] + 14, np.zeros(len(ts), np.uint8),
                c2s_pkts=int((d == 0).sum()), s2c_pkts=int((d == 1).sum()))


def test_each_direction_has_its_own_origin_and_inclusive_bounds():
    # direction 1 (client): a packet every second from t=1000 for 100 s; server starts 7 s later
    t1 = 1000 + np.arange(0, 101.0)
    t2 = 1007 + np.arange(0, 101.0, 2.0)
    f = _flow(np.r_[t1, t2], np.r_[np.zeros(len(t1)), np.ones(len(t2))], np.r_[np.full(len(t1), 60), np.full(len(t2), 1400)])
    w = paper_windows(f)
    # T_max = 100 -> t = 0 .. int(100/15 - 4) = 2
    assert [x.t_index for x in w] == [0, 1, 2]
    w0 = w[0]
    assert w0.t1[0] == 0 and w0.t1[-1] == 60 and len(w0.t1) == 61      # [0, 60] inclusive
    assert w0.t2[0] == 0 and w0.t2[-1] == 60 and len(w0.t2) == 31      # own origin: 7 s shift gone
    assert (w0.s1 == 60).all() and (w0.s2 == 1400).all()
    assert w[2].t1[0] == 30 and w[2].t1[-1] == 90


def test_filters_min_packets_and_span():
    t1 = np.arange(0, 100.0, 10.0)          # 10 packets spanning 90 s
    t2 = np.arange(0, 100.0, 12.0)          # 9 packets
    f = _flow(np.r_[t1, t2], np.r_[np.zeros(10), np.ones(9)])
    assert paper_windows(f) == []            # direction 2 has < 10 in every window
    t1 = np.linspace(0, 39.9, 50)            # span 39.9 s < 40
    g = _flow(np.r_[t1, t1 + 0.1, [120.0]], np.r_[np.zeros(50), np.ones(50), [0]])
    assert [w.t_index for w in paper_windows(g)] == []


def test_unpaired_flow_gets_fake_packet_and_only_dir1_is_checked():
    t = np.arange(0, 75.0, 1.0)              # 75 s of one direction, T_max = 74 -> t = 0
    w = paper_windows(_flow(t, np.zeros(len(t))))
    assert len(w) == 1 and not w[0].paired
    assert w[0].t2.tolist() == [0.0] and w[0].s2.tolist() == [0]
    # a server-only flow (SYN missed, nothing from the client) uses its one side as direction 1
    w = paper_windows(_flow(t, np.ones(len(t))))
    assert len(w) == 1 and len(w[0].t1) == 61


def test_window_count_truncates_toward_zero():
    # T_max = 54.5: int(54.5/15 - 4) = int(-0.37) = 0, so window 0 exists (the code's quirk)
    t = np.arange(0, 55.0, 0.5)
    assert [w.t_index for w in paper_windows(_flow(np.r_[t, t], np.r_[np.zeros(len(t)), np.ones(len(t))]))] == [0]
    # T_max = 44.5: int(-1.03) = -1, no window at all
    t = np.arange(0, 45.0, 0.5)
    assert paper_windows(_flow(np.r_[t, t], np.r_[np.zeros(len(t)), np.ones(len(t))])) == []


def test_prefix_and_windows_one_clock():
    f = _flow([10.0, 10.5, 11.0, 75.0, 130.0], [0, 1, 0, 1, 0])
    rel, size, d = flow_prefix(f, 60.0)
    assert rel.tolist() == [0.0, 0.5, 1.0] and d.tolist() == [0, 1, 0]
    ws = list(flow_windows(f, 60.0))
    assert [k for k, *_ in ws] == [0, 1, 2]
    assert ws[1][1].tolist() == [5.0] and ws[2][1].tolist() == [0.0]
