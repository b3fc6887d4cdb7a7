"""Live capture for real: traffic made here on loopback, captured by `trafficsnn capture -i lo`."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import zmq

from trafficsnn import wire
from trafficsnn.packets.live import LiveSource, can_capture

OK, WHY = can_capture("lo")
if OK:
    try:  # --filter compiles through libpcap (Debian: libpcap0.8)
        from scapy.arch.common import compile_filter

        compile_filter("udp", linktype=1)
    except Exception as err:  # noqa: BLE001
        OK, WHY = False, f"libpcap unavailable for BPF filters: {err}"
pytestmark = pytest.mark.skipif(not OK, reason=f"live capture not possible here: {WHY}")


def _free_port(kind: int) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_live_source_reads_loopback_frames_with_kernel_filter():
    port = _free_port(socket.SOCK_DGRAM)
    src = LiveSource("lo", bpf_filter=f"udp and dst port {port}", snaplen=96)
    try:
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other = _free_port(socket.SOCK_DGRAM)
        for i in range(30):
            tx.sendto(b"x" * (10 + i), ("127.0.0.1", port))
            tx.sendto(b"y", ("127.0.0.1", other))  # filtered out in the kernel
        tx.close()
        got = []
        deadline = time.monotonic() + 5
        while sum(len(b) for b in got) < 30 and time.monotonic() < deadline:
            got.append(src.read(0.2))
        n = sum(len(b) for b in got)
        assert n == 30  # each once (loopback's outgoing copy skipped), nothing else
        fb = [b for b in got if len(b)][0]
        assert int(fb.linktype[0]) == 1
        assert int(fb.wire_len[0]) == 14 + 20 + 8 + 10 and int(fb.caplen[0]) == int(fb.wire_len[0])
        assert abs(float(fb.ts[0]) - time.time()) < 10
        st = src.stats
        assert st["frames"] == 30 and st["kernel_drops"] == 0
    finally:
        src.close()


def test_capture_agent_on_loopback_flows_arrive(tmp_path):
    udp_port = _free_port(socket.SOCK_DGRAM)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    tcp_port = srv.getsockname()[1]
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    ep = f"ipc://{tmp_path}/u"
    pull.bind(ep)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "PYTHONUNBUFFERED": "1"}
    agent = subprocess.Popen(
        [sys.executable, "-m", "trafficsnn.cli", "capture", "-i", "lo",
         "-f", f"(udp and port {udp_port}) or (tcp and port {tcp_port})", "--connect", ep,
         "--sensor", "lo-test", "--every", "4"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert notify.recv(4096).startswith(b"READY=1"), "agent did not report READY"
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(20):
            tx.sendto(b"p" * (100 + i), ("127.0.0.1", udp_port))
        tx.close()

        def serve():
            c, _ = srv.accept()
            c.sendall(c.recv(100) * 2)
            c.close()

        th = threading.Thread(target=serve)
        th.start()
        cl = socket.create_connection(("127.0.0.1", tcp_port))
        cl.sendall(b"hello")
        cl.recv(100)
        cl.close()
        th.join(5)
        time.sleep(0.5)
        agent.send_signal(signal.SIGTERM)  # ends all flows: their final updates go out
        _, err = agent.communicate(timeout=30)
        assert agent.returncode == 0, err
        per_flow: dict[int, int] = {}
        protos: dict[int, int] = {}
        while pull.poll(2000):
            msg = wire.decode(pull.recv_multipart(copy=False))
            if isinstance(msg, wire.UpdateBatch):
                for u in msg.updates():
                    per_flow[u.flow_id] = per_flow.get(u.flow_id, 0) + len(u)
                    protos[u.flow_id] = u.key.proto
                    assert msg.sensor == "lo-test"
            elif msg.eos:
                break
        udp = [n for f, n in per_flow.items() if protos[f] == 17]
        tcp = [n for f, n in per_flow.items() if protos[f] == 6]
        assert udp == [20]
        assert sum(tcp) >= 6  # handshake, data both ways, close
    finally:
        if agent.poll() is None:
            agent.kill()
        pull.close(0)
        ctx.term()
        notify.close()
        srv.close()
