"""Classic flow statistics (what nfstream/CICFlowMeter users feed to trees), numpy only.

Computed on exactly the packets a sample covers (a paper window, or the first 60 s /
first N packets of a flow), so the tree baseline sees the same traffic as the SNN.

The statistics follow nfstream's ``statistical_analysis`` set, bidirectional and per
direction (``all``, ``c2s``, ``s2c``): packets, bytes, packet size min/mean/std/max,
inter-arrival time min/mean/std/max (seconds, within the direction), duration, and the
count of packets carrying each TCP flag (SYN, CWR, ECE, URG, ACK, PSH, RST, FIN; 0 for
non-TCP flows), plus direction ratios, first sizes, rates and the L4 protocol number.
Addresses and ports are left out on purpose: they identify captures, not classes.
Sizes are IP total lengths (``Flow.size``).

Early classification needs the same statistics from a flow's first k packets. Every
sample therefore also keeps its first ``HEAD_PACKETS`` packets as a small dense array
(``packet_head``: one row per packet, ``HEAD_COLUMNS``, NaN rows after the last packet);
``prefix_features(head, k)`` gives the feature matrix of the first k packets of every
sample and ``sequence_features(head, n)`` the per-packet vector the k-NN baseline uses.
For a sample with at most ``HEAD_PACKETS`` packets, ``prefix_features(head, None)``
equals the sample's ``features`` row (up to float32 rounding of the stored times).
"""
from __future__ import annotations

import numpy as np

_STATS = ("pkts", "bytes", "size_mean", "size_std", "size_min", "size_max",
          "iat_mean", "iat_std", "iat_min", "iat_max", "duration")
# TCP flag bits (RFC 793 / 3168) in nfstream's order
TCP_FLAG_BITS = {"syn": 0x02, "cwr": 0x80, "ece": 0x40, "urg": 0x20, "ack": 0x10, "psh": 0x08, "rst": 0x04,
                 "fin": 0x01}
_FLAGS = tuple(f"{f}_pkts" for f in TCP_FLAG_BITS)
_GROUP = _STATS + _FLAGS
FEATURE_NAMES: list[str] = (
    [f"{g}_{s}" for g in ("all", "c2s", "s2c") for s in _GROUP]
    + ["c2s_pkt_ratio", "c2s_byte_ratio", "first_size_c2s", "first_size_s2c", "pkts_per_s", "bytes_per_s",
       "l4_proto"]
)
N_FEATURES = len(FEATURE_NAMES)

HEAD_PACKETS = 64                       # covers the early-classification curve (1..50 packets)
HEAD_COLUMNS = ("dt", "size", "direction", "tcp_flags", "proto")   # dt: gap to the previous packet (s)
_BITS = np.array(list(TCP_FLAG_BITS.values()), np.uint8)


def _group(t: np.ndarray, s: np.ndarray, f: np.ndarray) -> list[float]:
    if s.size == 0:
        return [0.0] * len(_GROUP)
    iat = np.diff(np.sort(t)) if t.size > 1 else np.zeros(1)
    flags = ((f[:, None] & _BITS[None, :]) != 0).sum(axis=0) if f.size else np.zeros(len(_BITS))
    return [float(s.size), float(s.sum()), float(s.mean()), float(s.std()), float(s.min()), float(s.max()),
            float(iat.mean()), float(iat.std()), float(iat.min()), float(iat.max()),
            float(t.max() - t.min())] + [float(v) for v in flags]


def _flags(f, like: np.ndarray) -> np.ndarray:
    return np.zeros(like.size, np.uint8) if f is None else np.asarray(f).astype(np.uint8)


def flow_stats(t_c2s, s_c2s, t_s2c, s_s2c, f_c2s=None, f_s2c=None, proto=None) -> np.ndarray:
    """Feature vector (``FEATURE_NAMES`` order) from per-direction times (s), IP sizes and TCP flags.

    Missing flags count as none set; a missing protocol is 0.
    """
    t0, s0 = np.asarray(t_c2s, np.float64), np.asarray(s_c2s, np.float64)
    t1, s1 = np.asarray(t_s2c, np.float64), np.asarray(s_s2c, np.float64)
    g0, g1 = _flags(f_c2s, s0), _flags(f_s2c, s1)
    ta, sa, ga = np.concatenate([t0, t1]), np.concatenate([s0, s1]), np.concatenate([g0, g1])
    f = _group(ta, sa, ga) + _group(t0, s0, g0) + _group(t1, s1, g1)
    n, b = max(sa.size, 1), max(sa.sum(), 1.0)
    dur = max(f[_STATS.index("duration")], 1e-3)
    f += [s0.size / n, s0.sum() / b,
          float(s0[np.argmin(t0)]) if s0.size else 0.0, float(s1[np.argmin(t1)]) if s1.size else 0.0,
          sa.size / dur, sa.sum() / dur, float(proto or 0)]
    return np.asarray(f, np.float32)


def packet_stats(ts_rel, size, direction, tcp_flags=None, proto=None) -> np.ndarray:
    """Feature vector of one flow (or its prefix) on a shared clock; direction 0 = client->server."""
    ts_rel = np.asarray(ts_rel, np.float64)
    size = np.asarray(size, np.float64)
    d = np.asarray(direction)
    g = _flags(tcp_flags, size)
    return flow_stats(ts_rel[d == 0], size[d == 0], ts_rel[d == 1], size[d == 1], g[d == 0], g[d == 1], proto)


# ---------------------------------------------------------------- per-sample packet heads
def packet_head(ts_rel, size, direction, tcp_flags=None, proto=None, n: int = HEAD_PACKETS) -> np.ndarray:
    """The first ``n`` packets of a sample as an (n, 5) float32 array (``HEAD_COLUMNS``; NaN rows after the end).

    Times are stored as gaps to the previous packet (the first row: its own time), so float32
    keeps microsecond gaps exact late in a flow.
    """
    t = np.asarray(ts_rel, np.float64)[:n]
    m = t.size
    out = np.full((n, len(HEAD_COLUMNS)), np.nan, np.float32)
    if m:
        out[:m, 0] = np.diff(t, prepend=0.0)
        out[:m, 1] = np.asarray(size)[:m]
        out[:m, 2] = np.asarray(direction)[:m]
        out[:m, 3] = _flags(tcp_flags, t)[:m] if tcp_flags is not None else 0
        out[:m, 4] = float(proto or 0)
    return out


def window_head(w, proto=None, n: int = HEAD_PACKETS) -> np.ndarray:
    """``packet_head`` of a paper window (each direction on its own clock as the paper has it; no flags)."""
    t = np.concatenate([np.asarray(w.t1, np.float64), np.asarray(w.t2, np.float64)])
    s = np.concatenate([np.asarray(w.s1), np.asarray(w.s2)])
    d = np.r_[np.zeros(len(w.t1), np.uint8), np.ones(len(w.t2), np.uint8)]
    o = np.argsort(t, kind="stable")
    return packet_head(t[o], s[o], d[o], None, proto, n)


def head_packets(head_row: np.ndarray, k: int | None = None):
    """(rel_ts, size, direction, tcp_flags, proto) of the first ``k`` packets stored in one head row."""
    m = int(np.count_nonzero(~np.isnan(head_row[:, 0])))
    if k is not None:
        m = min(m, int(k))
    h = head_row[:m].astype(np.float64)
    proto = int(h[0, 4]) if m else 0
    return np.cumsum(h[:, 0]), h[:, 1], h[:, 2].astype(np.uint8), h[:, 3].astype(np.uint8), proto


def prefix_features(head: np.ndarray, k: int | None = None) -> np.ndarray:
    """(S, N_FEATURES) flow statistics of the first ``k`` packets (None: all stored) of every sample."""
    if k is not None and k > head.shape[1]:
        raise ValueError(f"prefix of {k} packets asked for, but samples keep only the first {head.shape[1]}")
    if head.shape[0] == 0:
        return np.zeros((0, N_FEATURES), np.float32)
    return np.stack([packet_stats(*head_packets(h, k)) for h in head])


def sequence_features(head: np.ndarray, n: int = 10, k: int | None = None) -> np.ndarray:
    """(S, 2n) per-packet vector of the first ``n`` packets (of at most ``k`` seen): signed sizes, then log10 IATs.

    Size is + client->server, - server->client; IAT is log10(gap s + 1e-6), the first packet's
    gap counts as 0 (-6). Packets beyond the flow's end (or beyond ``k``) are 0 / -6 as well.
    """
    if n > head.shape[1]:
        raise ValueError(f"{n} packets asked for, but samples keep only the first {head.shape[1]}")
    h = head[:, :n].astype(np.float64)
    if k is not None and k < n:
        h[:, k:] = np.nan
    ok = ~np.isnan(h[:, :, 0])
    sign = np.where(h[:, :, 2] == 0, 1.0, -1.0)
    size = np.where(ok, sign * h[:, :, 1], 0.0)
    gap = np.where(ok, np.clip(h[:, :, 0], 0.0, None), 0.0)
    gap[:, 0] = 0.0
    return np.concatenate([size, np.log10(gap + 1e-6)], axis=1).astype(np.float32)
