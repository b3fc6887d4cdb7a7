"""What the flow table emits: whole flows and incremental flow updates.

These are the contract between the flow engine and everything downstream
(extract files, datasets, the wire protocol, the classifier). One Python object
per *flow*, numpy arrays per *packet*.

Direction convention everywhere: 0 = client -> server, 1 = server -> client.
The client is the side that sent the flow's first packet, or the TCP SYN sender
when the SYN (without ACK) is seen.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..packets.batch import words_to_ip

C2S, S2C = 0, 1

# Why a flow ended (Flow.end_reason / FlowUpdate.reason when final).
END_REASONS = ("idle", "active", "fin", "rst", "evicted", "eof")


@dataclass(frozen=True)
class FlowKey:
    """Bidirectional flow identity with the client side first."""

    vlan: int
    proto: int
    client_hi: int
    client_lo: int
    client_port: int
    server_hi: int
    server_lo: int
    server_port: int

    @property
    def client_ip(self) -> str:
        return words_to_ip(self.client_hi, self.client_lo)

    @property
    def server_ip(self) -> str:
        return words_to_ip(self.server_hi, self.server_lo)

    def describe(self) -> str:
        v = f"vlan {self.vlan} " if self.vlan else ""
        return f"{v}proto {self.proto} {self.client_ip}:{self.client_port} <-> {self.server_ip}:{self.server_port}"


@dataclass
class Flow:
    """A whole (or expired) bidirectional flow with its per-packet arrays."""

    flow_id: int
    key: FlowKey
    ts: np.ndarray          # float64 absolute seconds, non-decreasing (FlowTable clamps an older packet
    #                         to its predecessor's time and counts it in stats["ts_clamped"])
    size: np.ndarray        # uint32 IP total length of each packet
    direction: np.ndarray   # uint8, C2S or S2C
    wire_len: np.ndarray    # uint32 frame length on the wire
    tcp_flags: np.ndarray   # uint8
    end_reason: str = "eof"
    # counters; may exceed len(ts) when the table keeps at most N packets per flow
    c2s_pkts: int = 0
    s2c_pkts: int = 0
    c2s_bytes: int = 0      # wire bytes
    s2c_bytes: int = 0

    @property
    def packets(self) -> int:
        return self.c2s_pkts + self.s2c_pkts

    @property
    def first_ts(self) -> float:
        return float(self.ts[0]) if len(self.ts) else 0.0

    @property
    def last_ts(self) -> float:
        return float(self.ts[-1]) if len(self.ts) else 0.0

    @property
    def duration(self) -> float:
        return self.last_ts - self.first_ts

    def iat(self) -> np.ndarray:
        """Inter-arrival times (s), 0 for the first packet."""
        return np.diff(self.ts, prepend=self.ts[:1]) if len(self.ts) else self.ts.copy()


@dataclass
class FlowUpdate:
    """New packets of one flow since its previous update (streaming emission).

    ``seq`` is the index, within the flow, of the first packet carried here, so a
    consumer can detect gaps (dropped updates). ``final`` marks the flow's last update.
    """

    flow_id: int
    key: FlowKey
    start_ts: float         # timestamp of the flow's first packet
    seq: int
    ts: np.ndarray          # float64 absolute seconds of the new packets
    size: np.ndarray        # uint32
    direction: np.ndarray   # uint8
    final: bool = False
    reason: str = ""        # "" for a periodic update, else one of END_REASONS
    wire_bytes: int = field(default=0)  # wire bytes of the packets carried here
    tcp_flags: np.ndarray | None = None  # uint8 per packet; None = unknown (sent as 0)

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def flags_or_zero(self) -> np.ndarray:
        """``tcp_flags``, or zeros when the producer did not record them."""
        if self.tcp_flags is None:
            return np.zeros(len(self.ts), np.uint8)
        return self.tcp_flags


# One record per flow update in an ``UpdateBlock``, field for field the wire's update record
# (``wire.UPDATE_DTYPE`` is this dtype), so a block is sent without converting anything.
# ``reason`` is 0 for a periodic update, else the index in END_REASONS plus one; ``wall`` is
# the sender's wall clock when the update's last packet was read (set by the capture agent).
UPDATE_RECORD = np.dtype(
    [
        ("flow_id", "<u8"),
        ("seq", "<u8"),
        ("start_ts", "<f8"),
        ("wall", "<f8"),
        ("wire_bytes", "<u8"),
        ("client_hi", "<u8"),
        ("client_lo", "<u8"),
        ("server_hi", "<u8"),
        ("server_lo", "<u8"),
        ("client_port", "<u2"),
        ("server_port", "<u2"),
        ("vlan", "<u2"),
        ("proto", "u1"),
        ("final", "u1"),
        ("reason", "u1"),
    ]
)
# per-packet columns of an UpdateBlock, with their dtypes (those of the wire's packet frames)
UPDATE_PACKET_COLS = (("ts", np.dtype("<f8")), ("size", np.dtype("<u4")), ("direction", np.dtype("u1")),
                      ("tcp_flags", np.dtype("u1")))
_KEY_FIELDS = ("vlan", "proto", "client_hi", "client_lo", "client_port", "server_hi", "server_lo", "server_port")


def gather_runs(offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of runs ``idx`` (run i owns ``offsets[i]:offsets[i+1]``), concatenated in that order.

    Returns (positions, new offsets): one fancy index instead of a slice per run."""
    st = offsets[idx]
    L = offsets[idx + 1] - st
    new = np.zeros(len(idx) + 1, np.int64)
    np.cumsum(L, out=new[1:])
    pos = np.repeat(st - new[:-1], L) + np.arange(int(new[-1]), dtype=np.int64)
    return pos, new


class UpdateBlock:
    """Many ``FlowUpdate``s as columns: one ``UPDATE_RECORD`` per update, packet offsets, packet columns.

    What ``EveryK(columnar=True)`` emits and what the capture agent queues, shards and
    encodes: no Python object per update on that path. Update i owns packets
    ``offsets[i]:offsets[i+1]`` of ``ts``/``size``/``direction``/``tcp_flags``.
    Iterating (or ``update(i)``) gives ``FlowUpdate`` views for code that wants objects.
    """

    __slots__ = ("meta", "offsets", "ts", "size", "direction", "tcp_flags")

    def __init__(self, meta: np.ndarray, offsets: np.ndarray, ts: np.ndarray, size: np.ndarray,
                 direction: np.ndarray, tcp_flags: np.ndarray):
        if meta.dtype != UPDATE_RECORD:
            raise ValueError(f"UpdateBlock meta must have dtype UPDATE_RECORD, got {meta.dtype}")
        if len(offsets) != len(meta) + 1 or int(offsets[0]) != 0 or int(offsets[-1]) != len(ts):
            raise ValueError(f"UpdateBlock offsets ({len(offsets)}, {int(offsets[0])}..{int(offsets[-1])}) do not fit "
                             f"{len(meta)} updates of {len(ts)} packets")
        self.meta, self.offsets = meta, offsets
        self.ts, self.size, self.direction, self.tcp_flags = ts, size, direction, tcp_flags

    @classmethod
    def empty(cls) -> "UpdateBlock":
        return cls(np.zeros(0, UPDATE_RECORD), np.zeros(1, np.int64),
                   *(np.empty(0, dt) for _, dt in UPDATE_PACKET_COLS))

    def __len__(self) -> int:
        return int(self.meta.shape[0])

    @property
    def n_packets(self) -> int:
        return int(self.ts.shape[0])

    def __repr__(self) -> str:
        return f"UpdateBlock({len(self)} updates, {self.n_packets} packets)"

    # ---- selections (no Python work per update)
    def __getitem__(self, s: slice) -> "UpdateBlock":
        """Updates ``s`` (a step-1 slice) as views of this block's arrays."""
        a, b, step = s.indices(len(self))
        if step != 1:
            raise ValueError("UpdateBlock slices take consecutive updates (step 1)")
        b = max(a, b)
        pa, pb = int(self.offsets[a]), int(self.offsets[b])
        return UpdateBlock(self.meta[a:b], self.offsets[a:b + 1] - pa, self.ts[pa:pb], self.size[pa:pb],
                           self.direction[pa:pb], self.tcp_flags[pa:pb])

    def take(self, idx: np.ndarray) -> "UpdateBlock":
        """Updates ``idx`` (an index array), in that order, with their packets (copies)."""
        idx = np.asarray(idx, np.int64)
        pos, off = gather_runs(self.offsets, idx)
        return UpdateBlock(self.meta[idx], off, self.ts[pos], self.size[pos], self.direction[pos],
                           self.tcp_flags[pos])

    @classmethod
    def concat(cls, blocks: "list[UpdateBlock]") -> "UpdateBlock":
        if len(blocks) == 1:
            return blocks[0]
        if not blocks:
            return cls.empty()
        lens = np.array([b.n_packets for b in blocks], np.int64)
        base = np.concatenate(([0], np.cumsum(lens)[:-1]))
        off = np.concatenate([b.offsets[:-1] + o for b, o in zip(blocks, base.tolist())] + [[int(lens.sum())]])
        return cls(np.concatenate([b.meta for b in blocks]), off.astype(np.int64, copy=False),
                   *(np.concatenate([getattr(b, name) for b in blocks]) for name, _ in UPDATE_PACKET_COLS))

    # ---- objects, for code that wants them
    def update(self, i: int) -> FlowUpdate:
        """Update ``i`` as a ``FlowUpdate`` (its arrays are views of the block)."""
        r = self.meta[i]
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        code = int(r["reason"])
        return FlowUpdate(int(r["flow_id"]), FlowKey(*(int(r[k]) for k in _KEY_FIELDS)), float(r["start_ts"]),
                          int(r["seq"]), self.ts[a:b], self.size[a:b], self.direction[a:b],
                          final=bool(r["final"]), reason=END_REASONS[code - 1] if code else "",
                          wire_bytes=int(r["wire_bytes"]), tcp_flags=self.tcp_flags[a:b])

    def __iter__(self):
        """The updates as ``FlowUpdate`` objects, made one at a time."""
        m, off = self.meta, self.offsets.tolist()
        keys = zip(*(m[k].tolist() for k in _KEY_FIELDS))
        for i, (fid, seq, st, wb, fin, code, key) in enumerate(zip(
                m["flow_id"].tolist(), m["seq"].tolist(), m["start_ts"].tolist(), m["wire_bytes"].tolist(),
                m["final"].tolist(), m["reason"].tolist(), keys)):
            a, b = off[i], off[i + 1]
            yield FlowUpdate(fid, FlowKey(*key), st, seq, self.ts[a:b], self.size[a:b], self.direction[a:b],
                             final=bool(fin), reason=END_REASONS[code - 1] if code else "", wire_bytes=wb,
                             tcp_flags=self.tcp_flags[a:b])

    def updates(self) -> list[FlowUpdate]:
        return list(self)

    @classmethod
    def from_updates(cls, updates, walls=None, default_wall: float = 0.0) -> "UpdateBlock":
        """A block holding ``FlowUpdate`` objects (one Python step per update: the slow path).

        ``walls[i]`` goes into update i's ``wall`` field, ``default_wall`` when not given."""
        n = len(updates)
        if not n:
            return cls.empty()
        lengths = np.fromiter(map(len, updates), dtype=np.int64, count=n)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if walls is None:
            walls = [default_wall] * n
        rc = {r: i + 1 for i, r in enumerate(END_REASONS)}
        meta = np.array([(u.flow_id, u.seq, u.start_ts, w, u.wire_bytes, k.client_hi, k.client_lo, k.server_hi,
                          k.server_lo, k.client_port, k.server_port, k.vlan, k.proto, u.final, rc.get(u.reason, 0))
                         for u, k, w in zip(updates, (u.key for u in updates), walls)], dtype=UPDATE_RECORD)
        return cls(meta, offsets, np.concatenate([u.ts for u in updates]).astype("<f8", copy=False),
                   np.concatenate([u.size for u in updates]).astype("<u4", copy=False),
                   np.concatenate([u.direction for u in updates]).astype("u1", copy=False),
                   np.concatenate([u.flags_or_zero() for u in updates]).astype("u1", copy=False))
