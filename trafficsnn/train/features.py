"""Classic flow statistics (what nfstream/CICFlowMeter users feed to trees), numpy only.

Computed on exactly the packets a sample covers (a paper window, or the first 60 s /
first N packets of a flow), so the tree baseline sees the same traffic as the SNN.
"""
from __future__ import annotations

import numpy as np

_STATS = ("pkts", "bytes", "size_mean", "size_std", "size_min", "size_max",
          "iat_mean", "iat_std", "iat_min", "iat_max", "duration")
FEATURE_NAMES: list[str] = (
    [f"{g}_{s}" for g in ("all", "c2s", "s2c") for s in _STATS]
    + ["c2s_pkt_ratio", "c2s_byte_ratio", "first_size_c2s", "first_size_s2c", "pkts_per_s", "bytes_per_s"]
)
N_FEATURES = len(FEATURE_NAMES)


def _group(t: np.ndarray, s: np.ndarray) -> list[float]:
    if s.size == 0:
        return [0.0] * len(_STATS)
    iat = np.diff(np.sort(t)) if t.size > 1 else np.zeros(1)
    return [float(s.size), float(s.sum()), float(s.mean()), float(s.std()), float(s.min()), float(s.max()),
            float(iat.mean()), float(iat.std()), float(iat.min()), float(iat.max()), float(t.max() - t.min())]


def flow_stats(t_c2s, s_c2s, t_s2c, s_s2c) -> np.ndarray:
    """Feature vector (``FEATURE_NAMES`` order) from per-direction times (s) and IP sizes."""
    t0, s0 = np.asarray(t_c2s, np.float64), np.asarray(s_c2s, np.float64)
    t1, s1 = np.asarray(t_s2c, np.float64), np.asarray(s_s2c, np.float64)
    ta, sa = np.concatenate([t0, t1]), np.concatenate([s0, s1])
    f = _group(ta, sa) + _group(t0, s0) + _group(t1, s1)
    n, b = max(sa.size, 1), max(sa.sum(), 1.0)
    dur = max(f[10], 1e-3)
    f += [s0.size / n, s0.sum() / b,
          float(s0[np.argmin(t0)]) if s0.size else 0.0, float(s1[np.argmin(t1)]) if s1.size else 0.0,
          sa.size / dur, sa.sum() / dur]
    return np.asarray(f, np.float32)


def packet_stats(ts_rel, size, direction) -> np.ndarray:
    """Feature vector of one flow (or its prefix) on a shared clock; direction 0 = client->server."""
    ts_rel = np.asarray(ts_rel, np.float64)
    size = np.asarray(size, np.float64)
    d = np.asarray(direction)
    return flow_stats(ts_rel[d == 0], size[d == 0], ts_rel[d == 1], size[d == 1])
