"""The reader's record walk and the decoder's fast path in C (``kernel.c``), numpy as the reference.

Why: both are loops whose numpy form needs many passes (the walk is a chain that numpy can
only guess and prove; the fast path reads a dozen fields through temporaries); one C pass
does each in a few ns per packet. Built on first use by ``trafficsnn._native`` (per-user
cache, never a folder others can write); ``TRAFFICSNN_FLOWS_KERNEL=numpy`` keeps the numpy
code (and ``=c`` insists on C). Tests prove both give identical results.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from .. import _native


def _setup(lib: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.pcap_walk.argtypes = [p, i64, ctypes.c_int, i64, p, i64, p]
    lib.pcap_walk.restype = i64
    lib.eth_decode.argtypes = [i64] + [p] * 17
    lib.eth_decode.restype = None
    lib.pcap_headers.argtypes = [p, p, i64, i64, ctypes.c_int, p]
    lib.pcap_headers.restype = None


KERNEL = _native.Lazy("packets", Path(__file__).with_name("kernel.c"), what="the packet reader's C kernel",
                      fallback="the numpy reader and decoder", setup=_setup)


def enabled() -> bool:
    """Whether the C paths run (``$TRAFFICSNN_FLOWS_KERNEL``; by default where a compiler is found)."""
    return KERNEL.use()


def pcap_walk(buf: np.ndarray, rhl: int, order: str, safe: int) -> tuple[np.ndarray, int]:
    """``walk.python_walk`` in C: record offsets (int64) visited while <= ``safe``, and the stop offset."""
    if safe < 0:
        return np.empty(0, np.int64), 0
    out = np.empty(safe // rhl + 1, np.int64)
    stop = ctypes.c_int64()
    k = KERNEL.get().pcap_walk(buf.ctypes.data, rhl, int(order == ">"), safe, out.ctypes.data, len(out),
                               ctypes.byref(stop))
    return out[:k], stop.value


def pcap_headers(d: np.ndarray, offs: np.ndarray, nwords: int, order: str) -> np.ndarray:
    """``readers._gather_u32`` in C: ``nwords`` 32-bit words at each offset -> (n, nwords) native uint32."""
    offs = np.ascontiguousarray(offs, dtype=np.int64)
    out = np.empty((len(offs), nwords), np.uint32)
    KERNEL.get().pcap_headers(d.ctypes.data, offs.ctypes.data, len(offs), nwords, int(order == ">"),
                              out.ctypes.data)
    return out


def eth_decode(d: np.ndarray, off: np.ndarray, caplen: np.ndarray, wire: np.ndarray, pcode: np.ndarray,
               tunnel: np.ndarray, elig: np.ndarray, cols: dict[str, np.ndarray]) -> None:
    """``fastpath._block`` for every frame in C: fills ``elig`` and ``cols`` (valid where ``elig``)."""
    off = np.ascontiguousarray(off, dtype=np.int64)
    caplen = np.ascontiguousarray(caplen, dtype=np.uint32)
    wire = np.ascontiguousarray(wire, dtype=np.uint32)
    # the C code reads only inside [off, off + caplen): check that this lies inside ``d`` for every frame
    # (the readers guarantee it; a hand-built FrameBatch need not), one vectorised pass
    if len(off) and (int(off.min()) < 0 or int((off + caplen).max()) > d.nbytes or len(caplen) != len(off)
                     or len(wire) != len(off)):
        raise ValueError("frame offsets/lengths reach outside the data buffer")
    c = cols
    KERNEL.get().eth_decode(len(off), d.ctypes.data, off.ctypes.data, caplen.ctypes.data, wire.ctypes.data,
                            pcode.ctypes.data, tunnel.ctypes.data, elig.ctypes.data,
                            *(c[k].ctypes.data for k in ("src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport",
                                                         "proto", "ip_len", "tcp_flags", "ip_version")))
