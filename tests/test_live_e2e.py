"""Live end to end on loopback: trafgen -> `trafficsnn capture -i lo` -> ZeroMQ -> `trafficsnn classify`.

Every packet trafgen sends must be accounted for: dropped by the kernel, dropped by the agent's
non-blocking send, dropped by the classifier's message caps, or received by the classifier's
engine (then classified, beyond the model's window, or refused by a full state table). Not
timed. Skips with the reason where raw sockets, libpcap or trafgen are unavailable.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from trafficsnn.packets.live import can_capture

OK, WHY = can_capture("lo")
TRAFGEN = shutil.which("trafgen")
if OK and TRAFGEN is None:
    OK, WHY = False, "trafgen (Debian package netsniff-ng) is not installed"
if OK:
    try:
        from scapy.arch.common import compile_filter

        compile_filter("udp", linktype=1)
    except Exception as err:  # noqa: BLE001
        OK, WHY = False, f"libpcap unavailable for BPF filters: {err}"
if not OK:
    print(f"test_live_e2e: skips: {WHY}")
pytestmark = pytest.mark.skipif(not OK, reason=f"live end to end not possible here: {WHY}")


def _ready(sock: socket.socket, what: str, proc: subprocess.Popen, err_path) -> None:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            if sock.recv(4096).startswith(b"READY=1"):
                return
        except socket.timeout:
            pass
        if proc.poll() is not None:
            break
    raise AssertionError(f"{what} never reported READY: {err_path.read_text()[-2000:]}")


def _final(err_path, key: str) -> dict:
    for line in reversed(err_path.read_text().splitlines()):
        if line.startswith("{") and f'"{key}"' in line:
            return json.loads(line)[key]
    raise AssertionError(f"no final counters in {err_path}: {err_path.read_text()[-2000:]}")


def test_every_packet_trafgen_sends_is_classified_or_counted_as_dropped(tmp_path):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    n, flows = 4000, 40
    cfg = tmp_path / "t.cfg"
    cfg.write_text("{ eth(da=00:00:00:00:00:00, sa=00:00:00:00:00:00, type=0x0800), "
                   "ipv4(saddr=127.0.0.1, daddr=127.0.0.1, ttl=64), "
                   f"udp(sp=dinc(30000, {30000 + flows - 1}, 1), dp={port}), fill(0x41, 18) }}\n")
    ep = f"ipc://{tmp_path}/u"
    procs, socks = [], []
    try:
        def start(name: str, args: list[str]) -> subprocess.Popen:
            nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            nsock.bind(str(tmp_path / f"{name}.notify"))
            nsock.settimeout(1.0)
            socks.append(nsock)
            env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / f"{name}.notify"), "PYTHONUNBUFFERED": "1",
                   "OMP_NUM_THREADS": "1"}
            err = tmp_path / f"{name}.err"
            p = subprocess.Popen([sys.executable, "-m", "trafficsnn.cli", *args], stdout=subprocess.DEVNULL,
                                 stderr=open(err, "w"), env=env)
            procs.append(p)
            _ready(nsock, name, p, err)
            return p

        cls = start("classify", ["classify", "--bind", ep, "--device", "cpu", "--threads", "1", "--jsonl",
                                 str(tmp_path / "v.jsonl"), "--emit", "final", "--exit-after-eos", "1"])
        cap = start("capture", ["capture", "-i", "lo", "-f", f"udp and dst port {port}", "--connect", ep,
                                "--sensor", "e2e", "--every", "4"])
        r = subprocess.run([TRAFGEN, "-o", "lo", "-i", str(cfg), "-n", str(n), "-P", "1", "-b", "50000pps",
                            "--no-sock-mem", "--notouch-irq", "--no-cpu-stats"], capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            pytest.skip(f"trafgen could not send here: {r.stderr.strip()[-200:]}")
        time.sleep(1.0)
        cap.send_signal(signal.SIGTERM)
        assert cap.wait(timeout=60) == 0
        try:
            cls.wait(timeout=60)            # exits after the agent's end of stream
        except subprocess.TimeoutExpired:   # the end-of-stream message was dropped: SIGTERM drains and exits
            cls.send_signal(signal.SIGTERM)
            cls.wait(timeout=60)
        assert cls.returncode == 0
        c = _final(tmp_path / "capture.err", "capture")
        k = _final(tmp_path / "classify.err", "classify")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for x in socks:
            x.close()
    kc = k["counters"]
    # kernel: every offered packet was captured or dropped there
    assert c["packets"] + c["kernel_drops"] == n and c["non_ip"] == 0
    # agent: every captured packet left in an update or was dropped (counted) at the send
    assert c["packets_sent"] + c["packets_dropped"] == c["packets"]
    assert c["pending_updates"] == 0 and c["updates_sent"] + c["updates_dropped"] == c["updates"]
    # transport: what the agent sent reached the classifier (or hit its message caps, counted)
    assert kc["packets"] + kc.get("oversize_packets_dropped", 0) == c["packets_sent"]
    classified = kc["packets"] - kc.get("packets_after_window", 0) - kc.get("packets_late", 0) \
        - kc.get("packets_refused_state_full", 0)
    assert classified > 0
    assert (n == c["kernel_drops"] + c["packets_dropped"] + kc.get("oversize_packets_dropped", 0) + kc["packets"])
    if c["packets_dropped"] == 0 and c["kernel_drops"] == 0:   # nothing lost: every flow has its verdict
        assert kc["flows"] == flows and kc["verdicts"] == flows
        assert k["drops"].get("gap_packets", 0) == 0
