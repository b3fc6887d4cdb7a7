"""Locating classic pcap records in a chunk: a speculative numpy walk with an exact fallback.

A pcap file is a chain: each record header gives the length of its data, so the
next header's offset is only known after reading this one. A Python loop over
the headers costs ~150 ns a record, the largest single cost of reading a big
capture. ``chain_walk`` instead guesses every plausible header in the chunk at
once (the most significant byte of ``ts_sec`` equals the first record's and
the caplen is in range), links each guess to the guess its caplen points at,
keeps what is reachable from offset 0 (pruning chains of false guesses) and
*verifies* that the result is one unbroken chain from offset 0. Where it cannot
go on (a capture spanning ~194 days, timestamps near zero, a corrupt header, a
false guess it cannot rule out) it keeps the proven prefix and the Python loop
walks the rest: the output is always exactly the sequential walk's.
"""
from __future__ import annotations

import struct

import numpy as np

from . import kernel

MIN_VECTOR_BYTES = 1 << 16   # below this a chunk is walked in Python (the setup costs more)
_MAX_ROUNDS = 32             # pruning rounds for chains of false guesses (one or two in practice)


def python_walk(buf: bytes, rhl: int, order: str, safe: int, start: int = 0) -> tuple[list[int], int]:
    """Record offsets visited from ``start`` while the offset is <= ``safe``, and where it stopped.

    Caplens are not validated here: callers check them (vectorised) afterwards.
    """
    u32 = struct.Struct(order + "I").unpack_from
    offs: list[int] = []
    ap = offs.append
    p = start
    while p <= safe:
        ap(p)
        p += rhl + u32(buf, p + 8)[0]
    return offs, p


def chain_walk(buf: bytes, rhl: int, order: str, safe: int, lim: int,
               scratch: np.ndarray | None = None) -> tuple[np.ndarray, int] | None:
    """A prefix of the offsets ``python_walk(buf, rhl, order, safe)`` visits, as an int64 array,
    and the offset of the record after it (continue the walk there), or ``None``.

    The prefix is proven: it starts at 0 and every offset is the one its predecessor's caplen
    points at. It stops early only where a record is not among the guesses (a caplen above
    ``lim``, a timestamp whose top byte differs) or a false guess could not be pruned.
    ``scratch``: a reusable bool array of at least ``len(buf)`` (a fresh chunk-sized temporary
    per call costs more in page zeroing than the comparison itself).
    """
    n = len(buf)
    if safe < 0 or n < rhl or n < 16:
        return None
    d = np.frombuffer(buf, dtype=np.uint8)
    hi = 3 if order == "<" else 0            # most significant byte of ts_sec
    m = min(safe + 1, n - 15)                # guesses: offsets 0..m-1, all 16 header bytes inside
    eq = scratch[:m] if scratch is not None and len(scratch) >= m else np.empty(m, dtype=np.bool_)
    np.equal(d[hi:hi + m], d[hi], out=eq)
    cand = np.flatnonzero(eq)
    if len(cand) > n // rhl + 1:             # more guesses than records can fit: degenerate data
        return None
    # the caplen field (bytes 8..11 of a record header) of every guess, gathered 4 bytes each
    capf = np.ndarray(shape=(n - 15,), dtype=np.dtype((np.void, 4)), buffer=d, offset=8, strides=(1,))
    cap = capf[cand].view(order + "u4")
    ok = cap <= lim
    cand = cand[ok]
    k = len(cand)
    if k == 0 or cand[0] != 0:
        return None
    nxt = cap[ok].astype(np.int64)
    nxt += cand
    nxt += rhl
    # index of each target among the guesses: almost always the next guess (few false ones)
    j = np.arange(1, k + 1, dtype=np.int64)
    j[-1] = k - 1
    linked = np.take(cand, j) == nxt
    miss = np.flatnonzero(~linked)
    if len(miss):
        jm = np.searchsorted(cand, nxt[miss])
        np.minimum(jm, k - 1, out=jm)
        j[miss] = jm
        linked[miss] = cand[jm] == nxt[miss]
    # keep = {0} + targets of kept guesses: start from all targets, prune false chains
    keep = np.zeros(k, dtype=bool)
    keep[j[linked]] = True
    keep[0] = True
    for _ in range(_MAX_ROUNDS):
        kept = np.flatnonzero(keep)
        bad = np.take(cand, kept[1:]) != np.take(nxt, kept[:-1])
        if not bad.any():
            break
        i = int(np.argmax(bad))              # kept[:i + 1] is a proven chain from 0
        if not linked[kept[i]]:              # ... whose next record is not a guess: stop there
            kept = kept[:i + 1]
            break
        new = np.zeros(k, dtype=bool)
        lk = kept[linked[kept]]
        new[j[lk]] = True
        new[0] = True
        keep = new
    else:
        kept = kept[:i + 1]
    return cand[kept], int(nxt[kept[-1]])


def walk(buf: bytes, rhl: int, order: str, safe: int, lim: int,
         scratch: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Record offsets (int64 array) visited while <= ``safe`` and the stop offset: a proven
    vectorised prefix where possible, the Python loop for the rest. Always exactly the
    sequential walk's result (the C kernel's walk where it is built)."""
    if kernel.enabled():
        return kernel.pcap_walk(np.frombuffer(buf, dtype=np.uint8), rhl, order, safe)
    if safe >= MIN_VECTOR_BYTES:
        r = chain_walk(buf, rhl, order, safe, lim, scratch)
        if r is not None:
            pre, p = r
            if p > safe:
                return pre, p
            offs, p = python_walk(buf, rhl, order, safe, p)
            return np.concatenate((pre, np.array(offs, dtype=np.int64))), p
    offs, p = python_walk(buf, rhl, order, safe)
    return np.array(offs, dtype=np.int64), p
