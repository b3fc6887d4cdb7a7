"""Columnar flow updates (``UpdateBlock``) against the per-object path they replace.

The reference is the per-object ``EveryK`` emission and the tuple-per-update wire
encoder as they were before updates became columnar (kept here, like ``RefTable``):
the columnar policy must emit the same updates and the encoder the same bytes, on
synthetic batches (finals, evictions, EOF flush, windows) and on real captures, and
the capture agent's numpy sharding must send each shard the same messages.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq

from test_flows_helpers import random_batch
from trafficsnn import wire
from trafficsnn.flows import END_REASONS, EveryK, FlowTable, FlowUpdate
from trafficsnn.flows.records import UPDATE_RECORD, UpdateBlock


class ObjectEveryK(EveryK):
    """``EveryK`` as it emitted before blocks: one ``FlowUpdate`` per piece, made in a Python loop."""

    def _emit(self, table, slots, codes, now):
        S = table._slots.cols
        off, cols = table.take(slots)
        P, F = int(off[-1]), len(slots)
        counts = np.diff(off)
        f = np.repeat(np.arange(F), counts)
        ar = np.arange(P)
        pos = ar - off[:-1][f]
        first_ts = S["first_ts"][slots]
        last = np.zeros(P, bool)
        last[off[1:][counts > 0] - 1] = True
        if self.window_s is not None:
            w = np.floor((cols["ts"] - first_ts[f]) / self.window_s).astype(np.int64)
            run_start = pos == 0
            run_start[1:] |= w[1:] != w[:-1]
            rs_idx = np.flatnonzero(run_start)
            pos_run = ar - rs_idx[np.cumsum(run_start) - 1]
            run_last = np.append(run_start[1:], True)
        else:
            pos_run, run_last = pos, last
        full = (pos_run + 1) % self.k == 0
        cut = full | (run_last & ~last)
        natural_end = np.zeros(F, bool)
        if codes is not None:
            natural_end[f[last & full]] = True
            cut |= last
        elif self.window_s is not None:
            cut |= last & (w < np.floor((now - first_ts) / self.window_s)[f])
        lastcut = np.full(F, -1, np.int64)
        np.maximum.at(lastcut, f[cut], ar[cut])
        held = ar > lastcut[f]
        send_n = counts - np.bincount(f[held], minlength=F) if P else counts
        if held.any():
            hoff = np.concatenate(([0], np.cumsum(np.bincount(f[held], minlength=F))))
            table.restore(slots, hoff, {k: v[held] for k, v in cols.items()})
        seq0 = S["sent"][slots].copy()
        S["sent"][slots] += send_n
        prev_cut = np.concatenate(([True], cut[:-1])) if P else cut
        starts = np.flatnonzero(~held & ((pos == 0) | prev_cut)).tolist()
        ends = (np.flatnonzero(cut) + 1).tolist()
        keys = table.keys_of(slots)
        fids, fts = S["fid"][slots].tolist(), first_ts.tolist()
        ts, size, d, wl, tf = (cols[k] for k in ("ts", "size", "direction", "wire_len", "tcp_flags"))
        out, has_piece = [], np.zeros(F, bool)
        for j, (a, b) in enumerate(zip(starts, ends)):
            i = int(f[a])
            has_piece[i] = True
            last_piece = j + 1 == len(starts) or int(f[starts[j + 1]]) != i
            fin = codes is not None and last_piece and not natural_end[i]
            out.append(FlowUpdate(fids[i], keys[i], fts[i], int(seq0[i] + pos[a]), ts[a:b], size[a:b], d[a:b],
                                  final=fin, reason=END_REASONS[codes[i] - 1] if fin else "",
                                  wire_bytes=int(wl[a:b].sum()), tcp_flags=tf[a:b]))
        if codes is not None:
            for i in np.flatnonzero(~has_piece | natural_end).tolist():
                out.append(FlowUpdate(fids[i], keys[i], fts[i], int(seq0[i] + send_n[i]), ts[:0], size[:0],
                                      d[:0], final=True, reason=END_REASONS[codes[i] - 1], tcp_flags=tf[:0]))
            out.sort(key=lambda u: (u.flow_id, u.seq, u.final))
        return out


def old_encode(updates, walls, *, sensor="s", msg_seq=7, sent_wall=12.5):
    """The tuple-per-update encoder the block encoder replaced (same header, same frames)."""
    rc = {r: i for i, r in enumerate(wire.REASONS)}
    n = len(updates)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum([len(u) for u in updates], out=offsets[1:])
    keys = np.array([(u.flow_id, u.seq, u.start_ts, w, u.wire_bytes, u.key.client_hi, u.key.client_lo,
                      u.key.server_hi, u.key.server_lo, u.key.client_port, u.key.server_port, u.key.vlan,
                      u.key.proto, u.final, rc[u.reason]) for u, w in zip(updates, walls)], dtype=UPDATE_RECORD)
    cat = (lambda a, dt: np.concatenate(a).astype(dt)) if n else (lambda a, dt: np.empty(0, dt))
    head = wire._header(wire.KIND_UPDATES, 7, sensor, n, int(offsets[-1]), msg_seq, sent_wall)
    return [head, keys, offsets, cat([u.ts for u in updates], "<f8"), cat([u.size for u in updates], "<u4"),
            cat([u.direction for u in updates], "u1"), cat([u.flags_or_zero() for u in updates], "u1")]


def as_bytes(frames):
    return [bytes(f) if isinstance(f, bytes) else np.ascontiguousarray(f).tobytes() for f in frames]


def same_update(a: FlowUpdate, b: FlowUpdate) -> bool:
    return ((a.flow_id, a.key, a.start_ts, a.seq, a.final, a.reason, a.wire_bytes)
            == (b.flow_id, b.key, b.start_ts, b.seq, b.final, b.reason, b.wire_bytes)
            and a.ts.tolist() == b.ts.tolist() and a.size.tolist() == b.size.tolist()
            and a.direction.tolist() == b.direction.tolist() and a.flags_or_zero().tolist() == b.flags_or_zero().tolist())


def run_pair(batches, *, advance_every=0, **opts):
    """Feed the same batches to an object-policy table and a columnar one; per call: (objects, block)."""
    k, window = opts.pop("k", 4), opts.pop("window", None)
    old = FlowTable(**opts, policy=ObjectEveryK(k, window_s=window))
    new = FlowTable(**opts, policy=EveryK(k, window_s=window, columnar=True))
    calls = []
    for j, b in enumerate(batches):
        calls.append((old.add(b), new.add(b)))
        if advance_every and j % advance_every == 0:
            t = old.clock + 0.7
            calls.append((old.advance(t), new.advance(t)))
    calls.append((old.flush(), new.flush()))
    return calls


def check_calls(calls):
    """Each table call: the block holds the object path's updates, and both encode to the same bytes."""
    n = finals = 0
    rng = np.random.default_rng(0)
    for objs, blocks in calls:
        assert all(isinstance(b, UpdateBlock) and len(b) for b in blocks)
        block = UpdateBlock.concat(blocks)
        ups = list(block)
        assert len(ups) == len(objs)
        assert all(same_update(a, b) for a, b in zip(objs, ups))
        walls = rng.random(len(objs)) * 1e9
        block.meta["wall"] = walls
        assert as_bytes(wire.encode_updates(block, sensor="s", msg_seq=7, sent_wall=12.5)) \
            == as_bytes(old_encode(objs, walls))
        n += len(objs)
        finals += sum(u.final for u in objs)
    return n, finals


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("window", [None, 0.8])
def test_columnar_policy_matches_the_object_path(seed, window):
    rng = np.random.default_rng(seed)
    batches, t0 = [], 0.0
    for _ in range(10):
        b = random_batch(rng, int(rng.integers(1, 400)), n_keys=int(rng.integers(1, 60)), t0=t0,
                         rate=float(rng.choice([5, 50, 500])))
        batches.append(b)
        t0 = float(b.ts[-1]) + float(rng.choice([0, 0.5, 3]))
    calls = run_pair(batches, advance_every=3, k=int(rng.integers(1, 6)), window=window, idle_timeout=2.0,
                     active_timeout=6.0, max_flows=int(rng.choice([5, 40])))
    n, finals = check_calls(calls)
    assert n > finals > 0
    reasons = {u.reason for objs, _ in calls for u in objs if u.final}
    assert "evicted" in reasons and "eof" in reasons


def test_columnar_policy_on_real_captures(ndpi_dev):
    from trafficsnn.packets import read_packets

    paths = sorted((ndpi_dev / "pcap").glob("*.pcap*"), key=lambda p: p.stat().st_size)
    paths = paths[::max(1, len(paths) // 12)][:12] + paths[-1:]
    total = 0
    for path in paths:
        for window, k in ((1.0, 8), (None, 3)):
            batches = list(read_packets(path, batch_size=2048))
            calls = run_pair(batches, k=k, window=window, idle_timeout=30.0, active_timeout=300.0, max_flows=200)
            total += check_calls(calls)[0]
    assert total > 1000


def test_block_selections_and_views():
    rng = np.random.default_rng(3)
    calls = run_pair([random_batch(rng, 300, n_keys=25)], k=3, idle_timeout=None, active_timeout=None)
    block = UpdateBlock.concat([b for _, bl in calls for b in bl])
    ups = list(block)
    assert len(ups) == len(block) > 20
    assert all(same_update(block.update(i), u) for i, u in enumerate(ups))
    sub = block[5:17]
    assert sub.offsets[0] == 0 and all(same_update(a, b) for a, b in zip(sub, ups[5:17]))
    assert len(block[len(block):]) == 0 and block[len(block):].n_packets == 0
    idx = np.array([9, 2, 2, 0, len(block) - 1])
    assert all(same_update(a, ups[i]) for a, i in zip(block.take(idx), idx.tolist()))
    parts = [block[:3], UpdateBlock.empty(), block[3:]]
    assert as_bytes(wire.encode_updates(UpdateBlock.concat(parts))) == as_bytes(wire.encode_updates(block))
    back = UpdateBlock.from_updates(ups)
    assert as_bytes(wire.encode_updates(back)) == as_bytes(wire.encode_updates(block))
    dec = wire.decode(wire.encode_updates(block)).block()
    assert all(same_update(a, b) for a, b in zip(dec, ups))
    with pytest.raises(ValueError, match="offsets"):
        UpdateBlock(block.meta, block.offsets[:-1], block.ts, block.size, block.direction, block.tcp_flags)
    with pytest.raises(ValueError, match="step 1"):
        block[::2]


def test_wire_update_record_layout_is_pinned():
    """The wire's update record (version 2): field order, types and 81 packed bytes must not move."""
    assert wire.UPDATE_DTYPE is UPDATE_RECORD and UPDATE_RECORD.itemsize == 81
    assert UPDATE_RECORD.names == ("flow_id", "seq", "start_ts", "wall", "wire_bytes", "client_hi", "client_lo",
                                   "server_hi", "server_lo", "client_port", "server_port", "vlan", "proto",
                                   "final", "reason")


def _agent_messages(pcap, monkeypatch, policy_cls, n_shards=3):
    """Run the capture agent over a pcap into ``n_shards`` inproc PULL sinks: decoded UPDATES per shard."""
    from trafficsnn.serve import agent as agent_mod

    ctx = zmq.Context()
    eps = [f"inproc://shard{i}" for i in range(n_shards)]
    pulls = []
    for ep in eps:
        s = ctx.socket(zmq.PULL)
        s.bind(ep)
        pulls.append(s)
    got = [[] for _ in eps]
    stop = threading.Event()

    def drain():
        poller = zmq.Poller()
        for s in pulls:
            poller.register(s, zmq.POLLIN)
        while not stop.is_set() or any(s.poll(0) for s in pulls):
            for s, _ in poller.poll(50):
                got[pulls.index(s)].append(wire.decode(s.recv_multipart()))

    th = threading.Thread(target=drain)
    th.start()
    cfg = agent_mod.AgentConfig(pcap=(str(pcap),), connect=tuple(eps), lossless=True, every=3, window=0.5,
                                idle_timeout=60.0, max_flows=4, max_batch=50, read_batch=512, stats_interval=0)

    def make_table(self):
        return FlowTable(idle_timeout=cfg.idle_timeout, active_timeout=cfg.active_timeout,
                         max_flows=cfg.max_flows, policy=policy_cls(cfg.every, window_s=cfg.window))

    monkeypatch.setattr(agent_mod.CaptureAgent, "_make_table", make_table)
    snap = agent_mod.CaptureAgent(cfg, ctx).run()
    stop.set()
    th.join()
    for s in pulls:
        s.close(0)
    ctx.term()
    return snap["counters"], [[m for m in ms if isinstance(m, wire.UpdateBatch)] for ms in got]


def test_agent_shards_columnar_updates_like_the_object_path(ndpi_dev, monkeypatch):
    pcap = max((ndpi_dev / "pcap").glob("*.pcap"), key=lambda p: p.stat().st_size)
    c_new, new = _agent_messages(pcap, monkeypatch, lambda k, window_s: EveryK(k, window_s, columnar=True))
    c_old, old = _agent_messages(pcap, monkeypatch, ObjectEveryK)
    assert c_new["updates_sent"] == c_old["updates_sent"] == c_new["updates"] > 100
    assert c_new["flows_ended"] == c_old["flows_ended"] > 4
    assert c_new["updates_dropped"] == 0
    strip = [n for n in UPDATE_RECORD.names if n != "wall"]
    for i, (ms_new, ms_old) in enumerate(zip(new, old)):
        assert len(ms_new) == len(ms_old) > 0
        for a, b in zip(ms_new, ms_old):
            assert len(a) <= 50
            assert (a.keys["flow_id"] % 3 == i).all()
            assert all(a.keys[n].tobytes() == b.keys[n].tobytes() for n in strip)
            for name in ("offsets", "ts", "size", "direction", "tcp_flags"):
                assert getattr(a, name).tobytes() == getattr(b, name).tobytes()
    # the finals of evicted flows and the EOF flush reached their shards
    reasons = {wire.REASONS[r] for ms in new for m in ms for r in m.keys["reason"][m.keys["final"] == 1].tolist()}
    assert {"evicted", "eof"} <= reasons
