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

from . import kernel
from .batch import FrameBatch

WINDOW = 68                 # 14 Ethernet + 40 IPv6 + 14: through the TCP flags byte after IPv6
BLOCK = 16384               # frames per block: the temporaries stay in the L2 cache
_OUT = (("src_hi", np.uint64), ("src_lo", np.uint64), ("dst_hi", np.uint64), ("dst_lo", np.uint64),
        ("sport", np.uint16), ("dport", np.uint16), ("proto", np.uint8), ("ip_len", np.uint32),
        ("tcp_flags", np.uint8), ("ip_version", np.uint8))
IPV4_MAPPED = np.uint64(0xFFFF_0000_0000)    # ORed into the low word: IPv4 as ::ffff:a.b.c.d
# IP protocol -> the L4 header bytes a datagram must hold for its ports to be read (TCP 20,
# UDP 8), 0 for port-less protocols, -1 for those the general decoder treats specially
# (IPv6 extension headers, AH, fragments, IP and GRE tunnels)
_PCODE = np.zeros(256, dtype=np.int32)
_PCODE[6], _PCODE[17] = 20, 8
_PCODE[[0, 43, 60, 135, 139, 140, 51, 44, 4, 41, 47]] = -1
# UDP ports of tunnels the general decoder opens (VXLAN, GTP-U, CAPWAP, Geneve)
_UDP_TUNNEL = np.zeros(65536, dtype=np.bool_)
_UDP_TUNNEL[[4789, 2152, 5247, 6081]] = True


def byte_windows(d: np.ndarray, width: int) -> np.ndarray:
    """A zero-copy view of ``d`` as one ``width``-byte record starting at every byte.

    Indexing it with an array of offsets gathers ``width`` bytes per offset in one
    memcpy-like step (much faster than a 2-D fancy index over ``d``).
    """
    n = max(len(d) - width + 1, 0)
    return np.ndarray(shape=(n,), dtype=np.dtype((np.void, width)), buffer=d, strides=(1,))


def decode_common(fb: FrameBatch) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """(mask of frames decoded here, columns for all frames: valid where the mask is set),
    or ``None`` when the batch is not all Ethernet (then use the general decoder)."""
    lt = fb.linktype
    n = len(fb)
    d = fb.data
    if n == 0 or lt[0] != 1 or len(d) < WINDOW or not (lt == 1).all():
        return None
    if kernel.enabled():                            # the same rules frame by frame in C
        elig = np.empty(n, np.bool_)
        cols = {k: np.empty(n, t) for k, t in _OUT}
        kernel.eth_decode(d, fb.offset, fb.caplen, fb.wire_len, _PCODE, _UDP_TUNNEL, elig, cols)
        return elig, cols
    off = fb.offset
    last = len(d) - WINDOW
    win = byte_windows(d, WINDOW)
    # the last frames of the buffer: their window would run past its end, so it is read
    # from a zero-padded copy of the tail (no decision ever uses bytes beyond a frame's caplen)
    late = np.flatnonzero(off > last)
    if len(late):
        start = int(off[late].min())
        pad = np.zeros(len(d) - start + WINDOW, dtype=np.uint8)
        pad[:len(d) - start] = d[start:]
        late_m = byte_windows(pad, WINDOW)[off[late] - start].view(np.uint8).reshape(len(late), WINDOW)
        off = np.minimum(off, last)
    elig = np.empty(n, np.bool_)
    cols = {k: np.empty(n, t) for k, t in _OUT}
    for a in range(0, n, BLOCK):                    # blocks small enough for the temporaries to stay in cache
        b = min(n, a + BLOCK)
        m = win[off[a:b]].view(np.uint8).reshape(b - a, WINDOW)
        if len(late) and late[-1] >= a:
            here = (late >= a) & (late < b)
            m[late[here] - a] = late_m[here]
        _block(m, fb.caplen[a:b], fb.wire_len[a:b], elig[a:b], {k: v[a:b] for k, v in cols.items()})
    return elig, cols


def _block(m: np.ndarray, caplen: np.ndarray, wire: np.ndarray, elig: np.ndarray,
           out: dict[str, np.ndarray]) -> None:
    """Decode one block: ``m`` holds the first WINDOW bytes of each frame; writes into the views.

    Every row is first read as IPv4 (no per-row layout selects); the IPv6 rows are then
    decoded apart and written over their rows.
    """
    w3 = m.view("<u4")[:, 3]                        # bytes 12..15: ethertype, version+IHL, TOS
    i6 = np.flatnonzero((w3 & 0x00F0FFFF) == 0x0060DD86)      # 86 DD 6x: IPv6
    _ipv4(m, caplen, wire, (w3 & 0x00FFFFFF) == 0x00450008, elig, out)   # 08 00 45: IPv4, IHL 5
    if len(i6):
        e6 = np.empty(len(i6), np.bool_)
        o6 = {k: np.empty(len(i6), v.dtype) for k, v in out.items()}
        _ipv6(np.take(m, i6, axis=0), caplen[i6], wire[i6], e6, o6)    # (take: faster on rows)
        elig[i6] = e6
        for k, v in o6.items():
            out[k][i6] = v


def _ipv4(m: np.ndarray, caplen: np.ndarray, wire: np.ndarray, is4: np.ndarray, elig: np.ndarray,
          out: dict[str, np.ndarray]) -> None:
    cap = caplen.astype(np.int32)
    whole = caplen >= wire
    tot = m[:, 16:18].copy().view(">u2")[:, 0].astype(np.int32)
    proto = m[:, 23]
    # header inside the frame, not a fragment (bytes 20-21: MF clear, offset 0), not TSO (length
    # 0), and a whole frame must hold the datagram (else the general decoder calls it malformed)
    ipend = tot + 14
    code = _PCODE[proto]
    ok = (is4 & ((m.view("<u4")[:, 5] & 0xFF3F) == 0) & (tot > 0) & (cap >= 34)
          & ~(whole & (ipend > cap)) & (code >= 0))
    _ports_flags(m, cap, code, ipend, 34, ok, out)
    a = m[:, 26:34].copy().view(">u4")
    np.bitwise_or(a[:, 0], IPV4_MAPPED, out=out["src_lo"])
    np.bitwise_or(a[:, 1], IPV4_MAPPED, out=out["dst_lo"])
    out["src_hi"][:] = 0
    out["dst_hi"][:] = 0
    out["proto"][:] = proto
    out["ip_len"][:] = tot
    out["ip_version"][:] = 4
    elig[:] = ok


def _ipv6(m: np.ndarray, caplen: np.ndarray, wire: np.ndarray, elig: np.ndarray,
          out: dict[str, np.ndarray]) -> None:
    cap = caplen.astype(np.int32)
    whole = caplen >= wire
    plen = m[:, 18:20].copy().view(">u2")[:, 0].astype(np.int32)
    proto = m[:, 20]
    code = _PCODE[proto]
    ok = (cap >= 54) & ~(whole & (plen + 54 > cap)) & (code >= 0)
    ipend = np.where(plen > 0, plen + 54, cap)      # payload length 0: a jumbogram, to the frame end
    _ports_flags(m, cap, code, ipend, 54, ok, out)
    a = m[:, 22:54].copy().view(">u8")
    out["src_hi"][:] = a[:, 0]
    out["src_lo"][:] = a[:, 1]
    out["dst_hi"][:] = a[:, 2]
    out["dst_lo"][:] = a[:, 3]
    out["proto"][:] = proto
    out["ip_len"][:] = plen + 40
    out["ip_version"][:] = 6
    elig[:] = ok


def _ports_flags(m: np.ndarray, cap: np.ndarray, code: np.ndarray, ipend: np.ndarray, l4: int,
                 ok: np.ndarray, out: dict[str, np.ndarray]) -> None:
    """TCP/UDP ports (when the datagram holds the L4 header), TCP flags, UDP tunnels left out."""
    pok = (code > 0) & (cap >= l4 + 4) & (code + l4 <= ipend)
    pp = m[:, l4:l4 + 4].copy().view(">u2")
    sport, dport = out["sport"], out["dport"]
    np.multiply(pp[:, 0], pok, out=sport)           # 0 where the ports are not read
    np.multiply(pp[:, 1], pok, out=dport)
    udp = pok & (code == 8)
    if udp.any():
        ok &= ~(udp & (_UDP_TUNNEL[sport] | _UDP_TUNNEL[dport]))
    tcpf = pok & (code == 20) & (cap >= l4 + 14)
    np.multiply(m[:, l4 + 13], tcpf, out=out["tcp_flags"])
