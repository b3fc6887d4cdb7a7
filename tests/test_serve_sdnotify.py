"""sd_notify over a real unix datagram socket, as systemd would receive it."""
from __future__ import annotations

import os
import socket

from trafficsnn.serve.sdnotify import Notifier


def test_ready_status_watchdog_over_real_socket(tmp_path):
    path = str(tmp_path / "notify")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(2)
    try:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
        assert n.enabled and n.watchdog_interval == 1.0
        assert n.ready("serving")
        assert srv.recv(4096) == b"READY=1\nSTATUS=serving"
        assert n.status("42 flows")
        assert srv.recv(4096) == b"STATUS=42 flows"
        assert n.watchdog(now=100.0)
        assert not n.watchdog(now=100.5)  # not due yet
        assert n.watchdog(now=101.1)
        assert srv.recv(4096) == b"WATCHDOG=1" and srv.recv(4096) == b"WATCHDOG=1"
        n.close()
    finally:
        srv.close()


def test_abstract_socket_and_disabled():
    name = f"trafficsnn-test-{os.getpid()}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind("\0" + name)
    srv.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert srv.recv(100) == b"READY=1"
    finally:
        srv.close()
    off = Notifier({})
    assert not off.enabled and not off.ready() and not off.watchdog()
    # A watchdog meant for another process is ignored.
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "10", "WATCHDOG_PID": "1"}).watchdog_interval is None
