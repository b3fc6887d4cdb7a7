"""The capture agent: packets (live interface or pcap) -> flow table -> flow updates over ZeroMQ PUSH.

One loop, one thread: read a frame batch, decode it, feed the flow table with
the ``EveryK`` streaming policy, and ship the updates it emits in batches. The
updates stay columnar (``UpdateBlock``) from the policy to the wire: queueing,
sharding by flow and encoding are numpy work per message, none per update.
Sending never blocks on a slow or absent classifier: the PUSH socket has a
bounded high-water mark and every send is non-blocking; what cannot be queued
is dropped and counted (updates and their packets). On a quiet live link the
table's clock still advances, so idle flows expire and their final updates go
out. SIGUSR1 logs the counters; SIGTERM/SIGINT end the flows, send what is
left and exit 0. Never imports torch.
"""
from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import zmq

from .. import wire
from ..errors import ConfigError, LinkError
from ..flows.records import FlowUpdate, UpdateBlock
from .sdnotify import Notifier

log = logging.getLogger(__name__)


@dataclass
class AgentConfig:
    iface: str | None = None
    pcap: tuple[str, ...] = ()
    speed: float | None = None          # None/0 = as fast as possible; 1.0 = recorded speed
    pps: float | None = None            # or a fixed packet rate (packets/s)
    bpf_filter: str | None = None
    snaplen: int = 256
    promisc: bool = False
    connect: tuple[str, ...] = ()
    bind: tuple[str, ...] = ()
    sensor: str = field(default_factory=socket.gethostname)
    every: int = 8
    window: float | None = 1.0
    idle_timeout: float | None = 120.0
    active_timeout: float | None = 1800.0
    max_flows: int | None = 1_000_000
    hwm: int = 1000
    max_batch: int = 1024               # updates per message
    flush_ms: float = 10.0              # send a partial message after this long
    lossless: bool = False              # wait for the classifier instead of dropping (file replay)
    stats_interval: float = 5.0         # STATS message period (s), 0 = off
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    curve_secret: str | None = None
    curve_server: str | None = None
    read_batch: int = 8192
    # live capture path (see packets/ring.py): the TPACKET_V3 ring unless ring=False or the kernel refuses
    ring: bool = True
    ring_mb: float = 64.0               # ring memory per capture process
    block_kb: int = 1024                # ring block size; a block is handed over when full or after the timeout
    block_timeout_ms: int = 10
    batch_wait_ms: int = 20             # ring: wait this long after a block for more (up to 4096 frames a batch)
    workers: int = 1                    # capture processes in one PACKET_FANOUT (hash) group, each its own table
    fanout_group: int | None = None     # the group id (default with workers > 1: from the process id)
    lossless_linger_s: float = 600.0    # lossless: how long closing waits for queued messages to leave
    # --pcap: how long to wait for every classifier's handshake (CURVE included) before reading the
    # files, and with --lossless for room to send; then the run ends with a LinkError (never a silent hang)
    connect_timeout: float = 30.0

    def validate(self) -> None:
        if bool(self.iface) == bool(self.pcap):
            raise ConfigError("give exactly one source: -i/--interface IFACE or --pcap FILE")
        if not self.connect and not self.bind:
            raise ConfigError("give where to send updates: --connect ENDPOINT or --bind ENDPOINT")
        if self.every < 1:
            raise ConfigError(f"--every must be >= 1 packet, got {self.every}")
        if self.hwm < 1:
            raise ConfigError(f"--hwm must be >= 1 message, got {self.hwm}")
        if self.speed is not None and self.speed < 0:
            raise ConfigError(f"--speed must be >= 0, got {self.speed}")
        if self.pps is not None and self.pps <= 0:
            raise ConfigError(f"--pps must be > 0 packets/s, got {self.pps}")
        if self.speed and self.pps:
            raise ConfigError("give --speed or --pps, not both")
        if bool(self.curve_secret) != bool(self.curve_server):
            raise ConfigError("CURVE needs both --curve-secret (own .key_secret) and --curve-server (server .key)")
        if self.iface and not 64 <= self.snaplen <= 262144:
            raise ConfigError(f"--snaplen must be within 64..262144 bytes, got {self.snaplen}")
        if self.metrics_port is not None and not 1 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port must be within 1..65535, got {self.metrics_port}")
        if not 0 < self.connect_timeout <= 86400:
            raise ConfigError(f"--connect-timeout must be within (0, 86400] s, got {self.connect_timeout}")
        self._validate_live()

    def _validate_live(self) -> None:
        from ..packets.ring import ring_geometry

        try:
            ring_geometry(self.ring_mb, self.block_kb)
        except ValueError as err:
            raise ConfigError(f"--ring-size/--ring-block: {err}") from None
        if not 1 <= self.block_timeout_ms <= 60000:
            raise ConfigError(f"--block-timeout must be within 1..60000 ms, got {self.block_timeout_ms}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ConfigError(f"--batch-wait must be within 0..1000 ms, got {self.batch_wait_ms}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.fanout_group is not None and not 0 <= self.fanout_group <= 0xFFFF:
            raise ConfigError(f"--fanout-group must be within 0..65535, got {self.fanout_group}")
        if self.workers > 1 or self.fanout_group is not None:
            if not self.iface:
                raise ConfigError("--workers/--fanout-group are for live capture (-i IFACE), not --pcap")
            if not self.ring:
                raise ConfigError("--workers/--fanout-group need the ring path (drop --no-ring)")
        if self.workers > 1 and self.bind:
            raise ConfigError("--workers > 1 needs --connect: several processes cannot bind one endpoint")


class CaptureAgent:
    """Runs the capture loop until the source ends or ``stop()``; ``stats`` holds the counters."""

    def __init__(self, cfg: AgentConfig, ctx: zmq.Context | None = None):
        cfg.validate()
        self.cfg = cfg
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self._stop = threading.Event()
        self._dump = threading.Event()
        self.notifier = Notifier()
        self.counters: dict[str, int] = {
            "frames": 0, "packets": 0, "non_ip": 0, "updates": 0,
            "updates_sent": 0, "packets_sent": 0, "updates_dropped": 0, "packets_dropped": 0,
            "messages_sent": 0, "messages_dropped": 0, "flows_ended": 0,
        }
        self.source_stats: dict[str, Any] = {}
        self.table: Any = None
        self.source: Any = None
        self.metrics: Any = None
        self._decoder: Any = None
        self._msg_seq = 0
        self._pending: list[UpdateBlock] = []   # queued updates, each block's wall times set
        self._n_pending = 0
        self._pending_since = 0.0
        self.live_path = ""
        self.damaged: dict[str, str] = {}   # --pcap: file -> what was wrong with it
        self._link_failed = False           # a LinkError ended the run: closing must not wait for the peer
        # --pcap: socket -> (monitor socket, endpoint) until its first handshake succeeded
        self._monitors: dict[zmq.Socket, tuple[zmq.Socket, str]] = {}
        self._endpoint: dict[zmq.Socket, str] = {}
        # --workers: a worker reports ("ready"|"stats", snapshot) to its supervisor through this
        self.report: Any = None
        self._last_report = 0.0
        # several endpoints = classifier shards: one socket each, every flow always to the same one
        # (a classifier keeps per-flow state); a single PUSH would round-robin a flow's updates
        eps = [("bind", ep) for ep in cfg.bind] + [("connect", ep) for ep in cfg.connect]
        self.socks = [self._make_socket([e]) for e in eps]
        self.sock = self.socks[0]

    # ------------------------------------------------------------- setup
    def _make_socket(self, endpoints: list[tuple[str, str]]) -> zmq.Socket:
        cfg = self.cfg
        s = self.ctx.socket(zmq.PUSH)
        s.sndhwm = cfg.hwm
        s.linger = 0
        s.immediate = 1  # queue only to connected peers: no silent buffering for an absent classifier
        if cfg.curve_secret:
            from .security import secure_client

            secure_client(s, cfg.curve_secret, cfg.curve_server or "")
        ep0 = endpoints[0][1]
        if cfg.pcap and not ep0.startswith("inproc://"):
            # file replay waits for the handshake before sending (see _await_handshakes); inproc has none
            self._monitors[s] = (s.get_monitor_socket(_HANDSHAKE_EVENTS), ep0)
        self._endpoint[s] = ep0
        try:
            for how, ep in endpoints:
                getattr(s, how)(ep)
        except zmq.ZMQError as err:
            self._close_monitor(s)
            s.close(0)
            raise ConfigError(f"cannot {endpoints[0][0]} ZeroMQ endpoint {ep0}: {err.strerror} "
                              f"({_endpoint_hint(ep0, endpoints[0][0])})") from None
        return s

    def _close_monitor(self, sock: zmq.Socket) -> None:
        mon = self._monitors.pop(sock, None)
        if mon is not None:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            mon[0].close(0)

    def _await_handshakes(self) -> bool:
        """--pcap: block until every socket has completed a ZMTP handshake (CURVE included) with a classifier.

        Updates sent before that would be lost (the socket only queues to connected peers), so a
        file is not read before. A refused key or a mechanism mismatch ends the run at once, no
        handshake within ``connect_timeout`` seconds too: both as one LinkError. False on stop()."""
        from zmq.utils.monitor import recv_monitor_message

        if not self._monitors:
            return True
        cfg = self.cfg
        deadline = time.monotonic() + cfg.connect_timeout
        why: dict[zmq.Socket, str] = {}
        poller = zmq.Poller()
        for mon, _ in self._monitors.values():
            poller.register(mon, zmq.POLLIN)
        while self._monitors:
            if self._stop.is_set():
                return False
            now = time.monotonic()
            if now >= deadline:
                sock, (_, ep) = next(iter(self._monitors.items()))
                self._link_failed = True
                hint = why.get(sock) or (f"is `trafficsnn classify --bind {ep}` running?" if self.cfg.connect
                                         else "no classifier connected")
                raise LinkError(f"no handshake with a classifier on {ep} within {cfg.connect_timeout:g} s "
                                f"(--connect-timeout): {hint}; nothing was sent")
            ready = dict(poller.poll(int(min(100, (deadline - now) * 1000)) + 1))
            for sock, (mon, ep) in list(self._monitors.items()):
                if mon not in ready:
                    continue
                while mon.poll(0):
                    ev = recv_monitor_message(mon)
                    kind = ev["event"]
                    if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                        poller.unregister(mon)
                        self._close_monitor(sock)
                        log.info("handshake with the classifier on %s done%s", ep,
                                 " (CURVE)" if cfg.curve_secret else "")
                        break
                    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                        self._link_failed = True
                        raise LinkError(f"the classifier on {ep} refused this sensor's CURVE key (ZAP status "
                                        f"{ev['value']}): copy the public key that goes with {cfg.curve_secret} "
                                        "into the classifier's --curve-clients directory"
                                        if cfg.curve_secret else
                                        f"the classifier on {ep} refused this sensor (ZAP status {ev['value']})")
                    if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                        self._link_failed = True
                        raise LinkError(f"handshake with the classifier on {ep} failed: "
                                        + ("it does not speak CURVE (drop --curve-secret/--curve-server, or start "
                                           "it with --curve-secret/--curve-clients)" if cfg.curve_secret else
                                           "it expects CURVE (give --curve-secret and --curve-server)"))
                    if kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                        why[sock] = ("the classifier closed every handshake (is --curve-server its public key?)"
                                     if cfg.curve_secret else "the classifier closed every handshake")
            self._housekeeping(time.monotonic())
        return True

    def _make_table(self) -> Any:
        from ..flows import EveryK, FlowTable

        cfg = self.cfg
        return FlowTable(idle_timeout=cfg.idle_timeout, active_timeout=cfg.active_timeout,
                         max_flows=cfg.max_flows, policy=EveryK(cfg.every, window_s=cfg.window, columnar=True))

    def _frames(self) -> Iterator[Any]:
        """FrameBatches from the source; an empty batch marks a quiet moment (live) for the clock."""
        cfg = self.cfg
        if cfg.iface:
            from ..packets.live import open_live

            self.source, line = open_live(cfg.iface, bpf_filter=cfg.bpf_filter, snaplen=cfg.snaplen,
                                          promisc=cfg.promisc, ring=cfg.ring, ring_mb=cfg.ring_mb,
                                          block_kb=cfg.block_kb, block_timeout_ms=cfg.block_timeout_ms,
                                          batch_wait_ms=cfg.batch_wait_ms,
                                          fanout_group=cfg.fanout_group, batch_size=cfg.read_batch, timeout=0.1)
            self.live_path = self.source.path
            log.info("%s%s", f"[{cfg.sensor}] " if self.report else "", line)
            self.ready()
            try:
                while not self._stop.is_set():
                    yield self.source.read()
            finally:
                self.source.close()
            return
        from ..packets import open_capture

        if not self._await_handshakes():
            return
        self.ready()
        for path in cfg.pcap:
            reader = open_capture(path, batch_size=cfg.read_batch)
            self.source = reader
            t0_rec = t0_wall = None
            sent = 0
            for fb in reader:
                if self._stop.is_set():
                    return
                if cfg.bpf_filter:
                    fb = self._pcap_filter(fb)
                if cfg.pps and len(fb):
                    # a fixed packet rate (like tcpreplay --pps): slices of 5 ms worth of packets
                    if t0_wall is None:
                        t0_wall, sent = time.monotonic(), 0
                    step = max(1, int(cfg.pps * 0.005))
                    a = 0
                    while a < len(fb):
                        # everything that is due now goes in one slice (catching up takes big batches)
                        due_n = int((time.monotonic() - t0_wall) * cfg.pps) - sent
                        if due_n < min(step, len(fb) - a):
                            if not self._wait_until(t0_wall + (sent + min(step, len(fb) - a)) / cfg.pps):
                                return
                            continue
                        b = min(len(fb), a + max(due_n, 1))
                        sent += b - a
                        yield _slice(fb, a, b)
                        a = b
                    continue
                if not (cfg.speed and len(fb)):
                    yield fb
                    continue
                # recorded speed: hand out slices of 5 ms (wall clock, at least 1 ms recorded) when due
                if t0_rec is None:
                    t0_rec, t0_wall = float(fb.ts[0]), time.monotonic()
                tick = max(0.005 * cfg.speed, 0.001)
                cuts = np.flatnonzero(np.diff(np.floor((fb.ts - t0_rec) / tick))) + 1
                for a, b in zip(np.concatenate([[0], cuts]).tolist(), np.concatenate([cuts, [len(fb)]]).tolist()):
                    part = _slice(fb, a, b)
                    if not self._wait_until(t0_wall + (float(part.ts[-1]) - t0_rec) / cfg.speed):
                        return
                    yield part
            for err in getattr(reader, "errors", []):
                log.warning("%s", err)
                self.damaged.setdefault(str(path), str(err))
            self.source_stats[str(path)] = dict(getattr(reader, "stats", {}))

    def _wait_until(self, due: float) -> bool:
        """Sleep until ``due`` (monotonic) keeping the watchdog fed; False when asked to stop."""
        while not self._stop.is_set():
            left = due - time.monotonic()
            if left <= 0:
                return True
            self._stop.wait(min(left, 0.05))
            self._housekeeping(time.monotonic())
        return False

    def _pcap_filter(self, fb: Any) -> Any:
        """Apply the BPF filter to file frames in user space (libpcap's matcher through scapy)."""
        if not hasattr(self, "_bpf"):
            from .bpf import compile_matcher

            self._bpf = compile_matcher(self.cfg.bpf_filter)
        return self._bpf(fb)

    def ready(self) -> None:
        src = self.cfg.iface or ",".join(self.cfg.pcap)
        self.notifier.ready(f"capturing from {src}")
        if self.report:
            self.report("ready", self.snapshot())

    # ------------------------------------------------------------- main loop
    def run(self) -> dict[str, Any]:
        from ..packets import Decoder

        cfg = self.cfg
        self.table = self._make_table()
        decoder = self._decoder = Decoder()
        if cfg.metrics_port:
            from .metrics import Metrics

            self.metrics = Metrics(self.prometheus_snapshot)
            try:
                self.metrics.serve(cfg.metrics_port, cfg.metrics_addr)
            except BaseException:
                self.metrics = None
                self._link_failed = True   # nothing was sent: close at once
                self.table = None
                self._finish()
                raise
        last_stats = last_clock = time.monotonic()
        last_rec = -np.inf
        tick = min(cfg.window or 1.0, 1.0)  # how often the clock alone is allowed to close windows
        try:
            for fb in self._frames():
                now = time.monotonic()
                wall = time.time()
                if len(fb):
                    self.counters["frames"] += len(fb)
                    pb = decoder.decode(fb)
                    self.counters["packets"] += len(pb)
                    self.counters["non_ip"] += int(pb.skipped)
                    self._queue(self.table.add(pb), wall)
                if cfg.iface and (not len(fb) or now - last_clock >= tick):
                    # a quiet link still moves the clock: idle flows end, due windows go out
                    self._queue(self.table.advance(wall), wall)
                    last_clock = now
                elif not cfg.iface and self.table.clock - last_rec >= tick:
                    # files: windows of flows that got no packet in this batch are over by the
                    # recorded clock too (add() only looks at the flows it touched)
                    self._queue(self.table.advance(self.table.clock), wall)
                    last_rec = self.table.clock
                self._maybe_send(now)
                if cfg.stats_interval and now - last_stats >= cfg.stats_interval:
                    self._send_stats()
                    last_stats = now
                self._housekeeping(now)
                if self._stop.is_set():
                    break
        finally:
            self._finish()
        return self.snapshot()

    def _housekeeping(self, now: float) -> None:
        self.notifier.watchdog(now)
        if self.report and now - self._last_report >= 0.5:
            self.report("stats", self.snapshot())
            self._last_report = now
        if self._dump.is_set():
            self._dump.clear()
            log.warning("stats %s", json.dumps(self.snapshot()["counters"], sort_keys=True))
            self.notifier.status(self.status_line())

    def _finish(self) -> None:
        self.notifier.stopping("flushing flows")
        try:
            if not self._link_failed:
                if self.table is not None:
                    self._queue(self.table.flush("eof"), time.time())
                self._send_pending()
                self._send_stats(eos=True)
        finally:
            for sock in self.socks:
                self._close_monitor(sock)
                if self._link_failed:
                    sock.linger = 0  # the peer is gone or refused us: nothing queued will leave
                elif self.cfg.lossless and not self._stop.is_set():
                    # lossless replay: what ZeroMQ accepted must reach the classifier, however far behind it is
                    sock.linger = int(self.cfg.lossless_linger_s * 1000)
                else:
                    sock.linger = 2000  # give what is queued a moment to leave
                sock.close()
            if self._own_ctx:
                self.ctx.term()  # waits (up to the linger) until queued messages have left the process
            if self.metrics is not None:
                self.metrics.close()

    # ------------------------------------------------------------- sending
    def _queue(self, items: list[Any], wall: float) -> None:
        """Queue what the table emitted (``UpdateBlock``s; ``FlowUpdate`` objects are packed into one)."""
        if not items:
            return
        blocks = [it for it in items if isinstance(it, UpdateBlock) and len(it)]
        objs = [it for it in items if isinstance(it, FlowUpdate)]
        if objs:
            blocks.append(UpdateBlock.from_updates(objs))
        if not blocks:
            return
        if not self._pending:
            self._pending_since = time.monotonic()
        for blk in blocks:
            blk.meta["wall"] = wall
            self._pending.append(blk)
            self._n_pending += len(blk)
            self.counters["updates"] += len(blk)
            self.counters["flows_ended"] += int(np.count_nonzero(blk.meta["final"]))
        if self._n_pending >= self.cfg.max_batch:
            self._send_pending()

    def _maybe_send(self, now: float) -> None:
        if self._pending and (now - self._pending_since) * 1e3 >= self.cfg.flush_ms:
            self._send_pending()
        elif self._pending and self.cfg.iface is None:
            # file replay: each read batch is a natural message boundary
            self._send_pending()

    def _send_pending(self) -> None:
        """Everything queued, in order, as messages of at most ``max_batch`` updates."""
        if not self._pending:
            return
        block = UpdateBlock.concat(self._pending)
        self._pending, self._n_pending = [], 0
        mb = self.cfg.max_batch
        for a in range(0, len(block), mb):
            self._send(block[a:a + mb])

    def _send(self, block: UpdateBlock) -> None:
        n = len(self.socks)
        if n > 1:
            # one socket per classifier shard: every flow always to the same one, order kept within a shard
            shard = block.meta["flow_id"] % np.uint64(n)
            for i, sock in enumerate(self.socks):
                sel = np.flatnonzero(shard == i)
                if len(sel):
                    self._send_one(block.take(sel), sock)
            return
        self._send_one(block, self.sock)

    def _send_one(self, block: UpdateBlock, sock: zmq.Socket) -> None:
        self._msg_seq += 1
        frames = wire.encode_updates(block, sensor=self.cfg.sensor, msg_seq=self._msg_seq, sent_wall=time.time())
        npk = block.n_packets
        if self._deliver(frames, sock):
            self.counters["messages_sent"] += 1
            self.counters["updates_sent"] += len(block)
            self.counters["packets_sent"] += npk
        else:
            self.counters["messages_dropped"] += 1
            self.counters["updates_dropped"] += len(block)
            self.counters["packets_dropped"] += npk

    def _deliver(self, frames: list[Any], sock: zmq.Socket) -> bool:
        since = None
        while True:
            try:
                sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                if not self.cfg.lossless or self._stop.is_set() or self._link_failed:
                    return False
                # lossless file replay: wait for room, but keep the watchdog fed and obey SIGTERM;
                # a classifier that takes nothing for --connect-timeout seconds ends the run
                now = time.monotonic()
                since = now if since is None else since
                if now - since > self.cfg.connect_timeout:
                    self._link_failed = True
                    self.counters["messages_dropped"] += 1
                    raise LinkError(f"the classifier on {self._endpoint.get(sock, '?')} took no message for "
                                    f"{self.cfg.connect_timeout:g} s (--connect-timeout; gone or stuck?); "
                                    f"stopped after {self.counters['updates_sent']} updates sent")
                sock.poll(100, zmq.POLLOUT)
                self._housekeeping(time.monotonic())

    def _send_stats(self, eos: bool = False) -> None:
        """Counters to the classifier; the end-of-stream one waits for room in lossless mode."""
        self._msg_seq += 1
        frames = wire.encode_stats(self.snapshot()["counters"], sensor=self.cfg.sensor, msg_seq=self._msg_seq,
                                   sent_wall=time.time(), eos=eos)
        for sock in self.socks:  # every shard hears the counters and the end of the stream
            if eos and self.cfg.lossless:
                self._deliver(frames, sock)
                continue
            try:
                sock.send_multipart(frames, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass

    # ------------------------------------------------------------- control and counters
    def stop(self) -> None:
        self._stop.set()

    def request_stats(self) -> None:
        self._dump.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGUSR1, lambda *_: self.request_stats())

    def snapshot(self) -> dict[str, Any]:
        c = dict(self.counters)
        c["pending_updates"] = self._n_pending
        if self.cfg.iface and self.source is not None and hasattr(self.source, "kernel_stats"):
            c.update(self.source.kernel_stats())
        table, gauges = self.table, {"flows_active": 0, "table_bytes": 0}
        if table is not None:
            c["flows_created"] = int(table.stats.get("flows_created", 0))
            c["flows_evicted"] = int(table.stats.get("evicted", 0))
            gauges = {"flows_active": len(table), "table_bytes": table.memory_bytes()}
        if self._decoder is not None:
            c["decode"] = {k: v for k, v in self._decoder.stats.items() if isinstance(v, (int, float))}
        return {"counters": c, "gauges": gauges, "live_path": self.live_path}

    def prometheus_snapshot(self) -> dict[str, Any]:
        snap = self.snapshot()
        counters: dict[str, Any] = {}
        for k, v in snap["counters"].items():
            if k == "decode":
                counters["capture_decode_total"] = {**v, "_label": "outcome"}
            elif k != "pending_updates":
                counters[f"capture_{k}_total"] = v
        gauges = {f"capture_{k}": v for k, v in snap["gauges"].items()}
        gauges["capture_pending_updates"] = snap["counters"]["pending_updates"]
        return {"counters": counters, "gauges": gauges}

    def status_line(self) -> str:
        c = self.counters
        return (f"{c['packets']} packets, {c['updates_sent']} updates sent, "
                f"{c['updates_dropped']} dropped ({c['packets_dropped']} packets)")


_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def _endpoint_hint(ep: str, how: str) -> str:
    """What to do about an endpoint ZeroMQ refused (bad syntax, address in use, missing folder)."""
    if "://" not in ep:
        return "write it as tcp://HOST:PORT, ipc:///PATH or inproc://NAME"
    if how == "bind" and ep.startswith("tcp://"):
        return "is another process bound there? choose another port or stop it"
    if ep.startswith("ipc://"):
        return "does the socket's folder exist and is it writable?"
    return "check the address"


def _slice(fb: Any, a: int, b: int) -> Any:
    """Frames a..b of a FrameBatch (same data buffer, no copy)."""
    return type(fb)(data=fb.data, offset=fb.offset[a:b], caplen=fb.caplen[a:b], wire_len=fb.wire_len[a:b],
                    ts=fb.ts[a:b], linktype=fb.linktype[a:b])


def run_agent(cfg: AgentConfig, *, quiet: bool = False) -> dict[str, Any]:
    """CLI entry: run with signal handlers; counters to stderr at exit."""
    if cfg.workers > 1:
        return run_workers(cfg, quiet=quiet)
    agent = CaptureAgent(cfg)
    agent.install_signals()
    snap = agent.run()
    c = snap["counters"]
    if not quiet:
        out: dict[str, Any] = {"capture": c}
        if snap.get("live_path"):
            out["live_path"] = snap["live_path"]
        if agent.damaged:
            out["damaged"] = agent.damaged
        print(json.dumps(out, sort_keys=True), file=sys.stderr)
    if cfg.pcap:
        check_pcap_run(c, agent.damaged, len(cfg.pcap), stopped=agent._stop.is_set())
    return snap


def check_pcap_run(c: dict[str, Any], damaged: dict[str, str], n_inputs: int, stopped: bool = False) -> None:
    """End of a --pcap run: no packet read is an error (exit 2); dropped updates a WARNING, all dropped exit 1."""
    from ..errors import TrafficSNNError

    names = f"; damaged: {', '.join(damaged)}" if damaged else ""
    if not c.get("packets") and not stopped:
        raise TrafficSNNError(f"no packet could be read from any of the {n_inputs} input(s){names} "
                              "(give pcap or pcapng files that hold IP packets)")
    if damaged:
        log.warning("%d of %d input(s) damaged, packets before the damage were used%s", len(damaged), n_inputs, names)
    if c.get("updates_dropped"):
        log.warning("%d of %d updates (%d packets) were dropped: the classifier did not keep up or went away "
                    "(--lossless waits for it instead)", c["updates_dropped"], c.get("updates", 0),
                    c.get("packets_dropped", 0))
        if not c.get("updates_sent"):
            raise LinkError(f"every update was dropped ({c['updates_dropped']} updates, {c.get('packets_dropped', 0)} "
                            "packets): no classifier received anything")


# ----------------------------------------------------------------------------- --workers N
def _sum_counters(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in snaps:
        for k, v in c.items():
            if isinstance(v, dict):
                out[k] = _sum_counters([out.get(k, {}), v])
            elif isinstance(v, (int, float)):
                out[k] = out.get(k, 0) + v
    return out


def _worker_main(cfg: AgentConfig, index: int, conn: Any) -> None:
    """One fanout worker: a whole capture agent (own flow table, own ZeroMQ sockets) in a child process."""
    import os

    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):  # the supervisor talks to systemd
        os.environ.pop(var, None)
    code = 0
    try:
        agent = CaptureAgent(cfg)
        agent.install_signals()
        agent.report = lambda kind, snap: conn.send((kind, index, snap))
        snap = agent.run()
        conn.send(("final", index, snap))
    except Exception as err:  # noqa: BLE001 - reported to the supervisor, which prints it
        from ..errors import TrafficSNNError

        conn.send(("error", index, str(err) if isinstance(err, TrafficSNNError) else f"{type(err).__name__}: {err}"))
        code = 2
    finally:
        conn.close()
    os._exit(code)  # no atexit handlers inherited from the supervisor


def _stop_workers(procs, grace: float = 5.0) -> None:
    """SIGTERM every worker, wait up to ``grace`` seconds, then kill what is left."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)


def _check_port_free(addr: str, port: int) -> None:
    """A ConfigError before any worker starts when the metrics port cannot be bound."""
    import socket

    from ..errors import ConfigError

    try:
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as sk:
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sk.bind((addr, port))
    except OSError as err:
        raise ConfigError(f"cannot serve metrics on {addr}:{port}: {err.strerror or err} (choose another "
                          "--metrics-port, stop the process using it, or fix --metrics-addr)") from None


def run_workers(cfg: AgentConfig, *, quiet: bool = False) -> dict[str, Any]:
    """``--workers N``: N capture processes in one PACKET_FANOUT hash group on ``cfg.iface``.

    The kernel hashes each packet's flow symmetrically, so both directions of a flow reach
    the same worker, whose flow table owns that flow; a worker sends under the sensor id
    ``SENSOR/wI`` (the classifier keeps flow state per sensor and flow id, and each table
    numbers its own flows), so classifier shards still get each flow from one place. This
    process supervises: it reports READY and feeds the watchdog for systemd, passes SIGTERM
    on (each worker then ends its flows and sends their final updates), serves the metrics
    (summed and per worker) and prints the summed counters at exit."""
    import dataclasses
    import multiprocessing as mp
    import os
    from multiprocessing.connection import wait as mp_wait

    from ..errors import TrafficSNNError

    cfg.validate()
    if cfg.metrics_port:
        _check_port_free(cfg.metrics_addr, cfg.metrics_port)
    group = cfg.fanout_group if cfg.fanout_group is not None else (os.getpid() & 0xFFFF)
    ctx = mp.get_context("fork")  # no thread and no ZeroMQ context exist yet in this process
    procs, conns = [], []
    for i in range(cfg.workers):
        wcfg = dataclasses.replace(cfg, workers=1, fanout_group=group, sensor=f"{cfg.sensor}/w{i}",
                                   metrics_port=None)
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker_main, args=(wcfg, i, w), name=f"trafficsnn-capture-w{i}", daemon=False)
        p.start()
        w.close()
        procs.append(p)
        conns.append(r)
    stop, dump = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: dump.set())
    notifier = Notifier()
    snaps: dict[int, dict[str, Any]] = {}
    final: dict[int, dict[str, Any]] = {}
    ready: set[int] = set()
    errors: list[str] = []
    path = ""

    def merged() -> dict[str, Any]:
        per = [snaps[i] for i in sorted(snaps)]
        return {"counters": _sum_counters([s["counters"] for s in per]),
                "gauges": _sum_counters([s["gauges"] for s in per]),
                "workers": {i: snaps[i]["counters"] for i in sorted(snaps)}, "live_path": path}

    def prometheus() -> dict[str, Any]:
        m = merged()
        counters: dict[str, Any] = {}
        for k, v in m["counters"].items():
            if k == "decode":
                counters["capture_decode_total"] = {**v, "_label": "outcome"}
            elif k != "pending_updates":
                counters[f"capture_{k}_total"] = v
                counters[f"capture_worker_{k}_total"] = {
                    **{str(i): c.get(k, 0) for i, c in m["workers"].items()}, "_label": "worker"}
        gauges = {f"capture_{k}": v for k, v in m["gauges"].items()}
        gauges["capture_workers"] = len(procs)
        return {"counters": counters, "gauges": gauges}

    metrics = None
    if cfg.metrics_port:
        from .metrics import Metrics

        metrics = Metrics(prometheus)
        try:
            metrics.serve(cfg.metrics_port, cfg.metrics_addr)
        except BaseException:
            _stop_workers(procs)          # never leave capture processes behind a failed start
            raise
    told = False
    try:
        live = list(conns)
        while live:
            for c in mp_wait(live, timeout=0.2):
                try:
                    kind, i, payload = c.recv()
                except (EOFError, OSError):
                    live.remove(c)
                    continue
                if kind == "error":
                    errors.append(f"worker {i}: {payload}")
                    stop.set()
                    continue
                snaps[i] = payload
                path = payload.get("live_path") or path
                if kind == "final":
                    final[i] = payload
                elif kind == "ready" and i not in ready:
                    ready.add(i)
                    if len(ready) == len(procs):
                        notifier.ready(f"capturing from {cfg.iface} with {len(procs)} fanout workers "
                                       f"(group {group})")
            if any(p.exitcode not in (None, 0) for p in procs) and not errors and not told:
                errors.append("a capture worker died: "
                              + ", ".join(f"w{i} exit {p.exitcode}" for i, p in enumerate(procs) if p.exitcode))
                stop.set()
            if stop.is_set() and not told:
                notifier.stopping("workers flushing flows")
                for p in procs:
                    if p.is_alive():
                        os.kill(p.pid, signal.SIGTERM)
                told = True
            notifier.watchdog(time.monotonic())
            if dump.is_set():
                dump.clear()
                m = merged()
                log.warning("stats %s", json.dumps({"total": m["counters"], "workers": m["workers"]},
                                                   sort_keys=True))
                notifier.status(f"{m['counters'].get('packets', 0)} packets, "
                                f"{m['counters'].get('updates_sent', 0)} updates sent ({len(procs)} workers)")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
        if metrics is not None:
            metrics.close()
    snap = merged() if snaps else {"counters": {}, "gauges": {}, "workers": {}, "live_path": path}
    if not quiet:
        print(json.dumps({"capture": snap["counters"], "workers": {str(k): v for k, v in snap["workers"].items()},
                          "live_path": path}, sort_keys=True), file=sys.stderr)
    if errors:
        raise TrafficSNNError("; ".join(errors))
    return snap
