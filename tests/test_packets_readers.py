"""Capture readers: pcap/pcapng variants written byte by byte, damage, strict mode, chunking."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from scapy.all import IP, TCP, UDP, Ether, IPv6, Raw

from trafficsnn.errors import CaptureError
from trafficsnn.packets import LINKTYPE_NAMES, Decoder, open_capture, read_packets
from trafficsnn.packets.readers import CaptureReader

PKTS = [bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000 + i, dport=80) / Raw(b"p" * i))
        for i in range(5)]
RAW6 = bytes(IPv6(src="::1", dst="::2") / UDP(sport=1, dport=2))
_T = bytes(Ether() / IP() / UDP(sport=1, dport=9))
MANY = [_T + b"z" * (i % 40) for i in range(3000)]   # frames of varying length (bytes only matter here)

pytestmark = pytest.mark.usefixtures("both_kernels")     # numpy and C paths alike


def pcap_bytes(pkts, *, order="<", nano=False, linktype=1, snaplen=65535, ts0=1_600_000_000, version=(2, 4),
               modified=False, caplens=None) -> bytes:
    magic = 0xA1B23C4D if nano else (0xA1B2CD34 if modified else 0xA1B2C3D4)
    out = [struct.pack(order + "IHHiIII", magic, version[0], version[1], 0, 0, snaplen, linktype)]
    for i, p in enumerate(pkts):
        cap = caplens[i] if caplens else len(p)
        frac = (i * 250_000_000 if nano else i * 250_000)
        out.append(struct.pack(order + "IIII", ts0 + i, frac, cap, len(p)))
        if modified:
            out.append(b"\0" * 8)
        out.append(p[:cap])
    return b"".join(out)


def block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def opt(order: str, code: int, val: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(val)) + val + b"\0" * (-len(val) % 4)


def shb(order="<") -> bytes:
    return block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(order="<", linktype=1, snaplen=0, tsresol: int | None = None, tsoffset: int | None = None) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += opt(order, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += opt(order, 14, struct.pack(order + "q", tsoffset))
    if opts:
        opts += opt(order, 0, b"")
    return block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + opts)


def epb(order="<", iface=0, ticks=0, pkt=b"", caplen=None) -> bytes:
    cap = len(pkt) if caplen is None else caplen
    return block(order, 6, struct.pack(order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, cap, len(pkt))
                 + pkt[:cap])


def spb(order="<", pkt=b"") -> bytes:
    return block(order, 3, struct.pack(order + "I", len(pkt)) + pkt)


def write(tmp_path: Path, data: bytes, name="x.pcap") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def read_all(path, **kw):
    r = open_capture(path, **kw)
    batches = list(r)
    return r, batches


def concat_frames(batches):
    out = []
    for b in batches:
        for o, c in zip(b.offset.tolist(), b.caplen.tolist()):
            out.append(bytes(b.data[o:o + c]))
    return out


def cols(batches, name):
    return np.concatenate([getattr(b, name) for b in batches]) if batches else np.zeros(0)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path, order, nano):
    p = write(tmp_path, pcap_bytes(PKTS, order=order, nano=nano), "capture.pcapng")  # name lies
    r, batches = read_all(p)
    assert r.errors == []
    assert concat_frames(batches) == PKTS
    assert cols(batches, "ts").tolist() == pytest.approx([1_600_000_000 + i * 1.25 for i in range(5)])
    assert cols(batches, "linktype").tolist() == [1] * 5
    assert cols(batches, "wire_len").tolist() == [len(x) for x in PKTS]
    assert r.stats["frames"] == 5 and r.format.startswith("pcap-" + ("le" if order == "<" else "be"))


def test_pcap_modified_format_and_other_linktype(tmp_path):
    p = write(tmp_path, pcap_bytes([RAW6] * 3, modified=True, linktype=101))
    r, batches = read_all(p)
    assert r.errors == [] and concat_frames(batches) == [RAW6] * 3
    assert set(cols(batches, "linktype").tolist()) == {101}


def test_small_batches_and_small_chunks_give_the_same_frames(tmp_path):
    pkts = [_T + b"z" * (i % 300) for i in range(2000)]
    p = write(tmp_path, pcap_bytes(pkts))
    r = CaptureReader(p, batch_size=7, chunk_size=4096)
    batches = list(r)
    assert max(len(b) for b in batches) <= 7
    assert concat_frames(batches) == pkts and r.errors == []
    assert r.stats["frames"] == 2000
    big = [b"\0" * 20000, b"\1" * 50000, b"\2" * 10]          # records larger than the chunk
    r = CaptureReader(write(tmp_path, pcap_bytes(big), "big.pcap"), chunk_size=4096)
    assert concat_frames(list(r)) == big and r.errors == []


def test_pcapng_sections_interfaces_resolutions_offsets_and_block_kinds(tmp_path):
    data = (shb("<")
            + idb("<", 1, 0)                                   # default: microseconds
            + idb("<", 101, 0, tsresol=9, tsoffset=100)        # nanoseconds, +100 s
            + idb("<", 1, 0, tsresol=0x80 | 10)                # 2^-10 s
            + epb("<", 0, 1_500_000_000_250_000, PKTS[0])
            + block("<", 4, b"\x01\x00\x04\x00\x0a\x00\x00\x01abc\x00\x00\x00\x00\x00")  # name resolution: skip
            + epb("<", 1, 2_000_000_000_500_000_000, RAW6)
            + epb("<", 2, 3 * 1024 + 512, PKTS[1])
            + block("<", 5, b"\0" * 16)                        # interface statistics: skip
            + block("<", 0x00000BAD, b"custom")                # custom block: skip
            + shb(">")                                         # a second, big-endian section
            + idb(">", 228, 0)
            + epb(">", 0, 7_000_000, bytes(IP(src="1.2.3.4", dst="5.6.7.8") / UDP()))
            + spb(">", bytes(IP(src="1.2.3.4", dst="5.6.7.8") / UDP())))
    p = write(tmp_path, data, "capture.pcap")                # name lies
    r, batches = read_all(p)
    assert r.errors == [] and r.format == "pcapng"
    assert cols(batches, "linktype").tolist() == [1, 101, 1, 228, 228]
    ts = cols(batches, "ts").tolist()
    assert ts[:4] == pytest.approx([1_500_000_000.25, 2_000_000_100.5, 3.5, 7.0])
    assert r.stats["sections"] == 2 and r.stats["interfaces"] == 4 and r.stats["skipped_blocks"] == 3
    assert r.stats["frames"] == 5
    pb = list(read_packets(p))
    assert sum(len(b) for b in pb) == 5


def test_pcapng_simple_packet_block_uses_interface_snaplen(tmp_path):
    data = shb() + idb("<", 1, 40) + spb("<", PKTS[3])
    r, batches = read_all(write(tmp_path, data))
    assert r.errors == []
    assert cols(batches, "caplen").tolist() == [40] and cols(batches, "wire_len").tolist() == [len(PKTS[3])]


def test_gzip_compressed_capture(tmp_path):
    p = tmp_path / "x.pcap.gz"
    p.write_bytes(gzip.compress(pcap_bytes(PKTS)))
    r, batches = read_all(p)
    assert concat_frames(batches) == PKTS and r.errors == []


# -- damage --------------------------------------------------------------------------------------------
GOOD = pcap_bytes(PKTS)
REC_OFF = [24]
for _p in PKTS[:-1]:
    REC_OFF.append(REC_OFF[-1] + 16 + len(_p))


def damaged(tmp_path, data, n_good, offset, reason_part, name="d.pcap"):
    p = write(tmp_path, data, name)
    r, batches = read_all(p)
    assert len(r.errors) == 1, r.errors
    e = r.errors[0]
    assert isinstance(e, CaptureError)
    assert sum(len(b) for b in batches) == n_good
    assert e.offset == offset and reason_part in e.reason, str(e)
    assert str(p) in str(e)
    with pytest.raises(CaptureError) as ei:
        list(open_capture(p, strict=True))
    assert ei.value.offset == offset
    # read_packets exposes the same error
    rp = read_packets(p)
    list(rp)
    assert [x.offset for x in rp.errors] == [offset]
    return e


def test_cut_mid_record_data_and_mid_header(tmp_path):
    damaged(tmp_path, GOOD[:REC_OFF[3] + 20], 3, REC_OFF[3], "cut short")
    damaged(tmp_path, GOOD[:REC_OFF[3] + 5], 3, REC_OFF[3], "cut short")
    damaged(tmp_path, GOOD[:10], 0, 10, "cut short")


def test_corrupt_record_header_and_caplen_beyond_snaplen(tmp_path):
    bad = bytearray(GOOD)
    struct.pack_into("<I", bad, REC_OFF[2] + 8, 0x7FFFFFFF)
    damaged(tmp_path, bytes(bad), 2, REC_OFF[2], "corrupt record header")
    snap = pcap_bytes(PKTS, snaplen=60)
    off2 = 24 + 16 + len(PKTS[0])
    # PKTS[0] is 54 bytes <= 60; PKTS[1]... 55 ... up to 58: all fit; make one record bigger
    pk = PKTS[:2] + [PKTS[2] + b"\0" * 40] + PKTS[3:]
    snap = pcap_bytes(pk, snaplen=60)
    off2 = 24 + 16 + len(pk[0]) + 16 + len(pk[1])
    damaged(tmp_path, snap, 2, off2, "exceeds the snapshot length")


def test_garbage_empty_unknown_magic_and_bad_version(tmp_path):
    damaged(tmp_path, b"", 0, 0, "empty")
    damaged(tmp_path, b"\x00\x01", 0, 0, "too short")
    damaged(tmp_path, b"GARBAGE!" * 100, 0, 0, "unknown magic")
    damaged(tmp_path, pcap_bytes(PKTS, version=(1, 0)), 0, 4, "version")
    damaged(tmp_path, GOOD + b"\xff" * 30, 5, len(GOOD), "")


def test_pcapng_damage(tmp_path):
    head = shb() + idb()
    blocks = [epb("<", 0, i, p) for i, p in enumerate(PKTS)]
    offs = np.cumsum([len(head)] + [len(b) for b in blocks[:-1]]).tolist()
    good = head + b"".join(blocks)
    damaged(tmp_path, good[:offs[3] + 9], 3, offs[3], "cut short")
    bad = bytearray(good)
    struct.pack_into("<I", bad, offs[2] + 4, 13)                   # block length not a multiple of 4
    damaged(tmp_path, bytes(bad), 2, offs[2], "corrupt block")
    bad = bytearray(good)
    struct.pack_into("<I", bad, offs[1] + 20, 5000)                # caplen beyond the block
    damaged(tmp_path, bytes(bad), 1, offs[1], "caplen")
    bad = bytearray(good)
    struct.pack_into("<I", bad, offs[4] + 8, 3)                    # undeclared interface
    damaged(tmp_path, bytes(bad), 4, offs[4], "interface")
    snap = shb() + idb("<", 1, 50) + b"".join(blocks)
    damaged(tmp_path, snap, 0, len(shb() + idb()), "snapshot length")
    bad = bytearray(good)
    bad[8:12] = b"\0\0\0\0"                                        # byte-order magic
    damaged(tmp_path, bytes(bad), 0, 0, "byte-order")
    damaged(tmp_path, epb() + good, 0, 0, "unknown magic")


def test_missing_file_raises_capture_error(tmp_path):
    with pytest.raises(CaptureError, match="cannot open"):
        open_capture(tmp_path / "nope.pcap")


def test_linktype_names():
    assert LINKTYPE_NAMES[1] == "EN10MB" and LINKTYPE_NAMES[276] == "LINUX_SLL2"
    assert isinstance(Decoder().stats, dict)




@pytest.mark.parametrize("bogus", [200, 5000, 0x7FFFFFFF])
@pytest.mark.parametrize("chunk", [4096, 1 << 20])
def test_bad_caplen_far_from_the_end_is_caught(tmp_path, bogus, chunk):
    pkts = MANY
    data = bytearray(pcap_bytes(pkts, snaplen=96))
    offs = [24]
    for p in pkts:
        offs.append(offs[-1] + 16 + len(p))
    struct.pack_into("<I", data, offs[1500] + 8, bogus)
    p = write(tmp_path, bytes(data))
    r = CaptureReader(p, chunk_size=chunk)
    got = concat_frames(list(r))
    assert got == pkts[:1500]
    assert len(r.errors) == 1 and r.errors[0].offset == offs[1500]
    # and the same file without damage, read in small chunks with a small snaplen: every frame
    r = CaptureReader(write(tmp_path, pcap_bytes(pkts, snaplen=96), "ok.pcap"), chunk_size=chunk, batch_size=1000)
    assert concat_frames(list(r)) == pkts and r.errors == []


def test_pcapng_obsolete_packet_block_and_spb_clock(tmp_path):
    opb = block("<", 2, struct.pack("<HHIIII", 0, 0, 0, 5_000_000, len(PKTS[0]), len(PKTS[0])) + PKTS[0])
    data = shb() + idb() + opb + spb("<", PKTS[1]) + epb("<", 0, 9_000_000, PKTS[2]) + spb("<", PKTS[3])
    p = write(tmp_path, data)
    r, batches = read_all(p)
    assert r.errors == [] and concat_frames(batches) == PKTS[:4]
    assert cols(batches, "ts").tolist() == [5.0, 5.0, 9.0, 9.0]
    assert r.stats["position"] == len(data)


def test_gzip_cut_short_is_damage_not_a_crash(tmp_path):
    z = gzip.compress(pcap_bytes(MANY))
    p = tmp_path / "cut.pcap.gz"
    p.write_bytes(z[: len(z) // 2])
    r = CaptureReader(p, chunk_size=4096)
    frames = concat_frames(list(r))
    assert len(r.errors) == 1 and "compressed" in r.errors[0].reason
    assert frames == MANY[: len(frames)] and len(frames) > 0


def test_pcap_linktype_upper_bits_are_fcs_flags(tmp_path):
    p = write(tmp_path, pcap_bytes(PKTS, linktype=0x14000001))     # FCS length 2 (0x1 << 28), F bit, EN10MB
    r, batches = read_all(p)
    assert r.errors == [] and set(cols(batches, "linktype").tolist()) == {1}
