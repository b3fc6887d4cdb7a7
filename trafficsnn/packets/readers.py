"""Capture file readers: classic pcap and pcapng, streamed in bounded memory.

The format comes from the magic number, never the file name (many ``.pcap``
files are pcapng). The file is read in chunks (into arrays that are reused once
no batch references them); each chunk's records are located by a header walk
(vectorised and proven for classic pcap, see ``walk.py``) and their fields
gathered with numpy, so a ``FrameBatch`` never costs a Python object per frame. Damage (cut short,
corrupt header, absurd lengths, garbage) stops the reader at the last good
record: the packets before it are kept and the damage is recorded as a
``CaptureError`` in ``reader.errors`` (or raised with ``strict=True``).
"""
from __future__ import annotations

import gzip
import os
import struct
import sys
import zlib
from collections import Counter
from typing import BinaryIO, Iterator

import numpy as np

from ..errors import CaptureError
from . import kernel
from .batch import FrameBatch
from .fastpath import byte_windows
from .walk import walk

CHUNK = 4 << 20             # bytes read per step: memory stays bounded by a few chunks (and they stay in cache)
MAX_CAPLEN = 1 << 18        # libpcap's/Wireshark's largest normal snapshot length (256 KiB)
ABSURD_BLOCK = 64 << 20     # a pcapng block longer than this is corrupt, not data

PCAP_MAGICS = {  # first 4 bytes -> (byte order, ticks per second, record header length)
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000, 16),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000, 16),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000, 16),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000, 16),
    b"\x34\xcd\xb2\xa1": ("<", 1_000_000, 24),   # Kuznetzov's modified pcap (extra 8 bytes/record)
    b"\xa1\xb2\xcd\x34": (">", 1_000_000, 24),
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"


def _gather_u32(d: np.ndarray, offs: np.ndarray, nwords: int, order: str) -> np.ndarray:
    """``nwords`` consecutive 32-bit words at each offset -> (n, nwords) native uint32."""
    if (kernel.enabled() and d.flags.c_contiguous and len(offs)
            and 0 <= int(offs.min()) and int(offs.max()) <= len(d) - 4 * nwords):   # else numpy raises
        return kernel.pcap_headers(d, offs, nwords, order)
    words = byte_windows(d, 4 * nwords)[offs].view(order + "u4")
    return words.reshape(len(offs), nwords).astype(np.uint32, copy=False)


def _read_fully(f: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _refs(pool: list, i: int) -> int:
    return sys.getrefcount(pool[i])


# what _refs reports for an array that only its pool references (measured, not assumed:
# interpreters differ in the temporary references they hold)
_FREE_REFS = _refs([np.empty(1)], 0)


def _read_after(f: BinaryIO, tail: np.ndarray, n: int, pool: list[np.ndarray] | None = None
                ) -> tuple[np.ndarray, int]:
    """``tail`` followed by up to ``n`` more bytes of ``f`` in one array, and how many came.

    Reading straight into the array (``readinto``) avoids two copies of every chunk
    (bytes concatenation, then the tail slice) that a ``bytes`` buffer costs. With a
    ``pool``, an array of an earlier chunk is reused once nothing references it any more
    (no batch, view or tail of it is alive): a fresh chunk-sized array costs page faults
    and zeroing by the kernel on every chunk. Arrays still referenced are never reused.
    """
    nt = len(tail)
    need = nt + n
    arr = None
    if pool is not None:
        for i in range(len(pool)):
            if len(pool[i]) >= need and _refs(pool, i) <= _FREE_REFS:
                arr = pool[i]
                break
    if arr is None:
        arr = np.empty(need + (1 << 20 if pool is not None else 0), dtype=np.uint8)
        if pool is not None:
            pool.append(arr)
            if len(pool) > 3:
                del pool[0]
    arr[:nt] = tail
    mv = memoryview(arr)
    got = 0
    while got < n:
        k = f.readinto(mv[nt + got:need])
        if not k:
            break
        got += k
    mv.release()
    return arr[:nt + got], got


class CaptureReader:
    """An iterable of ``FrameBatch`` from one pcap/pcapng file.

    After (or during) iteration: ``errors`` lists the damage found (at most one:
    reading stops there), ``stats`` counts frames, bytes, sections, interfaces,
    skipped blocks and frames per link type. Iterating twice re-reads the file.
    """

    def __init__(self, path: str | os.PathLike, *, batch_size: int = 65536, strict: bool = False,
                 chunk_size: int = CHUNK):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if chunk_size < 4096:
            raise ValueError(f"chunk_size must be >= 4096, got {chunk_size}")
        self.path = os.fspath(path)
        self.batch_size = int(batch_size)
        self.strict = bool(strict)
        self.chunk_size = int(chunk_size)
        self.errors: list[CaptureError] = []
        self.stats: dict = {}
        self.format: str | None = None
        try:
            with open(self.path, "rb"):
                pass
        except OSError as e:
            raise CaptureError(self.path, None, f"cannot open capture: {e.strerror or e}",
                               "check the path and permissions") from None

    # -- public -----------------------------------------------------------------
    def __iter__(self) -> Iterator[FrameBatch]:
        self.errors = []
        self.stats = {"format": None, "frames": 0, "captured_bytes": 0, "wire_bytes": 0,
                      "sections": 0, "interfaces": 0, "skipped_blocks": 0, "linktypes": Counter(),
                      "position": 0}
        try:
            f = open(self.path, "rb")
        except OSError as e:
            raise CaptureError(self.path, None, f"cannot open capture: {e.strerror or e}",
                               "check the path and permissions") from None
        try:
            head = f.read(4)
            if head[:2] == GZIP_MAGIC:
                f.close()
                f = gzip.open(self.path, "rb")
                head = f.read(4)
                self.stats["compressed"] = "gzip"
            try:
                if len(head) == 0:
                    self._fail(0, "empty file: no capture header")
                elif head in PCAP_MAGICS:
                    yield from self._read_pcap(f, head)
                elif head == PCAPNG_MAGIC:
                    yield from self._read_pcapng(f, head)
                elif len(head) < 4:
                    self._fail(0, f"file too short for a capture header ({len(head)} bytes)")
                else:
                    self._fail(0, f"unknown magic number 0x{head.hex()}: not a pcap or pcapng file",
                               "convert it with editcap/tshark -F pcap")
            except (OSError, EOFError, gzip.BadGzipFile, zlib.error, ValueError, struct.error) as e:
                # I/O trouble or a compressed stream cut short: damage, not a crash
                where = "compressed stream" if "compressed" in self.stats else "file"
                self._fail(self.stats.get("position", 0),
                           f"read error in the {where} after the last complete chunk: {e or type(e).__name__}",
                           "the offset counts decompressed bytes" if where != "file" else "")
        finally:
            f.close()

    # -- helpers ----------------------------------------------------------------
    def _fail(self, offset: int | None, reason: str, hint: str = "") -> None:
        err = CaptureError(self.path, offset, reason, hint)
        self.errors.append(err)
        if self.strict:
            raise err

    def _emit(self, data: np.ndarray, offset: np.ndarray, caplen: np.ndarray, wire: np.ndarray,
              ts: np.ndarray, linktype: np.ndarray) -> Iterator[FrameBatch]:
        n = len(offset)
        if n == 0:
            return
        st = self.stats
        st["frames"] += n
        st["captured_bytes"] += int(caplen.sum(dtype=np.int64))
        st["wire_bytes"] += int(wire.sum(dtype=np.int64))
        if linktype[0] == linktype[-1] and (linktype == linktype[0]).all():
            st["linktypes"][int(linktype[0])] += n     # one link type (always so in pcap): no sort
        else:
            lts, cnt = np.unique(linktype, return_counts=True)
            for lt, c in zip(lts.tolist(), cnt.tolist()):
                st["linktypes"][lt] += c
        bs = self.batch_size
        for i in range(0, n, bs):
            j = i + bs
            yield FrameBatch(data=data, offset=offset[i:j], caplen=caplen[i:j], wire_len=wire[i:j],
                             ts=ts[i:j], linktype=linktype[i:j])

    # -- classic pcap -----------------------------------------------------------
    def _read_pcap(self, f: BinaryIO, magic: bytes) -> Iterator[FrameBatch]:
        order, tps, rhl = PCAP_MAGICS[magic]
        self.format = self.stats["format"] = (
            f"pcap-{'le' if order == '<' else 'be'}-{'ns' if tps == 10**9 else 'us'}"
            + ("-modified" if rhl == 24 else ""))
        rest = _read_fully(f, 20)
        if len(rest) < 20:
            return self._fail(len(rest) + 4, "file cut short inside the 24-byte pcap header")
        vmaj, vmin, _tz, _sigfigs, snaplen, network = struct.unpack(order + "HHiIII", rest)
        if vmaj != 2:
            return self._fail(4, f"unsupported pcap version {vmaj}.{vmin} (expected 2.x)")
        linktype = network & 0xFFFF          # upper bits: FCS length flags (pcap spec)
        self.stats["sections"] = self.stats["interfaces"] = 1
        self.stats["snaplen"] = snaplen
        # snaplen 0 means "unlimited" for some writers: then only absurd lengths are damage
        lim = min(snaplen if snaplen > 0 else MAX_CAPLEN, ABSURD_BLOCK)
        u32 = struct.Struct(order + "I").unpack_from
        base = 24               # file offset of buf[0]
        buf = np.empty(0, dtype=np.uint8)
        scratch = np.empty(0, dtype=np.bool_)     # reused by the vectorised walk
        pool: list[np.ndarray] = []               # chunk arrays, reused once released
        eof = False
        want = self.chunk_size
        while True:
            if not eof:
                buf, got = _read_after(f, buf, want, pool)
                eof = got < want
            end = len(buf)
            bad = None
            # fast walk: far from the chunk's end no record can overrun it, so only the
            # jump is computed here (vectorised when provable, see walk.py); caplens are
            # validated below, vectorised
            safe = end - rhl - lim
            if len(scratch) < end:
                scratch = np.empty(end + (1 << 20), dtype=np.bool_)
            o_fast, p = walk(buf, rhl, order, safe, lim, scratch)
            offs: list[int] = []
            ap = offs.append
            # careful walk near the end (skipped if a bogus caplen jumped past it)
            while p + rhl <= end:
                c = u32(buf, p + 8)[0]
                if c > lim:
                    bad = (p, self._caplen_reason(c, snaplen))
                    break
                nxt = p + rhl + c
                if nxt > end:
                    break
                ap(p)
                p = nxt
            if offs or len(o_fast):
                d = buf
                o = np.concatenate((o_fast, np.array(offs, dtype=np.int64))) if offs else o_fast
                h = _gather_u32(d, o, 4, order)
                sec, frac, cap, wire = h[:, 0], h[:, 1], h[:, 2], h[:, 3]
                over = cap > lim
                if over.any():
                    k = int(np.argmax(over))
                    c = int(cap[k])
                    bad = (int(o[k]), self._caplen_reason(c, snaplen))
                    o, sec, frac, cap, wire = o[:k], sec[:k], frac[:k], cap[:k], wire[:k]
                ts = sec.astype(np.float64) + frac.astype(np.float64) / tps
                wire = np.maximum(wire, cap)
                lt = np.full(len(o), linktype, dtype=np.uint16)
                yield from self._emit(d, o + rhl, cap, wire, ts, lt)
            if bad is not None:
                return self._fail(base + bad[0], bad[1])
            # keep the incomplete tail for the next read
            if eof:
                self.stats["position"] = base + end
                if p < end:
                    what = ("record header" if end - p < rhl else "record data")
                    self._fail(base + p, f"file cut short in the middle of a {what} "
                               f"({end - p} bytes left)")
                return
            base += p
            self.stats["position"] = base
            buf = buf[p:]
            # a record larger than the chunk: read enough for it at once
            want = self.chunk_size
            if len(buf) >= rhl:
                need = rhl + u32(buf, 8)[0] - len(buf)
                want = max(want, need)

    @staticmethod
    def _caplen_reason(c: int, snaplen: int) -> str:
        if c > ABSURD_BLOCK:
            return f"corrupt record header (caplen {c})"
        if snaplen > 0:
            return f"record caplen {c} exceeds the snapshot length {snaplen}"
        return f"record caplen {c} exceeds the largest plausible length {MAX_CAPLEN} (the file's snaplen is 0)"

    # -- pcapng -----------------------------------------------------------------
    def _read_pcapng(self, f: BinaryIO, magic: bytes) -> Iterator[FrameBatch]:
        self.format = self.stats["format"] = "pcapng"
        st = self.stats
        base = 0
        buf = magic
        eof = False
        want = self.chunk_size
        order = "<"
        # per interface of the current section: link type, snaplen, ticks/s, offset (s)
        if_lt: list[int] = []
        if_snap: list[int] = []
        if_units: list[int] = []
        if_off: list[int] = []
        in_section = False
        last_ts = 0.0
        while True:
            if not eof:
                more = _read_fully(f, want)
                eof = len(more) < want
                buf = buf + more if buf else more
            want = self.chunk_size
            end = len(buf)
            d = np.frombuffer(buf, dtype=np.uint8)
            p = 0
            bad = None
            slow: list[tuple] = []  # (data offset, caplen, wire, ts, linktype) of simple/obsolete packet blocks
            while True:
                # fast walk over enhanced packet blocks of this section
                u2 = struct.Struct(order + "II").unpack_from
                offs: list[int] = []
                ap = offs.append
                while p + 12 <= end:
                    t, blen = u2(buf, p)
                    if t != 6 or blen < 32 or p + blen > end:
                        break
                    ap(p)
                    p += blen
                # why the walk stopped (block lengths that are not a multiple of 4 are caught below)
                if p + 12 > end:
                    stop = "more"
                else:
                    t, blen = u2(buf, p)
                    if t == 0x0A0D0D0A:
                        stop = "special"        # its length is read in its own byte order below
                    elif blen < 12 or blen & 3 or blen > ABSURD_BLOCK or (t == 6 and blen < 32):
                        stop = "bad"
                    elif p + blen > end:
                        stop = "more"
                    else:
                        stop = "special"
                if offs:
                    if slow:                    # keep file order: pending simple/obsolete blocks first
                        yield from self._emit_slow(d, slow)
                        slow = []
                    if not in_section:
                        bad = (offs[0], "packet block before any section header block")
                        break
                    o = np.array(offs, dtype=np.int64)
                    h = _gather_u32(d, o, 7, order)
                    blen, iface, hi, lo, cap, wire = h[:, 1], h[:, 2], h[:, 3], h[:, 4], h[:, 5], h[:, 6]
                    tail = _gather_u32(d, o + blen.astype(np.int64) - 4, 1, order)[:, 0]
                    n_if = len(if_lt)
                    problems = [
                        ((blen & 3) != 0, "corrupt block header (block length not a multiple of 4)"),
                        (tail != blen, "corrupt enhanced packet block (trailing length differs)"),
                        (iface >= n_if, "enhanced packet block names an undeclared interface"),
                        (cap.astype(np.int64) > blen.astype(np.int64) - 32,
                         "corrupt enhanced packet block (caplen beyond the block)"),
                    ]
                    if n_if:
                        snap = np.asarray(if_snap, dtype=np.int64)[np.minimum(iface, n_if - 1)]
                        problems.append((cap.astype(np.int64) > snap,
                                         "caplen exceeds the interface's snapshot length"))
                    k = len(o)
                    for mask, why in problems:
                        if mask[:k].any():
                            k2 = int(np.argmax(mask[:k]))
                            if k2 < k:
                                k, bad = k2, (offs[k2], why)
                    if k < len(o):
                        o, iface, hi, lo, cap, wire = o[:k], iface[:k], hi[:k], lo[:k], cap[:k], wire[:k]
                    if k:
                        units = np.asarray(if_units, dtype=np.uint64)[iface]
                        ticks = (hi.astype(np.uint64) << np.uint64(32)) | lo.astype(np.uint64)
                        ts = ((ticks // units).astype(np.float64)
                              + (ticks % units).astype(np.float64) / units.astype(np.float64)
                              + np.asarray(if_off, dtype=np.float64)[iface])
                        lt = np.asarray(if_lt, dtype=np.uint16)[iface]
                        yield from self._emit(d, o + 28, cap, np.maximum(wire, cap), ts, lt)
                        last_ts = float(ts[-1])
                    if bad is not None:
                        break
                if stop == "bad":
                    bad = (p, f"corrupt block header (block length {u2(buf, p)[1]})")
                    break
                if stop == "more":
                    break
                # one non-EPB block, handled in Python (rare)
                t, blen = u2(buf, p)
                if t == 0x0A0D0D0A:
                    if p + 12 > end:
                        break
                    bom = buf[p + 8:p + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        order = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        order = ">"
                    else:
                        bad = (p, "corrupt section header block (bad byte-order magic)")
                        break
                    u2 = struct.Struct(order + "II").unpack_from
                    blen = u2(buf, p)[1]
                if blen < 12 or blen & 3 or blen > ABSURD_BLOCK:
                    bad = (p, f"corrupt block header (block length {blen})")
                    break
                if p + blen > end:
                    break
                if struct.unpack_from(order + "I", buf, p + blen - 4)[0] != blen:
                    bad = (p, "corrupt block (trailing length differs from the header)")
                    break
                body = buf[p + 8:p + blen - 4]
                if t == 0x0A0D0D0A:
                    vmaj = struct.unpack_from(order + "H", body, 4)[0] if len(body) >= 6 else -1
                    if vmaj != 1:
                        bad = (p, f"unsupported pcapng version {vmaj} (expected 1.x)")
                        break
                    in_section = True
                    st["sections"] += 1
                    if_lt, if_snap, if_units, if_off = [], [], [], []
                elif not in_section:
                    bad = (p, "block before any section header block")
                    break
                elif t == 1:  # interface description
                    if len(body) < 8:
                        bad = (p, "corrupt interface description block")
                        break
                    lt, _res, snap = struct.unpack_from(order + "HHI", body, 0)
                    units, toff = 1_000_000, 0
                    q = 8
                    while q + 4 <= len(body):
                        code, olen = struct.unpack_from(order + "HH", body, q)
                        val = body[q + 4:q + 4 + olen]
                        if code == 0:
                            break
                        if code == 9 and olen >= 1:
                            r = val[0]
                            units = (2 ** (r & 0x7F)) if r & 0x80 else 10 ** r
                            if units > 10 ** 18 or units < 1:
                                units = 1_000_000
                        elif code == 14 and olen >= 8:
                            toff = struct.unpack_from(order + "q", val, 0)[0]
                        q += 4 + ((olen + 3) & ~3)
                    if_lt.append(lt)
                    if_snap.append(snap if snap > 0 else ABSURD_BLOCK)
                    if_units.append(units)
                    if_off.append(toff)
                    st["interfaces"] += 1
                elif t == 3:  # simple packet block: interface 0, caplen from the block and snaplen
                    if not if_lt or len(body) < 4:
                        bad = (p, "simple packet block without an interface or too short")
                        break
                    wire = struct.unpack_from(order + "I", body, 0)[0]
                    cap = min(wire, len(body) - 4, if_snap[0])
                    # no timestamp in an SPB: keep the clock where the last packet left it
                    slow.append((p + 12, cap, wire, last_ts, if_lt[0]))
                elif t == 2:  # obsolete packet block (pcapng drafts): like an EPB, 16-bit interface
                    if len(body) < 20:
                        bad = (p, "corrupt packet block (too short)")
                        break
                    iface, _drops, hi, lo, cap, wire = struct.unpack_from(order + "HHIIII", body, 0)
                    if iface >= len(if_lt) or cap > len(body) - 20:
                        bad = (p, "corrupt packet block (interface or caplen)")
                        break
                    u = if_units[iface]
                    ticks = (hi << 32) | lo
                    last_ts = ticks // u + (ticks % u) / u + if_off[iface]
                    slow.append((p + 28, cap, max(wire, cap), last_ts, if_lt[iface]))
                else:
                    st["skipped_blocks"] += 1
                if slow and (t not in (2, 3) or len(slow) >= self.batch_size):
                    yield from self._emit_slow(d, slow)
                    slow = []
                p += blen
            if slow:
                yield from self._emit_slow(d, slow)
            if bad is not None:
                return self._fail(base + bad[0], bad[1])
            if eof:
                st["position"] = base + end
                if p < end:
                    self._fail(base + p, f"file cut short in the middle of a block ({end - p} bytes left)")
                return
            base += p
            st["position"] = base
            buf = buf[p:]
            if len(buf) >= 8:
                blen = struct.unpack_from(order + "I", buf, 4)[0]
                if buf[:4] == PCAPNG_MAGIC and len(buf) >= 12:
                    o2 = "<" if buf[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
                    blen = struct.unpack_from(o2 + "I", buf, 4)[0]
                if blen <= ABSURD_BLOCK:
                    want = max(want, blen - len(buf))

    def _emit_slow(self, d: np.ndarray, rows: list[tuple]) -> Iterator[FrameBatch]:
        off, cap, wire, ts, lt = zip(*rows)
        yield from self._emit(d, np.array(off, dtype=np.int64), np.array(cap, dtype=np.uint32),
                              np.array(wire, dtype=np.uint32), np.array(ts, dtype=np.float64),
                              np.array(lt, dtype=np.uint16))


def open_capture(path: str | os.PathLike, *, batch_size: int = 65536, strict: bool = False) -> CaptureReader:
    """Open a pcap or pcapng file (optionally gzip-compressed) for streaming ``FrameBatch`` reads.

    The format is taken from the magic number. Damage stops the reading at the
    last good record; the error is in ``reader.errors`` (raised with ``strict``).
    """
    return CaptureReader(path, batch_size=batch_size, strict=strict)
