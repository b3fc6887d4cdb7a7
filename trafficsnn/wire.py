"""The ZeroMQ message schema between capture agents and classifiers: encode, decode, validate.

A message is a multipart ZeroMQ message: one small fixed-layout header frame
followed by raw little-endian array frames. Decoding never copies the arrays
(``np.frombuffer`` over the received frames) and never trusts them: every field
that a consumer indexes with is checked first (version, kind, frame count,
dtypes, lengths, offsets in bounds and monotonic, finite timestamps, valid
directions), so a malformed message becomes one ``WireError`` and nothing else.

Message kinds
-------------
``UPDATES`` (header + 6 frames): a batch of ``FlowUpdate``s.
    1. ``keys``: one ``UPDATE_DTYPE`` record per update (flow key, flow id, seq,
       start time, final flag, reason, wire bytes, wall time of its last packet)
    2. ``offsets``: int64, n_updates + 1, update i owns packets
       ``offsets[i]:offsets[i+1]`` of the packet frames
    3. ``ts``: float64 absolute seconds, 4. ``size``: uint32 IP length,
    5. ``direction``: uint8 (0 = client -> server, 1 = server -> client),
    6. ``tcp_flags``: uint8 (0 for non-TCP; the packet-clocked encoder codes SYN/FIN/RST/PSH)
``STATS`` (header + 1 frame): the sender's counters as a JSON object.
``EOS`` (header + 1 frame): end of stream, with the sender's final counters.

Never imports torch.
"""
from __future__ import annotations

import json
import logging
import math
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import TrafficSNNError
from .flows.records import END_REASONS, UPDATE_RECORD, FlowKey, FlowUpdate, UpdateBlock

log = logging.getLogger(__name__)

MAGIC = b"TSNW"
VERSION = 2   # 2: a tcp_flags frame per packet (sensors and classifiers upgrade together)

KIND_UPDATES, KIND_STATS, KIND_EOS = 1, 2, 3
KIND_NAMES = {KIND_UPDATES: "updates", KIND_STATS: "stats", KIND_EOS: "eos"}

# magic, version, kind, n_frames, sensor_len, n_updates, n_packets, msg_seq, sent_wall, dtype codes (6 x 4 bytes)
_HEADER = struct.Struct("<4sBBHHxxIIQd24s")
HEADER_SIZE = _HEADER.size
MAX_SENSOR_LEN = 255
MAX_JSON_BYTES = 64 << 10           # a STATS/EOS body: counters only, a few kB in practice
MAX_STATS_ENTRIES = 256             # counters in one STATS body, nested ones included
MAX_STATS_KEY = 64                  # characters of one counter name
# Hard caps so a hostile header cannot make the decoder allocate or loop much.
MAX_UPDATES = 1 << 22
MAX_PACKETS = 1 << 26

# "" (periodic update) then END_REASONS, in order; the wire carries the index.
REASONS: tuple[str, ...] = ("",) + tuple(END_REASONS)
_REASON_CODE = {r: i for i, r in enumerate(REASONS)}

# One record per update: flow_id, seq, start_ts, wall (sender wall clock when the update's last
# packet was read), wire_bytes, client_hi/lo, server_hi/lo (u8), client_port, server_port, vlan (u2),
# proto, final, reason (u1), packed little-endian (81 bytes). The same dtype as an ``UpdateBlock``'s
# records, so the capture agent sends a block's records as they are.
UPDATE_DTYPE = UPDATE_RECORD
# The array frames of an UPDATES message, in order, with their dtypes.
ARRAY_FRAMES: tuple[tuple[str, np.dtype], ...] = (
    ("keys", UPDATE_DTYPE),
    ("offsets", np.dtype("<i8")),
    ("ts", np.dtype("<f8")),
    ("size", np.dtype("<u4")),
    ("direction", np.dtype("u1")),
    ("tcp_flags", np.dtype("u1")),
)
# Dtype codes written in the header (4 ASCII bytes per array frame, 6 slots).
_DTYPE_CODES = b"".join(c.ljust(4, b"\0") for c in (b"upd1", b"<i8", b"<f8", b"<u4", b"|u1", b"|u1")).ljust(24, b"\0")
_JSON_CODES = b"json".ljust(24, b"\0")  # STATS and EOS carry one JSON frame


class WireError(TrafficSNNError):
    """A message that does not follow the schema; ``kind`` names what is wrong (a metric label)."""

    def __init__(self, kind: str, detail: str):
        self.kind, self.detail = kind, detail
        super().__init__(f"malformed message ({kind}): {detail}")


# ---------------------------------------------------------------- decoded forms


def record_key(r: Any) -> FlowKey:
    """The ``FlowKey`` of one ``UPDATE_DTYPE`` record."""
    return FlowKey(
        vlan=int(r["vlan"]), proto=int(r["proto"]),
        client_hi=int(r["client_hi"]), client_lo=int(r["client_lo"]), client_port=int(r["client_port"]),
        server_hi=int(r["server_hi"]), server_lo=int(r["server_lo"]), server_port=int(r["server_port"]),
    )


@dataclass
class Header:
    version: int
    kind: int
    n_frames: int
    sensor: str
    n_updates: int
    n_packets: int
    msg_seq: int
    sent_wall: float


@dataclass
class UpdateBatch:
    """A decoded UPDATES message: read-only numpy views over the received frames."""

    header: Header
    keys: np.ndarray       # UPDATE_DTYPE records
    offsets: np.ndarray    # int64, n + 1
    ts: np.ndarray
    size: np.ndarray
    direction: np.ndarray
    tcp_flags: np.ndarray

    @property
    def sensor(self) -> str:
        return self.header.sensor

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @property
    def n_packets(self) -> int:
        return int(self.ts.shape[0])

    def flow_key(self, i: int) -> FlowKey:
        return record_key(self.keys[i])

    def update(self, i: int) -> FlowUpdate:
        """Update ``i`` as a ``FlowUpdate`` (its arrays are views, not copies)."""
        r = self.keys[i]
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return FlowUpdate(
            flow_id=int(r["flow_id"]), key=self.flow_key(i), start_ts=float(r["start_ts"]), seq=int(r["seq"]),
            ts=self.ts[a:b], size=self.size[a:b], direction=self.direction[a:b],
            tcp_flags=self.tcp_flags[a:b], final=bool(r["final"]), reason=REASONS[int(r["reason"])], wire_bytes=int(r["wire_bytes"]),
        )

    def updates(self) -> Iterator[FlowUpdate]:
        for i in range(len(self)):
            yield self.update(i)

    def block(self) -> UpdateBlock:
        """The message as an ``UpdateBlock`` (read-only views of the frames, nothing copied)."""
        return UpdateBlock(self.keys, self.offsets, self.ts, self.size, self.direction, self.tcp_flags)


@dataclass
class StatsMessage:
    header: Header
    stats: dict[str, Any]

    @property
    def sensor(self) -> str:
        return self.header.sensor

    @property
    def eos(self) -> bool:
        return self.header.kind == KIND_EOS


# ---------------------------------------------------------------- encoding


def _header(kind: int, n_frames: int, sensor: str, n_updates: int, n_packets: int, msg_seq: int,
            sent_wall: float) -> bytes:
    s = sensor.encode("utf-8")
    if len(s) > MAX_SENSOR_LEN:
        raise ValueError(f"sensor id is {len(s)} bytes long; at most {MAX_SENSOR_LEN} are allowed")
    codes = _DTYPE_CODES if kind == KIND_UPDATES else _JSON_CODES
    return _HEADER.pack(MAGIC, VERSION, kind, n_frames, len(s), n_updates, n_packets, msg_seq, sent_wall, codes) + s


def encode_updates(updates: UpdateBlock | Sequence[FlowUpdate], *, sensor: str = "", msg_seq: int = 0,
                   sent_wall: float = 0.0, walls: Sequence[float] | np.ndarray | None = None) -> list[Any]:
    """Frames of one UPDATES message carrying ``updates`` (an ``UpdateBlock`` or ``FlowUpdate`` objects).

    A block is sent as it is (its records and packet columns become the frames, no work per
    update) with the ``wall`` times it holds. For objects, ``walls[i]`` is the sender's wall
    clock when update i's last packet was read (for end-to-end latency); defaults to
    ``sent_wall``, as do a block's walls left at 0. ``walls`` given with a block replaces the block's.
    """
    if isinstance(updates, UpdateBlock):
        block = updates
        unset = walls is None and sent_wall and len(block) and not block.meta["wall"].all()
        if walls is not None or unset:      # new walls on a copy of the records (packets shared)
            block = UpdateBlock(block.meta.copy(), block.offsets, block.ts, block.size, block.direction,
                                block.tcp_flags)
            w = block.meta["wall"]
            if walls is not None:
                w[:] = walls
            else:                           # unset walls mean "as sent"
                w[w == 0] = sent_wall
    else:
        block = UpdateBlock.from_updates(updates, walls, default_wall=sent_wall)
    n, n_packets = len(block), block.n_packets
    head = _header(KIND_UPDATES, 1 + len(ARRAY_FRAMES), sensor, n, n_packets, msg_seq, sent_wall)
    return [head, np.ascontiguousarray(block.meta), np.ascontiguousarray(block.offsets, "<i8"),
            *(np.ascontiguousarray(getattr(block, name), dt) for name, dt in ARRAY_FRAMES[2:])]


def encode_stats(stats: dict[str, Any], *, sensor: str = "", msg_seq: int = 0, sent_wall: float = 0.0,
                 eos: bool = False) -> list[bytes]:
    """Frames of a STATS (or, with ``eos``, an end-of-stream) message."""
    body = json.dumps(stats, sort_keys=True, default=float).encode("utf-8")
    kind = KIND_EOS if eos else KIND_STATS
    return [_header(kind, 2, sensor, 0, 0, msg_seq, sent_wall), body]


# ---------------------------------------------------------------- decoding


def _buf(frame: Any) -> memoryview:
    """The bytes of a frame (zmq.Frame, bytes, memoryview or ndarray) without copying."""
    if isinstance(frame, np.ndarray):
        return memoryview(np.ascontiguousarray(frame).reshape(-1).view(np.uint8))
    b = getattr(frame, "buffer", None)
    if b is None:
        b = frame
    try:
        m = memoryview(b)
    except TypeError as err:
        raise WireError("frame_type", f"frame of type {type(frame).__name__} is not a buffer") from err
    if m.ndim != 1 or m.itemsize != 1:
        m = m.cast("B") if m.c_contiguous else memoryview(bytes(m))
    return m


def decode_header(frame: Any) -> Header:
    m = _buf(frame)
    if len(m) < HEADER_SIZE:
        raise WireError("short_header", f"header frame is {len(m)} bytes, expected at least {HEADER_SIZE}")
    magic, version, kind, n_frames, slen, n_upd, n_pkt, seq, sent, codes = _HEADER.unpack_from(m, 0)
    if magic != MAGIC:
        raise WireError("bad_magic", f"magic {bytes(magic)!r} is not {MAGIC!r}")
    if version != VERSION:
        raise WireError("bad_version", f"version {version}, this build reads version {VERSION}")
    if kind not in KIND_NAMES:
        raise WireError("bad_kind", f"unknown message kind {kind}")
    if len(m) != HEADER_SIZE + slen:
        raise WireError("bad_header_length", f"header frame is {len(m)} bytes, sensor id says {HEADER_SIZE + slen}")
    try:
        sensor = bytes(m[HEADER_SIZE:]).decode("utf-8")
    except UnicodeDecodeError as err:
        raise WireError("bad_sensor", "sensor id is not UTF-8") from err
    if not math.isfinite(sent):
        raise WireError("bad_time", "send time is not finite")
    want = _DTYPE_CODES if kind == KIND_UPDATES else _JSON_CODES
    if codes != want:
        raise WireError("bad_dtype", f"dtype codes {bytes(codes)!r} do not match the schema")
    return Header(version, kind, n_frames, sensor, n_upd, n_pkt, seq, sent)


def _counter(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def validate_stats(stats: Any) -> dict[str, Any]:
    """A STATS body is counters only: name -> finite number >= 0, or name -> {label: number} (one level).

    At most ``MAX_STATS_ENTRIES`` numbers and names of at most ``MAX_STATS_KEY``
    characters, so one sensor can neither break a metrics scrape nor hold much memory.
    """
    if not isinstance(stats, dict):
        raise WireError("bad_stats", "stats body is not a JSON object")
    n = 0
    for k, v in stats.items():
        if len(k) > MAX_STATS_KEY:
            raise WireError("bad_stats", f"stats counter name of {len(k)} characters")
        if isinstance(v, dict):
            for k2, v2 in v.items():
                if len(k2) > MAX_STATS_KEY or not _counter(v2):
                    raise WireError("bad_stats", f"stats counter {k}.{k2[:MAX_STATS_KEY]} is not a number >= 0")
            n += len(v)
        elif _counter(v):
            n += 1
        else:
            raise WireError("bad_stats", f"stats counter {k} is not a number >= 0")
        if n > MAX_STATS_ENTRIES:
            raise WireError("bad_stats", f"more than {MAX_STATS_ENTRIES} stats counters")
    return stats


def decode(frames: Sequence[Any]) -> UpdateBatch | StatsMessage:
    """Validate and decode one multipart message; raises only ``WireError``."""
    try:
        return _decode(frames)
    except WireError:
        raise
    except Exception as err:  # a bug or an input we did not foresee: still only a WireError
        raise WireError("invalid", f"{type(err).__name__}: {err}") from err


def _decode(frames: Sequence[Any]) -> UpdateBatch | StatsMessage:
    if len(frames) < 1:
        raise WireError("no_frames", "empty message")
    h = decode_header(frames[0])
    if h.n_frames != len(frames):
        raise WireError("frame_count", f"header says {h.n_frames} frames, message has {len(frames)}")
    if h.kind in (KIND_STATS, KIND_EOS):
        if len(frames) != 2:
            raise WireError("frame_count", f"{KIND_NAMES[h.kind]} message has {len(frames)} frames, expected 2")
        body = _buf(frames[1])
        if len(body) > MAX_JSON_BYTES:
            raise WireError("too_large", f"stats body of {len(body)} bytes")
        try:
            stats = json.loads(bytes(body).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise WireError("bad_json", str(err)) from err
        return StatsMessage(h, validate_stats(stats))

    if len(frames) != 1 + len(ARRAY_FRAMES):
        raise WireError("frame_count", f"updates message has {len(frames)} frames, expected {1 + len(ARRAY_FRAMES)}")
    if h.n_updates > MAX_UPDATES or h.n_packets > MAX_PACKETS:
        raise WireError("too_large", f"{h.n_updates} updates / {h.n_packets} packets exceed the limits")
    n, p = h.n_updates, h.n_packets
    want = {"keys": n, "offsets": n + 1, "ts": p, "size": p, "direction": p, "tcp_flags": p}
    arrays: dict[str, np.ndarray] = {}
    for (name, dtype), frame in zip(ARRAY_FRAMES, frames[1:]):
        m = _buf(frame)
        if len(m) != want[name] * dtype.itemsize:
            raise WireError("bad_length", f"{name} frame is {len(m)} bytes, expected {want[name]} x {dtype.itemsize}")
        a = np.frombuffer(m, dtype=dtype)
        a.flags.writeable = False
        arrays[name] = a
    off = arrays["offsets"]
    if off[0] != 0 or off[-1] != p:
        raise WireError("bad_offsets", f"offsets run from {int(off[0])} to {int(off[-1])}, expected 0 to {p}")
    if n and bool(np.any(off[1:] < off[:-1])):
        raise WireError("bad_offsets", "offsets are not monotonic")
    ts = arrays["ts"]
    if p and not bool(np.isfinite(ts).all()):
        raise WireError("bad_time", "a packet timestamp is not finite")
    if p and int(arrays["direction"].max()) > 1:
        raise WireError("bad_direction", "a packet direction is neither 0 nor 1")
    keys = arrays["keys"]
    if n:
        if not (np.isfinite(keys["start_ts"]).all() and np.isfinite(keys["wall"]).all()):
            raise WireError("bad_time", "an update start or wall time is not finite")
        if int(keys["reason"].max()) >= len(REASONS) or int(keys["final"].max()) > 1:
            raise WireError("bad_reason", "an update has an unknown end reason or final flag")
    return UpdateBatch(h, keys, off, ts, arrays["size"], arrays["direction"], arrays["tcp_flags"])


class WireStats:
    """Counts malformed messages by kind and logs each kind once (thread-safe)."""

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()

    def record(self, err: WireError) -> None:
        with self._lock:
            first = err.kind not in self.errors
            self.errors[err.kind] += 1
        if first:
            log.warning("dropping %s (further messages of this kind are only counted)", err)

    def decode(self, frames: Sequence[Any]) -> UpdateBatch | StatsMessage | None:
        """``decode`` that counts, logs once per kind and returns None for a malformed message."""
        try:
            return decode(frames)
        except WireError as err:
            self.record(err)
            return None
