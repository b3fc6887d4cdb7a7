"""What a streaming encoder gets and gives: the contract between encoders and the daemon.

The daemon's engine keeps per-flow bookkeeping (steps fed, previous packet time,
held-back packets) and calls ``encoder.stream(StreamInput)`` once per micro-batch
for every touched flow; training calls the same method through ``encoder.flow``
on whole flows. So a model sees in production exactly what it saw in training,
and feeding a flow in pieces gives the events of feeding it whole. numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class StreamInput:
    """New packets of ``n_flows`` flows, grouped by flow and in arrival order inside each."""

    flow: np.ndarray        # (P,) int64 local flow index 0..n_flows-1, non-decreasing
    ts: np.ndarray          # (P,) float64 absolute seconds (non-decreasing inside a flow)
    size: np.ndarray        # (P,) IP total length
    direction: np.ndarray   # (P,) 0 = client -> server, 1 = server -> client
    tcp_flags: np.ndarray   # (P,) uint8, 0 for non-TCP
    start_ts: np.ndarray    # (n,) float64 time of each flow's first packet
    prev_ts: np.ndarray     # (n,) float64 time of the packet before these (NaN: none)
    steps_done: np.ndarray  # (n,) int64 input steps already fed to the network
    proto: np.ndarray       # (n,) IP protocol number
    ipv6: np.ndarray        # (n,) bool: the flow's innermost IP header is IPv6
    final: np.ndarray       # (n,) bool: the flow ends with these packets

    @property
    def n_flows(self) -> int:
        return int(self.start_ts.shape[0])

    @classmethod
    def one_flow(cls, ts, size, direction, tcp_flags=None, proto: int = 0, ipv6: bool = False) -> "StreamInput":
        """A whole flow from its first packet (what training encodes)."""
        ts = np.asarray(ts, np.float64)
        n = ts.shape[0]
        return cls(np.zeros(n, np.int64), ts, np.asarray(size), np.asarray(direction),
                   np.zeros(n, np.uint8) if tcp_flags is None else np.asarray(tcp_flags),
                   ts[:1].copy() if n else np.zeros(1), np.full(1, np.nan), np.zeros(1, np.int64),
                   np.array([proto]), np.array([bool(ipv6)]), np.ones(1, bool))


@dataclass
class StreamEvents:
    """Input events for steps ``[steps_done, target)`` of each flow, with absolute step numbers."""

    flow: np.ndarray        # (E,) int64 local flow index
    step: np.ndarray        # (E,) int64 absolute step
    neuron: np.ndarray      # (E,) int64 input neuron
    value: np.ndarray       # (E,) float32
    target: np.ndarray      # (n,) int64 steps complete after this call (>= steps_done)
    hold: np.ndarray        # (P,) bool: packets of a still-open step, to be passed again next time
    late: int = 0           # packets for steps already fed (dropped)
    after_window: int = 0   # packets beyond the encoder's last step (dropped)


def ranks(flow: np.ndarray) -> np.ndarray:
    """Position of each packet inside its flow's run (flow indices non-decreasing)."""
    n = flow.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    start = np.ones(n, bool)
    start[1:] = flow[1:] != flow[:-1]
    first = np.flatnonzero(start)
    return np.arange(n, dtype=np.int64) - np.repeat(first, np.diff(np.append(first, n)))


def is_ipv6(client_hi, client_lo) -> np.ndarray:
    """True where an address (hi, lo words) is not IPv4-mapped (``::ffff:a.b.c.d``)."""
    hi = np.asarray(client_hi, np.uint64)
    lo = np.asarray(client_lo, np.uint64)
    return ~((hi == 0) & ((lo >> np.uint64(32)) == np.uint64(0xFFFF)))
