"""The decoder's one-pass fast path must give exactly what the general decoder gives."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from trafficsnn.packets import PACKET_COLUMNS, Decoder, FrameBatch, open_capture
from trafficsnn.packets import fastpath
from trafficsnn.packets.fastpath import decode_common

pytestmark = pytest.mark.usefixtures("both_kernels")     # numpy and C paths alike


def frame(rng: np.random.Generator) -> bytes:
    """An Ethernet frame that is mostly the common layout, with one field often made odd."""
    v6 = rng.random() < 0.4
    proto = int(rng.choice([6, 17, 1, 58, 6, 17, 0, 4, 41, 44, 47, 51, 132]))
    sport, dport = (int(x) for x in rng.integers(0, 65536, 2))
    if rng.random() < 0.1:
        dport = int(rng.choice([4789, 2152, 5247, 6081]))
    if proto == 6:
        l4 = struct.pack(">HHIIBBHHH", sport, dport, 1, 2, 0x50, int(rng.integers(0, 256)), 1024, 0, 0)
    elif proto == 17:
        l4 = struct.pack(">HHHH", sport, dport, 8 + 20, 0) + bytes(20)
    else:
        l4 = bytes(rng.integers(0, 256, 24, dtype=np.uint8))
    l4 += bytes(rng.integers(0, 256, int(rng.integers(0, 30)), dtype=np.uint8))
    odd = rng.random() < 0.5
    if v6:
        plen = len(l4)
        if odd and rng.random() < 0.3:
            plen = int(rng.choice([0, 1, 7, plen + 50, 65535]))
        ip = struct.pack(">IHBB", 0x60000000, plen, proto, 64) + bytes(rng.integers(0, 256, 32, dtype=np.uint8))
        if odd and rng.random() < 0.2:
            ip = bytes([0x45]) + ip[1:]
        et = 0x86DD
    else:
        ihl = 5 if not (odd and rng.random() < 0.2) else int(rng.choice([4, 6, 15]))
        tot = 4 * max(ihl, 5) + len(l4)
        if odd and rng.random() < 0.3:
            tot = int(rng.choice([0, 10, 21, tot + 40, 65535]))
        frag = 0x4000
        if odd and rng.random() < 0.3:
            frag = int(rng.choice([0x2000, 0x0001, 0x2010, 0x8000]))
        ip = struct.pack(">BBHHHBBH", 0x40 | ihl, 0, tot, 7, frag, 64, proto, 0)
        ip += bytes(rng.integers(0, 256, 8, dtype=np.uint8)) + bytes(4 * max(ihl - 5, 0))
        et = 0x0800
    if odd and rng.random() < 0.15:
        et = int(rng.choice([0x8100, 0x0806, 0x88A8, 0x8847]))
    eth = bytes(12) + struct.pack(">H", et)
    if et == 0x8100:
        eth += struct.pack(">HH", 42, 0x0800 if not v6 else 0x86DD)
    return eth + ip + l4


def batch(frames: list[bytes], rng: np.random.Generator) -> FrameBatch:
    off = np.cumsum([0] + [len(f) for f in frames[:-1]]).astype(np.int64)
    wire = np.array([len(f) for f in frames], dtype=np.uint32)
    cap = wire.copy()
    cut = rng.random(len(frames)) < 0.2            # snaplen cuts (and frames cut inside headers)
    cap[cut] = np.minimum(cap[cut], rng.integers(10, 80, int(cut.sum())))
    data = np.frombuffer(b"".join(frames), dtype=np.uint8)
    return FrameBatch(data=data, offset=off, caplen=cap, wire_len=wire,
                      ts=np.arange(len(frames), dtype=np.float64), linktype=np.ones(len(frames), np.uint16))


def same(fb: FrameBatch, **kw) -> None:
    a, b = Decoder(**kw), Decoder(**kw)
    x, y = a.decode(fb), b._decode_general(fb)[0]
    for c in PACKET_COLUMNS:
        u, v = getattr(x, c), getattr(y, c)
        assert u.dtype == v.dtype and np.array_equal(u, v), c
    assert x.skipped == y.skipped
    assert a.stats == b.stats


@pytest.mark.parametrize("block", [16384, 37])
def test_random_frames_agree_with_the_general_decoder(block, monkeypatch):
    monkeypatch.setattr(fastpath, "BLOCK", block)
    rng = np.random.default_rng(0)
    for _ in range(20):
        fb = batch([frame(rng) for _ in range(400)], rng)
        same(fb)
        same(fb, vlan="inner", later_fragments="drop")
    fc = decode_common(fb)
    assert fc is not None and 0.2 < fc[0].mean() < 0.95     # both paths were exercised


def test_common_batch_is_all_fast_and_other_linktypes_are_not():
    rng = np.random.default_rng(1)
    fr = []
    while len(fr) < 300:
        f = frame(rng)
        if f[12:14] in (b"\x08\x00", b"\x86\xdd"):
            fr.append(f)
    fb = batch(fr, rng)
    same(fb)
    fb.linktype[5] = 113
    assert decode_common(fb) is None
    same(fb)


def test_frames_at_the_end_of_the_buffer():
    rng = np.random.default_rng(2)
    fr = [frame(rng) for _ in range(50)] + [bytes(14 + 20 + 8)]
    fr[-1] = bytes(12) + b"\x08\x00" + struct.pack(">BBHHHBBH", 0x45, 0, 28, 0, 0, 64, 17, 0) + bytes(16)
    same(batch(fr, rng))


def test_shared_ndpi_captures_agree(shared_data: Path):
    n = 0
    for path in sorted((shared_data / "ndpi" / "developer" / "pcap").glob("*"))[:60]:
        for fb in open_capture(path):
            same(fb)
            n += len(fb)
    assert n > 1000
