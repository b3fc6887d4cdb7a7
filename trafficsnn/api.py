"""The Python API: flows from captures or a live interface, and verdicts in process.

    import trafficsnn
    flows = trafficsnn.Flows("trace.pcap", idle_timeout=60)        # or a list of files, or "eth0"
    df = flows.to_pandas()                                          # one row per flow
    verdicts = trafficsnn.Classifier().classify(flows)              # the shipped model, no ZeroMQ
    verdicts.to_pandas()                                            # one row per verdict

``Flows`` is the flow engine of ``trafficsnn extract`` (``flows.flows_from_capture``: the same
decoder, ``FlowTable`` and options) and never imports torch, so it runs on a sensor host.
``Classifier`` cuts each flow into the updates the capture agent would send (every ``every``
packets, never across a ``window``-second window) and feeds them through the daemon's own
``StreamingClassifier``: its verdicts are the daemon's JSON lines, as dicts. torch is imported
only when a ``Classifier`` is made.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .errors import TrafficSNNError
from .flows.records import Flow, FlowUpdate

__all__ = ["Flows", "Classifier", "Verdicts", "verdict_row", "verdict_table"]


def _need_pandas():
    try:
        import pandas
    except ImportError:
        raise TrafficSNNError("to_pandas() needs pandas: pip install 'trafficsnn[pandas]'") from None
    return pandas


def _is_interface(name: str) -> bool:
    return bool(name) and "/" not in name and os.path.exists(f"/sys/class/net/{name}")


def _timeout(name: str, v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    if not v >= 0:
        raise ValueError(f"{name} must be >= 0 seconds (0 or None = never), got {v!r}")
    return v or None


class Flows:
    """Bidirectional flows of a capture file, a list of capture files, or a live interface.

    Iterating yields ``Flow`` objects (key, counters, end reason, per-packet ``ts``, ``size``,
    ``direction``, ``wire_len``, ``tcp_flags``) as they end; ``to_pandas()`` gives one row per
    flow. Options (defaults as ``trafficsnn extract``):

    - ``idle_timeout=120``, ``active_timeout=1800`` seconds (0 or None = never),
      ``max_flows=1_000_000`` live flows (LRU eviction beyond; None = no cap),
      ``tcp_close=True`` (end TCP flows at RST / FIN handshake), ``max_packets=None``
      (keep at most this many packets per flow; counters count all),
      ``whole_file=False`` (nDPI-style: no timeouts, no TCP close), ``strict=False``
      (raise on a damaged file instead of keeping its packets before the damage).
    - Live interfaces only: ``bpf_filter``, ``snaplen=256``, ``promisc=False``, and when to stop:
      ``duration`` seconds and/or ``packet_count`` packets (else until ``stop()`` or Ctrl-C).

    Damage found in files is in ``errors`` after iteration. A ``Flows`` can be iterated again
    (files are read again; a live interface captures anew).
    """

    def __init__(self, source: str | os.PathLike | Iterable[str | os.PathLike], *,
                 idle_timeout: float | None = 120.0, active_timeout: float | None = 1800.0,
                 max_flows: int | None = 1_000_000, tcp_close: bool = True, max_packets: int | None = None,
                 whole_file: bool = False, strict: bool = False, bpf_filter: str | None = None,
                 snaplen: int = 256, promisc: bool = False, duration: float | None = None,
                 packet_count: int | None = None):
        self.interface: str | None = None
        if isinstance(source, (str, os.PathLike)):
            s = os.fspath(source)
            if not os.path.exists(s) and _is_interface(s):
                self.interface, self.paths = s, []
            else:
                self.paths = [s]
        else:
            self.paths = [os.fspath(p) for p in source]
            if not self.paths:
                raise ValueError("Flows needs at least one capture file (or an interface name)")
        for p in self.paths:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{p}: no such capture file or network interface")
        if max_flows is not None and int(max_flows) < 0:
            raise ValueError(f"max_flows must be >= 0 (0 or None = no cap), got {max_flows!r}")
        if max_packets is not None and int(max_packets) < 0:
            raise ValueError(f"max_packets must be >= 0 (0 or None = all), got {max_packets!r}")
        if whole_file:
            idle_timeout = active_timeout = None
            tcp_close = False
        self.table_options = dict(idle_timeout=_timeout("idle_timeout", idle_timeout),
                                  active_timeout=_timeout("active_timeout", active_timeout),
                                  max_flows=int(max_flows) or None if max_flows is not None else None,
                                  tcp_close=bool(tcp_close),
                                  max_packets=int(max_packets) or None if max_packets is not None else None)
        self.strict = bool(strict)
        if self.interface is None and any(v is not None for v in (bpf_filter, duration, packet_count)):
            raise ValueError("bpf_filter, duration and packet_count are for a live interface, not files")
        if duration is not None and not float(duration) > 0:
            raise ValueError(f"duration must be > 0 seconds, got {duration!r}")
        if packet_count is not None and int(packet_count) < 1:
            raise ValueError(f"packet_count must be >= 1, got {packet_count!r}")
        self.live_options = dict(bpf_filter=bpf_filter, snaplen=int(snaplen), promisc=bool(promisc))
        self.duration, self.packet_count = duration, packet_count
        self.errors: list = []
        self._stop = False

    def __repr__(self) -> str:
        src = f"interface {self.interface!r}" if self.interface else repr(self.paths)
        return f"Flows({src}, {self.table_options})"

    def stop(self) -> None:
        """End a live capture: its open flows are flushed and iteration ends."""
        self._stop = True

    def __iter__(self) -> Iterator[Flow]:
        self._stop = False
        if self.interface is not None:
            yield from self._live()
            return
        from .flows import flows_from_capture

        self.errors = []
        yield from flows_from_capture(self.paths, strict=self.strict, errors=self.errors, **self.table_options)

    def _live(self) -> Iterator[Flow]:
        import time

        from .flows import FlowTable, WholeFlows
        from .packets import Decoder
        from .packets.live import open_live

        src, _ = open_live(self.interface, **self.live_options)
        table = FlowTable(policy=WholeFlows(), **self.table_options)
        dec = Decoder()
        t_end = None if self.duration is None else time.monotonic() + float(self.duration)
        seen = 0
        try:
            while not self._stop:
                fb = src.read()
                if len(fb):
                    pb = dec.decode(fb)
                    seen += len(pb)
                    yield from table.add(pb)
                yield from table.advance(time.time())
                if (t_end is not None and time.monotonic() >= t_end) or \
                        (self.packet_count is not None and seen >= self.packet_count):
                    break
        finally:
            src.close()
        yield from table.flush()

    def columns(self) -> dict[str, np.ndarray]:
        """All flows as the columns of an extract .npz (key words, counters, CSR packet arrays)."""
        from .flows.store import FlowColumns

        cols = FlowColumns()
        cols.add(self)
        return cols.arrays()

    def to_pandas(self, *, packets: bool = True, zeek_names: bool = False):
        """One row per flow in the table vocabulary of ``extract -o flows.csv`` (``flows.store.TABLE_FIELDS``:
        ``community_id``, ``client_ip``, ``proto_name``...) plus, with ``packets``, the per-packet
        arrays ``t`` (seconds since the flow's first packet), ``size``, ``dir``, ``tcp_flags`` as
        list columns (a numpy array per row). ``zeek_names`` uses Zeek conn.log names (``ts``,
        ``id.orig_h``, ``orig_pkts``...). Needs pandas."""
        pd = _need_pandas()
        from .flows.store import table_columns

        return pd.DataFrame(table_columns(self.columns(), packets=packets, zeek_names=zeek_names))


# ------------------------------------------------------------------------------------------ verdicts
def verdict_row(v: dict[str, Any], *, probabilities: bool = True) -> dict[str, Any]:
    """A daemon verdict (its JSON line as a dict) flattened into the flow table vocabulary:
    ``flow.client`` -> ``client_ip`` ..., ``proto_name`` beside ``proto``, ``model.id`` ->
    ``model_id``, and one ``p_<class>`` column per class (``probabilities=False`` leaves them out)."""
    from .flows.store import proto_name

    f = v.get("flow") or {}
    m = v.get("model") or {}
    proto = f.get("proto")
    row = {"sensor": v.get("sensor"), "flow_id": v.get("flow_id"), "community_id": v.get("community_id"),
           "vlan": f.get("vlan"), "proto": proto, "proto_name": None if proto is None else proto_name(proto),
           "client_ip": f.get("client"), "client_port": f.get("client_port"),
           "server_ip": f.get("server"), "server_port": f.get("server_port"),
           "class": v.get("class"), "best_class": v.get("best_class", v.get("class")),
           "confidence": v.get("confidence"), "packets": v.get("packets"), "first_ts": v.get("first_ts"),
           "verdict_ts": v.get("verdict_ts"), "final": v.get("final"), "reason": v.get("reason"),
           "steps": v.get("steps"), "partial": v.get("partial"), "latency_ms": v.get("latency_ms"),
           "model_id": m.get("id"), "model_sha256": m.get("sha256")}
    if probabilities:
        for c, p in (v.get("probabilities") or {}).items():
            row[f"p_{c}"] = p
    return row


def verdict_table(verdicts: Iterable[dict[str, Any]], *, zeek_names: bool = False,
                  probabilities: bool = True) -> dict[str, list]:
    """Verdict dicts -> columns (every row gets every column; missing values are None)."""
    from .flows.store import ZEEK_NAMES

    rows = [verdict_row(v, probabilities=probabilities) for v in verdicts]
    names: dict[str, None] = dict.fromkeys(verdict_row({}))
    for r in rows:
        names.update(dict.fromkeys(r))
    cols = {k: [r.get(k) for r in rows] for k in names}
    if zeek_names:
        cols = {ZEEK_NAMES.get(k, k) if k != "first_ts" else "ts": v for k, v in cols.items()}
    return cols


class Verdicts(list):
    """Verdicts (dicts with the fields of the daemon's JSON lines), with ``to_pandas()``."""

    def to_pandas(self, *, zeek_names: bool = False, probabilities: bool = True):
        """One row per verdict (``verdict_row``'s flat columns). Needs pandas."""
        pd = _need_pandas()
        return pd.DataFrame(verdict_table(self, zeek_names=zeek_names, probabilities=probabilities))


def flow_updates(f: Flow, every: int = 8, window: float | None = 1.0) -> list[FlowUpdate]:
    """Cut a whole flow into the updates the capture agent's ``EveryK(every, window)`` policy sends:
    a piece every ``every`` packets, never spanning two ``window``-second windows counted from the
    first packet; the last piece is final (it may be empty) and carries the flow's end reason."""
    n = len(f.ts)
    start = float(f.ts[0]) if n else 0.0
    win = np.floor((f.ts - start) / window).astype(np.int64) if (window and n) else np.zeros(n, np.int64)
    bounds, a = [0], 0
    while a < n:
        b = min(a + every, n)
        b = a + int(np.searchsorted(win[a:b], win[a], side="right"))   # not past the window of packet a
        if b - a == every or b < n:      # a full piece, or a window that later packets closed
            bounds.append(b)
            a = b
        else:                            # the rest goes with the final update
            break
    bounds.append(n)                     # the final update: the packets after the last piece (maybe none)
    out = []
    for i in range(len(bounds) - 1):
        lo, hi = bounds[i], bounds[i + 1]
        last = i == len(bounds) - 2
        out.append(FlowUpdate(flow_id=f.flow_id, key=f.key, start_ts=start, seq=lo, ts=f.ts[lo:hi],
                              size=f.size[lo:hi], direction=f.direction[lo:hi], final=last,
                              reason=f.end_reason if last else "",
                              wire_bytes=int(f.wire_len[lo:hi].sum()), tcp_flags=f.tcp_flags[lo:hi]))
    return out


class Classifier:
    """A trained model, run in this process on flows (no capture agent, no ZeroMQ).

    ``model``: a model directory (None = ``$TRAFFICSNN_MODEL`` or the shipped model);
    ``device``: ``auto`` (a GPU when there is one), ``cpu`` or ``cuda``. ``emit``,
    ``min_confidence`` and ``max_flows`` are the daemon's options (``classify --emit``...);
    the default ``emit="final"`` gives one verdict per flow, as ``trafficsnn replay`` does.
    ``every``/``window`` are the capture agent's (``capture --every/--window``): they decide
    when ``emit="first"`` or ``"update"`` can speak, never the final verdict.
    """

    def __init__(self, model: str | os.PathLike | None = None, device: str = "auto", *, emit: str = "final",
                 min_confidence: float = 0.8, max_flows: int = 250_000, every: int = 8,
                 window: float | None = 1.0, sensor: str = "", chunk_flows: int = 2048):
        from .serve.engine import EMIT_MODES, ModelHandle, StreamingClassifier
        from .snn.device import resolve_device

        if emit not in EMIT_MODES:
            raise ValueError(f"emit must be one of {EMIT_MODES}, got {emit!r}")
        if int(every) < 1:
            raise ValueError(f"every must be >= 1 packet, got {every!r}")
        if window is not None and not window > 0:
            raise ValueError(f"window must be > 0 seconds or None, got {window!r}")
        if int(chunk_flows) < 1:
            raise ValueError(f"chunk_flows must be >= 1, got {chunk_flows!r}")
        self.device = resolve_device(device)
        self.handle = ModelHandle.load(model, self.device)
        self._engine_args = dict(max_flows=max_flows, emit=emit, min_confidence=min_confidence, device=self.device)
        StreamingClassifier(self.handle, **self._engine_args)   # validate the options now
        self.every, self.window, self.sensor = int(every), window, str(sensor)
        self.chunk_flows = int(chunk_flows)

    @property
    def classes(self) -> list[str]:
        return list(self.handle.classes)

    @property
    def model_id(self) -> str:
        return self.handle.model_id

    def __repr__(self) -> str:
        return f"Classifier({self.model_id!r}, classes={self.classes}, device={str(self.device)!r})"

    def classify(self, flows: Flows | Iterable[Flow] | str | os.PathLike) -> Verdicts:
        """Verdicts for ``flows`` (a ``Flows``, any iterable of ``Flow``, or a capture path), as the
        daemon writes them (``Verdict.to_dict()``), in the order the engine emits them."""
        from . import wire
        from .serve.engine import StreamingClassifier

        if isinstance(flows, (str, os.PathLike)):
            flows = Flows(flows)
        eng = StreamingClassifier(self.handle, **self._engine_args)
        out = Verdicts()

        def run(chunk: list[list[FlowUpdate]]) -> None:
            # round r = the r-th update of every flow: one micro-batch each, as the daemon sees them
            for r in range(max(map(len, chunk))):
                ups = [u[r] for u in chunk if r < len(u)]
                out.extend(v.to_dict() for v in eng.process([wire.decode(wire.encode_updates(ups, sensor=self.sensor))]))

        chunk: list[list[FlowUpdate]] = []
        for f in flows:
            chunk.append(flow_updates(f, self.every, self.window))
            if len(chunk) >= self.chunk_flows:
                run(chunk)
                chunk = []
        if chunk:
            run(chunk)
        self.last_counters = {**eng.counters, **{f"drop_{k}": v for k, v in eng.drops.items()}}
        return out
