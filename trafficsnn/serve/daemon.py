"""The classifier daemon: ZeroMQ PULL -> micro-batches -> stateful SNN -> verdict sinks.

One thread does everything in order (receive, batch, infer, emit), so a model
reload between two batches is atomic and a shutdown can drain exactly what was
queued. Signals only set flags: SIGHUP reloads the model (a bad file is refused
and the old model keeps serving), SIGTERM/SIGINT drain the queued updates,
flush the verdicts and exit 0, SIGUSR1 logs the counters.
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from .. import wire
from ..errors import ConfigError, ModelError, TrafficSNNError
from .batcher import Batcher
from .engine import ModelHandle, StreamingClassifier
from .sdnotify import Notifier
from .sinks import JsonLinesSink, PubSink, Sink

log = logging.getLogger(__name__)


@dataclass
class ClassifyConfig:
    bind: tuple[str, ...] = ()
    connect: tuple[str, ...] = ()
    model: str | None = None
    device: str = "auto"
    jsonl: str | None = None            # path, "-" for stdout, None for none
    pub: tuple[str, ...] = ()
    parquet: str | None = None          # folder of rotated Parquet parts, None for none
    parquet_rotate_s: float = 300.0
    parquet_max_rows: int = 100_000
    emit: str = "first"
    min_confidence: float = 0.8
    batch: int = 4096
    batch_ms: float = 5.0
    max_flows: int = 250_000
    rcvhwm: int = 100                   # messages queued per connected sensor (ZMQ_RCVHWM)
    max_message_mb: float = 2.0         # ZMQ_MAXMSGSIZE per frame; a whole message above it is dropped too
    max_update_packets: int = 65_536    # packets in one flow update; a message holding a larger one is dropped
    batch_packets: int = 262_144        # packets per micro-batch; a message above it is dropped
    drain_timeout: float = 10.0         # SIGTERM: seconds to read what is queued (below TimeoutStopSec=30s)
    max_sensors: int = 256              # sensors whose counters are kept (the longest silent evicted beyond)
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    curve_secret: str | None = None
    curve_clients: str | None = None
    exit_after_eos: int = 0             # exit once this many sensors have ended their stream (replay)
    verdicts_at_exit: bool = True       # a verdict for open flows that have none yet, at shutdown
    threads: int | None = None

    def validate(self) -> None:
        if not self.bind and not self.connect:
            raise ConfigError("give where updates arrive: --bind ENDPOINT (usual) or --connect ENDPOINT")
        if self.jsonl and self.jsonl != "-":
            from pathlib import Path

            parent = Path(self.jsonl).expanduser().parent
            if not parent.is_dir():
                raise ConfigError(f"--jsonl {self.jsonl}: folder {parent} does not exist (create it first)")
        if self.metrics_port is not None and not 1 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port must be within 1..65535, got {self.metrics_port}")
        if self.batch < 1 or self.batch_ms < 0:
            raise ConfigError("--batch must be >= 1 update and --batch-ms >= 0")
        if self.rcvhwm < 1:
            raise ConfigError("--rcvhwm must be >= 1 message (0 would queue without bound)")
        if not 0 < self.max_message_mb <= 4096:
            raise ConfigError(f"--max-message-mb must be within (0, 4096], got {self.max_message_mb}")
        if not 0 <= self.drain_timeout <= 3600:
            raise ConfigError(f"--drain-timeout must be within [0, 3600] s, got {self.drain_timeout}")
        if self.max_sensors < 1:
            raise ConfigError(f"--max-sensors must be >= 1, got {self.max_sensors}")
        if self.max_update_packets < 1 or self.batch_packets < 1:
            raise ConfigError("--max-update-packets and --batch-packets must be >= 1")
        if bool(self.curve_secret) != bool(self.curve_clients):
            raise ConfigError("CURVE needs both --curve-secret (server .key_secret) and --curve-clients DIR")


def _frame_bytes(frame: Any) -> memoryview | bytes:
    b = getattr(frame, "buffer", frame)
    return b if isinstance(b, (bytes, memoryview)) else memoryview(b)


def load_model(path: str | None, device: Any) -> ModelHandle:
    """``ModelHandle.load`` where every failure is one ``ModelError`` naming the model (never a traceback)."""
    try:
        return ModelHandle.load(path, device)
    except ModelError:
        raise
    except TrafficSNNError as err:
        raise ModelError(f"model {path or 'default'}: {err}") from None
    except RecursionError:
        raise ModelError(f"model {path or 'default'}: model.json is nested too deeply") from None
    except Exception as err:  # noqa: BLE001 - the reload boundary: anything else is a bad file too
        raise ModelError(f"model {path or 'default'}: cannot load it ({type(err).__name__}: {err}); "
                         "fix or replace the model directory") from None


class ClassifierDaemon:
    def __init__(self, cfg: ClassifyConfig, ctx: zmq.Context | None = None, sinks: list[Sink] | None = None):
        cfg.validate()
        self.cfg = cfg
        import torch

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        from ..snn.device import resolve_device

        self.device = resolve_device(cfg.device)
        self.engine = StreamingClassifier(load_model(cfg.model, self.device), max_flows=cfg.max_flows, emit=cfg.emit,
                                          min_confidence=cfg.min_confidence, device=self.device)
        self.ctx = ctx or zmq.Context.instance()
        self.wire_stats = wire.WireStats()
        self.batcher = Batcher(cfg.batch, cfg.batch_ms, max_packets=cfg.batch_packets)
        self.max_message_bytes = int(cfg.max_message_mb * (1 << 20))
        self.notifier = Notifier()
        # the latest counters of each sensor, oldest first: at most --max-sensors kept (evictions counted)
        self.sensors: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.eos: set[str] = set()
        self.counters: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()     # refused by the daemon's own caps (by cause)
        self._stop = threading.Event()
        self._drained = 0
        self._reload = threading.Event()
        self._dump = threading.Event()
        self.auth: Any = None
        self.monitor: zmq.Socket | None = None   # failed handshakes on the PULL socket (tcp/ipc)
        self.handshakes_rejected: Counter[str] = Counter()
        self._handshake_logged = 0.0
        self.sinks: list[Sink] = list(sinks or [])
        self.pub_socks: list[zmq.Socket] = []
        self.metrics: Any = None
        self.sock: Any = None
        try:
            self._open_outputs()
            self.sock = self._make_socket()
        except BaseException:
            self._close()   # a bad option leaves no thread, socket or server behind
            raise

    def _open_outputs(self) -> None:
        """Verdict sinks and the metrics endpoint; OS and ZeroMQ errors become one ConfigError naming the option."""
        cfg = self.cfg
        if cfg.jsonl:
            try:
                self.sinks.append(JsonLinesSink(cfg.jsonl))
            except OSError as err:
                raise ConfigError(f"cannot open --jsonl {cfg.jsonl}: {err.strerror or err} "
                                  "(create its folder or choose a writable path)") from None
        if cfg.parquet:
            from .parquet_sink import ParquetDirSink

            self.sinks.append(ParquetDirSink(cfg.parquet, rotate_s=cfg.parquet_rotate_s,
                                             max_rows=cfg.parquet_max_rows))
        for ep in cfg.pub:
            ps = self.ctx.socket(zmq.PUB)
            ps.sndhwm = 10_000
            ps.linger = 1000
            self.pub_socks.append(ps)
            try:
                ps.bind(ep)
            except zmq.ZMQError as err:
                from .agent import _endpoint_hint

                raise ConfigError(f"cannot bind --pub {ep}: {err.strerror} ({_endpoint_hint(ep, 'bind')})") from None
            self.sinks.append(PubSink(ps))
        if cfg.metrics_port:
            from .metrics import Metrics

            self.metrics = Metrics(self.prometheus_snapshot)
            self.metrics.serve(cfg.metrics_port, cfg.metrics_addr)

    drain_quiet_ms = 100

    @property
    def handle(self) -> ModelHandle:
        """The model being served (the engine's: a reload swaps it there)."""
        return self.engine.handle

    def _make_socket(self) -> zmq.Socket:
        cfg = self.cfg
        s = self.ctx.socket(zmq.PULL)
        s.rcvhwm = cfg.rcvhwm
        s.linger = 0
        # a peer sending a larger frame is disconnected by ZeroMQ before the frame is buffered
        s.setsockopt(zmq.MAXMSGSIZE, int(cfg.max_message_mb * (1 << 20)))
        if cfg.curve_secret:
            from .security import secure_server

            self.auth = secure_server(self.ctx, s, cfg.curve_secret, cfg.curve_clients or "")
        if any(not ep.startswith("inproc://") for ep in (*cfg.bind, *cfg.connect)):
            self.monitor = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        try:
            ep = ""
            for ep in cfg.bind:
                s.bind(ep)
            for ep in cfg.connect:
                s.connect(ep)
        except zmq.ZMQError as err:
            self._close_monitor(s)
            s.close(0)
            if self.auth is not None:
                from .security import stop_auth

                stop_auth(self.auth)
                self.auth = None
            from .agent import _endpoint_hint

            how = "bind" if ep in cfg.bind else "connect"
            raise ConfigError(f"cannot {how} ZeroMQ endpoint {ep}: {err.strerror} ({_endpoint_hint(ep, how)})") from None
        return s

    def _close_monitor(self, sock: zmq.Socket) -> None:
        if self.monitor is not None:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(0)
            self.monitor = None

    _HANDSHAKE_REASONS = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "key_refused", zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
                          zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "other"}

    def _poll_handshakes(self) -> None:
        """Count failed handshakes (refused CURVE keys, plaintext or wrong-key peers); one log line a minute."""
        if self.monitor is None:
            return
        from zmq.utils.monitor import parse_monitor_message

        new: Counter[str] = Counter()
        for _ in range(1000):   # bounded per loop turn
            try:
                ev = parse_monitor_message(self.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            new[self._HANDSHAKE_REASONS.get(ev["event"], "other")] += 1
        if not new:
            return
        self.handshakes_rejected.update(new)
        now = time.monotonic()
        if now - self._handshake_logged >= 60.0:
            self._handshake_logged = now
            log.warning("rejected %d handshake(s) (%s; %d in all): a sensor with a key not in --curve-clients, "
                        "a plaintext sensor, or one with the wrong --curve-server key", sum(new.values()),
                        ", ".join(f"{k} {v}" for k, v in sorted(new.items())), sum(self.handshakes_rejected.values()))

    # ------------------------------------------------------------- control
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        signal.signal(signal.SIGUSR1, lambda *_: self._dump.set())

    def stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def reload(self) -> bool:
        """Load the model file again; on any error keep serving the old one (counted, one log line)."""
        try:
            new = load_model(self.cfg.model, self.device)
        except ModelError as err:
            self.counters["reload_failed"] += 1
            log.error("model reload refused, still serving %s (%s): %s", self.handle.model_id,
                      self.handle.sha256[:12], err)
            self.notifier.status(f"reload refused: {err}")
            return False
        self.counters["reloads"] += 1
        old = self.handle
        if new.sha256 != old.sha256 or new.signature() != old.signature():
            reset = self.engine.swap_model(new)
            log.warning("model reloaded: %s (%s), %d flow states reset", new.model_id, new.sha256[:12], reset)
        elif new.loaded.spec != old.loaded.spec:
            # same weights and shapes, new model.json (temperature, class names, name): the flow
            # states stay valid, the new settings apply from the next verdict on
            self.engine.adopt(new)
            log.warning("model settings reloaded: %s (%s), temperature %g, flow states kept", new.model_id,
                        new.sha256[:12], new.temperature)
        else:
            log.warning("model reload: %s (%s) unchanged, flow states kept", new.model_id, new.sha256[:12])
        self.notifier.status(f"serving {self.handle.model_id}")
        return True

    # ------------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        import gc

        gc.collect()
        gc.freeze()  # model, torch and imports never need scanning again: shorter GC pauses
        self.notifier.ready(f"serving {self.handle.model_id} ({self.handle.sha256[:12]}) on {self.device}")
        log.info("ready: serving %s (%s) on %s, receiving on %s", self.handle.model_id, self.handle.sha256[:12],
                 self.device, ", ".join((*self.cfg.bind, *self.cfg.connect)))
        last_status = time.monotonic()
        try:
            while True:
                if self._stop.is_set():
                    self._drain()
                    break
                now = time.monotonic()
                wait_ms = int(self.batcher.wait_s(now) * 1000)
                if self.sock.poll(wait_ms if wait_ms > 0 else 0):
                    self._receive()
                if self.batcher.due():
                    self._process()
                if self._reload.is_set():
                    self._reload.clear()
                    if self.batcher.items:
                        self._process()
                    try:
                        self.reload()
                    except Exception as err:  # noqa: BLE001 - a reload never ends the daemon
                        self.counters["reload_failed"] += 1
                        log.error("model reload failed, still serving %s: %s: %s", self.handle.model_id,
                                  type(err).__name__, err)
                if self.cfg.exit_after_eos and len(self.eos) >= self.cfg.exit_after_eos:
                    self._drain()
                    break
                self._poll_handshakes()
                now = time.monotonic()
                self.notifier.watchdog(now)
                if now - last_status >= 5.0:
                    self.notifier.status(self.status_line())
                    last_status = now
                if self._dump.is_set():
                    self._dump.clear()
                    log.warning("stats %s", json.dumps(self.snapshot(), sort_keys=True, default=str))
        finally:
            self._close()
        return self.snapshot()

    def _receive(self, limit: int | None = None) -> int:
        """Read what is queued (up to a full batch); returns messages read."""
        n = 0
        limit = limit or self.cfg.batch
        while self.batcher.updates < limit and self.batcher.packets < self.cfg.batch_packets:
            try:
                frames = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            n += 1
            if self._stop.is_set():
                self._drained += 1
            if sum(len(_frame_bytes(f)) for f in frames) > self.max_message_bytes:
                self.drops["oversize_message"] += 1
                continue
            msg = self.wire_stats.decode(frames)
            if msg is None:
                continue
            if isinstance(msg, wire.UpdateBatch):
                if len(msg) and self._admit(msg):
                    if self.batcher.items and self.batcher.packets + msg.n_packets > self.cfg.batch_packets:
                        self._process()  # a micro-batch never exceeds --batch-packets
                    self.batcher.add(msg)
            else:
                self._sensor_stats(msg)
        return n

    def _sensor_stats(self, msg: wire.StatsMessage) -> None:
        """Keep a sensor's latest (validated) counters; beyond --max-sensors the longest silent one goes."""
        self.sensors[msg.sensor] = msg.stats
        self.sensors.move_to_end(msg.sensor)
        while len(self.sensors) > self.cfg.max_sensors:
            gone, _ = self.sensors.popitem(last=False)
            self.eos.discard(gone)
            self.counters["sensors_evicted"] += 1
        if msg.eos:
            self.eos.add(msg.sensor)

    def _admit(self, msg: wire.UpdateBatch) -> bool:
        """Size caps of one valid UPDATES message (what one peer can make the classifier hold); drops counted."""
        cfg = self.cfg
        if msg.n_packets > cfg.batch_packets:
            self.drops["oversize_message"] += 1
            self.counters["oversize_packets_dropped"] += msg.n_packets
            return False
        if msg.n_packets and int(np.diff(msg.offsets).max()) > cfg.max_update_packets:
            self.drops["oversize_update"] += 1
            self.counters["oversize_packets_dropped"] += msg.n_packets
            return False
        return True

    def _process(self) -> None:
        items = self.batcher.take()
        if not items:
            return
        t0 = time.perf_counter()
        verdicts = self.engine.process(items)
        dt = time.perf_counter() - t0
        if verdicts:
            for s in self.sinks:
                s.write(verdicts)
                s.flush()  # consumers tailing the file see each batch's verdicts at once
        if self.metrics is not None:
            self.metrics.batch_size.observe(sum(len(b) for b in items))
            self.metrics.inference.observe(dt)
            for v in verdicts:
                if v.latency_s is not None:
                    self.metrics.latency.observe(v.latency_s)
        self.counters["batches"] += 1

    def _drain(self) -> None:
        """Shutdown: classify what is queued, then the open flows' verdicts, within ``drain_timeout`` seconds.

        Reading stops at the first quiet spell or at the deadline, whichever comes first, so a
        sensor that keeps sending cannot hold the daemon past the unit's TimeoutStopSec.
        """
        t0 = time.monotonic()
        deadline = t0 + self.cfg.drain_timeout
        self.notifier.stopping("draining")
        cut = False
        while True:
            now = time.monotonic()
            if now >= deadline:
                cut = True
                break
            got = self._receive()
            if self.batcher.items:
                self._process()
            self.notifier.watchdog()
            # what the I/O thread is still reading off the connections counts as queued too:
            # stop after a short quiet spell
            quiet_ms = int(min(self.drain_quiet_ms, max(0.0, deadline - time.monotonic()) * 1000))
            if not got and not self.sock.poll(quiet_ms):
                break
        if self.batcher.items:
            self._process()
        if cut:
            self.counters["drain_cut"] += 1
            log.warning("shutdown: still receiving after %.1f s (--drain-timeout); stopped reading, "
                        "%d messages read while draining", self.cfg.drain_timeout, self._drained)
        if self.cfg.verdicts_at_exit:
            vs = self.engine.flush_open("shutdown")
            for s in self.sinks:
                s.write(vs)

    def _close(self) -> None:
        for s in self.sinks:
            try:
                s.close()
            except OSError:
                pass
        if self.sock is not None:
            self._poll_handshakes()
            self._close_monitor(self.sock)
            self.sock.close(0)
        for ps in self.pub_socks:
            ps.close()
        if self.auth is not None:
            from .security import stop_auth

            stop_auth(self.auth)
        if self.metrics is not None:
            self.metrics.close()

    # ------------------------------------------------------------- counters
    def snapshot(self) -> dict[str, Any]:
        e = self.engine.snapshot()
        drops = dict(e["drops"])
        drops.update(self.drops)
        for k, v in self.wire_stats.errors.items():
            drops[f"malformed_{k}"] = v
        for sink in self.sinks:     # verdicts a sink could not deliver (PUB high-water mark, Parquet disk)
            if getattr(sink, "dropped", 0):
                key = f"verdicts_{getattr(sink, 'kind', 'sink')}"
                drops[key] = drops.get(key, 0) + sink.dropped
        counters = {**e["counters"], **self.counters}
        for sink in self.sinks:
            if getattr(sink, "kind", "") == "parquet":
                counters.update(parquet_files=sink.files, parquet_rows=sink.written,
                                parquet_write_errors=sink.errors, parquet_rows_pending=sink.pending)
        return {
            "model": {"id": self.handle.model_id, "sha256": self.handle.sha256},
            "counters": counters,
            "handshakes_rejected": dict(self.handshakes_rejected),
            "drops": drops,
            "verdicts_by_class": e["verdicts_by_class"],
            "active_flows": e["active_flows"],
            "state_bytes": e["state_bytes"],
            "sensors": dict(self.sensors),
        }

    def prometheus_snapshot(self) -> dict[str, Any]:
        s = self.snapshot()
        c = s["counters"]
        sensor_drops = {name: st.get("updates_dropped", 0) for name, st in s["sensors"].items()}
        return {
            "counters": {
                "packets_total": c.get("packets", 0),
                "updates_total": c.get("updates", 0),
                "flows_total": c.get("flows", 0),
                "flows_ended_total": c.get("flows_ended", 0),
                "messages_total": c.get("messages", 0),
                "verdicts_total": {**s["verdicts_by_class"], "_label": "class"},
                "drops_total": {**s["drops"], "state_evicted": c.get("state_evicted", 0), "_label": "cause"},
                "sensor_updates_dropped_total": {**sensor_drops, "_label": "sensor"},
                "model_reloads_total": c.get("reloads", 0),
                "model_reload_failures_total": c.get("reload_failed", 0),
                "handshakes_rejected_total": {"key_refused": 0, "protocol": 0, "other": 0,
                                              **s["handshakes_rejected"], "_label": "reason"},
                "sensors_evicted_total": c.get("sensors_evicted", 0),
                "oversize_packets_dropped_total": c.get("oversize_packets_dropped", 0),
                "state_full_packets_dropped_total": c.get("packets_refused_state_full", 0),
            },
            "gauges": {"flows_active": s["active_flows"], "state_bytes": s["state_bytes"]},
            "info": {"model": {"id": s["model"]["id"], "sha256": s["model"]["sha256"]}},
        }

    def status_line(self) -> str:
        c = self.engine.counters
        return (f"{c['packets']} packets, {c['updates']} updates, {self.engine.active_flows} flows, "
                f"{c['verdicts']} verdicts")


def run_daemon(cfg: ClassifyConfig, *, quiet: bool = False) -> dict[str, Any]:
    d = ClassifierDaemon(cfg)
    d.install_signals()
    snap = d.run()
    if not quiet:
        print(json.dumps({"classify": snap}, sort_keys=True, default=str), file=sys.stderr)
    return snap
