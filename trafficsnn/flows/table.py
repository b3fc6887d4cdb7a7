"""The bidirectional flow table: PacketBatch in, whole flows or flow updates out.

Everything per batch is vectorised with numpy: no Python work per packet, and
per flow only the making of the emitted objects (``Flow``/``FlowUpdate``; the
``Columnar`` policy avoids even that). How a batch is processed:

1. Canonicalise the key (the lower endpoint first), hash it to 64 bits and sort
   the batch by (hash prefix, arrival) with one packed uint64 sort, so each
   flow's packets are contiguous and in capture order. Keys sharing a hash
   prefix are detected (adjacent key columns compared) and the batch falls back
   to a full lexicographic sort.
2. Look the groups up among live flows in a vectorised open-addressing hash
   index (``hashindex.HashIndex``), checking the full key of every hit.
3. Cut each key's run into flow *instances* exactly at the packet where a flow
   ends: an idle gap, the active timeout, a TCP RST, or the end of a FIN close.
   Gaps and RSTs are stateless; FIN pairs and the active timeout depend on
   where the instance started, so they are resolved by a short fixed-point
   loop over segments (one or two rounds in practice). A FIN pair does not end
   the flow at once: the flow is *closing* from the packet completing the pair,
   keeps the teardown's trailing packets (the last ACK) and ends before the
   first packet of its key that carries a SYN or comes more than ``fin_grace``
   seconds after that packet (or when the clock passes that time).
4. Update per-flow counters (struct-of-arrays indexed by slot) and append the
   stored packets to one growable columnar store; each flow owns (start, end)
   segments in it. Emitting flows gathers their segments in one fancy-index;
   the store is compacted when half of it is dead.

Where a C compiler is found, steps 1-4 run instead as one pass over the packets in capture
order (``table_kernel.c``: the same flows, proven identical by tests; this numpy code is the
reference and the fallback), and so do the store's gathers.

Flows that end are handed to the emission policy (``WholeFlows``, ``EveryK``,
``Columnar``). Live-flow expiry by the clock runs after each batch and in
``advance(now)``; expiry changes when a flow is emitted, never its packets.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..packets.batch import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, PacketBatch
from . import table_kernel
from .hashindex import HashIndex
from .records import END_REASONS, Flow, FlowKey, FlowUpdate

# end-reason codes: 0 = not ended, else index into END_REASONS plus one
R_IDLE, R_ACTIVE, R_FIN, R_RST, R_EVICTED, R_EOF = range(1, 7)
_REASON_CODE = {name: i + 1 for i, name in enumerate(END_REASONS)}

_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)

# per-packet columns kept in the store, with dtypes
_STORE_COLS = (("ts", np.float64), ("size", np.uint32), ("direction", np.uint8),
               ("wire_len", np.uint32), ("tcp_flags", np.uint8))


def _mix(h: np.ndarray, x: np.ndarray) -> np.ndarray:
    """One splitmix64-style round folding the column ``x`` into the hash ``h``."""
    h = (h ^ x) * _C1
    h ^= h >> _S27
    h *= _C2
    h ^= h >> _S31
    return h


def _small(vlan, proto, aport, bport) -> np.ndarray:
    """VLAN, protocol and both ports packed in one uint64 (one 16-bit lane each)."""
    out = np.zeros(len(vlan), np.uint64)
    lanes = out.view(np.uint16).reshape(-1, 4)
    lanes[:, 0] = bport
    lanes[:, 1] = aport
    lanes[:, 2] = proto
    lanes[:, 3] = vlan
    return out


_K = [np.uint64(k) for k in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                             0xD6E8FEB86659FD93)]


def _hash5(ahi, alo, bhi, blo, small) -> np.ndarray:
    """Each word times its own odd constant, combined, then one splitmix64 round with the last."""
    h = ahi * _K[0]
    h ^= alo * _K[1]
    h ^= bhi * _K[2]
    h ^= blo * _K[3]
    return _mix(h, small)


def _stable_argsort(x: np.ndarray, bound: int) -> np.ndarray:
    """Stable argsort of small non-negative ints (< bound): radix sort on uint16/uint32."""
    if bound <= 0xFFFF:
        return np.argsort(x.astype(np.uint16), kind="stable")
    return np.argsort(x, kind="stable")


def canonical_key(batch: PacketBatch):
    """Key columns with the lower (hi, lo, port) endpoint as ``a``; ``from_a`` per packet."""
    shi, slo, sp = batch.src_hi, batch.src_lo, batch.sport
    dhi, dlo, dp = batch.dst_hi, batch.dst_lo, batch.dport
    swap = (shi > dhi) | ((shi == dhi) & ((slo > dlo) | ((slo == dlo) & (sp > dp))))
    # branch-free select (np.where is several times slower here): x ^ ((x ^ y) & mask)
    m64 = swap.astype(np.uint64)
    np.negative(m64, out=m64)               # all ones where swapped
    m16 = swap.astype(np.uint16)
    np.negative(m16, out=m16)
    xh, xl, xp = (shi ^ dhi) & m64, (slo ^ dlo) & m64, (sp ^ dp) & m16
    ahi, alo, ap = shi ^ xh, slo ^ xl, sp ^ xp
    bhi, blo, bp = dhi ^ xh, dlo ^ xl, dp ^ xp
    return (batch.vlan, batch.proto, ahi, alo, ap, bhi, blo, bp), ~swap


class _Grow:
    """Named numpy columns with amortised O(1) append (capacity doubling); rows past ``n`` are garbage."""

    def __init__(self, cols: Sequence[tuple[str, type]], cap: int = 1024):
        self.dtypes = dict(cols)
        self.cols = {k: np.empty(cap, dtype=d) for k, d in cols}
        self.n = 0

    @property
    def cap(self) -> int:
        return next(iter(self.cols.values())).shape[0]

    def reserve(self, need: int) -> None:
        if need <= self.cap:
            return
        new = max(need, 2 * self.cap)
        for k, a in self.cols.items():
            b = np.empty(new, dtype=a.dtype)
            b[: self.n] = a[: self.n]
            self.cols[k] = b

    def append(self, **vals: np.ndarray) -> int:
        m = len(next(iter(vals.values())))
        start = self.n
        self.reserve(start + m)
        for k, v in vals.items():
            self.cols[k][start:start + m] = v
        self.n = start + m
        return start

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.cols.values())


class _Rows(_Grow):
    """``_Grow`` over one array of records: ``cols[name]`` are (strided) views of its fields.

    The flow table's per-flow state lives here so that one flow's fields share two cache
    lines: the C kernel touches a flow per packet, and twenty separate columns would cost
    twenty cache misses. The layout is C's (``align=True``); ``table_kernel.c`` checks it.
    """

    def __init__(self, cols: Sequence[tuple[str, type]], cap: int = 1024):
        self.dtype = np.dtype(list(cols), align=True)
        self.dtypes = dict(cols)
        self.n = 0
        self._set(np.zeros(cap, self.dtype))

    def _set(self, rows: np.ndarray) -> None:
        self.rows = rows
        self.cols = {k: rows[k] for k in self.dtype.names}

    @property
    def cap(self) -> int:
        return self.rows.shape[0]

    def reserve(self, need: int) -> None:
        if need <= self.cap:
            return
        new = np.zeros(max(need, 2 * self.cap), self.dtype)
        new[: self.n] = self.rows[: self.n]
        self.cols.clear()                   # callers hold this dict: it is updated in place
        self.rows = new
        self.cols.update({k: new[k] for k in self.dtype.names})

    def nbytes(self) -> int:
        return self.rows.nbytes


# per-flow state, hot fields first (the key and what every packet reads share the first line)
_SLOT_COLS = (
    ("ahi", np.uint64), ("alo", np.uint64), ("bhi", np.uint64), ("blo", np.uint64),
    ("vlan", np.uint16), ("aport", np.uint16), ("bport", np.uint16), ("proto", np.uint8),
    ("client_a", np.bool_), ("fin_a", np.bool_), ("fin_b", np.bool_), ("live", np.bool_),
    ("row", np.int32),              # C kernel scratch: 1 + the flow's row in the current batch, 0 = none
    ("last_ts", np.float64), ("first_ts", np.float64),
    ("close_ts", np.float64),       # ts of the packet completing the FIN pair; inf = not closing
    ("pk0", np.int64), ("pk1", np.int64), ("by0", np.int64), ("by1", np.int64),
    ("stored", np.int64), ("sent", np.int64), ("hash", np.uint64), ("fid", np.int64), ("pend_ts", np.float64),
)
_KEY_NAMES = ("vlan", "proto", "ahi", "alo", "aport", "bhi", "blo", "bport")


class FlowTable:
    """Bidirectional flow table with timeouts, TCP close, an LRU cap and an emission policy.

    Parameters (defaults as nfstream's where they exist):
      idle_timeout:  seconds without a packet after which a flow ends ("idle"); None disables.
      active_timeout: seconds after its first packet at which a flow is cut ("active"); the
                     packet that crosses it starts a new flow; None disables.
      max_flows:     cap on live flows; beyond it the least recently seen are evicted
                     ("evicted", counted in ``stats``), checked after each batch.
      tcp_close:     end a TCP flow at an RST, or close it at the packet carrying the second
                     side's FIN: packets of the key within ``fin_grace`` seconds of that packet
                     and without SYN (the last ACK, retransmitted FINs, an RST) stay in the flow;
                     the flow ends ("fin") at the first packet after the grace, at a SYN (a new
                     connection, which starts a new flow), or when the clock passes the grace.
      fin_grace:     seconds a FIN-closed flow keeps its teardown packets (default 2).
      max_packets:   keep at most this many packets per flow (counters still count all); None = all.
      policy:        ``WholeFlows()`` (default) or ``EveryK(k, window_s)``.

    ``add(batch)`` returns what ended or is due in that batch, ``advance(now)`` expires flows by
    the clock alone (a quiet live link), ``flush()`` ends every live flow (end of input).
    A key is (VLAN, L4 protocol, unordered pair of (IP, port)); the client is the sender of
    the flow's first packet, or its receiver when that packet is a SYN+ACK (the SYN was missed).
    """

    def __init__(self, idle_timeout: float | None = 120.0, active_timeout: float | None = 1800.0,
                 max_flows: int | None = 1_000_000, tcp_close: bool = True,
                 max_packets: int | None = None, policy=None, fin_grace: float = 2.0, kernel: str = "auto"):
        for name, v in (("idle_timeout", idle_timeout), ("active_timeout", active_timeout)):
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be > 0 seconds or None, got {v!r}")
        if not fin_grace >= 0:
            raise ValueError(f"fin_grace must be >= 0 seconds, got {fin_grace!r}")
        if max_flows is not None and max_flows < 1:
            raise ValueError(f"max_flows must be >= 1 or None, got {max_flows!r}")
        if max_packets is not None and max_packets < 1:
            raise ValueError(f"max_packets must be >= 1 or None, got {max_packets!r}")
        from .policies import Columnar, WholeFlows

        self.idle_timeout = None if idle_timeout is None else float(idle_timeout)
        self.active_timeout = None if active_timeout is None else float(active_timeout)
        self.max_flows = max_flows
        self.tcp_close = bool(tcp_close)
        self.fin_grace = float(fin_grace)
        self.max_packets = max_packets
        self.policy = policy if policy is not None else WholeFlows()
        # progress() of these policies ignores which slots were touched: no need to order them
        self._order_free = type(self.policy) in (WholeFlows, Columnar)
        self.kernel = table_kernel.choose(kernel)
        self._scratch = np.empty(0, np.uint8)   # the C kernel's per-batch scratch, reused
        self.clock = -np.inf
        self._slots = _Rows(_SLOT_COLS, 1024)
        self._free = np.empty(0, np.int64)      # stack of free slots
        self._n_live = 0
        self._index = HashIndex()
        self._overflow: dict[tuple, int] = {}
        self._store = _Grow(_STORE_COLS, 4096)
        self._segs = _Grow((("slot", np.int64), ("start", np.int64), ("end", np.int64),
                            ("alive", np.bool_)), 1024)
        self._dead = 0          # store packets no longer referenced by a live segment
        self._next_fid = 0
        self.stats: dict = {
            "packets": 0, "batches": 0, "flows_created": 0, "flows_ended": 0,
            "evicted": 0, "packets_not_stored": 0, "max_live": 0, "hash_collisions": 0,
            "ts_clamped": 0,
            "ended": {r: 0 for r in END_REASONS},
        }

    def _monotonic(self, ts: np.ndarray, sst: np.ndarray, send: np.ndarray, cont: np.ndarray,
                   seg_slot: np.ndarray) -> np.ndarray:
        """Timestamps made non-decreasing inside each flow (``Flow.ts``'s promise).

        Merged or multi-interface captures can hold a packet older than its flow's
        previous one. Such a packet keeps its place in the flow (capture order) and
        takes its predecessor's timestamp, so gaps are never negative; each clamped
        packet is counted in ``stats["ts_clamped"]``. Only the rare affected flows
        pay for a loop; the common case is one vectorised comparison.
        """
        n = len(ts)
        if n == 0:
            return ts
        back = np.zeros(n, bool)
        back[1:] = ts[1:] < ts[:-1]
        back[sst] = False                                 # a segment's first packet ...
        prev_last = self._slots.cols["last_ts"][seg_slot]
        back[sst[cont]] = ts[sst[cont]] < prev_last[cont]  # ... is compared with its live flow
        if not back.any():
            return ts
        ts = ts.copy()
        seg_of = np.searchsorted(sst, np.flatnonzero(back), side="right") - 1
        clamped = 0
        for g in np.unique(seg_of).tolist():
            a, b = int(sst[g]), int(send[g])
            old = ts[a:b].copy()
            if cont[g]:
                ts[a] = max(ts[a], prev_last[g])
            np.maximum.accumulate(ts[a:b], out=ts[a:b])
            clamped += int((ts[a:b] != old).sum())
        self.stats["ts_clamped"] += clamped
        return ts

    # ------------------------------------------------------------------ public
    def __len__(self) -> int:
        return self._n_live

    @property
    def live_flows(self) -> int:
        return self._n_live

    def add(self, batch: PacketBatch) -> list[Flow | FlowUpdate]:
        """Feed one batch; returns the flows/updates that ended or became due in it."""
        n = len(batch)
        self.stats["batches"] += 1
        if n == 0:
            return []
        self.stats["packets"] += n
        out: list = []
        touched = self._ingest_c(batch, out) if self.kernel == "c" else self._ingest(batch, out)
        if not self._order_free:
            touched = touched[np.argsort(self._slots.cols["fid"][touched])]   # the same order on both paths
        now = float(batch.ts.max())
        if now > self.clock:
            self.clock = now
        out.extend(self.policy.progress(self, touched, self.clock))
        out.extend(self._expire(self.clock))
        out.extend(self._evict())
        self.stats["max_live"] = max(self.stats["max_live"], self._n_live)
        self._maybe_compact()
        return out

    def advance(self, now: float) -> list[Flow | FlowUpdate]:
        """Move the clock to ``now`` without packets: expire idle/active flows, flush due windows."""
        if now > self.clock:
            self.clock = float(now)
        live = np.flatnonzero(self._slots.cols["live"][: self._slots.n])
        live = live[np.argsort(self._slots.cols["fid"][live])]
        out = list(self.policy.progress(self, live, self.clock))
        out.extend(self._expire(self.clock))
        self._maybe_compact()
        return out

    def flush(self, reason: str = "eof") -> list[Flow | FlowUpdate]:
        """End every live flow with ``reason`` (default "eof"), oldest flow first."""
        if reason not in _REASON_CODE:
            raise ValueError(f"reason must be one of {END_REASONS}, got {reason!r}")
        live = np.flatnonzero(self._slots.cols["live"][: self._slots.n])
        out = self._end(live, np.full(len(live), _REASON_CODE[reason], np.int8))
        self._maybe_compact()
        return out

    def memory_bytes(self) -> int:
        """Bytes held by the table's arrays and index (an estimate for the dict)."""
        import sys

        over = sys.getsizeof(self._overflow) + len(self._overflow) * 200
        return (self._slots.nbytes() + self._store.nbytes() + self._segs.nbytes() + self._index.nbytes
                + self._free.nbytes + over)

    # ------------------------------------------------------------- internals
    def _ingest_c(self, batch: PacketBatch, out: list) -> np.ndarray:
        """``_ingest`` by the compiled kernel (``table_kernel.c``): the same flows, one pass."""
        end_slots, end_codes, touched, created = table_kernel.ingest(self, batch)
        self._n_live += created
        self.stats["flows_created"] += created
        if len(end_slots):
            out.extend(self._end(end_slots, end_codes, indexed=False))
        return touched

    def _ingest(self, batch: PacketBatch, out: list) -> np.ndarray:
        S = self._slots.cols
        n = len(batch)
        keys, from_a = canonical_key(batch)
        small = _small(keys[0], keys[1], keys[4], keys[7])
        cols5 = (keys[2], keys[3], keys[5], keys[6], small)
        h = _hash5(*cols5)
        # sort by (hash prefix, arrival): one vectorised unstable sort of packed uint64s
        bits = max(1, (n - 1).bit_length())
        sh = np.uint64(bits)
        packed = ((h >> sh) << sh) | np.arange(n, dtype=np.uint64)
        srt = np.sort(packed)
        order = (srt & np.uint64((1 << bits) - 1)).astype(np.int64)
        hp = srt >> sh
        gstart = np.concatenate((np.zeros(1, np.int64), np.flatnonzero(hp[1:] != hp[:-1]) + 1))
        G = len(gstart)
        glen = np.diff(np.append(gstart, n))
        gid = np.repeat(np.arange(G), glen)
        # every packet's key must equal its group's first key (else: hash prefixes collided)
        gfirst = order[gstart]
        gid_o = np.empty(n, np.int64)
        gid_o[order] = gid
        if any((c != np.take(c[gfirst], gid_o)).any() for c in cols5):
            self.stats["hash_collisions"] += 1
            order = np.lexsort(cols5[::-1])
            chg = np.zeros(n - 1, bool)
            for c in cols5:
                cs = c[order]
                chg |= cs[1:] != cs[:-1]
            gstart = np.concatenate((np.zeros(1, np.int64), np.flatnonzero(chg) + 1))
            G = len(gstart)
            glen = np.diff(np.append(gstart, n))
            gid = np.repeat(np.arange(G), glen)
        gfirst = order[gstart]
        gkeys = [k[gfirst] for k in keys]
        ghash = h[gfirst]

        # look the groups up among live flows
        gslot, _ = self._index.lookup(ghash)
        found = gslot >= 0
        if found.any():
            fs = gslot[found]
            bad = np.zeros(len(fs), bool)
            for name, gk in zip(_KEY_NAMES, gkeys):
                bad |= S[name][fs] != gk[found]
            if bad.any():
                idx = np.flatnonzero(found)[bad]
                gslot[idx] = -1
        if self._overflow:
            for g in np.flatnonzero(gslot < 0).tolist():
                s = self._overflow.get(tuple(int(k[g]) for k in gkeys))
                if s is not None:
                    gslot[g] = s
        live_g = gslot >= 0

        # (np.take: a third faster than fancy indexing for these 1-D gathers)
        ts = np.take(batch.ts, order)
        fl = np.take(batch.tcp_flags, order)
        fa = np.take(from_a, order)
        is_gs = np.zeros(n, bool)
        is_gs[gstart] = True
        pslot_g = np.where(live_g, gslot, 0)

        # start_new[i]: packet i starts a new flow instance; why[i]: why the previous one ended
        start_new = is_gs.copy()
        start_new[gstart] = ~live_g
        why = np.zeros(n, np.int8)
        ended_by = np.zeros(n, np.int8)      # flow ends right after this packet (rst)
        if self.idle_timeout is not None:
            prev = np.empty(n)
            prev[1:] = ts[:-1]
            prev[gstart] = np.where(live_g, S["last_ts"][pslot_g], np.inf)
            idle = (ts - prev) > self.idle_timeout
            why[idle] = R_IDLE
            start_new |= idle
        is_tcp = np.take(batch.proto, order) == 6
        if self.tcp_close:
            rst = ((fl & TCP_RST) != 0) & is_tcp
            if rst.any():
                ended_by[rst] = R_RST
                nxt = np.flatnonzero(rst[:-1] & ~is_gs[1:]) + 1
                why[nxt[~start_new[nxt]]] = R_RST
                start_new[nxt] = True
            fin = ((fl & TCP_FIN) != 0) & is_tcp
            syn = ((fl & TCP_SYN) != 0) & is_tcp
            do_fin = bool(fin.any()) or bool((S["fin_a"][gslot[live_g]] | S["fin_b"][gslot[live_g]]).any())
            if do_fin:
                # a FIN pair can only end a flow in a key that has FINs from both sides
                ga = np.logical_or.reduceat(fin & fa, gstart) | (live_g & S["fin_a"][pslot_g])
                gb = np.logical_or.reduceat(fin & ~fa, gstart) | (live_g & S["fin_b"][pslot_g])
                do_fin = bool((ga & gb).any())
        else:
            do_fin = False
        act = self.active_timeout
        if act is not None:
            # no packet can be an active timeout past the earliest possible flow start: skip it
            t0 = float(ts.min())
            if live_g.any():
                t0 = min(t0, float(S["first_ts"][gslot[live_g]].min()))
            if float(ts.max()) - t0 <= act:
                act = None
        if act is not None or do_fin:
            if do_fin:
                fin_a = (fin & fa).astype(np.int64)
                fin_b = (fin & ~fa).astype(np.int64)
                cfa, cfb = np.cumsum(fin_a), np.cumsum(fin_b)
                g0a = np.where(live_g, S["fin_a"][pslot_g], False)
                g0b = np.where(live_g, S["fin_b"][pslot_g], False)
                g_close = np.where(live_g, S["close_ts"][pslot_g], np.inf)   # live flows closing
                g_closing = np.isfinite(g_close)
                grace = self.fin_grace
            g_first_ts = np.where(live_g, S["first_ts"][pslot_g], 0.0)
            ar = np.arange(n)
            for _ in range(n + 1):
                seg = start_new | is_gs
                sst = np.flatnonzero(seg)
                sid = np.cumsum(seg) - 1
                cont = ~start_new[sst]                       # segment continues a live flow
                sg = gid[sst]
                split = np.full(len(sst), n + 1, np.int64)   # first new boundary per segment
                kind = np.zeros(len(sst), np.int8)
                if act is not None:
                    sft = np.where(cont, g_first_ts[sg], ts[sst])
                    cand = (ts - sft[sid]) > act
                    p = np.minimum.reduceat(np.where(cand, ar, n + 1), sst)
                    better = p < split
                    split[better], kind[better] = p[better], R_ACTIVE
                if do_fin:
                    ia = np.where(cont, g0a[sg], False).astype(np.int64)
                    ib = np.where(cont, g0b[sg], False).astype(np.int64)
                    sa = cfa - (cfa[sst] - fin_a[sst] - ia)[sid]
                    sb = cfb - (cfb[sst] - fin_b[sst] - ib)[sid]
                    both = (sa > 0) & (sb > 0)
                    # the flow closes at the packet completing the FIN pair (before the segment
                    # if it continues a closing flow) and ends before the first later packet
                    # with a SYN or past the grace
                    cpos = np.minimum.reduceat(np.where(both, ar, n), sst)
                    pre = cont & g_closing[sg]
                    cpos[pre] = sst[pre] - 1
                    cts = np.where(pre, g_close[sg], np.take(ts, np.minimum(cpos, n - 1)))
                    cand = (ar > cpos[sid]) & (syn | ((ts - cts[sid]) > grace))
                    p = np.minimum.reduceat(np.where(cand, ar, n + 1), sst)
                    better = p < split
                    split[better], kind[better] = p[better], R_FIN
                changed = False
                # apply: split positions that land inside the same group and are new boundaries
                hit = split <= n
                if hit.any():
                    sp, kd = split[hit], kind[hit]
                    inside = sp < n
                    sp2, kd2 = sp[inside], kd[inside]
                    ok = ~is_gs[sp2] & ~start_new[sp2]
                    # an active or close cut at a continuing segment's first packet ends the live flow
                    ok_first = ((kd2 == R_ACTIVE) | (kd2 == R_FIN)) & is_gs[sp2] & ~start_new[sp2]
                    sel = ok | ok_first
                    if sel.any():
                        why[sp2[sel]] = kd2[sel]
                        start_new[sp2[sel]] = True
                        changed = True
                if not changed:
                    break

        # final segments = flow instances in this batch
        seg = start_new | is_gs
        sst = np.flatnonzero(seg)
        nseg = len(sst)
        sid = np.cumsum(seg) - 1
        send = np.append(sst[1:], n)
        sg = gid[sst]
        cont = ~start_new[sst]
        last_of_group = np.append(sg[1:] != sg[:-1], True)
        # why each segment's instance ends: fin/rst at its last packet, else the next one's cause
        nxt_why = np.append(why[sst[1:]], 0)
        s_end = np.where(ended_by[send - 1] != 0, ended_by[send - 1], np.where(last_of_group, 0, nxt_why))
        # live flows whose instance ended before this batch's first packet of the key
        old_end_g = live_g & start_new[gstart]
        old_slots = gslot[old_end_g]
        old_reason = why[gstart[old_end_g]]

        # slots for the fresh instances
        fresh = ~cont
        nf = int(fresh.sum())
        seg_slot = np.empty(nseg, np.int64)
        seg_slot[cont] = gslot[sg[cont]]
        if nf:
            new_slots = self._alloc(nf)
            fpos = order[sst[fresh]]
            rank = np.empty(nf, np.int64)
            rank[np.argsort(fpos)] = np.arange(nf)          # positions are distinct
            seg_slot[fresh] = new_slots
            fi = sst[fresh]
            fg = sg[fresh]
            for name, k in zip(_KEY_NAMES, gkeys):
                S[name][new_slots] = k[fg]
            S["hash"][new_slots] = ghash[fg]
            synack = ((fl[fi] & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)) & is_tcp[fi]
            S["client_a"][new_slots] = fa[fi] ^ synack
            S["fid"][new_slots] = self._next_fid + rank
            self._next_fid += nf
            S["first_ts"][new_slots] = ts[fi]
            S["pend_ts"][new_slots] = ts[fi]
            for name in ("pk0", "pk1", "by0", "by1", "stored", "sent"):
                S[name][new_slots] = 0
            S["fin_a"][new_slots] = False
            S["fin_b"][new_slots] = False
            S["close_ts"][new_slots] = np.inf
            S["live"][new_slots] = True
            self._n_live += nf
            self.stats["flows_created"] += nf

        if do_fin:
            # closing time of each final segment's flow (the last loop round saw these segments)
            S["close_ts"][seg_slot] = np.where(cpos < send, cts, np.inf)
        ts = self._monotonic(ts, sst, send, cont, seg_slot)
        pslot = np.take(seg_slot, sid)
        direction = (fa != np.take(S["client_a"], pslot)).astype(np.uint8)
        wire = np.take(batch.wire_len, order)
        d0 = direction == 0
        w64 = wire.astype(np.int64)
        c0 = np.add.reduceat(d0.astype(np.int64), sst)
        b0 = np.add.reduceat(w64 * d0, sst)         # (np.where with a scalar is several times slower)
        cnt = send - sst
        S["pk0"][seg_slot] += c0
        S["pk1"][seg_slot] += cnt - c0
        S["by0"][seg_slot] += b0
        S["by1"][seg_slot] += np.add.reduceat(w64, sst) - b0
        S["last_ts"][seg_slot] = np.maximum.reduceat(ts, sst)
        if self.tcp_close:
            S["fin_a"][seg_slot] |= np.logical_or.reduceat(fin & fa, sst)
            S["fin_b"][seg_slot] |= np.logical_or.reduceat(fin & ~fa, sst)

        # store packets (at most max_packets per flow)
        prior = S["stored"][seg_slot]
        if self.max_packets is not None:
            pos = np.arange(n) - sst[sid] + prior[sid]
            keep = pos < self.max_packets
            kept = np.add.reduceat(keep.astype(np.int64), sst)
            self.stats["packets_not_stored"] += int(n - kept.sum())
            sel = keep
        else:
            kept = cnt
            sel = slice(None)
        size = np.take(batch.ip_len, order)
        had_none = (prior - S["sent"][seg_slot]) == 0
        base = self._store.append(ts=ts[sel], size=size[sel], direction=direction[sel],
                                  wire_len=wire[sel], tcp_flags=fl[sel])
        kstart = base + np.concatenate(([0], np.cumsum(kept)[:-1]))
        nz = kept > 0
        self._segs.append(slot=seg_slot[nz], start=kstart[nz], end=(kstart + kept)[nz],
                          alive=np.ones(int(nz.sum()), bool))
        S["stored"][seg_slot] += kept
        upd = had_none & nz
        if upd.any():
            S["pend_ts"][seg_slot[upd]] = self._store.cols["ts"][kstart[upd]]

        # maintain the index: remove ended live flows, add instances that stay live
        ended_seg = s_end != 0
        self._unindex(np.concatenate((old_slots, seg_slot[cont & ended_seg])))
        self._reindex(seg_slot[fresh & ~ended_seg])

        # end what ended, oldest flow first
        end_slots = np.concatenate((old_slots, seg_slot[ended_seg]))
        end_codes = np.concatenate((old_reason, s_end[ended_seg])).astype(np.int8)
        if len(end_slots):
            out.extend(self._end(end_slots, end_codes, indexed=False))
        return seg_slot[~ended_seg]

    def _alloc(self, m: int) -> np.ndarray:
        take = min(m, len(self._free))
        got = self._free[len(self._free) - take:]
        self._free = self._free[: len(self._free) - take]
        rest = m - take
        if rest:
            start = self._slots.n
            self._slots.reserve(start + rest)
            self._slots.n = start + rest
            got = np.concatenate((got, np.arange(start, start + rest, dtype=np.int64)))
        return got

    def _key_tuple(self, s: int) -> tuple:
        S = self._slots.cols
        return tuple(int(S[k][s]) for k in _KEY_NAMES)

    def _reindex(self, slots: np.ndarray) -> None:
        """Make ``slots`` findable; a hash already taken (true collision) goes to the side dict."""
        if len(slots) == 0:
            return
        h = self._slots.cols["hash"][slots]
        taken = self._index.lookup(h)[0] >= 0
        sh = np.sort(h)
        if (sh[1:] == sh[:-1]).any():
            dup = np.ones(len(h), bool)
            dup[np.unique(h, return_index=True)[1]] = False
        else:
            dup = np.zeros(len(h), bool)
        side = taken | dup
        self._index.insert(h[~side], slots[~side])
        for s in slots[side].tolist():
            self._overflow[self._key_tuple(s)] = s

    def _unindex(self, slots: np.ndarray) -> None:
        if len(slots) == 0:
            return
        res, where = self._index.lookup(self._slots.cols["hash"][slots], want=slots)
        mine = res == slots
        self._index.remove_at(where[mine])
        if self._overflow and not mine.all():
            for s in slots[~mine].tolist():
                self._overflow.pop(self._key_tuple(s), None)

    def _end(self, slots: np.ndarray, codes: np.ndarray, indexed: bool = True) -> list:
        """Hand ended flows to the policy and free their slots. Ordered by flow id."""
        if len(slots) == 0:
            return []
        S = self._slots.cols
        o = np.argsort(S["fid"][slots])                   # flow ids are distinct
        slots, codes = slots[o], codes[o]
        # a FIN-closed flow ends as "fin" whatever cut its grace short (eviction excepted)
        cl = np.isfinite(S["close_ts"][slots]) & (codes != R_EVICTED)
        if cl.any():
            codes = np.where(cl, R_FIN, codes).astype(np.int8)
        if indexed:
            self._unindex(slots)
        out = self.policy.final(self, slots, codes)
        S["live"][slots] = False
        self._n_live -= len(slots)
        self._free = np.concatenate((self._free, slots))
        ended = self.stats["ended"]
        self.stats["flows_ended"] += len(slots)
        for c, k in zip(*np.unique(codes, return_counts=True)):
            ended[END_REASONS[int(c) - 1]] += int(k)
        return out

    def _expire(self, now: float) -> list:
        n = self._slots.n
        S = self._slots.cols
        live = S["live"][:n]
        if not self._n_live:
            return []
        if self.kernel == "c":
            slots, codes = table_kernel.expire(self, now)
            return self._end(slots, codes) if len(slots) else []
        code = np.zeros(n, np.int8)
        if self.active_timeout is not None:
            code[live & (now - S["first_ts"][:n] > self.active_timeout)] = R_ACTIVE
        if self.idle_timeout is not None:
            code[live & (now - S["last_ts"][:n] > self.idle_timeout)] = R_IDLE
        if self.tcp_close:
            code[live & (now - S["close_ts"][:n] > self.fin_grace)] = R_FIN
        slots = np.flatnonzero(code)
        return self._end(slots, code[slots]) if len(slots) else []

    def _evict(self) -> list:
        if self.max_flows is None or self._n_live <= self.max_flows:
            return []
        S = self._slots.cols
        live = np.flatnonzero(S["live"][: self._slots.n])
        m = self._n_live - self.max_flows
        # least recently seen first; equal times: the older flow (so the victims never depend on slots)
        victims = live[np.lexsort((S["fid"][live], S["last_ts"][live]))[:m]]
        self.stats["evicted"] += len(victims)
        return self._end(victims, np.full(len(victims), R_EVICTED, np.int8))

    # ---- packet store
    def take(self, slots: np.ndarray, *, hold: bool = False):
        """Gather the stored, unsent packets of ``slots`` (in that order) and release them.

        Returns (offsets, columns): packets of ``slots[i]`` are ``columns[c][offsets[i]:offsets[i+1]]``.
        Used by the policies; ``hold=True`` keeps nothing in the store either (callers re-store).
        """
        if self.kernel == "c":
            offsets, cols, total = table_kernel.take(self, np.asarray(slots, np.int64))
            self._dead += total
            return offsets, cols
        G = self._segs
        ns = G.n
        want = np.full(self._slots.n, -1, np.int64)
        want[slots] = np.arange(len(slots))
        seg_slot = G.cols["slot"][:ns]
        r = want[seg_slot]
        m = (r >= 0) & G.cols["alive"][:ns]
        idx = np.flatnonzero(m)
        rk = r[idx]
        o = _stable_argsort(rk, len(slots))
        idx, rk = idx[o], rk[o]
        st = G.cols["start"][idx]
        L = G.cols["end"][idx] - st
        total = int(L.sum())
        cols = self._gather(st, L, total)
        counts = np.bincount(rk, weights=L, minlength=len(slots)).astype(np.int64)
        offsets = np.concatenate(([0], np.cumsum(counts)))
        G.cols["alive"][idx] = False
        self._dead += total
        return offsets, cols

    def restore(self, slots: np.ndarray, offsets: np.ndarray, cols: dict) -> None:
        """Put packets back into the store as one segment per slot (the unsent tail)."""
        counts = np.diff(offsets)
        nz = counts > 0
        if not nz.any():
            return
        base = self._store.append(**cols)
        st = base + offsets[:-1]
        self._segs.append(slot=slots[nz], start=st[nz], end=(st + counts)[nz],
                          alive=np.ones(int(nz.sum()), bool))
        self._slots.cols["pend_ts"][slots[nz]] = cols["ts"][offsets[:-1][nz]]

    def _gather(self, start: np.ndarray, length: np.ndarray, total: int) -> dict[str, np.ndarray]:
        """Store packets of segments [start, start + length), back to back, per column."""
        if self.kernel == "c":
            return table_kernel.gather(self._store.cols, start, length)
        cum = np.cumsum(length) - length
        flat = np.repeat(start - cum, length) + np.arange(total)
        return {k: np.take(self._store.cols[k], flat) for k in self._store.cols}

    def _maybe_compact(self) -> None:
        st = self._store
        if st.n < (1 << 16) or self._dead * 2 < st.n:
            return
        G = self._segs
        alive = G.cols["alive"][: G.n]
        idx = np.flatnonzero(alive)
        slots = G.cols["slot"][idx]
        o = _stable_argsort(slots, self._slots.n)
        idx = idx[o]
        stt = G.cols["start"][idx]
        L = G.cols["end"][idx] - stt
        total = int(L.sum())
        cap = max(4096, 2 * total)
        new = _Grow(_STORE_COLS, cap)
        new.append(**self._gather(stt, L, total))
        self._store = new
        ss = slots[o]
        us, first = np.unique(ss, return_index=True)
        cnt = np.diff(np.append(first, len(ss)))
        lens = np.add.reduceat(L, first) if len(first) else L[:0]
        del cnt
        starts = np.concatenate(([0], np.cumsum(lens)[:-1])) if len(lens) else lens
        segs = _Grow((("slot", np.int64), ("start", np.int64), ("end", np.int64), ("alive", np.bool_)),
                     max(1024, 2 * len(us)))
        segs.append(slot=us, start=starts, end=starts + lens, alive=np.ones(len(us), bool))
        self._segs = segs
        self._dead = 0

    # ---- records
    def key_columns(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Flow-level columns of ``slots`` as in the extract file (client side first)."""
        S = self._slots.cols
        ca = S["client_a"][slots]
        out = {"flow_id": S["fid"][slots], "vlan": S["vlan"][slots], "proto": S["proto"][slots]}
        for side, (x, y) in (("client", ("a", "b")), ("server", ("b", "a"))):
            for part, col in (("hi", "{}hi"), ("lo", "{}lo"), ("port", "{}port")):
                out[f"{side}_{part}"] = np.where(ca, S[col.format(x)][slots], S[col.format(y)][slots])
        out["first_ts"] = S["first_ts"][slots]
        out["last_ts"] = S["last_ts"][slots]
        out["c2s_pkts"], out["s2c_pkts"] = S["pk0"][slots], S["pk1"][slots]
        out["c2s_bytes"], out["s2c_bytes"] = S["by0"][slots], S["by1"][slots]
        return out

    def keys_of(self, slots: np.ndarray) -> list[FlowKey]:
        """FlowKey objects (client first) of ``slots``."""
        S = self._slots.cols
        ca = S["client_a"][slots]
        ahi, alo, ap = S["ahi"][slots], S["alo"][slots], S["aport"][slots]
        bhi, blo, bp = S["bhi"][slots], S["blo"][slots], S["bport"][slots]
        chi, clo, cp = np.where(ca, ahi, bhi), np.where(ca, alo, blo), np.where(ca, ap, bp)
        shi, slo, sp = np.where(ca, bhi, ahi), np.where(ca, blo, alo), np.where(ca, bp, ap)
        return [FlowKey(*t) for t in zip(S["vlan"][slots].tolist(), S["proto"][slots].tolist(),
                                         chi.tolist(), clo.tolist(), cp.tolist(),
                                         shi.tolist(), slo.tolist(), sp.tolist())]
