"""Emission policies: what the flow table hands downstream, and when.

A policy gets two calls from ``FlowTable``: ``progress(table, slots, now)`` after
each batch (or clock advance) for the live flows just touched, and
``final(table, slots, reason_codes)`` for flows that ended. Both return records
(``Flow``, ``FlowUpdate``, or a block of either as columns). All packet work is
vectorised over the flows concerned; one Python object is made per emitted record
unless the policy emits blocks (``Columnar``, ``EveryK(columnar=True)``).
"""
from __future__ import annotations

import numpy as np

from .records import END_REASONS, UPDATE_PACKET_COLS, UPDATE_RECORD, Flow, UpdateBlock


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

    With ``columnar=True`` each call returns one ``UpdateBlock`` (the updates as
    columns, no Python object per update: what the capture agent sends) instead of
    ``FlowUpdate`` objects; iterating the block gives the very same updates.
    """

    def __init__(self, k: int, window_s: float | None = None, *, columnar: bool = False):
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k!r}")
        if window_s is not None and not window_s > 0:
            raise ValueError(f"window_s must be > 0 seconds or None, got {window_s!r}")
        self.k = int(k)
        self.window_s = None if window_s is None else float(window_s)
        self.columnar = bool(columnar)

    def __repr__(self) -> str:
        c = ", columnar=True" if self.columnar else ""
        return f"EveryK(k={self.k}, window_s={self.window_s}{c})"

    def progress(self, table, slots: np.ndarray, now: float) -> list:
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

    def final(self, table, slots: np.ndarray, codes: np.ndarray) -> list:
        return self._emit(table, slots, codes, table.clock)

    def _emit(self, table, slots: np.ndarray, codes, now: float) -> list:
        """Cut the unsent packets of ``slots`` into updates (all vectorised); ``codes`` for ended flows."""
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

        # pieces: runs of sent packets between cuts, one update each
        sent = ~held
        prev_cut = np.concatenate(([True], cut[:-1])) if P else cut
        starts = np.flatnonzero(sent & ((pos == 0) | prev_cut))
        pf = f[starts]
        sent_idx = np.flatnonzero(sent)
        n_pieces = len(starts)
        fin = np.zeros(n_pieces, bool)
        if codes is not None and n_pieces:
            is_last_piece = np.append(pf[1:] != pf[:-1], True)
            fin = is_last_piece & ~natural_end[pf]
        p0 = np.searchsorted(sent_idx, starts)            # where each piece starts among the sent packets
        wsum = np.add.reduceat(cols["wire_len"][sent_idx].astype(np.uint64), p0) \
            if n_pieces else np.zeros(0, np.uint64)
        rows = pf
        seq = seq0[pf] + pos[starts]
        lengths = np.diff(np.append(p0, len(sent_idx)))
        if codes is not None:
            # a flow whose last piece is full (or that sent nothing) ends with an update of no packets
            has_piece = np.zeros(F, bool)
            has_piece[pf] = True
            empty = np.flatnonzero(~has_piece | natural_end)
            rows = np.concatenate((pf, empty))
            seq = np.concatenate((seq, seq0[empty] + send_n[empty]))
            lengths = np.concatenate((lengths, np.zeros(len(empty), np.int64)))
            fin = np.concatenate((fin, np.ones(len(empty), bool)))
            wsum = np.concatenate((wsum, np.zeros(len(empty), np.uint64)))
        meta = np.zeros(len(rows), UPDATE_RECORD)
        kc = table.key_columns(slots)
        for name in ("flow_id", "client_hi", "client_lo", "server_hi", "server_lo", "client_port",
                     "server_port", "vlan", "proto"):
            meta[name] = kc[name][rows]
        meta["start_ts"] = first_ts[rows]
        meta["seq"] = seq
        meta["wire_bytes"] = wsum
        meta["final"] = fin
        if codes is not None:
            meta["reason"] = np.where(fin, codes[rows], 0)
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        block = UpdateBlock(meta, offsets, *(cols[name][sent_idx].astype(dt, copy=False)
                                             for name, dt in UPDATE_PACKET_COLS))
        if codes is not None and len(block):
            order = np.lexsort((meta["final"], meta["seq"], meta["flow_id"]))
            if bool((order != np.arange(len(order))).any()):
                block = block.take(order)
        if self.columnar:
            return [block] if len(block) else []
        return block.updates()
