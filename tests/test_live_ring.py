"""The TPACKET_V3 ring: the block parser on kernel-shaped blocks, and real capture on loopback.

The parser tests need nothing. The live ones open raw sockets on ``lo`` (filtered on ports this
test picked, so other traffic on a shared loopback does not count) and skip with the reason
where raw sockets, libpcap or trafgen are unavailable.
"""
from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

from trafficsnn.packets import Decoder
from trafficsnn.packets.live import can_capture
from trafficsnn.packets.ring import (ALIGN, BLOCK_HDR, RingSource, build_block, parse_block, ring_geometry,
                                     walk_block)


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def _frames(fb):
    return [bytes(fb.data[o:o + c]) for o, c in zip(fb.offset.tolist(), fb.caplen.tolist())]


# ----------------------------------------------------------------------------- the parser
def test_parse_block_matches_the_exact_walk_on_random_frames():
    rng = random.Random(7)
    frames = [rng.randbytes(rng.randint(14, 400)) for _ in range(2000)]
    blk = build_block(frames, snaplen=256, ifindex=3)
    fast, slow = parse_block(blk, 3), walk_block(blk)
    assert fast[1] is not None and _same(fast, slow)
    data, off, cap, wire, ts = fast
    n = len(off)
    assert n == 2000 and off.dtype == np.int64 and cap.dtype == np.uint32 and ts.dtype == np.float64
    for i in (0, 1, 977, n - 1):
        assert bytes(data[off[i]:off[i] + cap[i]]) == frames[i][:256]
        assert wire[i] == len(frames[i])
    assert np.all(np.diff(ts) > 0)


def test_parse_block_puts_stripped_vlan_tags_back():
    rng = random.Random(1)
    frames = [rng.randbytes(60) for _ in range(20)]
    blk = build_block(frames, vlan={2: (0x0123, 0x8100), 5: (7, 0x88A8)})
    fast, slow = parse_block(blk, 1), walk_block(blk)
    assert _same(fast, slow)
    data, off, cap, wire, _ = fast
    got = bytes(data[off[2]:off[2] + cap[2]])
    assert got == frames[2][:12] + b"\x81\x00\x01\x23" + frames[2][12:] and cap[2] == wire[2] == 64
    assert bytes(data[off[5] + 12:off[5] + 16]) == b"\x88\xa8\x00\x07"
    assert bytes(data[off[3]:off[3] + cap[3]]) == frames[3] and cap[3] == 60


def test_forged_headers_in_payload_never_give_a_wrong_frame():
    # a payload that carries copies of a real frame header at every 8-byte position
    real = build_block([bytes(60)] * 2)
    hdr = bytes(real[BLOCK_HDR:BLOCK_HDR + 96])
    evil = bytes(14) + (hdr * 4)[:360]
    frames = [evil if i % 3 == 0 else bytes(60 + i) for i in range(300)]
    for shift in range(0, 16, 2):
        fr = [f[:14] + bytes(shift) + f[14:] if f is evil else f for f in frames]
        blk = build_block(fr, snaplen=400)
        res = parse_block(blk, 1)
        if res[1] is None:   # refused: the exact walk takes over
            res = walk_block(blk)
        assert _same(res, walk_block(blk))
        assert [bytes(res[0][o:o + c]) for o, c in zip(res[1].tolist(), res[2].tolist())] == [f[:400] for f in fr]


def test_damaged_block_headers_are_refused_not_trusted():
    blk = build_block([bytes(60)] * 10)
    bad = blk.copy()
    bad.view(np.uint32)[3] = 11              # announces one frame more than there is
    assert parse_block(bad, 1)[1] is None
    assert len(walk_block(bad)[1]) == 10
    bad = blk.copy()
    bad.view(np.uint32)[4] = 3               # first frame offset inside the block header
    assert parse_block(bad, 1)[1] is None
    assert len(walk_block(bad)[1]) == 0
    assert len(parse_block(build_block([]), 1)[1]) == 0


def test_drain_rate_smoke():
    """The parser is vectorised: a block of ~7 k frames parses in well under a millisecond per thousand."""
    blk = build_block(frame=bytes(60), n=100_000)
    n = len(parse_block(blk, 1)[1])
    t = time.process_time()
    for _ in range(20):
        parse_block(blk, 1)
    dt = time.process_time() - t
    assert n > 7000 and dt / (20 * n) < 2e-6  # >= 0.5 M frames/s even on a loaded CI machine


def test_ring_geometry_is_validated():
    assert ring_geometry(64, 1024) == (1 << 20, 64)
    assert ring_geometry(0.1, 64) == (65536, 2)
    for ring_mb, block_kb in ((0, 1024), (64, 2), (64, 5), (64, 1 << 20)):
        with pytest.raises(ValueError):
            ring_geometry(ring_mb, block_kb)
    with pytest.raises(ValueError):
        RingSource("lo", block_timeout_ms=0)
    with pytest.raises(ValueError):
        RingSource("lo", fanout_group=70000)
    assert ALIGN == 8


# ----------------------------------------------------------------------------- live, on loopback
OK, WHY = can_capture("lo")
if OK:
    try:
        from scapy.arch.common import compile_filter

        compile_filter("udp", linktype=1)
    except Exception as err:  # noqa: BLE001
        OK, WHY = False, f"libpcap unavailable for BPF filters: {err}"
live = pytest.mark.skipif(not OK, reason=f"live capture not possible here: {WHY}")
if not OK:
    print(f"test_live_ring: live tests skip: {WHY}")


def _port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _drain(srcs, want: int, limit: float = 5.0):
    got = [[] for _ in srcs]
    deadline = time.monotonic() + limit
    while sum(len(b) for g in got for b in g) < want and time.monotonic() < deadline:
        for g, s in zip(got, srcs):
            g.append(s.read(0.05))
    for g, s in zip(got, srcs):  # anything late
        g.append(s.read(0.05))
    return got


@live
def test_ring_captures_loopback_udp_with_kernel_filter():
    port, other = _port(), _port()
    with RingSource("lo", bpf_filter=f"udp and dst port {port}", snaplen=96, ring_mb=1, block_kb=64,
                    block_timeout_ms=5) as src:
        assert src.path == "ring" and src.linktype == 1
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(500):
            tx.sendto(b"x" * (10 + i % 200), ("127.0.0.1", port))
            tx.sendto(b"y", ("127.0.0.1", other))  # filtered out in the kernel
        tx.close()
        (got,) = _drain([src], 500)
        frames = [f for b in got for f in _frames(b)]
        assert len(frames) == 500  # each once (loopback's outgoing copy dropped in the kernel)
        caps = np.concatenate([b.caplen for b in got])
        wires = np.concatenate([b.wire_len for b in got])
        assert wires.tolist() == [42 + 10 + i % 200 for i in range(500)]
        assert caps.tolist() == np.minimum(wires, 96).tolist()
        assert frames[0][12:14] == b"\x08\x00" and frames[0][14 + 9] == 17
        ts = np.concatenate([b.ts for b in got])
        assert abs(ts[0] - time.time()) < 10 and np.all(np.diff(ts) >= 0)
        st = src.stats
        assert st["frames"] == 500 and st["kernel_packets"] == 500 and st["kernel_drops"] == 0
        assert st["slow_blocks"] == 0


@live
def test_ring_read_collects_blocks_into_one_batch_within_the_wait():
    port = _port()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with RingSource("lo", bpf_filter=f"udp and dst port {port}", snaplen=96, ring_mb=1, block_kb=64,
                    block_timeout_ms=2, batch_wait_ms=600, batch_frames=100) as src:
        t0 = time.monotonic()
        for _ in range(3):          # three blocks: each retires on its own after the 2 ms block timeout
            tx.sendto(b"x", ("127.0.0.1", port))
            time.sleep(0.03)
        fb = src.read(1.0)
        took = time.monotonic() - t0
        assert len(fb) == 3 and src.blocks >= 3      # one batch, not one per block
        assert took < 2.0
        # enough frames end the wait at once
        for _ in range(120):
            tx.sendto(b"y", ("127.0.0.1", port))
        t1 = time.monotonic()
        got = len(src.read(1.0))
        while got < 120 and time.monotonic() - t1 < 3:
            got += len(src.read(0.2))
        assert got == 120
    with RingSource("lo", bpf_filter=f"udp and dst port {port}", snaplen=96, ring_mb=1, block_kb=64,
                    block_timeout_ms=2, batch_wait_ms=0) as src:
        tx.sendto(b"x", ("127.0.0.1", port))
        t0 = time.monotonic()
        assert len(src.read(1.0)) == 1 and time.monotonic() - t0 < 0.5   # no wait: the block goes on at once
    tx.close()
    with pytest.raises(ValueError, match="batch wait"):
        RingSource("lo", batch_wait_ms=5000)


@live
def test_fanout_keeps_both_directions_of_each_flow_on_one_worker():
    group = random.randint(1, 0xFFFF)
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    sport = srv.getsockname()[1]
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    tport = lst.getsockname()[1]
    filt = f"(udp and port {sport}) or (tcp and port {tport})"
    srcs = [RingSource("lo", bpf_filter=filt, snaplen=128, ring_mb=2, block_kb=64, block_timeout_ms=5,
                       fanout_group=group) for _ in range(3)]
    try:
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(120)]
        sent = 0
        for rnd in range(3):
            for c in clients:
                c.sendto(b"q" * 20, ("127.0.0.1", sport))
                data, addr = srv.recvfrom(100)
                srv.sendto(data * 2, addr)  # the other direction
                c.recv(100)
                sent += 2
        tcp = []
        for _ in range(4):
            c = socket.create_connection(("127.0.0.1", tport))
            a, _ = lst.accept()
            c.sendall(b"hello")
            a.recv(10)
            a.sendall(b"world!")
            c.recv(10)
            tcp.append((c, a))
        for c, a in tcp:
            c.close()
            a.close()
        time.sleep(0.2)
        got = _drain(srcs, sent + 4 * 8, limit=3)
        dec = Decoder()
        owner: dict[tuple, set[int]] = {}
        per_worker = []
        for w, batches in enumerate(got):
            n = 0
            for fb in batches:
                if not len(fb):
                    continue
                pb = dec.decode(fb)
                n += len(pb)
                for s_lo, sp, d_lo, dp, pr in zip(pb.src_lo.tolist(), pb.sport.tolist(), pb.dst_lo.tolist(),
                                                  pb.dport.tolist(), pb.proto.tolist()):
                    key = (pr,) + tuple(sorted([(s_lo, sp), (d_lo, dp)]))
                    owner.setdefault(key, set()).add(w)
            per_worker.append(n)
        udp = {k: v for k, v in owner.items() if k[0] == 17}
        tcpk = {k: v for k, v in owner.items() if k[0] == 6}
        assert len(udp) == 120 and len(tcpk) == 4
        assert all(len(v) == 1 for v in owner.values()), "a flow was split across fanout workers"
        assert sum(1 for n in per_worker if n) >= 2, f"hash fanout used one worker only: {per_worker}"
        stats = [s.stats for s in srcs]
        assert sum(s["frames"] for s in stats) == sum(per_worker) >= sent + 4 * 6
        assert sum(s["kernel_packets"] for s in stats) == sum(per_worker)  # counters sum across workers
        assert sum(s["kernel_drops"] for s in stats) == 0
    finally:
        for s in srcs:
            s.close()
        srv.close()
        lst.close()


TRAFGEN = shutil.which("trafgen")


@live
@pytest.mark.skipif(TRAFGEN is None, reason="trafgen (Debian package netsniff-ng) is not installed")
def test_ring_captures_what_trafgen_sends(tmp_path):
    port = _port()
    cfg = tmp_path / "t.cfg"
    cfg.write_text("{ eth(da=00:00:00:00:00:00, sa=00:00:00:00:00:00, type=0x0800), "
                   "ipv4(saddr=127.0.0.1, daddr=127.0.0.1, ttl=64), "
                   f"udp(sp=dinc(20000, 20049, 1), dp={port}), fill(0x41, 18) }}\n")
    n = 5000
    with RingSource("lo", bpf_filter=f"udp and dst port {port}", snaplen=96, ring_mb=4, block_kb=256,
                    block_timeout_ms=5) as src:
        r = subprocess.run([TRAFGEN, "-o", "lo", "-i", str(cfg), "-n", str(n), "-P", "1", "-b", "200000pps",
                            "--no-sock-mem", "--notouch-irq", "--no-cpu-stats"], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            pytest.skip(f"trafgen could not send here: {r.stderr.strip()[-200:]}")
        (got,) = _drain([src], n)
        total = sum(len(b) for b in got)
        st = src.stats
        assert total + st["kernel_drops"] == n and st["kernel_drops"] <= n // 1000
        pb = Decoder().decode(next(b for b in got if len(b)))
        assert set(pb.dport.tolist()) == {port} and pb.sport.min() >= 20000 and pb.sport.max() <= 20049
        assert int(pb.ip_len[0]) == 20 + 8 + 18


# ----------------------------------------------------------------------------- the agent: path choice, --workers
def test_live_options_are_validated():
    from trafficsnn.errors import ConfigError
    from trafficsnn.serve.agent import AgentConfig

    bad = [dict(pcap=("x.pcap",), workers=2), dict(iface="lo", workers=2, bind=("ipc:///tmp/x",), connect=()),
           dict(iface="lo", workers=2, ring=False), dict(iface="lo", workers=0),
           dict(iface="lo", ring_mb=0), dict(iface="lo", block_kb=5), dict(iface="lo", block_timeout_ms=0),
           dict(iface="lo", fanout_group=1 << 16), dict(iface="lo", batch_wait_ms=-1), dict(iface="lo", batch_wait_ms=1001)]
    for kw in bad:
        cfg = AgentConfig(**{"connect": ("ipc:///tmp/x",), **kw})
        with pytest.raises(ConfigError):
            cfg.validate()
    AgentConfig(iface="lo", connect=("ipc:///tmp/x",), workers=4, ring_mb=8, block_kb=256).validate()


@live
def test_open_live_says_which_path_runs_and_falls_back(monkeypatch):
    from trafficsnn.packets import live as live_mod
    from trafficsnn.packets import ring as ring_mod

    src, line = live_mod.open_live("lo", bpf_filter="udp and port 9", ring_mb=1, block_kb=64)
    src.close()
    assert src.path == "ring" and "TPACKET_V3 ring, 16 blocks x 64 KiB" in line
    src, line = live_mod.open_live("lo", bpf_filter="udp and port 9", ring=False)
    src.close()
    assert src.path == "socket" and "socket path" in line and "--no-ring" in line

    def refuse(*a, **k):
        raise ring_mod.RingUnavailable("lo", None, "PACKET_RX_RING: Invalid argument")

    monkeypatch.setattr(ring_mod, "RingSource", refuse)
    src, line = live_mod.open_live("lo", bpf_filter="udp and port 9")
    src.close()
    assert src.path == "socket" and "ring unavailable: PACKET_RX_RING: Invalid argument" in line


@live
def test_capture_workers_keep_flows_whole_and_send_every_final_update_on_sigterm(tmp_path):
    import json
    import signal
    import sys

    import zmq

    from trafficsnn import wire

    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    ep = f"ipc://{tmp_path}/u"
    pull.bind(ep)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "PYTHONUNBUFFERED": "1"}
    agent = subprocess.Popen([sys.executable, "-m", "trafficsnn.cli", "capture", "-i", "lo", "-f",
                              f"udp and port {port}", "--connect", ep, "--sensor", "fan", "--workers", "2",
                              "--ring-size", "2", "--ring-block", "64", "--every", "4"],
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert notify.recv(4096).startswith(b"READY=1"), "supervisor did not report READY"
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(60)]
        for _ in range(3):
            for c in clients:
                c.sendto(b"a" * 30, ("127.0.0.1", port))
                d, a = srv.recvfrom(100)
                srv.sendto(d, a)
                c.recv(100)
        time.sleep(0.3)
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
        assert agent.returncode == 0, err
        assert err.count("TPACKET_V3 ring") == 2 and "fanout group" in err
        out = json.loads(err.strip().splitlines()[-1])
        assert out["live_path"] == "ring" and set(out["workers"]) == {"0", "1"}
        for k in ("packets", "kernel_packets", "updates_sent", "flows_ended"):
            assert out["capture"][k] == sum(w[k] for w in out["workers"].values())
        assert out["capture"]["packets"] == 360 and out["capture"]["kernel_drops"] == 0
        per_flow: dict[tuple, int] = {}
        finals: dict[tuple, int] = {}
        eos = set()
        while pull.poll(2000):
            msg = wire.decode(pull.recv_multipart(copy=False))
            if isinstance(msg, wire.UpdateBatch):
                for u in msg.updates():
                    k = (msg.sensor, u.flow_id)
                    per_flow[k] = per_flow.get(k, 0) + len(u)
                    finals[k] = finals.get(k, 0) + int(u.final)
            elif msg.eos:
                eos.add(msg.sensor)
                if len(eos) == 2:
                    break
        assert eos == {"fan/w0", "fan/w1"}
        assert len(per_flow) == 60 and set(per_flow.values()) == {6}  # both directions in one flow, one worker
        assert set(finals.values()) == {1}
        assert {s for s, _ in per_flow} == {"fan/w0", "fan/w1"}
    finally:
        if agent.poll() is None:
            agent.kill()
        pull.close(0)
        ctx.term()
        notify.close()
        srv.close()


@live
def test_workers_with_a_busy_metrics_port_exit_2_and_leave_no_worker(tmp_path):
    import sys

    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        r = subprocess.run([sys.executable, "-m", "trafficsnn.cli", "capture", "-i", "lo", "--connect",
                            f"ipc://{tmp_path}/u", "--workers", "2", "--metrics-port", str(port)],
                           capture_output=True, text=True, timeout=60)
    finally:
        busy.close()
    assert r.returncode == 2, r.stderr
    assert "cannot serve metrics" in r.stderr and "Traceback" not in r.stderr
    assert "TPACKET_V3 ring" not in r.stderr          # refused before any worker opened a ring
    left = subprocess.run(["pgrep", "-f", f"ipc://{tmp_path}/u"], capture_output=True, text=True)
    assert left.stdout.strip() == ""
