"""BPF filters on capture-file frames, so ``--filter`` means the same for --pcap as for a live interface.

Live capture runs the filter in the kernel; for files we compile the same
expression with libpcap (through scapy) and run libpcap's own matcher
(``pcap_offline_filter``) on each frame. Never imports torch.
"""
from __future__ import annotations

import ctypes
from typing import Callable

import numpy as np

from ..errors import ConfigError
from ..packets.batch import FrameBatch


def compile_matcher(expr: str) -> Callable[[FrameBatch], FrameBatch]:
    """A function keeping the frames of a batch that match ``expr`` (one compiled program per link type)."""
    try:
        import scapy.libs.winpcapy as pcap
        from scapy.arch.common import compile_filter
        from scapy.error import Scapy_Exception
    except (ImportError, OSError) as err:
        raise ConfigError(f"--filter needs libpcap (apt-get install libpcap0.8): {err}") from err
    lib = pcap._lib
    offline = lib.pcap_offline_filter
    offline.restype = ctypes.c_int
    progs: dict[int, object] = {}

    def prog(linktype: int) -> object:
        if linktype not in progs:
            try:
                progs[linktype] = compile_filter(expr, linktype=linktype)
            except Scapy_Exception as err:
                raise ConfigError(f"bad BPF filter {expr!r} for link type {linktype}: {err}") from err
        return progs[linktype]

    hdr = pcap.pcap_pkthdr()

    def match(fb: FrameBatch) -> FrameBatch:
        n = len(fb)
        if n == 0:
            return fb
        keep = np.zeros(n, dtype=bool)
        base = fb.data.ctypes.data
        for i in range(n):
            p = prog(int(fb.linktype[i]))
            hdr.caplen = int(fb.caplen[i])
            hdr.len = int(fb.wire_len[i])
            keep[i] = offline(ctypes.byref(p), ctypes.byref(hdr), ctypes.c_void_p(base + int(fb.offset[i]))) != 0
        if keep.all():
            return fb
        return FrameBatch(data=fb.data, offset=fb.offset[keep], caplen=fb.caplen[keep],
                          wire_len=fb.wire_len[keep], ts=fb.ts[keep], linktype=fb.linktype[keep])

    prog(1)  # fail early on a syntax error
    return match
