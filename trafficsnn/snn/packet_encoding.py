"""Packet-clocked input encoding: one time step per packet, a few input spikes each.

A spiking network that must decide after a handful of packets should see each
packet as an event, not a histogram bin of 200 ms (where the first ten packets
of most flows fall into one or two steps). Packet ``i`` of a flow is step ``i``
(up to ``n_steps`` packets); its spikes code, with value 1 each:

==============  =======================================================================
group           neurons
==============  =======================================================================
size            ``direction * 44 + bin`` of the estimated L4 payload length (below)
gap             log10 inter-arrival time since the flow's previous packet, 3 bins per
                decade from 1 us to 100 s, plus "first packet", "< 1 us" and ">= 100 s"
TCP flags       SYN, FIN, RST, PSH (one neuron each, when set)
L4 protocol     TCP, UDP, other
==============  =======================================================================

Size is the IP total length minus the base IP header (20 bytes IPv4, 40 IPv6) and
the base L4 header (20 TCP, 8 UDP), so the same flow over IPv4 and IPv6 encodes
identically (IP options, extension headers and TCP options count as payload).
Nothing comes from payload bytes, addresses or ports (the address only says
which IP version to subtract). Streaming needs no held-back packets: a step is
complete as soon as its packet arrives, so a verdict exists after every packet.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..errors import ConfigError
from .encoding import SparseSample, aggregate
from .registry import register_encoder
from .streaming import StreamEvents, StreamInput, ranks

# payload-length bin edges (bytes): fine near zero and near the MTU (tunnel overheads)
PAYLOAD_EDGES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256,
                          320, 384, 448, 512, 640, 768, 896, 1024, 1088, 1152, 1216, 1280, 1312, 1344, 1376,
                          1400, 1420, 1440, 1452, 1460, 1472, 1480, 1500], dtype=np.float64)
N_SIZE = len(PAYLOAD_EDGES)                   # 44 bins per direction, the last is ">= 1500"
GAP_DECADES = (-6, 2)                         # 1 us .. 100 s
GAP_PER_DECADE = 3
N_GAP = (GAP_DECADES[1] - GAP_DECADES[0]) * GAP_PER_DECADE + 3   # + first, < 1 us, >= 100 s
FLAG_BITS = (("SYN", 0x02), ("FIN", 0x01), ("RST", 0x04), ("PSH", 0x08))
PROTOS = ("tcp", "udp", "other")

OFF_SIZE = 0
OFF_GAP = 2 * N_SIZE
OFF_FLAGS = OFF_GAP + N_GAP
OFF_PROTO = OFF_FLAGS + len(FLAG_BITS)
N_INPUTS = OFF_PROTO + len(PROTOS)


def payload_length(size, proto, ipv6) -> np.ndarray:
    """Estimated L4 payload bytes: IP length minus the base IP and L4 headers (>= 0)."""
    size = np.asarray(size, np.int64)
    proto = np.asarray(proto)
    ip_hdr = np.where(np.asarray(ipv6, bool), 40, 20)
    l4_hdr = np.where(proto == 6, 20, np.where(proto == 17, 8, 0))
    return np.maximum(size - ip_hdr - l4_hdr, 0)


def size_bins(payload) -> np.ndarray:
    return np.searchsorted(PAYLOAD_EDGES, np.asarray(payload, np.float64), side="right") - 1


def gap_bins(gap: np.ndarray) -> np.ndarray:
    """0 = first packet (NaN gap), 1 = < 1 us, 2.. = log bins, last = >= 100 s."""
    g = np.asarray(gap, np.float64)
    out = np.zeros(g.shape, np.int64)
    known = ~np.isnan(g)
    lg = np.log10(np.maximum(g[known], 1e-12))
    b = np.floor((lg - GAP_DECADES[0]) * GAP_PER_DECADE).astype(np.int64) + 2
    out[known] = np.clip(b, 1, N_GAP - 1)
    return out


@register_encoder("packet")
class PacketEncoder:
    """One step per packet; see the module docstring for the input neurons."""

    streaming = True

    def __init__(self, n_steps: int = 64):
        if int(n_steps) != n_steps or not 1 <= n_steps <= 32767:
            raise ConfigError(f"n_steps (packets per flow) must be an integer in 1..32767, got {n_steps!r}")
        self.n_steps = int(n_steps)
        self.n_inputs = N_INPUTS
        self.value = "spike"

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "PacketEncoder":
        return cls(int(spec.get("n_steps", 64)))

    def spec(self) -> dict[str, Any]:
        return {"kind": "packet", "n_steps": self.n_steps, "n_inputs": self.n_inputs,
                "size": "L4 payload estimate (IP length - base IP - base L4 header)",
                "payload_edges": PAYLOAD_EDGES.tolist(), "gap": "log10 s, 3 bins/decade, 1e-6..1e2",
                "flags": [f for f, _ in FLAG_BITS], "protos": list(PROTOS),
                "direction": "0 = client->server, 1 = server->client"}

    def window_mask(self, rel_ts: np.ndarray) -> np.ndarray:
        """Which packets of a flow a sample covers: its first ``n_steps``."""
        return np.arange(len(rel_ts)) < self.n_steps

    # --------------------------------------------------------------- the one encoding method
    def stream(self, x: StreamInput) -> StreamEvents:
        """Events of the new packets: packet j of flow f is step ``steps_done[f] + j``."""
        f = np.asarray(x.flow, np.int64)
        P = f.shape[0]
        n = x.n_flows
        r = ranks(f)
        step = np.asarray(x.steps_done, np.int64)[f] + r
        keep = step < self.n_steps
        count = np.bincount(f[keep], minlength=n).astype(np.int64)
        target = np.asarray(x.steps_done, np.int64) + count
        ts = np.asarray(x.ts, np.float64)
        prev = np.empty(P)
        if P:
            prev[1:] = ts[:-1]
            first = r == 0
            prev[first] = np.asarray(x.prev_ts, np.float64)[f[first]]
        # only packets inside the window make events; per packet the groups come in neuron order
        # (size < gap < flags < proto) and packets are grouped by flow in step order, so laying the
        # events out packet by packet gives them sorted by (flow, step, neuron) without a sort
        kp = np.flatnonzero(keep)
        fk, sk = f[kp], step[kp]
        proto = np.asarray(x.proto)[fk]
        d = np.asarray(x.direction, np.int64)[kp]
        cols = np.empty((len(kp), 3 + len(FLAG_BITS)), np.int64)
        cols[:, 0] = OFF_SIZE + d * N_SIZE + size_bins(payload_length(np.asarray(x.size)[kp], proto,
                                                                       np.asarray(x.ipv6)[fk]))
        cols[:, 1] = OFF_GAP + gap_bins(ts[kp] - prev[kp])
        fl = np.asarray(x.tcp_flags, np.uint8)[kp]
        for j, (_, bit) in enumerate(FLAG_BITS):
            cols[:, 2 + j] = np.where((fl & bit) != 0, OFF_FLAGS + j, -1)
        cols[:, -1] = OFF_PROTO + np.where(proto == 6, 0, np.where(proto == 17, 1, 2))
        on = cols >= 0
        per = on.sum(1)
        en = cols[on]
        return StreamEvents(np.repeat(fk, per), np.repeat(sk, per), en, np.ones(en.shape[0], np.float32), target,
                            np.zeros(P, bool), 0, int(P - keep.sum()))

    # --------------------------------------------------------------- training-time perturbation
    def perturb(self, row: np.ndarray, step: np.ndarray, neuron: np.ndarray, rng: np.random.Generator,
                jitter: float = 0.0, drop_packets: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Augment encoded samples (events of sample ``row``): (keep mask, step, neuron).

        ``jitter``: each size or gap spike moves to a neighbouring bin with this probability
        (other MTUs, tunnel overheads, clocks); ``drop_packets``: each packet after the first
        is removed with this probability and later packets move up (loss, sampling).
        """
        step = step.astype(np.int64).copy()
        neuron = neuron.astype(np.int64).copy()
        keep = np.ones(step.shape[0], bool)
        if jitter > 0 and step.size:
            move = (rng.random(step.size) < jitter) * rng.choice(np.array([-1, 1]), step.size)
            is_size = neuron < OFF_GAP
            lo = np.where(neuron < N_SIZE, 0, N_SIZE)
            sz = np.clip(neuron + move, lo, lo + N_SIZE - 1)
            is_gap = (neuron > OFF_GAP) & (neuron < OFF_FLAGS)   # never the "first packet" bin
            gp = np.clip(neuron + move, OFF_GAP + 1, OFF_FLAGS - 1)
            neuron = np.where(is_size, sz, np.where(is_gap, gp, neuron))
        if drop_packets > 0 and step.size:
            # one draw per (sample, step): the same packet loses all its spikes
            key = row.astype(np.int64) * (self.n_steps + 1) + step
            uk, inv = np.unique(key, return_inverse=True)
            gone = (rng.random(uk.size) < drop_packets) & ((uk % (self.n_steps + 1)) > 0)
            keep &= ~gone[inv]
            # renumber: a step moves up by the number of dropped steps before it in its sample
            urow = uk // (self.n_steps + 1)
            csum = np.cumsum(gone)
            first = np.r_[0, np.flatnonzero(np.diff(urow)) + 1]
            base = np.repeat(csum[first] - gone[first], np.diff(np.r_[first, uk.size]))
            step = step - (csum - base)[inv]
        return keep, step, neuron

    # --------------------------------------------------------------- whole flows (training)
    def sample(self, ts, size, direction, tcp_flags=None, proto: int = 0, ipv6: bool = False) -> SparseSample:
        """The sparse input of one whole flow (``stream`` on all its packets at once)."""
        ev = self.stream(StreamInput.one_flow(ts, size, direction, tcp_flags, proto, ipv6))
        return aggregate(ev.step, ev.neuron, self.n_inputs)

    def flow(self, flow) -> SparseSample:
        """Encode a ``flows.Flow``."""
        from .streaming import is_ipv6

        k = flow.key
        return self.sample(flow.ts, flow.size, flow.direction, flow.tcp_flags, k.proto,
                           bool(is_ipv6(k.client_hi, k.client_lo)))
