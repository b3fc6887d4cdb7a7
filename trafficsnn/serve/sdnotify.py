"""systemd's notify protocol (READY, STATUS, WATCHDOG) over $NOTIFY_SOCKET, without libsystemd.

Every call is a no-op when the process does not run under a ``Type=notify``
unit, so the daemons call it unconditionally. Never imports torch.
"""
from __future__ import annotations

import os
import socket
import time


class Notifier:
    """Sends datagrams to ``$NOTIFY_SOCKET``; ``watchdog()`` pings at most every half ``WatchdogSec``."""

    def __init__(self, env: dict[str, str] | None = None):
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr: str | bytes | None = None
        self._sock: socket.socket | None = None
        if addr.startswith("@"):  # abstract namespace
            self._addr = "\0" + addr[1:]
        elif addr.startswith("/"):
            self._addr = addr
        if self._addr is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (e.g. ``READY=1``, ``STATUS=...``); False when not under systemd."""
        if self._sock is None or self._addr is None:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode("utf-8", "replace")
        try:
            self._sock.sendto(msg, self._addr)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify(READY=1, STATUS=status) if status else self.notify(READY=1)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify(STOPPING=1, STATUS=status)

    def watchdog(self, now: float | None = None) -> bool:
        """Ping the watchdog if due (cheap to call from every loop iteration)."""
        if self.watchdog_interval is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_ping < self.watchdog_interval:
            return False
        self._last_ping = now
        return self.notify(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
