"""A vectorised open-addressing hash map: uint64 key hash -> int64 slot.

Why not a dict: at a million live flows a dict costs ~100 B and ~0.5 µs of
Python per flow per lookup; this map costs 16 B per bucket (load <= 1/2) and
resolves a whole batch of lookups in a few numpy passes. Linear probing with
tombstones; the caller guarantees that inserted hashes are absent and unique
(the flow table keeps true 64-bit hash collisions in a small side dict).
"""
from __future__ import annotations

import numpy as np

EMPTY, TOMB = -1, -2
_SPARSE_UP_TO = 1 << 16     # live entries up to which the index is kept at load <= 1/4


class HashIndex:
    def __init__(self, cap: int = 1024):
        self._alloc(max(16, 1 << (int(cap) - 1).bit_length()))
        self.used = 0
        self.tomb = 0

    def _alloc(self, cap: int) -> None:
        # (hash, slot) pairs side by side: a probe costs one cache miss, not two
        self.cap = cap
        self.table = np.zeros(cap, np.dtype([("key", np.uint64), ("val", np.int64)]))
        self.keys = self.table["key"]
        self.vals = self.table["val"]
        self.vals[:] = EMPTY

    def __len__(self) -> int:
        return self.used

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    def _probe_start(self, h: np.ndarray) -> np.ndarray:
        return (h & np.uint64(self.cap - 1)).astype(np.int64)

    def lookup(self, h: np.ndarray, want: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(slot or -1, bucket or -1) for each hash in ``h``; with ``want``, the entry of ``h[i]`` that
        maps to ``want[i]`` (where equal hashes of different keys share the index, as the C kernel does)."""
        m = len(h)
        res = np.full(m, -1, np.int64)
        where = np.full(m, -1, np.int64)
        if self.used == 0 or m == 0:
            return res, where
        idx = np.arange(m)
        p = self._probe_start(h)
        hh = h
        ww = want
        mask = self.cap - 1
        while len(idx):
            v = self.vals[p]
            hit = (v >= 0) & (self.keys[p] == hh)
            if ww is not None:
                hit &= v == ww
            if hit.any():
                res[idx[hit]] = v[hit]
                where[idx[hit]] = p[hit]
            go = ~hit & (v != EMPTY)
            idx, p, hh = idx[go], (p[go] + 1) & mask, hh[go]
            if ww is not None:
                ww = ww[go]
        return res, where

    def reserve(self, m: int) -> None:
        """Room for ``m`` more inserts at load <= 1/2 (the C kernel inserts without resizing)."""
        if (self.used + self.tomb + m) * 2 > self.cap:
            self._rehash(self.used + m)

    def insert(self, h: np.ndarray, slots: np.ndarray) -> None:
        """Add absent, distinct hashes ``h`` mapping to ``slots``."""
        m = len(h)
        if m == 0:
            return
        if (self.used + self.tomb + m) * 2 > self.cap:
            self._rehash(self.used + m)
        idx = np.arange(m)
        p = self._probe_start(h)
        mask = self.cap - 1
        while len(idx):
            v = self.vals[p]
            free = np.flatnonzero(v < 0)
            done = np.zeros(len(idx), bool)
            if len(free):
                pf = p[free]
                o = np.argsort(pf)                      # any one winner per bucket
                spf = pf[o]
                first = np.ones(len(o), bool)
                first[1:] = spf[1:] != spf[:-1]
                win = free[o[first]]
                pw = p[win]
                self.tomb -= int((self.vals[pw] == TOMB).sum())
                self.keys[pw] = h[idx[win]]
                self.vals[pw] = slots[idx[win]]
                self.used += len(win)
                done[win] = True
            keep = ~done
            idx, p = idx[keep], (p[keep] + 1) & mask

    def remove_at(self, buckets: np.ndarray) -> None:
        """Delete the entries in ``buckets`` (as returned by ``lookup``)."""
        if len(buckets) == 0:
            return
        self.vals[buckets] = TOMB
        self.used -= len(buckets)
        self.tomb += len(buckets)
        if self.tomb * 4 > self.cap:
            self._rehash(self.used)

    def _rehash(self, need: int) -> None:
        live = self.vals >= 0
        k, v = self.keys[live], self.vals[live]
        # load <= 1/4 while the index is small (shorter probe runs, fewer rehashes), <= 1/2 for
        # large tables, where its memory per flow matters
        cap = 16
        grow = 4 if need <= _SPARSE_UP_TO else 2
        while cap < grow * max(need, 1) + 2:
            cap *= 2
        cap = max(cap, 1024)
        self._alloc(cap)
        self.used = self.tomb = 0
        self.insert(k, v)
