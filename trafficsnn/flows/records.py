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
