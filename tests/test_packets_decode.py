"""Decoder: every link type, encapsulation, fragment and tunnel, checked field by field."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from scapy.all import (ARP, GRE, ICMP, IP, TCP, UDP, Dot1AD, Dot1Q, Ether, ICMPv6EchoRequest, IPv6,
                       IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting,
                       PPPoE, Raw, fragment)
from scapy.layers.l2 import CookedLinux
from scapy.layers.ppp import PPP
from scapy.contrib.mpls import MPLS
from scapy.layers.vxlan import VXLAN

from trafficsnn.packets import Decoder, FrameBatch, PacketBatch
from trafficsnn.packets.batch import ip_to_words, words_to_ip


def frames(pkts: list[bytes], linktype: int | list[int] = 1, caplen: list[int] | None = None) -> FrameBatch:
    raw = [bytes(p) for p in pkts]
    caps = caplen if caplen is not None else [len(r) for r in raw]
    data = np.frombuffer(b"".join(raw), dtype=np.uint8)
    off = np.cumsum([0] + [len(r) for r in raw[:-1]]).astype(np.int64)
    lts = linktype if isinstance(linktype, list) else [linktype] * len(raw)
    return FrameBatch(data=data, offset=off, caplen=np.array(caps, dtype=np.uint32),
                      wire_len=np.array([len(r) for r in raw], dtype=np.uint32),
                      ts=np.arange(len(raw), dtype=np.float64), linktype=np.array(lts, dtype=np.uint16))


def row(pb: PacketBatch, i: int = 0) -> dict:
    return {"src": words_to_ip(pb.src_hi[i], pb.src_lo[i]), "dst": words_to_ip(pb.dst_hi[i], pb.dst_lo[i]),
            "sport": int(pb.sport[i]), "dport": int(pb.dport[i]), "proto": int(pb.proto[i]),
            "ip_len": int(pb.ip_len[i]), "flags": int(pb.tcp_flags[i]), "vlan": int(pb.vlan[i]),
            "ver": int(pb.ip_version[i]), "wire": int(pb.wire_len[i])}


def decode1(pkt, linktype: int = 1, **kw) -> dict:
    pb = Decoder().decode(frames([pkt], linktype, **kw))
    assert len(pb) == 1, "packet was skipped"
    return row(pb)


ETH = Ether(src="00:01:02:03:04:05", dst="00:01:02:03:04:06")
TCP4 = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=443, flags="SA") / Raw(b"x" * 10)
UDP6 = IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5353, dport=53) / Raw(b"y" * 7)
T4 = {"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 1234, "dport": 443, "proto": 6, "ip_len": 50,
      "flags": 0x12, "ver": 4}
U6 = {"src": "2001:db8::1", "dst": "2001:db8::2", "sport": 5353, "dport": 53, "proto": 17,
      "ip_len": 55, "flags": 0, "ver": 6}


def check(got: dict, want: dict) -> None:
    assert {k: got[k] for k in want} == want


def test_ethernet_ipv4_tcp_and_ipv6_udp():
    pb = Decoder().decode(frames([ETH / TCP4, ETH / UDP6]))
    assert len(pb) == 2
    check(row(pb, 0), T4 | {"vlan": 0, "wire": 64})
    check(row(pb, 1), U6)
    assert pb.ts.tolist() == [0.0, 1.0]
    assert pb.src_hi.dtype == np.uint64 and pb.sport.dtype == np.uint16
    hi, lo = ip_to_words("10.0.0.1")
    assert (pb.src_hi[0], pb.src_lo[0]) == (hi, lo)


def test_vlan_qinq_outermost_id():
    check(decode1(ETH / Dot1Q(vlan=7) / TCP4), T4 | {"vlan": 7})
    check(decode1(ETH / Dot1AD(vlan=100) / Dot1Q(vlan=7) / UDP6), U6 | {"vlan": 100})
    pkt = bytearray(bytes(ETH / Dot1Q(vlan=5) / Dot1Q(vlan=6) / TCP4))
    pkt[12:14] = b"\x91\x00"
    check(decode1(bytes(pkt)), T4 | {"vlan": 5})


def test_mpls_stack_and_pppoe():
    check(decode1(Ether(type=0x8847) / MPLS(label=16, s=0) / MPLS(label=17, s=1) / TCP4), T4)
    check(decode1(Ether(type=0x8847) / MPLS(label=16, s=1) / UDP6), U6)
    check(decode1(ETH / PPPoE(sessionid=1) / PPP(proto=0x21) / TCP4), T4)
    check(decode1(ETH / Dot1Q(vlan=3) / PPPoE(sessionid=1) / PPP(proto=0x57) / UDP6), U6 | {"vlan": 3})


@pytest.mark.parametrize("lt,head", [
    (113, bytes(CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, proto=0x0800))),
    (276, struct.pack(">HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\0" * 8)),
    (101, b""), (12, b""), (14, b""), (228, b""),
    (0, struct.pack("<I", 2)), (0, struct.pack(">I", 2)), (108, struct.pack(">I", 2)),
    (9, b"\xff\x03\x00\x21"), (50, b"\xff\x03\x00\x21"), (9, b"\x00\x21"), (9, b"\x21"),
    (104, b"\x0f\x00\x08\x00"), (9, b"\x0f\x00\x08\x00"),
    (192, struct.pack("<BBHI", 0, 0, 8, 1) + bytes(ETH)[:12] + b"\x08\x00"),
])
def test_link_types_ipv4(lt, head):
    check(decode1(head + bytes(TCP4), lt), T4)


@pytest.mark.parametrize("lt,head", [
    (113, bytes(CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, proto=0x86DD))),
    (276, struct.pack(">HHIHBB8s", 0x86DD, 0, 2, 1, 0, 6, b"\0" * 8)),
    (101, b""), (229, b""),
    (0, struct.pack("<I", 24)), (0, struct.pack("<I", 28)), (0, struct.pack("<I", 30)),
    (0, struct.pack("<I", 10)), (0, struct.pack("<I", 23)), (108, struct.pack(">I", 30)),
    (9, b"\xff\x03\x00\x57"),
])
def test_link_types_ipv6(lt, head):
    check(decode1(head + bytes(UDP6), lt), U6)


def test_ipv4_options_and_ipv6_extension_headers():
    opt = IP(src="10.0.0.1", dst="10.0.0.2", options=[b"\x94\x04\x00\x00"]) / TCP(sport=1234, dport=443,
                                                                                  flags="SA") / Raw(b"x" * 10)
    check(decode1(ETH / opt), T4 | {"ip_len": 54})
    base = IPv6(src="2001:db8::1", dst="2001:db8::2")
    l4 = UDP(sport=5353, dport=53) / Raw(b"y" * 7)
    chain = base / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / l4
    got = decode1(ETH / chain)
    check(got, {k: v for k, v in U6.items() if k != "ip_len"})
    assert got["ip_len"] == len(chain)
    ah = bytes([17, 4, 0, 0]) + b"\0" * 20   # AH, payload len 4 -> (4+2)*4 = 24 bytes
    p6 = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2", nh=51, plen=24 + 15)) + ah + bytes(l4)
    check(decode1(p6, 101), U6 | {"ip_len": 40 + 24 + 15})


def test_icmp_and_portless_protocols():
    check(decode1(ETH / IP(src="1.2.3.4", dst="5.6.7.8") / ICMP()),
          {"src": "1.2.3.4", "proto": 1, "sport": 0, "dport": 0, "ip_len": 28})
    check(decode1(ETH / IPv6(src="::1", dst="::2") / ICMPv6EchoRequest()),
          {"proto": 58, "sport": 0, "ver": 6})
    check(decode1(ETH / IP(src="1.2.3.4", dst="5.6.7.8", proto=50) / Raw(b"z" * 20)),
          {"proto": 50, "sport": 0, "ip_len": 40})


def test_ipv4_fragments_join_their_flow_across_batches():
    big = IP(src="10.0.0.1", dst="10.0.0.2", id=77) / UDP(sport=1111, dport=2222) / Raw(b"a" * 3000)
    frags = fragment(big, fragsize=1000)
    assert len(frags) >= 3
    dec = Decoder()
    pb1 = dec.decode(frames([ETH / frags[0], ETH / frags[1]]))
    pb2 = dec.decode(frames([ETH / f for f in frags[2:]]))
    pb = PacketBatch.concat([pb1, pb2])
    assert pb.sport.tolist() == [1111] * len(frags)
    assert pb.dport.tolist() == [2222] * len(frags)
    assert pb.proto.tolist() == [17] * len(frags)
    assert pb.ip_len.tolist() == [len(f) for f in frags]
    # an orphan later fragment: kept, ports unknown -> 0
    orphan = Decoder().decode(frames([ETH / frags[1]]))
    assert len(orphan) == 1 and orphan.sport[0] == 0 and orphan.proto[0] == 17
    assert dec.stats["fragments"] == len(frags)


def test_ipv6_fragments():
    big = IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment(id=9) / UDP(
        sport=1111, dport=2222) / Raw(b"a" * 3000)
    frags = fragment6(big)
    pb = Decoder().decode(frames([ETH / f for f in frags]))
    assert len(pb) == len(frags) >= 3
    assert pb.sport.tolist() == [1111] * len(frags) and pb.proto.tolist() == [17] * len(frags)


def fragment6(pkt):
    from scapy.layers.inet6 import fragment6 as f6
    return f6(pkt, 1280)


INNER = IP(src="192.168.1.1", dst="192.168.1.2") / TCP(sport=5555, dport=80, flags="S")
INNER_W = {"src": "192.168.1.1", "dst": "192.168.1.2", "sport": 5555, "dport": 80, "proto": 6,
           "flags": 2, "ip_len": 40, "ver": 4}
OUTER = IP(src="1.1.1.1", dst="2.2.2.2")


@pytest.mark.parametrize("name,pkt", [
    ("ipip", ETH / OUTER / INNER),
    ("6in4", ETH / OUTER / IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=5555, dport=80, flags="S")),
    ("ip6ip6", ETH / IPv6(src="::1", dst="::2") / INNER),
    ("gre", ETH / OUTER / GRE(proto=0x0800) / INNER),
    ("gre_key_seq_csum", ETH / OUTER / GRE(proto=0x0800, key_present=1, key=5, seqnum_present=1, sequence_number=3,
                                           chksum_present=1) / INNER),
    ("gre_eth", ETH / OUTER / GRE(proto=0x6558) / ETH / Dot1Q(vlan=9) / INNER),
    ("vxlan", ETH / OUTER / UDP(sport=40000, dport=4789) / VXLAN(vni=42) / ETH / INNER),
])
def test_tunnels_report_the_inner_flow(name, pkt):
    got = decode1(pkt)
    if name == "6in4":
        check(got, {"src": "2001:db8::1", "dst": "2001:db8::2", "sport": 5555, "dport": 80, "proto": 6, "ver": 6})
    else:
        check(got, INNER_W)
    assert got["wire"] == len(pkt)


def test_gtp_u_and_pptp_gre():
    from scapy.contrib.gtp import GTP_U_Header, GTPPDUSessionContainer
    check(decode1(ETH / OUTER / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=1) / INNER), INNER_W)
    ext = GTP_U_Header(teid=1, E=1, next_ex=0x85) / GTPPDUSessionContainer(type=1, QFI=5)
    check(decode1(ETH / OUTER / UDP(sport=2152, dport=2152) / ext / INNER), INNER_W)
    pptp = bytes(OUTER / GRE(proto=0x880B, version=1, key_present=1, seqnum_present=1))
    pkt = bytes(Ether(type=0x0800)) + pptp + b"\xff\x03\x00\x21" + bytes(INNER)
    pkt = bytearray(pkt)
    check(decode1(bytes(pkt)), INNER_W)


def test_broken_tunnel_falls_back_to_outer_flow():
    pkt = ETH / OUTER / UDP(sport=40000, dport=4789) / VXLAN(vni=42) / Raw(b"\x00" * 20)
    check(decode1(pkt), {"src": "1.1.1.1", "dst": "2.2.2.2", "sport": 40000, "dport": 4789, "proto": 17})
    check(decode1(ETH / OUTER / GRE(proto=0x1234) / Raw(b"q" * 8)), {"src": "1.1.1.1", "proto": 47})


def test_non_ip_truncated_and_unsupported_are_counted():
    dec = Decoder()
    arp = ETH / ARP()
    tcp = bytes(ETH / TCP4)
    pb = dec.decode(frames([arp, tcp, tcp[:20], tcp, tcp], linktype=[1, 1, 1, 127, 1]))
    assert len(pb) == 2 and pb.skipped == 3
    assert dec.stats["non_ip"] == 1 and dec.stats["truncated"] == 1
    assert dec.stats["unsupported_linktype"] == {127: 1}
    assert len(dec.warnings) == 1 and "127" in dec.warnings[0] and "RADIOTAP" in dec.warnings[0]
    dec.decode(frames([tcp], linktype=127))
    assert len(dec.warnings) == 1


def test_snaplen_cut_l4_keeps_packet_and_never_reads_past_caplen():
    raw = bytes(ETH / TCP4)
    # cut inside the TCP ports: packet kept, ports 0; the bytes after caplen are poison
    for cut, sport, flags in ((14 + 20 + 2, 0, 0), (14 + 20 + 4, 1234, 0), (14 + 20 + 14, 1234, 0x12)):
        poisoned = raw[:cut] + b"\xff" * (len(raw) - cut)
        got = decode1(poisoned, caplen=[cut])
        assert (got["sport"], got["flags"], got["ip_len"]) == (sport, flags, 50)


def test_empty_batch():
    pb = Decoder().decode(FrameBatch(
        data=np.zeros(0, np.uint8), offset=np.zeros(0, np.int64), caplen=np.zeros(0, np.uint32),
        wire_len=np.zeros(0, np.uint32), ts=np.zeros(0), linktype=np.zeros(0, np.uint16)))
    assert len(pb) == 0


def test_vlan_inner_option_and_dropping_later_fragments():
    pkt = ETH / Dot1AD(vlan=100) / Dot1Q(vlan=7) / TCP4
    assert row(Decoder(vlan="inner").decode(frames([pkt])))["vlan"] == 7
    frags = fragment(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / Raw(b"a" * 3000), fragsize=1000)
    dec = Decoder(later_fragments="drop")
    pb = dec.decode(frames([ETH / f for f in frags]))
    assert len(pb) == 1 and dec.stats["fragments_dropped"] == len(frags) - 1
    with pytest.raises(ValueError):
        Decoder(vlan="middle")


def test_ip_length_rules():
    tcp = bytes(ETH / TCP4)
    # a frame captured whole whose IPv4 total length claims more bytes than it holds: corrupt
    bad = bytearray(tcp)
    bad[16:18] = (500).to_bytes(2, "big")
    dec = Decoder()
    assert len(dec.decode(frames([bytes(bad)]))) == 0 and dec.stats["malformed"] == 1
    # the same bytes cut by a snaplen (wire length larger) are fine: the rest was not captured
    fb = frames([bytes(bad)])
    fb.wire_len[:] = 514
    pb = Decoder().decode(fb)
    assert len(pb) == 1 and pb.ip_len[0] == 500 and pb.sport[0] == 1234
    # a datagram too short to hold a TCP header: port-less
    short = bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2", proto=6) / Raw(b"\x04\xd2\x01\xbb" + b"\0" * 8))
    assert decode1(short)["sport"] == 0
    # SCTP is a port-less flow
    sctp = bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2", proto=132) / Raw(b"\x04\xd2\x01\xbb" + b"\0" * 12))
    assert decode1(sctp)["sport"] == 0 and decode1(sctp)["proto"] == 132


def test_geneve_and_more_ipv6_extension_headers():
    from scapy.contrib.geneve import GENEVE
    check(decode1(ETH / OUTER / UDP(sport=1, dport=6081) / GENEVE(proto=0x6558) / ETH / INNER), INNER_W)
    check(decode1(ETH / OUTER / UDP(sport=1, dport=6081) / GENEVE(proto=0x0800) / INNER), INNER_W)
    mob = bytes([17, 1]) + b"\0" * 14      # mobility header, (1 + 1) * 8 bytes
    l4 = bytes(UDP(sport=5353, dport=53) / Raw(b"y" * 7))
    p6 = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2", nh=135, plen=16 + len(l4))) + mob + l4
    check(decode1(p6, 101), U6 | {"ip_len": 40 + 16 + 15})


def test_ppi_inside_ppi_and_short_ppi_are_not_packets():
    nested = struct.pack("<BBHI", 0, 0, 8, 192) + struct.pack("<BBHI", 0, 0, 8, 101) + bytes(TCP4)
    dec = Decoder()
    pb = dec.decode(frames([nested, b"\0\0\x08", struct.pack("<BBHI", 0, 0, 8, 101) + bytes(TCP4)], 192))
    assert len(pb) == 1 and pb.skipped == 2


def test_tso_packet_with_zero_total_length_is_sized_from_the_frame():
    raw = bytearray(bytes(ETH / TCP4))
    raw[16:18] = b"\0\0"
    got = decode1(bytes(raw))
    assert got["ip_len"] == len(raw) - 14 and got["sport"] == 1234


def test_udp_packet_on_two_tunnel_ports_is_decapsulated_once():
    from scapy.contrib.gtp import GTP_U_Header
    pkt = ETH / OUTER / UDP(sport=2152, dport=4789) / VXLAN(vni=1) / ETH / INNER
    check(decode1(pkt), INNER_W)
    pkt = ETH / OUTER / UDP(sport=4789, dport=2152) / GTP_U_Header(teid=1) / INNER
    check(decode1(pkt), INNER_W)


def test_fragment_state_is_bounded():
    def frags(ident, sport):
        big = IP(src="10.0.0.1", dst="10.0.0.2", id=ident) / UDP(sport=sport, dport=53) / Raw(b"a" * 2000)
        return [ETH / f for f in fragment(big, fragsize=1000)]
    a, b, c = frags(1, 1001), frags(2, 1002), frags(3, 1003)
    dec = Decoder(max_fragments=2)
    dec.decode(frames([a[0], b[0], c[0]]))          # the first fragment of datagram 1 is evicted
    pb = dec.decode(frames([a[1], b[1], c[1]]))
    assert pb.sport.tolist() == [0, 1002, 1003]
    assert dec.stats["fragments_unmatched"] == 1 and len(dec._frags) == 2
