"""Emission policies: what the flow table hands downstream, and when.

A policy gets two calls from ``FlowTable``: ``progress(table, slots, now)`` after
each batch (or clock advance) for the live flows just touched, and
``final(table, slots, reason_codes)`` for flows that ended. Both return records
(``Flow`` or ``FlowUpdate``). All packet work is vectorised over the flows
concerned; one Python object is made per emitted record.
"""
from __future__ import annotations

import numpy as np

from .records import END_REASONS, Flow, FlowUpdate


class WholeFlows:
    """Emit one ``Flow`` (all stored packets, counters, end reason) when a flow ends."""

    def progress(self, table, slots: np.ndarray, now: float) -> list:
        return []

    def final(self, table, slots: np.ndarray, codes: np.ndarray) -> list[Flow]:
        S = table._slots.cols
        off, cols = table.take(slots)
        keys = table.keys_of(slots)
        fids = S["fid"][slots].tolist()
        pk0, pk1 = S["pk0"][slots].tolist(), S["pk1"][slots].tolist()
        by0, by1 = S["by0"][slots].tolist(), S["by1"][slots].tolist()
        ts, size, d = cols["ts"], cols["size"], cols["direction"]
        wl, tf = cols["wire_len"], cols["tcp_flags"]
        o = off.tolist()
        out = []
        for i, code in enumerate(codes.tolist()):
            a, b = o[i], o[i + 1]
            out.append(Flow(fids[i], keys[i], ts[a:b], size[a:b], d[a:b], wl[a:b], tf[a:b],
                            END_REASONS[code - 1], pk0[i], pk1[i], by0[i], by1[i]))
        return out

    def __repr__(self) -> str:
        return "WholeFlows()"


class Columnar:
    """Emit ended flows as ``FlowBlock`` columns (no Python object per flow).

    The fast path for bulk extraction: ``trafficsnn extract`` writes blocks straight
    into the .npz. ``FlowBlock.flows()`` turns a block back into ``Flow`` objects.
    """

    def progress(self, table, slots: np.ndarray, now: float) -> list:
        return []

    def final(self, table, slots: np.ndarray, codes: np.ndarray) -> list:
        from .store import FlowBlock

        off, cols = table.take(slots)
        c = table.key_columns(slots)
        c["end_reason"] = (codes - 1).astype(np.uint8)
        c["offsets"] = off
        c.update(cols)
        return [FlowBlock(c)]

    def __repr__(self) -> str:
        return "Columnar()"


class EveryK:
    """Emit a ``FlowUpdate`` every ``k`` packets of a flow, and a final one when it ends.

    With ``window_s``, an update also never spans two windows of ``window_s`` seconds
    (counted from the flow's first packet): the packets of a window are sent once the
    window is over by the table's clock, even when fewer than ``k``. So every flow's
    packet sequence is cut deterministically, whatever the batch boundaries.
    ``FlowUpdate.seq`` is the index in the flow of the update's first packet (the
    number of packets already sent). The final update carries the packets after the
    last full piece (possibly none), so without ``window_s`` the cuts and the final
    update do not depend on how packets were batched; with ``window_s`` a window's
    last packets may come as a periodic update (the clock passed the window end
    first) or in the final one.
    """

    def __init__(self, k: int, window_s: float | None = None):
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k!r}")
        if window_s is not None and not window_s > 0:
            raise ValueError(f"window_s must be > 0 seconds or None, got {window_s!r}")
        self.k = int(k)
        self.window_s = None if window_s is None else float(window_s)

    def __repr__(self) -> str:
        return f"EveryK(k={self.k}, window_s={self.window_s})"

    def progress(self, table, slots: np.ndarray, now: float) -> list[FlowUpdate]:
        if len(slots) == 0:
            return []
        S = table._slots.cols
        pending = S["stored"][slots] - S["sent"][slots]
        due = pending >= self.k
        if self.window_s is not None:
            w_first = np.floor((S["pend_ts"][slots] - S["first_ts"][slots]) / self.window_s)
            w_now = np.floor((now - S["first_ts"][slots]) / self.window_s)
            due |= (pending > 0) & (w_now > w_first)
        slots = slots[due]
        if len(slots) == 0:
            return []
        return self._emit(table, slots, None, now)

    def final(self, table, slots: np.ndarray, codes: np.ndarray) -> list[FlowUpdate]:
        return self._emit(table, slots, codes, table.clock)

    def _emit(self, table, slots: np.ndarray, codes, now: float) -> list[FlowUpdate]:
        S = table._slots.cols
        off, cols = table.take(slots)
        P = int(off[-1])
        F = len(slots)
        counts = np.diff(off)
        f = np.repeat(np.arange(F), counts)
        ar = np.arange(P)
        pos = ar - off[:-1][f]
        first_ts = S["first_ts"][slots]
        last = np.zeros(P, bool)
        last[off[1:][counts > 0] - 1] = True
        if self.window_s is not None:
            w = np.floor((cols["ts"] - first_ts[f]) / self.window_s).astype(np.int64)
            run_start = pos == 0
            run_start[1:] |= w[1:] != w[:-1]
            rs_idx = np.flatnonzero(run_start)
            rid = np.cumsum(run_start) - 1
            pos_run = ar - rs_idx[rid]
            run_last = np.append(run_start[1:], True)
        else:
            pos_run = pos
            run_last = last
        full = (pos_run + 1) % self.k == 0
        cut = full | (run_last & ~last)
        natural_end = np.zeros(F, bool)       # the flow's last piece is a full one: final goes alone
        if codes is not None:
            natural_end[f[last & full]] = True
            cut |= last
        elif self.window_s is not None:
            w_now = np.floor((now - first_ts) / self.window_s)
            cut |= last & (w < w_now[f])
        # packets after a flow's last cut stay pending (put back into the store)
        lastcut = np.full(F, -1, np.int64)
        np.maximum.at(lastcut, f[cut], ar[cut])
        held = ar > lastcut[f]
        send_n = counts - np.bincount(f[held], minlength=F) if P else counts
        if held.any():
            hoff = np.concatenate(([0], np.cumsum(np.bincount(f[held], minlength=F))))
            table.restore(slots, hoff, {k: v[held] for k, v in cols.items()})
        seq0 = S["sent"][slots].copy()
        S["sent"][slots] += send_n

        # pieces: runs of sent packets between cuts
        prev_cut = np.concatenate(([True], cut[:-1])) if P else cut
        starts = np.flatnonzero(~held & ((pos == 0) | prev_cut))
        ends = np.flatnonzero(cut) + 1
        keys = table.keys_of(slots)
        fids = S["fid"][slots].tolist()
        fts = first_ts.tolist()
        ts, size, d, wl, tf = cols["ts"], cols["size"], cols["direction"], cols["wire_len"], cols["tcp_flags"]
        out: list[FlowUpdate] = []
        pf = f[starts].tolist()
        pseq = (seq0[f[starts]] + pos[starts]).tolist()
        wsum = np.add.reduceat(wl.astype(np.int64), starts).tolist() if len(starts) else []
        has_piece = np.zeros(F, bool)
        if len(starts):
            has_piece[f[starts]] = True
            is_last_piece = np.append(f[starts][1:] != f[starts][:-1], True)
        for j, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
            i = pf[j]
            fin = codes is not None and bool(is_last_piece[j]) and not natural_end[i]
            out.append(FlowUpdate(fids[i], keys[i], fts[i], pseq[j], ts[a:b], size[a:b], d[a:b],
                                  final=fin, reason=END_REASONS[codes[i] - 1] if fin else "",
                                  wire_bytes=wsum[j], tcp_flags=tf[a:b]))
        if codes is not None:
            for i in np.flatnonzero(~has_piece | natural_end).tolist():
                out.append(FlowUpdate(fids[i], keys[i], fts[i], int(seq0[i] + send_n[i]),
                                      ts[:0], size[:0], d[:0], final=True,
                                      reason=END_REASONS[codes[i] - 1], tcp_flags=tf[:0]))
            out.sort(key=lambda u: (u.flow_id, u.seq, u.final))
        return out
