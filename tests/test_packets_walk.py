"""The speculative vectorised pcap record walk must equal the sequential walk, always."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from trafficsnn.packets import open_capture
from trafficsnn.packets import walk as W

MAGICS = {b"\xd4\xc3\xb2\xa1": ("<", 16), b"\xa1\xb2\xc3\xd4": (">", 16), b"\x4d\x3c\xb2\xa1": ("<", 16),
          b"\xa1\xb2\x3c\x4d": (">", 16), b"\x34\xcd\xb2\xa1": ("<", 24), b"\xa1\xb2\xcd\x34": (">", 24)}

pytestmark = pytest.mark.usefixtures("both_kernels")     # numpy and C paths alike


def records(caplens, *, order="<", rhl=16, ts=None, data=None, rng=None) -> bytes:
    """A pcap body (no file header): one record per caplen, random data unless given."""
    rng = rng or np.random.default_rng(0)
    out = []
    for i, c in enumerate(caplens):
        sec = int(ts[i]) if ts is not None else 1_700_000_000 + i
        hdr = struct.pack(order + "IIII", sec, i % 1_000_000, c, c) + b"\0" * (rhl - 16)
        body = data[i] if data is not None else rng.integers(0, 256, c, dtype=np.uint8).tobytes()
        out.append(hdr + body[:c].ljust(c, b"\0"))
    return b"".join(out)


def check(buf: bytes, *, order="<", rhl=16, lim=96, safe=None):
    """walk() (vectorised path forced on) == python_walk(), for several stopping points."""
    safes = [len(buf) - rhl - lim] if safe is None else [safe]
    safes += [len(buf) // 2, len(buf) // 3, 0]
    for s in safes:
        exp, p = W.python_walk(buf, rhl, order, s)
        got, q = W.walk(buf, rhl, order, s, lim)
        assert got.tolist() == exp and q == p, (s, len(exp), len(got))


@pytest.fixture(autouse=True)
def always_vectorise(monkeypatch):
    monkeypatch.setattr(W, "MIN_VECTOR_BYTES", 0)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("rhl", [16, 24])
def test_random_caplens(order, rhl):
    rng = np.random.default_rng(1)
    caps = rng.integers(0, 97, 3000)
    buf = records(caps, order=order, rhl=rhl, rng=rng)
    check(buf, order=order, rhl=rhl)
    r = W.chain_walk(buf, rhl, order, len(buf) - rhl - 96, 96)
    assert r is not None and len(r[0]) > 2900      # the vectorised path did the work


def test_constant_caplen_and_zero_caplen():
    check(records([60] * 2000))
    check(records([0] * 2000))


def test_fake_headers_inside_the_data():
    """Payloads that hold copies of record headers pointing at real and at fake records."""
    rng = np.random.default_rng(2)
    caps = rng.integers(40, 97, 2000)
    plain = records(caps, rng=rng)
    offs, _ = W.python_walk(plain, 16, "<", len(plain) - 1)
    data = []
    for i, c in enumerate(caps):
        d = bytearray(rng.integers(0, 256, c, dtype=np.uint8).tobytes())
        kind = i % 4
        if kind == 0 and i + 1 < len(caps):      # fake header whose caplen jumps onto the next real record
            fc = c - 16 - 5
            d[5:21] = struct.pack("<IIII", 1_700_000_000, 0, fc, fc)
        elif kind == 1:                          # a chain of two fakes inside one payload
            d[0:16] = struct.pack("<IIII", 1_700_000_000, 0, 2, 2)
            d[18:34] = struct.pack("<IIII", 1_700_000_000, 0, 1, 1)
        elif kind == 2:                          # fake header pointing at another fake header
            d[3:19] = struct.pack("<IIII", 1_700_000_000, 0, 4, 4)
            d[23:39] = struct.pack("<IIII", 1_700_000_000, 0, 0, 0)
        data.append(bytes(d))
    buf = records(caps, data=data, rng=rng)
    check(buf)


def test_breaks_in_the_chain_fall_back_exactly():
    rng = np.random.default_rng(3)
    n = 3000
    ts = 1_700_000_000 + np.arange(n)
    ts[1000:] += 1 << 24                          # the top byte of ts_sec changes mid-chunk
    caps = rng.integers(0, 97, n)
    check(records(caps, ts=ts, rng=rng))
    caps2 = caps.copy()
    caps2[1500] = 500                             # a caplen above the limit (damage) mid-chunk
    check(records(caps2, rng=rng), lim=96)
    check(records(caps, ts=np.zeros(n), rng=rng))   # ts_sec 0: most bytes look like headers
    check(records(caps, ts=np.full(n, 0x01000000), rng=rng))


def test_tiny_and_empty_buffers():
    for buf in (b"", records([5]), records([0, 0]), records([96] * 3)):
        for s in (-1, 0, len(buf) - 16 - 96, len(buf) - 16):
            if s >= 0 and len(buf) < 16:
                continue
            exp, p = W.python_walk(buf, 16, "<", s)
            got, q = W.walk(buf, 16, "<", s, 96)
            assert got.tolist() == exp and q == p


def test_reader_frames_identical_with_and_without_the_vectorised_walk(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    caps = rng.integers(14, 97, 20000)
    caps[7000] = 200                              # damage: caplen beyond the snaplen
    f = tmp_path / "x.pcap"
    f.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 96, 1) + records(caps, rng=rng))

    def frames():
        r = open_capture(f)
        fb = list(r)
        cat = {k: np.concatenate([getattr(b, k) for b in fb]) for k in ("offset", "caplen", "wire_len", "ts")}
        return cat, [str(e) for e in r.errors]

    fast = frames()
    monkeypatch.setattr(W, "MIN_VECTOR_BYTES", 1 << 62)
    slow = frames()
    assert fast[1] == slow[1] and len(fast[1]) == 1
    for k in fast[0]:
        assert np.array_equal(fast[0][k], slow[0][k])
    assert len(fast[0]["ts"]) == 7000


def test_shared_ndpi_captures(shared_data: Path):
    n_files = n_vector = 0
    for path in sorted((shared_data / "ndpi").glob("*/pcap/*")):
        raw = path.read_bytes()
        if raw[:4] not in MAGICS or len(raw) < 24:
            continue
        order, rhl = MAGICS[raw[:4]]
        snap = struct.unpack(order + "I", raw[16:20])[0]
        lim = min(snap or (1 << 18), 64 << 20)
        body = raw[24:]
        safe = len(body) - rhl - lim
        safe = safe if safe >= 0 else len(body) - rhl - 16
        try:
            exp, p = W.python_walk(body, rhl, order, safe)
        except struct.error:                     # damaged file: a caplen jumps past the end
            continue
        got, q = W.walk(body, rhl, order, safe, lim)
        assert got.tolist() == exp and q == p, path.name
        n_files += 1
        r = W.chain_walk(body, rhl, order, safe, lim)
        n_vector += r is not None and len(r[0]) == len(exp)
    assert n_files > 10
    assert n_vector >= n_files // 2


def test_reused_chunk_arrays_never_change_batches_still_held(tmp_path):
    """The reader recycles a chunk's array only once no batch references it."""
    rng = np.random.default_rng(5)
    caps = rng.integers(14, 97, 30000)
    f = tmp_path / "x.pcap"
    f.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 96, 1) + records(caps, rng=rng))

    def frame_bytes(fb):
        return [bytes(fb.data[o:o + c]) for o, c in zip(fb.offset.tolist(), fb.caplen.tolist())]

    streamed = []
    r = open_capture(f, batch_size=1000)
    r.chunk_size = 1 << 16
    for fb in r:                                  # batches dropped as we go: arrays get reused
        streamed += frame_bytes(fb)
    r = open_capture(f, batch_size=1000)
    r.chunk_size = 1 << 16
    held = list(r)                                # all batches alive: nothing may be reused
    kept = [b for fb in held for b in frame_bytes(fb)]
    assert streamed == kept and len(kept) == 30000
