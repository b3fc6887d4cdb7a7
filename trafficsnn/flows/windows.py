"""Time windows over a flow: the reference paper's, and a one-clock prefix for the improved model.

``paper_windows`` reproduces Rasteh et al.'s ``Filter_data.py`` (paper_model.md §2.2):
each direction is its own unidirectional session with its own time origin;
windows [15t, 15t+60] s, inclusive at both ends, t = 0 .. int(T_max/15 - 4);
per direction the contiguous slice from the first to the last packet inside
the window; a window is rejected when a direction has fewer than 10 packets
or spans less than 40 s. A flow with packets in one direction only is an
"unpaired" session: direction 2 is one fake packet (0 s, 0 B) and only
direction 1 is checked.

One deliberate difference: in the paper, direction 1 was whichever session came
first in an arbitrarily ordered CSV; here direction 1 is the client side
(``C2S``), or the only side of an unpaired flow.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .records import C2S, S2C, Flow

TPS, DELTA_T, MIN_TPS, MIN_LENGTH = 60.0, 15.0, 40.0, 10


@dataclass
class PaperWindow:
    """One paper sample: per-direction times (s, relative to that direction's first packet)
    and sizes (IP total length) of window ``t_index`` = [15t, 15t+60]."""

    t_index: int
    t1: np.ndarray      # float64
    s1: np.ndarray      # int64
    t2: np.ndarray
    s2: np.ndarray
    paired: bool = True


def _slice(t: np.ndarray, lo: float, hi: float) -> slice:
    inside = np.flatnonzero((t >= lo) & (t <= hi))
    if len(inside) == 0:
        return slice(0, 0)
    return slice(int(inside[0]), int(inside[-1]) + 1)


def _ok(t: np.ndarray) -> bool:
    return len(t) >= MIN_LENGTH and (t[-1] - t[0]) >= MIN_TPS


def paper_windows(flow: Flow, *, tps: float = TPS, delta_t: float = DELTA_T) -> list[PaperWindow]:
    """The paper's samples of ``flow`` (possibly none), in window order."""
    m1, m2 = flow.direction == C2S, flow.direction == S2C
    if not m1.any():
        m1, m2 = m2, m1
    t1 = flow.ts[m1] - flow.ts[m1][0]
    s1 = flow.size[m1].astype(np.int64)
    paired = bool(m2.any())
    if paired:
        t2 = flow.ts[m2] - flow.ts[m2][0]
        s2 = flow.size[m2].astype(np.int64)
    else:
        t2, s2 = np.zeros(1), np.zeros(1, np.int64)
    t_max = max(float(t1[-1]), float(t2[-1]))
    n_win = int(t_max / delta_t - (tps / delta_t)) + 1   # int() truncates toward zero, as the code
    out = []
    for t in range(max(n_win, 0)):
        lo, hi = delta_t * t, delta_t * t + tps
        a = _slice(t1, lo, hi)
        w1, z1 = t1[a], s1[a]
        if not _ok(w1):
            continue
        if paired:
            b = _slice(t2, lo, hi)
            w2, z2 = t2[b], s2[b]
            if not _ok(w2):
                continue
        else:
            w2, z2 = t2, s2
        out.append(PaperWindow(t, w1, z1, w2, z2, paired))
    return out


def flow_prefix(flow: Flow, seconds: float = 60.0, start: float = 0.0):
    """Packets of ``flow`` in [start, start+seconds) on one clock (the flow's first packet = 0).

    Returns (ts_rel, size, direction) with direction 0 = client->server: the input of the
    improved encoder (``ImprovedEncoder.events``).
    """
    rel = flow.ts - flow.first_ts
    m = (rel >= start) & (rel < start + seconds)
    return rel[m], flow.size[m], flow.direction[m]


def flow_windows(flow: Flow, seconds: float = 60.0, hop: float | None = None):
    """Successive one-clock windows [k*hop, k*hop+seconds) of ``flow`` that hold packets.

    Yields (k, ts_rel, size, direction) with ts_rel relative to the window start. ``hop``
    defaults to ``seconds`` (no overlap), which is what non-leaking evaluation wants.
    """
    hop = seconds if hop is None else hop
    rel = flow.ts - flow.first_ts
    if len(rel) == 0:
        return
    for k in range(int(rel[-1] // hop) + 1):
        lo = k * hop
        m = (rel >= lo) & (rel < lo + seconds)
        if m.any():
            yield k, rel[m] - lo, flow.size[m], flow.direction[m]
