"""Synthetic PacketBatches and a per-packet reference flow table for the flow tests."""
from __future__ import annotations

import numpy as np

from trafficsnn.packets.batch import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, PacketBatch


def make_batch(rows) -> PacketBatch:
    """rows: (ts, src_lo, sport, dst_lo, dport, proto, ip_len, flags[, vlan])."""
    cols = {k: [] for k in ("ts", "src_lo", "sport", "dst_lo", "dport", "proto", "ip_len", "tcp_flags", "vlan")}
    for r in rows:
        r = tuple(r) + ((0,) if len(r) == 8 else ())
        for k, v in zip(cols, r):
            cols[k].append(v)
    n = len(rows)
    z = np.zeros(n, np.uint64)
    return PacketBatch.from_columns(
        ts=np.array(cols["ts"], float), src_hi=z, src_lo=np.array(cols["src_lo"], np.uint64),
        dst_hi=z, dst_lo=np.array(cols["dst_lo"], np.uint64), sport=cols["sport"], dport=cols["dport"],
        proto=cols["proto"], ip_len=cols["ip_len"], wire_len=np.array(cols["ip_len"]) + 14,
        tcp_flags=cols["tcp_flags"], vlan=cols["vlan"], ip_version=np.full(n, 4))


def random_batch(rng, n, n_keys=20, t0=0.0, rate=10.0, tcp_close=True) -> PacketBatch:
    """n packets over n_keys endpoint pairs, both directions, with SYN/FIN/RST sprinkled in."""
    k = rng.integers(0, n_keys, n)
    rev = rng.random(n) < 0.4
    a_lo, b_lo = 1000 + k, 5000 + k % 3
    ap, bp = 10000 + k, np.full(n, 443)
    ts = t0 + np.cumsum(rng.exponential(1.0 / rate, n))
    proto = np.where(k % 4 == 0, 17, 6)
    flags = np.where(proto == 6, TCP_ACK, 0)
    u = rng.random(n)
    if tcp_close:
        flags = np.where((proto == 6) & (u < 0.05), flags | TCP_FIN, flags)
        flags = np.where((proto == 6) & (u > 0.99), TCP_RST, flags)
    flags = np.where((proto == 6) & (u > 0.95) & (u < 0.97), TCP_SYN, flags)
    flags = np.where((proto == 6) & (u > 0.97) & (u < 0.98), TCP_SYN | TCP_ACK, flags)
    z = np.zeros(n, np.uint64)
    return PacketBatch.from_columns(
        ts=ts, src_hi=z, src_lo=np.where(rev, b_lo, a_lo), dst_hi=z, dst_lo=np.where(rev, a_lo, b_lo),
        sport=np.where(rev, bp, ap), dport=np.where(rev, ap, bp), proto=proto,
        ip_len=rng.integers(40, 1500, n), wire_len=rng.integers(54, 1514, n), tcp_flags=flags,
        vlan=np.where(k % 7 == 0, 5, 0), ip_version=np.full(n, 4))


class RefTable:
    """Obviously-correct per-packet flow table with the same semantics as FlowTable."""

    def __init__(self, idle=None, active=None, tcp_close=False, grace=2.0):
        self.idle, self.active, self.tcp_close, self.grace = idle, active, tcp_close, grace
        self.live, self.done, self.fid = {}, [], 0

    def _end(self, key, reason):
        f = self.live.pop(key)
        f["reason"] = "fin" if f["close"] is not None else reason   # a FIN-closed flow ends as "fin"
        self.done.append(f)

    def add(self, b: PacketBatch):
        for i in range(len(b)):
            src = (int(b.src_hi[i]), int(b.src_lo[i]), int(b.sport[i]))
            dst = (int(b.dst_hi[i]), int(b.dst_lo[i]), int(b.dport[i]))
            a, z = (src, dst) if src <= dst else (dst, src)
            key = (int(b.vlan[i]), int(b.proto[i]), a, z)
            ts, fl, tcp = float(b.ts[i]), int(b.tcp_flags[i]), int(b.proto[i]) == 6
            f = self.live.get(key)
            if f is not None:
                if f["close"] is not None and ((fl & TCP_SYN and tcp) or ts - f["close"] > self.grace):
                    self._end(key, "fin")       # closing flow: a new connection or past the grace
                    f = None
                elif self.idle is not None and ts - f["last"] > self.idle:
                    self._end(key, "idle")
                    f = None
                elif self.active is not None and ts - f["first"] > self.active:
                    self._end(key, "active")
                    f = None
            if f is None:
                synack = tcp and (fl & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)
                client = dst if synack else src
                f = self.live[key] = dict(fid=self.fid, client=client, first=ts, last=ts, ts=[], size=[],
                                          dir=[], fins=set(), key=key, close=None)
                self.fid += 1
            d = 0 if src == f["client"] else 1
            f["ts"].append(ts)
            f["size"].append(int(b.ip_len[i]))
            f["dir"].append(d)
            f["last"] = max(f["last"], ts)
            if self.tcp_close and tcp:
                if fl & TCP_FIN:
                    f["fins"].add(d)
                if len(f["fins"]) == 2 and f["close"] is None:
                    f["close"] = ts             # closing: keeps the teardown's last packets
                if fl & TCP_RST:
                    self._end(key, "rst")
        now = float(b.ts.max())
        for key, f in list(self.live.items()):
            if f["close"] is not None and now - f["close"] > self.grace:
                self._end(key, "fin")
            elif self.idle is not None and now - f["last"] > self.idle:
                self._end(key, "idle")
            elif self.active is not None and now - f["first"] > self.active:
                self._end(key, "active")

    def flush(self):
        for key in list(self.live):
            self._end(key, "eof")
        return sorted(self.done, key=lambda f: f["fid"])
