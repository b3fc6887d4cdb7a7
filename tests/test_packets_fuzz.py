"""Robustness: cut and mutated frames and files never crash the decoder or the readers, and
the decoder never reads a byte past a frame's caplen (each frame sits at the very end of its
own buffer here, so any over-read would raise IndexError)."""
from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from scapy.all import GRE, IP, TCP, UDP, Dot1Q, Ether, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, PPPoE, Raw
from scapy.contrib.gtp import GTP_U_Header
from scapy.contrib.mpls import MPLS
from scapy.layers.ppp import PPP
from scapy.layers.vxlan import VXLAN

from trafficsnn.errors import CaptureError
from trafficsnn.packets import Decoder, FrameBatch, read_packets

INNER = IP(src="192.168.1.1", dst="192.168.1.2") / TCP(sport=5555, dport=80, flags="S")
OUTER = IP(src="1.1.1.1", dst="2.2.2.2")
SAMPLES = [(1, bytes(p)) for p in (
    Ether() / Dot1Q(vlan=3) / Dot1Q(vlan=4) / INNER,
    Ether(type=0x8847) / MPLS(s=0) / MPLS(s=1) / INNER,
    Ether() / PPPoE() / PPP(proto=0x57) / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(m=1) / UDP(),
    Ether() / OUTER / GRE(proto=0x6558, key_present=1) / Ether() / INNER,
    Ether() / OUTER / UDP(dport=4789) / VXLAN() / Ether() / INNER,
    Ether() / OUTER / UDP(dport=2152) / GTP_U_Header(E=1, next_ex=0x85) / Raw(b"\x01\x00\x05\x00") / INNER,
    Ether() / OUTER / UDP(dport=5247) / Raw(b"\x00\x10" + b"\0" * 60),
    Ether() / IPv6() / IP() / Raw(b"x"),
)] + [(0, struct.pack("<I", 30) + bytes(IPv6() / TCP())), (113, b"\0" * 14 + b"\x08\x00" + bytes(INNER)),
      (276, b"\x86\xdd" + b"\0" * 18 + bytes(IPv6() / UDP())), (9, b"\xff\x03\x00\x21" + bytes(INNER)),
      (192, struct.pack("<BBHI", 0, 0, 8, 101) + bytes(INNER)), (104, b"\x0f\x00\x88\x47" + bytes(MPLS(s=1) / INNER))]


def one(raw: bytes, lt: int) -> FrameBatch:
    return FrameBatch(data=np.frombuffer(raw, dtype=np.uint8), offset=np.zeros(1, np.int64),
                      caplen=np.array([len(raw)], np.uint32), wire_len=np.array([len(raw) + 7], np.uint32),
                      ts=np.zeros(1), linktype=np.array([lt], np.uint16))


def test_every_cut_of_every_sample_decodes_without_over_reading():
    dec = Decoder()
    for lt, raw in SAMPLES:
        assert len(dec.decode(one(raw, lt))) == 1, (lt, raw.hex())
        for cut in range(len(raw)):
            dec.decode(one(raw[:cut], lt))


def test_random_mutations_never_crash_the_decoder():
    rng = random.Random(7)
    dec = Decoder()
    for _ in range(3000):
        lt, raw = rng.choice(SAMPLES)
        b = bytearray(raw)
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        b = b[: rng.randint(0, len(b))]
        pb = dec.decode(one(bytes(b), lt))
        assert len(pb) <= 1


def _pcap(frames: list[bytes]) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, f in enumerate(frames):
        out.append(struct.pack("<IIII", i, 0, len(f), len(f)) + f)
    return b"".join(out)


def _pcapng(frames: list[bytes]) -> bytes:
    def block(t, body):
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", t, len(body) + 12) + body + struct.pack("<I", len(body) + 12)
    out = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)), block(1, struct.pack("<HHI", 1, 0, 0))]
    for i, f in enumerate(frames):
        out.append(block(6, struct.pack("<IIIII", 0, 0, i, len(f), len(f)) + f))
    return b"".join(out)


@pytest.mark.parametrize("writer", [_pcap, _pcapng])
def test_mutated_files_never_crash(tmp_path, writer):
    good = writer([raw for lt, raw in SAMPLES if lt == 1] * 3)
    rng = random.Random(11)
    p = tmp_path / "m.pcap"
    for i in range(150):
        b = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        if i % 3 == 0:
            b = b[: rng.randint(0, len(b))]
        p.write_bytes(bytes(b))
        r = read_packets(p)
        n = sum(len(x) for x in r)
        assert n <= r.stats["capture"]["frames"]
        assert all(isinstance(e, CaptureError) for e in r.errors)
        try:
            list(read_packets(p, strict=True))
        except CaptureError:
            pass
