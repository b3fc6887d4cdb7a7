"""The decoder's fast path: Ethernet -> IPv4 (no options) / IPv6 -> TCP/UDP/other, in one pass.

Nearly every frame of a typical capture has this fixed layout, so one gather of
the first ``WINDOW`` bytes of each frame gives every field at a constant column:
no cursors, no per-layer passes. A frame qualifies only when the general decoder
would produce exactly what this computes: no VLAN/MPLS/PPPoE, IPv4 header of 20
bytes, not a fragment, not a TSO super-packet, no IPv6 extension header or
tunnel protocol, no UDP tunnel port, IP header within the captured bytes and an
IP length that fits a whole frame. Everything else goes to the general decoder
(``decode.py``), which stays the reference; tests check both agree.
"""
from __future__ import annotations

import numpy as np

from .batch import FrameBatch

WINDOW = 68                 # 14 Ethernet + 40 IPv6 + 14: through the TCP flags byte after IPv6
BLOCK = 16384               # frames per block: the temporaries stay in the L2 cache
_OUT = (("src_hi", np.uint64), ("src_lo", np.uint64), ("dst_hi", np.uint64), ("dst_lo", np.uint64),
        ("sport", np.uint16), ("dport", np.uint16), ("proto", np.uint8), ("ip_len", np.uint32),
        ("tcp_flags", np.uint8), ("ip_version", np.uint8))
_MAPPED = np.uint64(0xFFFF_0000_0000)
_PORTED = np.zeros(256, dtype=np.bool_)
_PORTED[[6, 17]] = True
# L4 header bytes the IP datagram must hold for ports to be read (TCP 20, UDP 8)
_HMIN = np.zeros(256, dtype=np.int64)
_HMIN[6], _HMIN[17] = 20, 8
# protocols the general decoder treats specially (extension headers, AH, fragments, tunnels)
_SPECIAL = np.zeros(256, dtype=np.bool_)
_SPECIAL[[0, 43, 60, 135, 139, 140, 51, 44, 4, 41, 47]] = True
# UDP ports of tunnels the general decoder opens (VXLAN, GTP-U, CAPWAP, Geneve)
_UDP_TUNNEL = np.zeros(65536, dtype=np.bool_)
_UDP_TUNNEL[[4789, 2152, 5247, 6081]] = True


def decode_common(fb: FrameBatch) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """(mask of frames decoded here, columns for all frames: valid where the mask is set),
    or ``None`` when the batch is not all Ethernet (then use the general decoder)."""
    lt = fb.linktype
    n = len(fb)
    d = fb.data
    if n == 0 or lt[0] != 1 or len(d) < WINDOW or not (lt == 1).all():
        return None
    off = fb.offset
    last = len(d) - WINDOW
    inside = off <= last                            # the window lies in the buffer
    all_inside = bool(inside.all())
    if not all_inside:
        off = np.minimum(off, last)
    win = np.ndarray(shape=(last + 1,), dtype=np.dtype((np.void, WINDOW)), buffer=d, strides=(1,))
    elig = np.empty(n, np.bool_)
    cols = {k: np.empty(n, t) for k, t in _OUT}
    for a in range(0, n, BLOCK):                    # blocks small enough for the temporaries to stay in cache
        b = min(n, a + BLOCK)
        _block(win[off[a:b]].view(np.uint8).reshape(b - a, WINDOW), fb.caplen[a:b], fb.wire_len[a:b],
               elig[a:b], {k: v[a:b] for k, v in cols.items()})
    if not all_inside:
        elig &= inside
    return elig, cols


def _block(m: np.ndarray, caplen: np.ndarray, wire: np.ndarray, elig: np.ndarray,
           out: dict[str, np.ndarray]) -> None:
    """Decode one block: ``m`` holds the first WINDOW bytes of each frame; writes into the views."""
    cap = caplen.astype(np.int64)
    whole = caplen >= wire
    b14 = m[:, 14]
    is4 = (m[:, 12] == 0x08) & (m[:, 13] == 0x00) & (b14 == 0x45)
    is6 = (m[:, 12] == 0x86) & (m[:, 13] == 0xDD) & ((b14 >> 4) == 6)
    # IP length fields: IPv4 total length at 16, IPv6 payload length at 18
    w16 = m[:, 16:20].copy().view(">u2")
    tot = w16[:, 0].astype(np.int64)
    plen = w16[:, 1].astype(np.int64)
    proto = np.where(is6, m[:, 20], m[:, 23])
    # IPv4: header inside the frame, not a fragment (MF clear, offset 0), not TSO (length 0),
    # and a whole frame must hold the datagram (else the general decoder calls it malformed)
    ok4 = (is4 & (cap >= 34) & ((m[:, 20] & 0x3F) == 0) & (m[:, 21] == 0) & (tot > 0)
           & ~(whole & (14 + tot > cap)))
    ok6 = is6 & (cap >= 54) & ~(whole & (54 + plen > cap))
    ok = (ok4 | ok6) & ~_SPECIAL[proto]
    l4 = np.where(is6, 54, 34)                      # L4 header offset in the frame
    ipend = np.where(is6, np.where(plen > 0, 54 + plen, cap), 14 + tot)
    pok = _PORTED[proto] & (l4 + 4 <= cap) & (l4 + _HMIN[proto] <= ipend)
    p4 = m[:, 34:38].copy().view(">u2")
    p6 = m[:, 54:58].copy().view(">u2")
    sport = np.where(is6, p6[:, 0], p4[:, 0])
    dport = np.where(is6, p6[:, 1], p4[:, 1])
    sport[~pok] = 0
    dport[~pok] = 0
    udp = pok & (proto == 17)
    if udp.any():
        ok &= ~(udp & (_UDP_TUNNEL[sport] | _UDP_TUNNEL[dport]))
    tcpf = pok & (proto == 6) & (l4 + 14 <= cap)
    flags = np.where(is6, m[:, 67], m[:, 47])
    flags[~tcpf] = 0
    ad = m[:, 22:54].copy()                         # IPv6 src+dst; IPv4 src+dst at bytes 4..11
    a8 = ad.view(">u8")
    a4 = ad.view(">u4")
    out["src_lo"][:] = np.where(is6, a8[:, 1], a4[:, 1].astype(np.uint64) | _MAPPED)
    out["dst_lo"][:] = np.where(is6, a8[:, 3], a4[:, 2].astype(np.uint64) | _MAPPED)
    zero = np.uint64(0)
    out["src_hi"][:] = np.where(is6, a8[:, 0], zero)
    out["dst_hi"][:] = np.where(is6, a8[:, 2], zero)
    out["sport"][:] = sport
    out["dport"][:] = dport
    out["proto"][:] = proto
    out["ip_len"][:] = np.where(is6, plen + 40, tot)
    out["tcp_flags"][:] = flags
    out["ip_version"][:] = np.where(is6, 6, 4)
    elig[:] = ok
