"""The flow table's compiled paths (``table_kernel.c``): ingest, clock expiry and the store's gathers.

Why: the vectorised ingest spends most of its time sorting packets by key and in a dozen
passes over them; the C pass does the same work once per packet (the flow-table stage
takes 2-3x less CPU on the extract benchmark). It is
built on first use by ``trafficsnn._native`` (per-user cache, never a folder others can
write). ``TRAFFICSNN_FLOWS_KERNEL=numpy|c`` forces one path; by default the C one runs
where a compiler is found and the numpy one (the reference; tests prove both give identical
flows) elsewhere, with one warning saying so.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from .. import _native

SOURCE = Path(__file__).with_name("table_kernel.c")
BATCH_ORDER = ("ts", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "proto", "ip_len", "wire_len",
               "tcp_flags", "vlan")
STORE_ORDER = ("ts", "size", "direction", "wire_len", "tcp_flags")
SEG_ORDER = ("slot", "start", "end", "alive")
HASH_MASK = -1          # all 64 bits; tests narrow it to force hash collisions


def _setup(lib: ctypes.CDLL) -> None:
    from .hashindex import HashIndex
    from .table import _SLOT_COLS, _Rows

    lib.ft_ingest.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 12
    lib.ft_ingest.restype = ctypes.c_int64
    lib.ft_gather.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 4
    lib.ft_gather.restype = None
    d, i, p = ctypes.c_double, ctypes.c_int, ctypes.c_void_p
    lib.ft_expire.argtypes = [p, ctypes.c_int64, d, i, d, i, d, i, d, p, p]
    lib.ft_expire.restype = ctypes.c_int64
    lib.ft_take_count.argtypes = [ctypes.c_int64] + [p] * 6
    lib.ft_take_count.restype = ctypes.c_int64
    lib.ft_take_copy.argtypes = [ctypes.c_int64] + [p] * 8
    lib.ft_take_copy.restype = None
    lib.ft_layout.argtypes = [ctypes.c_void_p]
    lib.ft_layout.restype = None
    lay = np.zeros(len(_SLOT_COLS) + 2, np.int64)
    lib.ft_layout(lay.ctypes.data)
    dt = _Rows(_SLOT_COLS, 1).dtype
    want = [dt.fields[k][1] for k, _ in _SLOT_COLS] + [dt.itemsize, HashIndex(16).table.dtype.itemsize]
    if lay.tolist() != want:        # a compiler with another struct layout: never guess, use numpy
        raise _native.NativeUnavailable(f"its record layout {lay.tolist()} is not numpy's {want}")


KERNEL = _native.Lazy("flow_table", SOURCE, what="the flow table's C kernel", fallback="the numpy flow table",
                      setup=_setup)


def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None where it cannot be built (warned once)."""
    return KERNEL.get()


def choose(kernel: str = "auto") -> str:
    """"c" or "numpy" for a new table: ``kernel`` if given, else ``$TRAFFICSNN_FLOWS_KERNEL``, else auto."""
    return "c" if KERNEL.use(kernel) else "numpy"


def _ptrs(arrays) -> ctypes.Array:
    return (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])


def ingest(table, batch) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Run the kernel on ``batch`` against ``table``'s state; returns (ended slots, their codes,
    touched live slots, flows created). The caller ends the flows (they are already unindexed)."""
    lib = library()
    n = len(batch)
    slots, index, store, segs = table._slots, table._index, table._store, table._segs
    slots.reserve(slots.n + n)
    index.reserve(n)
    store.reserve(store.n + n)
    segs.reserve(segs.n + n)
    free = np.ascontiguousarray(table._free, dtype=np.int64)
    cols = [np.ascontiguousarray(getattr(batch, k)) for k in BATCH_ORDER]
    io = np.array([slots.n, len(free), table._next_fid, index.used, index.tomb, index.cap, store.n, segs.n,
                   int(table.tcp_close), -1 if table.max_packets is None else table.max_packets, 0, 0, 0, 0, 0,
                   HASH_MASK, int(table.idle_timeout is not None), int(table.active_timeout is not None)],
                  np.int64)
    dp = np.array([table.idle_timeout or 0.0, table.active_timeout or 0.0, table.fin_grace])
    # a packet can end two flows: the live one it times out, then (RST) the one it opens
    end_slot = np.empty(2 * n, np.int64)
    end_code = np.empty(2 * n, np.int8)
    touched = np.empty(n, np.int64)
    if len(table._scratch) < 64 * n:        # kept: fresh pages each batch cost more than the work
        table._scratch = np.empty(64 * n, np.uint8)
    rc = lib.ft_ingest(n, _ptrs(cols), slots.rows.ctypes.data, index.table.ctypes.data, free.ctypes.data,
                       _ptrs([store.cols[k] for k in STORE_ORDER]), _ptrs([segs.cols[k] for k in SEG_ORDER]),
                       io.ctypes.data, dp.ctypes.data, end_slot.ctypes.data, end_code.ctypes.data,
                       touched.ctypes.data, table._scratch.ctypes.data)
    if rc != 0:
        raise RuntimeError("the flow table's C kernel needs more scratch than it was given (a build bug)")
    slots.n, table._free, table._next_fid = int(io[0]), free[: int(io[1])], int(io[2])
    index.used, index.tomb = int(io[3]), int(io[4])
    if index.tomb * 4 > index.cap:
        index._rehash(index.used)
    store.n, segs.n = int(io[6]), int(io[7])
    table.stats["ts_clamped"] += int(io[13])
    table.stats["packets_not_stored"] += int(io[14])
    ne, nt = int(io[11]), int(io[12])
    return end_slot[:ne], end_code[:ne], touched[:nt], int(io[10])


def gather(store_cols: dict[str, np.ndarray], start: np.ndarray, length: np.ndarray) -> dict[str, np.ndarray]:
    """The store's packets in segments [start, start + length), back to back, per column (memcpy runs)."""
    start = np.ascontiguousarray(start, dtype=np.int64)
    length = np.ascontiguousarray(length, dtype=np.int64)
    total = int(length.sum())
    out = {k: np.empty(total, store_cols[k].dtype) for k in STORE_ORDER}
    src = [store_cols[k] for k in STORE_ORDER]
    if any(not a.flags.c_contiguous for a in src):
        raise ValueError("store columns must be contiguous")
    library().ft_gather(len(start), start.ctypes.data, length.ctypes.data, _ptrs(src),
                        _ptrs([out[k] for k in STORE_ORDER]))
    return out


def expire(table, now: float) -> tuple[np.ndarray, np.ndarray]:
    """``table._expire``'s choice in one pass over the flow records: (slots, end codes), slot order."""
    n = table._slots.n
    slots = np.empty(n, np.int64)
    codes = np.empty(n, np.int8)
    k = library().ft_expire(table._slots.rows.ctypes.data, n, now, int(table.idle_timeout is not None),
                            table.idle_timeout or 0.0, int(table.active_timeout is not None),
                            table.active_timeout or 0.0, int(table.tcp_close), table.fin_grace,
                            slots.ctypes.data, codes.ctypes.data)
    return slots[:k], codes[:k]


def take(table, slots: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """``table.take``'s gather in two passes over the segments: (offsets, columns, packets taken)."""
    lib = library()
    G, store = table._segs, table._store
    want = np.full(table._slots.n, -1, np.int64)
    want[slots] = np.arange(len(slots))
    counts = np.zeros(len(slots), np.int64)
    g = [G.cols[k] for k in SEG_ORDER]
    total = lib.ft_take_count(G.n, *(a.ctypes.data for a in g), want.ctypes.data, counts.ctypes.data)
    offsets = np.zeros(len(slots) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    cursor = offsets[:-1].copy()
    out = {k: np.empty(total, store.cols[k].dtype) for k in STORE_ORDER}
    lib.ft_take_copy(G.n, *(a.ctypes.data for a in g), want.ctypes.data, cursor.ctypes.data,
                     _ptrs([store.cols[k] for k in STORE_ORDER]), _ptrs([out[k] for k in STORE_ORDER]))
    return offsets, out, int(total)
