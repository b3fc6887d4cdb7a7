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
    if not inside.all():
        off = np.minimum(off, last)
    win = np.ndarray(shape=(last + 1,), dtype=np.dtype((np.void, WINDOW)), buffer=d, strides=(1,))
    m = win[off].view(np.uint8).reshape(n, WINDOW)
    cap = fb.caplen.astype(np.int64)
    whole = fb.caplen >= fb.wire_len
    b14 = m[:, 14]
    is4 = (m[:, 12] == 0x08) & (m[:, 13] == 0x00) & (b14 == 0x45)
    is6 = (m[:, 12] == 0x86) & (m[:, 13] == 0xDD) & ((b14 >> 4) == 6)

    # IP length fields: IPv4 total length at 16, IPv6 payload length at 18
    w16 = m[:, 16:20].copy().view(">u2")            # (n, 2): IPv4 total length, IPv6 payload length
    tot = w16[:, 0].astype(np.int64)
    plen = w16[:, 1].astype(np.int64)
    proto = np.where(is6, m[:, 20], m[:, 23])
    # IPv4: header inside the frame, not a fragment (MF clear, offset 0), not TSO (length 0),
    # and a whole frame must hold the datagram (else the general decoder calls it malformed)
    ok4 = (is4 & (cap >= 34) & ((m[:, 20] & 0x3F) == 0) & (m[:, 21] == 0) & (tot > 0)
           & ~(whole & (14 + tot > cap)))
    ok6 = is6 & (cap >= 54) & ~(whole & (54 + plen > cap))
    elig = (ok4 | ok6) & ~_SPECIAL[proto]
    if not inside.all():
        elig &= inside
    l4 = np.where(is6, 54, 34)                      # L4 header offset in the frame
    ipend = np.where(is6, np.where(plen > 0, 54 + plen, cap), 14 + tot)
    ported = _PORTED[proto]
    pok = ported & (l4 + 4 <= cap) & (l4 + _HMIN[proto] <= ipend)
    p4 = m[:, 34:38].copy().view(">u2")
    p6 = m[:, 54:58].copy().view(">u2")
    sport = np.where(is6, p6[:, 0], p4[:, 0])
    dport = np.where(is6, p6[:, 1], p4[:, 1])
    sport[~pok] = 0
    dport[~pok] = 0
    udp = pok & (proto == 17)
    if udp.any():
        elig &= ~(udp & (_UDP_TUNNEL[sport] | _UDP_TUNNEL[dport]))
    tcpf = pok & (proto == 6) & (l4 + 14 <= cap)
    flags = np.where(is6, m[:, 67], m[:, 47])
    flags[~tcpf] = 0

    a = m[:, 22:54].copy()                          # IPv6 src+dst; IPv4 src+dst at bytes 4..11
    a8 = a.view(">u8")
    a4 = a.view(">u4")
    src_lo = np.where(is6, a8[:, 1], a4[:, 1].astype(np.uint64) | _MAPPED)
    dst_lo = np.where(is6, a8[:, 3], a4[:, 2].astype(np.uint64) | _MAPPED)
    zero = np.uint64(0)
    src_hi = np.where(is6, a8[:, 0], zero)
    dst_hi = np.where(is6, a8[:, 2], zero)
    cols = {
        "src_hi": src_hi.astype(np.uint64, copy=False), "src_lo": src_lo.astype(np.uint64, copy=False),
        "dst_hi": dst_hi.astype(np.uint64, copy=False), "dst_lo": dst_lo.astype(np.uint64, copy=False),
        "sport": sport.astype(np.uint16, copy=False), "dport": dport.astype(np.uint16, copy=False),
        "proto": proto.astype(np.uint8, copy=False),
        "ip_len": np.where(is6, plen + 40, tot).astype(np.uint32),
        "tcp_flags": flags.astype(np.uint8, copy=False),
        "ip_version": np.where(is6, 6, 4).astype(np.uint8),
    }
    return elig, cols
