"""Vectorised header decoder: ``FrameBatch`` in, ``PacketBatch`` out.

All frames of a batch are peeled at once: each frame has a cursor into the
byte buffer and the type of the layer that starts there. One pass handles,
for every layer type present, all frames at that layer with masked numpy
gathers, then moves their cursors on. A bounded number of passes reaches the
innermost IP/L4 headers even through VLAN stacks, MPLS, PPPoE and tunnels
(IP-in-IP, 6in4, GRE, VXLAN, GTP-U): the flow reported is the inner one, and
when an inner packet cannot be decoded the outer flow is kept instead.

Ethernet batches first go through ``fastpath.decode_common``: frames with the
common fixed layout (Ethernet -> IPv4 without options / IPv6 -> TCP/UDP/other)
are decoded there in one pass, and only the rest take the passes below.

The only per-packet Python work is for IP fragments (rare): a non-first
fragment carries no L4 header, so it gets the flow (ports, inner addresses)
of its first fragment from a small bounded state kept across batches.
"""
from __future__ import annotations

from collections import Counter, OrderedDict

import numpy as np

from .batch import FrameBatch, PacketBatch
from .fastpath import IPV4_MAPPED, byte_windows, decode_common

def _table(size: int, fill: int, items: dict[int, int], dtype=np.int8) -> np.ndarray:
    """A lookup table: value -> code, ``fill`` elsewhere."""
    t = np.full(size, fill, dtype=dtype)
    for k, v in items.items():
        t[k] = v
    return t


LINKTYPE_NAMES: dict[int, str] = {
    0: "NULL", 1: "EN10MB", 6: "IEEE802_5", 8: "SLIP", 9: "PPP", 10: "FDDI", 12: "RAW", 14: "RAW",
    50: "PPP_HDLC", 51: "PPP_ETHER", 101: "RAW", 104: "C_HDLC", 105: "IEEE802_11",
    108: "LOOP", 113: "LINUX_SLL", 117: "PFLOG", 119: "IEEE802_11_PRISM", 127: "IEEE802_11_RADIOTAP",
    147: "USER0", 187: "BLUETOOTH_HCI_H4", 189: "USB_LINUX", 192: "PPI", 195: "IEEE802_15_4",
    201: "BLUETOOTH_HCI_H4_WITH_PHDR", 220: "USB_LINUX_MMAPPED", 228: "IPV4", 229: "IPV6",
    249: "NETLINK", 263: "BLUETOOTH_LE_LL_WITH_PHDR", 276: "LINUX_SLL2",
}
SUPPORTED_LINKTYPES = frozenset({0, 1, 9, 12, 14, 50, 101, 104, 108, 113, 192, 228, 229, 276})

# layer kinds (what starts at a frame's cursor); <= 0 means finished
DONE, ETYPE, ETH, IPVER, IPV4, IPV6, PROTO, MPLS, PPP, GRE, GTP, CAPWAP = range(12)
# why a frame was left out (negative kinds)
NON_IP, TRUNCATED, UNSUPPORTED, MALFORMED, TOO_DEEP = -1, -2, -3, -4, -5
DROP_NAMES = {NON_IP: "non_ip", TRUNCATED: "truncated", UNSUPPORTED: "unsupported",
              MALFORMED: "malformed", TOO_DEEP: "too_deep"}
MAX_PASSES = 32
VLAN_MARK = 100
# ethertype -> next layer kind (VLAN_MARK: a VLAN tag follows), and bytes to skip before it
ETYPE_KIND = _table(65536, NON_IP, {0x0800: IPV4, 0x86DD: IPV6, 0x8847: MPLS, 0x8848: MPLS,
                                    0x6558: ETH,      # transparent Ethernet bridging (GRE, NVGRE)
                                    0x880B: PPP,      # PPP in GRE (PPTP)
                                    0x8864: PPP,      # PPPoE session: 6-byte header, then PPP
                                    0x88BE: ETH,      # ERSPAN type II: 8-byte header, then Ethernet
                                    0x8903: ETH,      # Cisco FabricPath: 2 more bytes, then Ethernet
                                    0x8100: VLAN_MARK, 0x88A8: VLAN_MARK, 0x9100: VLAN_MARK,
                                    0x9200: VLAN_MARK})
ETYPE_SKIP = _table(65536, 0, {0x8864: 6, 0x88BE: 8, 0x8903: 2})
# IP protocol -> 1 where the flow key has ports: TCP and UDP (others, SCTP included, are
# port-less flows, as nDPI and most flow tools key them)
PORTED = _table(256, 0, {6: 1, 17: 1}, np.bool_)
# protocols that need more than a port read: IPv6 extension headers, AH, tunnels
UDP_TUNNEL_PORT = _table(65536, 0, {4789: 1, 2152: 1, 5247: 1, 6081: 1}, np.bool_)  # VXLAN GTP-U CAPWAP Geneve
SPECIAL_PROTO = _table(256, 0, {0: 1, 43: 1, 60: 1, 135: 1, 139: 1, 140: 1, 51: 1, 44: 1, 4: 1, 41: 1, 47: 1},
                       np.bool_)

AF_INET_VALUES = (2, 10, 23, 24, 28, 30)   # AF_INET and the AF_INET6 of Linux, Windows, *BSD, macOS


def _mat(d: np.ndarray, idx: np.ndarray, width: int) -> np.ndarray:
    """Bytes ``d[idx : idx + width]`` of each index as an (n, width) uint8 matrix."""
    return byte_windows(d, width)[idx].view(np.uint8).reshape(len(idx), width)


def _be16(d: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return (d[idx].astype(np.int64) << 8) | d[idx + 1]


def _be32(d: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return byte_windows(d, 4)[idx].view(">u4").astype(np.int64)



class _Work:
    """Per-batch decoding state: cursors, layer kinds and the output columns so far."""

    def __init__(self, fb: FrameBatch, dec: "Decoder"):
        n = len(fb)
        self.dec = dec
        self.d = np.ascontiguousarray(fb.data, dtype=np.uint8)
        self.cur = fb.offset.astype(np.int64, copy=True)
        self.end = self.cur + fb.caplen.astype(np.int64)
        # frames captured whole (no snaplen cut): an IP length beyond their end is corruption
        self.whole = fb.caplen >= fb.wire_len
        self.fb_src = fb
        self.ipend = self.end.copy()    # end of the innermost IP datagram as its header declares it
        self.kind = np.full(n, MALFORMED, dtype=np.int8)   # link() gives every decodable frame its kind
        self.aux = np.zeros(n, dtype=np.int64)
        self.src_hi = np.zeros(n, dtype=np.uint64)
        self.src_lo = np.zeros(n, dtype=np.uint64)
        self.dst_hi = np.zeros(n, dtype=np.uint64)
        self.dst_lo = np.zeros(n, dtype=np.uint64)
        self.sport = np.zeros(n, dtype=np.uint16)
        self.dport = np.zeros(n, dtype=np.uint16)
        self.proto = np.zeros(n, dtype=np.uint8)
        self.ip_len = np.zeros(n, dtype=np.uint32)
        self.flags = np.zeros(n, dtype=np.uint8)
        self.vlan = np.zeros(n, dtype=np.uint16)
        self.vlan_set = np.zeros(n, dtype=bool)
        self.ver = np.zeros(n, dtype=np.uint8)
        self.fb: dict[str, np.ndarray] | None = None     # outer-flow fallback when a tunnel fails
        self.fb_ok: np.ndarray | None = None
        self.fk: dict[str, np.ndarray] | None = None     # key of the fragmented IP header
        self.fragst: np.ndarray | None = None            # 0 none, 1 first fragment, 2 later fragment
        self.counts: Counter = Counter()

    # -- small utilities ---------------------------------------------------------------
    def need(self, sel: np.ndarray, nbytes: int, extra: np.ndarray | int = 0) -> np.ndarray:
        """Mask of ``sel`` frames that have ``nbytes`` captured bytes at cursor + extra."""
        return self.cur[sel] + extra + nbytes <= self.end[sel]

    def drop(self, sel: np.ndarray, why: int) -> None:
        if len(sel):
            self.kind[sel] = why

    def save_fallback(self, sel: np.ndarray, tunnel: str) -> None:
        """Remember the current (outer) flow of ``sel`` in case its inner packet cannot be decoded."""
        if not len(sel):
            return
        self.counts["tunnel:" + tunnel] += len(sel)
        cols = ("src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "proto", "ip_len", "flags", "ver")
        if self.fb is None:
            self.fb = {c: np.zeros_like(getattr(self, c)) for c in cols}
            self.fb_ok = np.zeros(len(self.kind), dtype=bool)
        for c in cols:
            self.fb[c][sel] = getattr(self, c)[sel]
        self.fb_ok[sel] = True

    def mark_fragments(self, sel: np.ndarray, first: np.ndarray, later: np.ndarray, ident: np.ndarray,
                       proto: np.ndarray) -> None:
        """Record the fragment state and key (src, dst, proto, id) of fragmented headers."""
        isf = first | later
        if not isf.any():
            return
        if self.fk is None:
            n = len(self.kind)
            self.fk = {c: np.zeros(n, dtype=np.uint64) for c in ("sh", "sl", "dh", "dl", "pid")}
            self.fragst = np.zeros(n, dtype=np.int8)
        s = sel[isf]
        self.fragst[s] = np.where(later[isf], 2, 1)
        self.fk["sh"][s] = self.src_hi[s]
        self.fk["sl"][s] = self.src_lo[s]
        self.fk["dh"][s] = self.dst_hi[s]
        self.fk["dl"][s] = self.dst_lo[s]
        self.fk["pid"][s] = (proto[isf].astype(np.uint64) << np.uint64(32)) | ident[isf].astype(np.uint64)

    # -- link layers ---------------------------------------------------------------------
    def link(self, linktype: np.ndarray) -> None:
        lts = np.unique(linktype)
        if len(lts) == 1:
            groups = [(int(lts[0]), np.arange(len(linktype)))]
        else:
            groups = [(int(v), np.nonzero(linktype == v)[0]) for v in lts]
        # PPI: a pseudo-header with its own length and the real DLT inside
        if any(v == 192 for v, _ in groups):
            lt = linktype.astype(np.int64)
            sel = np.nonzero(lt == 192)[0]
            ok = self.need(sel, 8)
            self.drop(sel[~ok], TRUNCATED)
            s = sel[ok]
            c = self.cur[s]
            hlen = self.d[c + 2].astype(np.int64) | (self.d[c + 3].astype(np.int64) << 8)
            dlt = (self.d[c + 4].astype(np.int64) | (self.d[c + 5].astype(np.int64) << 8)
                   | (self.d[c + 6].astype(np.int64) << 16) | (self.d[c + 7].astype(np.int64) << 24))
            self.cur[s] = c + hlen
            lt[s] = np.where(dlt == 192, -1, dlt)     # PPI inside PPI: malformed
            lt[sel[~ok]] = -2                         # truncated: already dropped
            groups = [(int(v), np.nonzero(lt == v)[0]) for v in np.unique(lt) if v >= 0]
        for v, sel in groups:
            if v == 1:
                self._ethernet(sel)
            elif v in (101, 12, 14):
                self.kind[sel] = IPVER
            elif v == 228:
                self.kind[sel] = IPV4
            elif v == 229:
                self.kind[sel] = IPV6
            elif v == 113:  # Linux cooked v1: protocol at 14, header 16
                self._fixed_etype(sel, 16, 14)
            elif v == 276:  # Linux cooked v2: protocol at 0, header 20
                self._fixed_etype(sel, 20, 0)
            elif v == 104:  # Cisco HDLC: address, control, ethertype
                self._fixed_etype(sel, 4, 2)
            elif v in (0, 108):
                self._null(sel)
            elif v in (9, 50):
                self.kind[sel] = PPP
            else:
                self.drop(sel, UNSUPPORTED)
                self.counts[("linktype", v)] += len(sel)

    def _ethernet(self, sel: np.ndarray) -> None:
        self._fixed_etype(sel, 14, 12)

    def _fixed_etype(self, sel: np.ndarray, hlen: int, at: int) -> None:
        ok = self.need(sel, hlen)
        self.drop(sel[~ok], TRUNCATED)
        s = sel[ok]
        c = self.cur[s]
        self.aux[s] = _be16(self.d, c + at)
        self.cur[s] = c + hlen
        self.kind[s] = ETYPE

    def _null(self, sel: np.ndarray) -> None:
        ok = self.need(sel, 5)
        self.drop(sel[~ok], TRUNCATED)
        s = sel[ok]
        w = byte_windows(self.d, 4)[self.cur[s]]
        le, be = w.view("<u4").astype(np.int64), w.view(">u4").astype(np.int64)
        ip = np.isin(le, AF_INET_VALUES) | np.isin(be, AF_INET_VALUES)
        self.drop(s[~ip], NON_IP)
        s = s[ip]
        self.cur[s] += 4
        self.kind[s] = IPVER

    # -- layer handlers ------------------------------------------------------------------
    def do_etype(self, sel: np.ndarray) -> None:
        v = self.aux[sel]
        k = ETYPE_KIND[v]
        isvlan = k == VLAN_MARK
        if isvlan.any():
            s = sel[isvlan]
            ok = self.need(s, 4)
            self.drop(s[~ok], TRUNCATED)
            s = s[ok]
            c = self.cur[s]
            first = s if self.dec.vlan == "inner" else s[~self.vlan_set[s]]
            if len(first):
                self.vlan[first] = _be16(self.d, self.cur[first]) & 0x0FFF
                self.vlan_set[first] = True
            self.aux[s] = _be16(self.d, c + 2)
            self.cur[s] = c + 4
            # kind stays ETYPE: handled in the next pass
            keep = ~isvlan
            sel, v, k = sel[keep], v[keep], k[keep]
        self.kind[sel] = k
        skip = ETYPE_SKIP[v]
        if skip.any():
            m = skip != 0
            s = sel[m]
            c = self.cur[s] + skip[m]
            ok = c <= self.end[s]
            self.drop(s[~ok], TRUNCATED)
            self.cur[s[ok]] = c[ok]
            self.counts["pppoe"] += int(np.count_nonzero(v[m][ok] == 0x8864))

    def do_eth(self, sel: np.ndarray) -> None:
        self._ethernet(sel)

    def do_ipver(self, sel: np.ndarray) -> None:
        ok = self.need(sel, 1)
        self.drop(sel[~ok], TRUNCATED)
        s = sel[ok]
        nib = self.d[self.cur[s]] >> 4
        self.kind[s] = np.where(nib == 4, IPV4, np.where(nib == 6, IPV6, NON_IP)).astype(np.int8)

    def do_mpls(self, sel: np.ndarray) -> None:
        ok = self.need(sel, 4)
        self.drop(sel[~ok], TRUNCATED)
        s = sel[ok]
        c = self.cur[s]
        bos = (self.d[c + 2] & 1).astype(bool)
        self.cur[s] = c + 4
        b = s[bos]
        if len(b):
            # after the bottom label: IP by version nibble, or a pseudowire control word + Ethernet
            ok2 = self.need(b, 1)
            self.drop(b[~ok2], TRUNCATED)
            b = b[ok2]
            nib = self.d[self.cur[b]] >> 4
            pw = nib == 0
            self.cur[b[pw]] += 4
            self.kind[b] = np.where(pw, ETH, IPVER).astype(np.int8)
        self.counts["mpls"] += int(bos.sum())

    def do_ppp(self, sel: np.ndarray) -> None:
        ok = self.need(sel, 2)
        self.drop(sel[~ok], TRUNCATED)
        s = sel[ok]
        c = self.cur[s]
        d = self.d
        cisco = ((d[c] == 0x0F) | (d[c] == 0x8F)) & (d[c + 1] == 0x00)
        if cisco.any():             # Cisco HDLC framing under a PPP link type: an ethertype follows
            self._fixed_etype(s[cisco], 4, 2)
            s, c = s[~cisco], c[~cisco]
        hdlc = (d[c] == 0xFF) & (d[c + 1] == 0x03)
        c = c + np.where(hdlc, 2, 0)
        ok = c + 2 <= self.end[s]
        self.drop(s[~ok], TRUNCATED)
        s, c = s[ok], c[ok]
        short = (d[c] & 1).astype(bool)          # protocol field compressed to one byte
        pr = np.where(short, d[c].astype(np.int64), _be16(d, c))
        self.cur[s] = c + np.where(short, 1, 2)
        k = np.full(len(s), NON_IP, dtype=np.int8)
        k[pr == 0x21] = IPV4
        k[pr == 0x57] = IPV6
        k[(pr == 0x281) | (pr == 0x283)] = MPLS
        self.kind[s] = k

    def do_ipv4(self, sel: np.ndarray) -> None:
        ok = self.need(sel, 20)
        self.drop(sel[~ok], TRUNCATED)
        s = sel[ok]
        c = self.cur[s]
        m = _mat(self.d, c, 20)
        b0 = m[:, 0]
        ihl = (b0 & 0x0F).astype(np.int64) * 4
        tot = (m[:, 2].astype(np.int64) << 8) | m[:, 3]
        good = ((b0 >> 4) == 4) & (ihl >= 20) & ~(self.whole[s] & (c + tot > self.end[s]))
        if not good.all():
            self.drop(s[~good], MALFORMED)
            s, c, m, ihl, tot = s[good], c[good], m[good], ihl[good], tot[good]
        if self.fb is not None:         # an inner header: clear what the outer one set
            self.src_hi[s] = 0
            self.dst_hi[s] = 0
        a = np.ascontiguousarray(m[:, 12:20]).view(">u4").astype(np.uint64) | IPV4_MAPPED
        self.src_lo[s] = a[:, 0]
        self.dst_lo[s] = a[:, 1]
        self.ip_len[s] = tot
        self.ipend[s] = np.where(tot > 0, c + tot, self.end[s])   # 0: TSO/GSO, length unknown
        tso = tot == 0
        if tso.any():                   # a segmentation-offload super-packet: size it from the frame
            t = s[tso]
            self.ip_len[t] = np.maximum(
                self.fb_src.wire_len[t].astype(np.int64) - (c[tso] - self.fb_src.offset[t].astype(np.int64)), 0)
        proto = m[:, 9]
        self.proto[s] = proto
        self.ver[s] = 4
        if self.fb is not None:
            self.sport[s] = 0
            self.dport[s] = 0
            self.flags[s] = 0
        fo = ((m[:, 6].astype(np.int64) & 0x1F) << 8) | m[:, 7]
        later = fo != 0
        first = ((m[:, 6] & 0x20) != 0) & ~later
        if later.any() or first.any():
            ident = (m[:, 4].astype(np.int64) << 8) | m[:, 5]
            self.mark_fragments(s, first, later, ident, proto)
            self.counts["fragments"] += int((first | later).sum())
        self.cur[s] = c + ihl
        self.aux[s] = proto
        self.kind[s] = np.where(later, DONE, PROTO).astype(np.int8)

    def do_ipv6(self, sel: np.ndarray) -> None:
        ok = self.need(sel, 40)
        self.drop(sel[~ok], TRUNCATED)
        s = sel[ok]
        c = self.cur[s]
        m = _mat(self.d, c, 8)
        plen = (m[:, 4].astype(np.int64) << 8) | m[:, 5]
        good = ((m[:, 0] >> 4) == 6) & ~(self.whole[s] & (c + 40 + plen > self.end[s]))
        if not good.all():
            self.drop(s[~good], MALFORMED)
            s, c, m, plen = s[good], c[good], m[good], plen[good]
        a = byte_windows(self.d, 32)[c + 8].view(">u8").reshape(len(s), 4).astype(np.uint64)
        self.src_hi[s], self.src_lo[s], self.dst_hi[s], self.dst_lo[s] = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
        self.ip_len[s] = plen + 40
        self.ipend[s] = np.where(plen > 0, c + 40 + plen, self.end[s])   # 0: jumbogram
        self.proto[s] = m[:, 6]
        self.ver[s] = 6
        if self.fb is not None:
            self.sport[s] = 0
            self.dport[s] = 0
            self.flags[s] = 0
        self.cur[s] = c + 40
        self.aux[s] = m[:, 6]
        self.kind[s] = PROTO

    def do_proto(self, sel: np.ndarray) -> None:
        nh = self.aux[sel]
        self.proto[sel] = nh
        self.kind[sel] = DONE           # default: a port-less L4 protocol or a cut header
        d = self.d
        # TCP and UDP: ports (and flags, and UDP tunnels)
        ported = PORTED[nh]
        if ported.any():
            s = sel[ported]
            l4 = nh[ported]
            c = self.cur[s]
            # ports need 4 captured bytes, and a datagram long enough to hold the whole
            # L4 header (TCP 20, UDP 8): otherwise the header is not there (ports 0)
            hmin = np.where(l4 == 6, 20, np.where(l4 == 17, 8, 4))
            ok = (c + 4 <= self.end[s]) & (c + hmin <= self.ipend[s])
            s, c, l4 = s[ok], c[ok], l4[ok]
            pp = byte_windows(d, 4)[c].view(">u2").reshape(len(s), 2)
            self.sport[s] = pp[:, 0]
            self.dport[s] = pp[:, 1]
            tcp = l4 == 6
            if tcp.any():
                t = s[tcp]
                okf = self.need(t, 14)
                t = t[okf]
                self.flags[t] = d[self.cur[t] + 13]
            udp = l4 == 17
            if udp.any():
                u = s[udp]
                sp, dp = self.sport[u], self.dport[u]
                tun = UDP_TUNNEL_PORT[sp] | UDP_TUNNEL_PORT[dp]
                u, sp, dp = u[tun], sp[tun], dp[tun]
                if len(u):
                    self._udp_tunnels(u, sp, dp)
        sp = SPECIAL_PROTO[nh]
        if sp.any():
            self._special_proto(sel[sp], nh[sp])

    def _udp_tunnels(self, u: np.ndarray, sp: np.ndarray, dp: np.ndarray) -> None:
        """VXLAN (4789), Geneve (6081), CAPWAP data (5247), GTP-U (2152): each packet is
        claimed by the first that matches, in that order."""
        d = self.d
        free = np.ones(len(u), dtype=bool)
        # VXLAN: 8-byte header with the I flag -> inner Ethernet
        m = free & (dp == 4789) & self.need(u, 16)
        m[m] = (d[self.cur[u[m]] + 8] & 0x08) != 0
        if m.any():
            v = u[m]
            free &= ~m
            self.save_fallback(v, "vxlan")
            self.cur[v] += 16
            self.kind[v] = ETH
        # Geneve: 8 bytes + options, protocol type as an ethertype
        m = free & (dp == 6081) & self.need(u, 16)
        m[m] = (d[self.cur[u[m]] + 8] >> 6) == 0
        if m.any():
            g = u[m]
            free &= ~m
            c = self.cur[g]
            self.save_fallback(g, "geneve")
            self.aux[g] = _be16(d, c + 10)
            self.cur[g] = c + 16 + (d[c + 8] & 0x3F).astype(np.int64) * 4
            self.kind[g] = ETYPE
        m = free & ((dp == 5247) | (sp == 5247)) & self.need(u, 10)
        if m.any():
            g = u[m]
            free &= ~m
            self.save_fallback(g, "capwap")
            self.cur[g] += 8
            self.kind[g] = CAPWAP
        m = free & ((dp == 2152) | (sp == 2152)) & self.need(u, 16)
        if m.any():
            g = u[m]
            self.save_fallback(g, "gtp")
            self.cur[g] += 8
            self.kind[g] = GTP

    def _special_proto(self, sel: np.ndarray, nh: np.ndarray) -> None:
        """IPv6 extension headers, AH, IPv6 fragments and IP/GRE tunnels."""
        d = self.d
        # hop-by-hop, routing, destination options, mobility, HIP, shim6: (len + 1) * 8 bytes
        ext = np.isin(nh, (0, 43, 60, 135, 139, 140)) & (self.ver[sel] == 6)
        if ext.any():
            s = sel[ext]
            ok = self.need(s, 2)
            s = s[ok]
            c = self.cur[s]
            self.aux[s] = d[c]
            self.cur[s] = c + (d[c + 1].astype(np.int64) + 1) * 8
            self.kind[s] = PROTO
        ah = nh == 51
        if ah.any():
            s = sel[ah]
            ok = self.need(s, 2)
            s = s[ok]
            c = self.cur[s]
            self.aux[s] = d[c]
            self.cur[s] = c + (d[c + 1].astype(np.int64) + 2) * 4
            self.kind[s] = PROTO
        fr = (nh == 44) & (self.ver[sel] == 6)
        if fr.any():
            s = sel[fr]
            ok = self.need(s, 8)
            s = s[ok]
            c = self.cur[s]
            nxt = d[c].astype(np.int64)
            w = _be16(d, c + 2)
            later = (w >> 3) != 0
            first = ((w & 1) != 0) & ~later
            self.proto[s] = nxt
            self.mark_fragments(s, first, later, _be32(d, c + 4), nxt)
            self.counts["fragments"] += int((first | later).sum())
            self.cur[s] = c + 8
            self.aux[s] = nxt
            self.kind[s] = np.where(later, DONE, PROTO).astype(np.int8)
        for code, kind, name in ((4, IPV4, "ipip"), (41, IPV6, "6in4"), (47, GRE, "gre")):
            t = nh == code
            if t.any():
                s = sel[t]
                s = s[self.need(s, 1)]
                self.save_fallback(s, name)
                self.kind[s] = kind

    def do_gre(self, sel: np.ndarray) -> None:
        ok = self.need(sel, 4)
        self.drop(sel[~ok], TRUNCATED)
        s = sel[ok]
        c = self.cur[s]
        fl = _be16(self.d, c)
        ver = fl & 7
        hl = np.where(ver == 0,
                      4 + 4 * ((fl & 0xC000) != 0) + 4 * ((fl & 0x2000) != 0) + 4 * ((fl & 0x1000) != 0),
                      8 + 4 * ((fl & 0x1000) != 0) + 4 * ((fl & 0x0080) != 0))
        good = ((ver == 0) & ((fl & 0x4000) == 0)) | (ver == 1)
        self.drop(s[~good], MALFORMED)
        s, c, hl = s[good], c[good], hl[good]
        self.aux[s] = _be16(self.d, c + 2)
        self.cur[s] = c + hl
        self.kind[s] = ETYPE

    def do_gtp(self, sel: np.ndarray) -> None:
        d = self.d
        c = self.cur[sel]
        fl = d[c]
        gpdu = ((fl >> 5) == 1) & ((fl & 0x10) != 0) & (d[c + 1] == 0xFF)
        self.drop(sel[~gpdu], NON_IP)
        s, c, fl = sel[gpdu], c[gpdu], fl[gpdu]
        hl = np.where((fl & 0x07) != 0, 12, 8).astype(np.int64)
        ok = c + hl <= self.end[s]
        if not ok.all():
            self.drop(s[~ok], TRUNCATED)
            s, c, fl, hl = s[ok], c[ok], fl[ok], hl[ok]
        # extension headers: (length in 4-byte units, ..., next type) chained from byte 11
        e = (fl & 0x04) != 0
        if e.any():
            nxt = np.zeros(len(s), dtype=np.int64)
            nxt[e] = d[c[e] + 11]
            for _ in range(8):
                go = nxt != 0
                if not go.any():
                    break
                have = c + hl + 1 <= self.end[s]
                go &= have
                ln = np.zeros(len(s), dtype=np.int64)
                ln[go] = d[(c + hl)[go]].astype(np.int64) * 4
                bad = go & ((ln == 0) | (c + hl + ln > self.end[s]))
                go &= ~bad
                nxt[bad | ~have] = 0
                hl = hl + ln * go
                nxt[go] = d[(c + hl - 1)[go]]
        self.cur[s] = c + hl
        self.kind[s] = IPVER
        self.counts["gtp"] += len(s)

    def do_capwap(self, sel: np.ndarray) -> None:
        """CAPWAP data (UDP 5247) carrying 802.11 data frames: header, 802.11 header, LLC/SNAP."""
        d = self.d
        c = self.cur[sel]
        hl = ((d[c + 1] & 0xF8).astype(np.int64)) >> 1
        w = c + hl
        ok = ((d[c] & 0x0F) == 0) & (w + 33 <= self.end[sel])
        s, w = sel[ok], w[ok]
        ok2 = d[w + 1] == 0x08
        s, w = s[ok2], w[ok2]
        self.drop(np.setdiff1d(sel, s, assume_unique=True), NON_IP)
        self.aux[s] = _be16(d, w + 30)
        self.cur[s] = w + 32
        self.kind[s] = ETYPE

    HANDLERS = {CAPWAP: do_capwap, ETYPE: do_etype, ETH: do_eth, IPVER: do_ipver, IPV4: do_ipv4, IPV6: do_ipv6,
                PROTO: do_proto, MPLS: do_mpls, PPP: do_ppp, GRE: do_gre, GTP: do_gtp}

    def run(self) -> None:
        kind = self.kind
        for _ in range(MAX_PASSES):
            act = np.nonzero(kind > 0)[0]
            if not len(act):
                return
            ka = kind[act]
            lo, hi = int(ka.min()), int(ka.max())
            if lo == hi:
                self.HANDLERS[lo](self, act)
                continue
            for k in np.flatnonzero(np.bincount(ka)).tolist():
                self.HANDLERS[k](self, act[ka == k])
        kind[kind > 0] = TOO_DEEP


class Decoder:
    """Decodes ``FrameBatch`` objects into ``PacketBatch`` objects (vectorised).

    State kept across batches: the flow of each recent first IP fragment (bounded
    by ``max_fragments``), so later fragments join their flow. ``stats`` counts
    frames, packets, left-out frames by reason, unsupported link types by number,
    tunnels by kind and fragments; ``warnings`` holds one message per unsupported
    link type seen.

    ``vlan``: which tag of a VLAN stack fills the ``vlan`` column: "outer" (the
    contract's default: the first tag on the wire) or "inner" (the last tag seen,
    as nDPI counts flows). ``later_fragments``: "join" gives non-first IP
    fragments the flow of their first fragment; "drop" leaves them out (nDPI's
    reader does so; counted in ``stats["fragments_dropped"]``).
    """

    def __init__(self, *, max_fragments: int = 65536, vlan: str = "outer", later_fragments: str = "join"):
        if max_fragments < 1:
            raise ValueError(f"max_fragments must be >= 1, got {max_fragments}")
        if vlan not in ("outer", "inner"):
            raise ValueError(f"vlan must be 'outer' or 'inner', got {vlan!r}")
        if later_fragments not in ("join", "drop"):
            raise ValueError(f"later_fragments must be 'join' or 'drop', got {later_fragments!r}")
        self.max_fragments = int(max_fragments)
        self.vlan = vlan
        self.later_fragments = later_fragments
        self._frags: OrderedDict = OrderedDict()
        self.warnings: list[str] = []
        self.stats: dict = {"frames": 0, "packets": 0, "skipped": 0, "non_ip": 0, "truncated": 0,
                            "malformed": 0, "too_deep": 0, "unsupported": 0,
                            "unsupported_linktype": Counter(), "tunnels": Counter(),
                            "tunnel_fallback": 0, "fragments": 0, "fragments_unmatched": 0,
                            "mpls": 0, "pppoe": 0}

    def decode(self, frames: FrameBatch) -> PacketBatch:
        n = len(frames)
        fast = decode_common(frames) if n else None
        if fast is None:
            return self._decode_general(frames)[0]
        # the common layout in one pass (fastpath.py); the rest through the general decoder
        elig, cols = fast
        st = self.stats
        ts = np.ascontiguousarray(frames.ts, dtype=np.float64)
        wire = np.ascontiguousarray(frames.wire_len, dtype=np.uint32)
        vlan = np.zeros(n, dtype=np.uint16)
        rest = np.flatnonzero(~elig)
        n_fast = n - len(rest)
        st["frames"] += n_fast
        st["packets"] += n_fast
        if not len(rest):
            return PacketBatch(ts=ts, wire_len=wire, vlan=vlan, skipped=0, **cols)
        sub = FrameBatch(data=frames.data, offset=frames.offset[rest], caplen=frames.caplen[rest],
                         wire_len=frames.wire_len[rest], ts=frames.ts[rest], linktype=frames.linktype[rest])
        pb, kept = self._decode_general(sub)
        rows = rest[kept]
        if len(rows):
            for c, a in cols.items():
                a[rows] = getattr(pb, c)
            vlan[rows] = pb.vlan
        keep = elig
        keep[rows] = True
        if len(rows) == len(rest):                  # every frame is a packet: no compaction
            return PacketBatch(ts=ts, wire_len=wire, vlan=vlan, skipped=pb.skipped, **cols)
        idx = np.flatnonzero(keep)
        return PacketBatch(ts=ts[idx], wire_len=wire[idx], vlan=vlan[idx], skipped=pb.skipped,
                           **{c: a[idx] for c, a in cols.items()})

    def _decode_general(self, frames: FrameBatch) -> tuple[PacketBatch, np.ndarray]:
        """Every layout: the reference decoder. Also returns the kept frames' indices."""
        n = len(frames)
        st = self.stats
        st["frames"] += n
        if n == 0:
            return PacketBatch.empty(), np.empty(0, dtype=np.int64)
        w = _Work(frames, self)
        w.link(np.asarray(frames.linktype))
        w.run()
        kind = w.kind
        if w.fb is not None:
            back = (kind < 0) & w.fb_ok
            if back.any():
                for c, a in w.fb.items():
                    getattr(w, c)[back] = a[back]
                kind[back] = DONE
                st["tunnel_fallback"] += int(back.sum())
        ok = (kind == DONE) & (w.ver != 0)      # only frames where an IP header was decoded
        for code, name in DROP_NAMES.items():
            c = int(np.count_nonzero(kind == code))
            if c:
                st[name] += c
        for key, c in w.counts.items():
            if isinstance(key, tuple):
                lt = key[1]
                if lt not in st["unsupported_linktype"]:
                    self.warnings.append(
                        f"unsupported link type {lt} ({LINKTYPE_NAMES.get(lt, 'unknown')}): "
                        "its frames are skipped")
                st["unsupported_linktype"][lt] += c
            elif key.startswith("tunnel:"):
                st["tunnels"][key[7:]] += c
            else:
                st[key] = st.get(key, 0) + c
        if w.fragst is not None:
            if self.later_fragments == "drop":
                later = ok & (w.fragst == 2)
                st["fragments_dropped"] = st.get("fragments_dropped", 0) + int(later.sum())
                ok &= ~later
            self._fragments(w, ok)
        idx = np.nonzero(ok)[0]
        skipped = n - len(idx)
        st["skipped"] += skipped
        st["packets"] += len(idx)
        all_ok = skipped == 0

        def col(a: np.ndarray) -> np.ndarray:
            return a if all_ok else a[idx]

        return PacketBatch(
            ts=np.ascontiguousarray(col(frames.ts), dtype=np.float64),
            src_hi=col(w.src_hi), src_lo=col(w.src_lo), dst_hi=col(w.dst_hi), dst_lo=col(w.dst_lo),
            sport=col(w.sport), dport=col(w.dport), proto=col(w.proto), ip_len=col(w.ip_len),
            wire_len=np.ascontiguousarray(col(frames.wire_len), dtype=np.uint32),
            tcp_flags=col(w.flags), vlan=col(w.vlan), ip_version=col(w.ver), skipped=skipped), idx

    def _fragments(self, w: _Work, ok: np.ndarray) -> None:
        """Give later fragments the flow of their first fragment (Python loop: fragments only)."""
        rows = np.nonzero((w.fragst != 0) & ok)[0]
        if not len(rows):
            return
        fk = w.fk
        keys = zip(fk["sh"][rows].tolist(), fk["sl"][rows].tolist(), fk["dh"][rows].tolist(),
                   fk["dl"][rows].tolist(), fk["pid"][rows].tolist())
        state = self._frags
        cols = ("src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "proto", "ver")
        vals = [getattr(w, c) for c in cols]
        unmatched = 0
        for r, st, key in zip(rows.tolist(), w.fragst[rows].tolist(), keys):
            if st == 1:
                state[key] = tuple(v[r] for v in vals)
                state.move_to_end(key)
                if len(state) > self.max_fragments:
                    state.popitem(last=False)
            else:
                flow = state.get(key)
                if flow is None:
                    unmatched += 1
                    continue
                for v, x in zip(vals, flow):
                    v[r] = x
        self.stats["fragments_unmatched"] += unmatched
