"""Live capture through a TPACKET_V3 (PACKET_MMAP) receive ring, drained block by block with numpy.

The kernel writes captured frames into a ring of blocks shared with this
process (``mmap``); a block is handed over when it is full or when the block
timeout (``tp_retire_blk_tov``) expires. ``RingSource.read()`` takes every
block that is ready, parses all of its frame headers at once with numpy
(no Python object and no system call per packet), copies the block into the
``FrameBatch`` the file readers produce and gives the block back to the kernel.
This is what libpcap (tcpdump) does; the socket path in ``live.py`` makes one
``recvmsg`` per packet instead.

With ``fanout_group`` the socket joins a PACKET_FANOUT group in hash mode: the
kernel spreads packets over the group's sockets by a symmetric hash of the
flow (both directions of a flow land on the same socket), so several capture
processes can each keep their own flow table.

Block parsing: the frames of a block form a chain (each header holds the
offset of the next). Instead of walking it packet by packet, the parser looks
at every 8-byte aligned position of the block at once, keeps those that look
like a frame header of this socket (self-consistent next offset, ``sockaddr_ll``
of our interface), and checks that the kept positions form exactly the chain
the block header announces (first offset, packet count, each next offset). A
payload crafted to look like a header fails that check and the block is then
walked the slow, exact way: a forged header can cost time, never a wrong frame.

The BPF filter is libpcap's compilation (as in ``live.py``), capped at the
snap length so the kernel copies only the headers. Needs CAP_NET_RAW only
(promiscuous mode: also CAP_NET_ADMIN). Never imports torch.
"""
from __future__ import annotations

import errno
import mmap
import os
import select
import socket
import struct
import time
from typing import Iterator

import numpy as np

from ..errors import CaptureError
from .batch import FrameBatch
from .live import LOOPBACK_ARPHRD, attach_kernel_filter

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
TPACKET_V3 = 2
PACKET_FANOUT_HASH = 0
ETH_P_ALL = 0x0003
AF_PACKET = 17

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40

BLOCK_HDR = 48           # struct tpacket_block_desc (version, offset_to_priv, tpacket_hdr_v1)
TP3_HDR = 48             # TPACKET_ALIGN(sizeof(struct tpacket3_hdr))
TP3_HDRLEN = TP3_HDR + 20  # ... + sizeof(struct sockaddr_ll): where the kernel may start a frame
TP_ALIGN = 16            # TPACKET_ALIGNMENT: where the kernel puts the network header
ALIGN = 8                # V3_ALIGNMENT: frames of a block start on 8-byte boundaries

# a few ARPHRD -> DLT/LINKTYPE values (the rest through scapy's table, as live.py does)
_ARPHRD_DLT = {1: 1, 772: 1, 65534: 101, 776: 113, 778: 113, 823: 113}


class RingUnavailable(CaptureError):
    """This kernel or interface cannot give a TPACKET_V3 ring: the socket path may take over."""


def _dlt_of(hatype: int) -> int:
    if hatype in _ARPHRD_DLT:
        return _ARPHRD_DLT[hatype]
    try:
        from scapy.data import ARPHRD_TO_DLT

        return int(ARPHRD_TO_DLT.get(hatype, 1))
    except ImportError:  # pragma: no cover - scapy is a core dependency
        return 1


def ring_geometry(ring_mb: float, block_kb: int) -> tuple[int, int]:
    """(block size in bytes, number of blocks) for a ring of about ``ring_mb`` MiB; ValueError if unusable."""
    page = mmap.PAGESIZE
    if block_kb < 4 or block_kb > 65536:
        raise ValueError(f"ring block size must be within 4..65536 KiB, got {block_kb}")
    bs = block_kb * 1024
    if bs % page:
        raise ValueError(f"ring block size must be a multiple of the page size ({page} bytes), got {bs}")
    if ring_mb <= 0:
        raise ValueError(f"ring size must be > 0 MiB, got {ring_mb}")
    nb = max(2, int(round(ring_mb * (1 << 20) / bs)))
    return bs, nb


class RingSource:
    """Reads frames from ``iface`` through a TPACKET_V3 ring (iterate, or call ``read()``).

    ``read(timeout)`` returns the frames of every block the kernel has handed
    over (up to ``max_blocks``), waiting at most ``timeout`` seconds for one;
    an empty batch means the link was quiet. Parameters:

    - ``ring_mb`` (64): ring memory; at 0.4 M packets/s of 100-byte snaps a
      64 MiB ring holds about a second of traffic while the process is busy.
    - ``block_kb`` (1024): block size; a block is handed over when full or
      after ``block_timeout_ms`` (10 ms), which bounds the added latency.
    - ``fanout_group``: join this PACKET_FANOUT group (hash mode), 0..65535.
    - ``batch_frames`` (4096) and ``batch_wait_ms`` (20): once a block is taken,
      ``read`` goes on collecting blocks until it holds ``batch_frames`` frames or
      ``batch_wait_ms`` have passed. Everything downstream costs a fixed amount
      per batch (a few hundred numpy calls), so at moderate rates, where the block
      timeout would hand over a few hundred frames at a time, this divides the CPU
      per packet by several for at most ``batch_wait_ms`` of added latency; at high
      rates blocks are full and nothing waits. 0 turns it off.
    """

    path = "ring"

    def __init__(self, iface: str, *, bpf_filter: str | None = None, snaplen: int = 256, promisc: bool = False,
                 ring_mb: float = 64, block_kb: int = 1024, block_timeout_ms: int = 10,
                 fanout_group: int | None = None, max_blocks: int = 16, timeout: float = 0.1,
                 batch_frames: int = 4096, batch_wait_ms: int = 20):
        if snaplen < 64 or snaplen > 262144:
            raise ValueError(f"snaplen must be within 64..262144 bytes, got {snaplen}")
        if not 1 <= block_timeout_ms <= 60000:
            raise ValueError(f"block timeout must be within 1..60000 ms, got {block_timeout_ms}")
        if fanout_group is not None and not 0 <= fanout_group <= 0xFFFF:
            raise ValueError(f"fanout group must be within 0..65535, got {fanout_group}")
        if not 0 <= batch_wait_ms <= 1000:
            raise ValueError(f"batch wait must be within 0..1000 ms, got {batch_wait_ms}")
        self.batch_frames, self.batch_wait = max(0, int(batch_frames)), batch_wait_ms / 1000.0
        self.block_size, self.block_nr = ring_geometry(ring_mb, block_kb)
        if self.block_size < BLOCK_HDR + TP3_HDRLEN + 64 + snaplen:
            raise ValueError(f"ring block of {self.block_size} bytes is too small for snaplen {snaplen}")
        self.iface, self.snaplen, self.timeout, self.max_blocks = iface, snaplen, timeout, max(1, max_blocks)
        self.fanout_group, self.block_timeout_ms = fanout_group, int(block_timeout_ms)
        self.frames = self.bytes = self.blocks = self.slow_blocks = 0
        self.kernel_packets = self.kernel_drops = self.kernel_freezes = 0
        self.closed = False
        self._mm: mmap.mmap | None = None
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # no traffic until bind
        except PermissionError as err:
            need = "CAP_NET_RAW and CAP_NET_ADMIN" if promisc else "CAP_NET_RAW"
            raise CaptureError(iface, None, f"cannot open a raw socket: {err}",
                               f"run as root or grant {need} (setcap cap_net_raw+ep, or AmbientCapabilities=)") from err
        try:
            self._setup(bpf_filter, promisc)
        except BaseException:
            self.close()
            raise

    def _setup(self, bpf_filter: str | None, promisc: bool) -> None:
        iface, s = self.iface, self.sock
        try:
            self.ifindex = socket.if_nametoindex(iface)
        except OSError as err:
            raise CaptureError(iface, None, f"no such interface: {err}", "check the name with `ip link`") from err
        hatype = _hatype(iface)
        self.linktype = _dlt_of(hatype)
        try:
            s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frame = 2048
            req = struct.pack("7I", self.block_size, self.block_nr, frame,
                              self.block_size // frame * self.block_nr, self.block_timeout_ms, 0, 0)
            s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self._mm = mmap.mmap(s.fileno(), self.block_size * self.block_nr, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as err:
            raise RingUnavailable(iface, None, f"cannot set up a TPACKET_V3 ring of "
                                  f"{self.block_nr} x {self.block_size >> 10} KiB: {err}",
                                  "try a smaller --ring-size, or --no-ring for the socket path") from err
        self._ring = np.frombuffer(self._mm, dtype=np.uint8)
        self._u32 = self._ring.view(np.uint32)
        try:
            attach_kernel_filter(s, bpf_filter, iface, self.snaplen, drop_outgoing=hatype == LOOPBACK_ARPHRD)
        except Exception as err:  # noqa: BLE001 - scapy/libpcap errors vary
            raise CaptureError(iface, None, f"cannot set the BPF filter {bpf_filter!r}: {err}",
                               "check the filter syntax (tcpdump's); it needs libpcap installed") from err
        try:
            s.bind((iface, ETH_P_ALL))
        except OSError as err:
            raise CaptureError(iface, None, f"cannot capture on this interface: {err}",
                               "check the name with `ip link`") from err
        if promisc:
            try:
                s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", self.ifindex,
                                                                             PACKET_MR_PROMISC, 0, b""))
            except PermissionError as err:
                raise CaptureError(iface, None, f"cannot enter promiscuous mode: {err}",
                                   "grant CAP_NET_ADMIN as well, or drop --promisc") from err
        if self.fanout_group is not None:
            try:
                s.setsockopt(SOL_PACKET, PACKET_FANOUT, self.fanout_group | (PACKET_FANOUT_HASH << 16))
            except OSError as err:
                raise CaptureError(iface, None, f"cannot join fanout group {self.fanout_group}: {err}",
                                   "another program uses this group id on the interface: pick another "
                                   "--fanout-group") from err
        self._cur = 0
        self._poll = select.poll()
        self._poll.register(s.fileno(), select.POLLIN | select.POLLERR)

    # -- reading
    def read(self, timeout: float | None = None) -> FrameBatch:
        """Frames of the blocks ready now, waiting at most ``timeout`` s for the first block
        (then up to ``batch_wait_ms`` more for ``batch_frames`` frames, see the class)."""
        timeout = self.timeout if timeout is None else timeout
        u32, bs, nb = self._u32, self.block_size, self.block_nr
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        n_frames, waited, deadline = 0, False, 0.0
        while len(parts) < self.max_blocks:
            base = self._cur * bs
            if not (u32[(base + 8) >> 2] & TP_STATUS_USER):
                if parts:
                    left = deadline - time.monotonic()
                    if n_frames >= self.batch_frames or left <= 0:
                        break
                    wait_ms = max(1, int(left * 1000))
                elif waited:
                    break
                else:
                    wait_ms = max(0, int(timeout * 1000))
                    waited = True
                try:
                    ev = self._poll.poll(wait_ms)
                except InterruptedError:
                    break
                for _fd, e in ev:
                    if e & select.POLLERR:
                        self._raise_socket_error()
                continue
            # frames copied out and the block handed back at once: a block kept by us would
            # make poll() report "ready" without end while we wait for the next one
            part = self._take_block(base, copy=True)
            u32[(base + 8) >> 2] = TP_STATUS_KERNEL
            if not parts:
                deadline = time.monotonic() + self.batch_wait
            parts.append(part)
            n_frames += part[1].shape[0]
            self._cur = (self._cur + 1) % nb
            self.blocks += 1
        return self._batch(parts)

    def _raise_socket_error(self) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err in (errno.ENETDOWN, errno.ENXIO):
            raise CaptureError(self.iface, None, f"interface went away: {os.strerror(err)}")
        if err:
            raise CaptureError(self.iface, None, f"capture socket error: {os.strerror(err)}")

    def _take_block(self, base: int, copy: bool = False):
        blk = self._ring[base:base + self.block_size]
        data, off, caplen, wire, ts = parse_block(blk, self.ifindex, copy=copy)
        if off is None:  # headers did not check out: walk the chain exactly
            self.slow_blocks += 1
            data, off, caplen, wire, ts = walk_block(blk)
        return data, off, caplen, wire, ts

    def _batch(self, parts, copied: bool = True) -> FrameBatch:
        """One FrameBatch of parsed blocks; ``copied=False``: the parts may still view the ring."""
        if not parts:
            return FrameBatch(data=np.empty(0, np.uint8), offset=np.empty(0, np.int64),
                              caplen=np.empty(0, np.uint32), wire_len=np.empty(0, np.uint32),
                              ts=np.empty(0, np.float64), linktype=np.empty(0, np.uint16))
        if len(parts) == 1:
            data, off, caplen, wire, ts = parts[0]
            if not copied:
                data = np.array(data)  # out of the ring before the block goes back (parse_block copy=False)
        else:
            shift = np.cumsum([0] + [p[0].shape[0] for p in parts[:-1]])
            data = np.concatenate([p[0] for p in parts])
            off = np.concatenate([p[1] + s for p, s in zip(parts, shift.tolist())])
            caplen = np.concatenate([p[2] for p in parts])
            wire = np.concatenate([p[3] for p in parts])
            ts = np.concatenate([p[4] for p in parts])
        n = off.shape[0]
        self.frames += n
        self.bytes += int(caplen.sum()) if n else 0
        return FrameBatch(data=data, offset=off, caplen=caplen, wire_len=wire, ts=ts,
                          linktype=np.full(n, self.linktype, dtype=np.uint16))

    def __iter__(self) -> Iterator[FrameBatch]:
        while not self.closed:
            yield self.read()

    # -- counters
    def kernel_stats(self) -> dict[str, int]:
        """Cumulative packets seen / dropped by the kernel for this socket (PACKET_STATISTICS resets on read).

        ``kernel_packets`` counts every packet that passed the filter, the dropped ones included."""
        if not self.closed:
            try:
                pk, dr, fr = struct.unpack("III", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12))
                self.kernel_packets += pk
                self.kernel_drops += dr
                self.kernel_freezes += fr
            except OSError:
                pass
        return {"kernel_packets": self.kernel_packets, "kernel_drops": self.kernel_drops}

    @property
    def stats(self) -> dict[str, int]:
        return {"frames": self.frames, "bytes": self.bytes, "blocks": self.blocks, "slow_blocks": self.slow_blocks,
                **self.kernel_stats()}

    def close(self) -> None:
        if self.closed:
            return
        if self._mm is not None:
            self.kernel_stats()
        self.closed = True
        self._ring = self._u32 = None  # type: ignore[assignment]  (release the buffer exports first)
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a caller still holds a view: the mapping goes with the process
                pass
            self._mm = None
        self.sock.close()

    def __enter__(self) -> "RingSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hatype(iface: str) -> int:
    try:
        with open(f"/sys/class/net/{iface}/type") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return 1


# ----------------------------------------------------------------------------- block parsing
_EMPTY = (np.empty(0, np.uint8), np.empty(0, np.int64), np.empty(0, np.uint32), np.empty(0, np.uint32),
          np.empty(0, np.float64))


def parse_block(blk: np.ndarray, ifindex: int | None = None, copy: bool = True):
    """All frames of one TPACKET_V3 block (uint8 array of the whole block), vectorised.

    Returns ``(data, offset, caplen, wire_len, ts)`` where ``data`` holds the
    block's used bytes and the frames lie in it (with ``copy=False`` it may be a
    view into the block: copy it before the block goes back to the kernel); or a
    tuple of ``None``s when the headers do not form the announced chain (then use
    ``walk_block``).
    Kernel-stripped VLAN tags are put back into the frames, as libpcap does."""
    w = blk.view(np.uint32)
    npk, first, blen = int(w[3]), int(w[4]), int(w[5])
    if npk == 0:
        return _EMPTY
    if first < BLOCK_HDR or first % ALIGN or blen > blk.shape[0] or first >= blen:
        return None, None, None, None, None
    end = (blen + ALIGN - 1) // ALIGN * ALIGN
    # one row of two u32 per 8-byte position from the first frame on; a header spans rows r..r+7
    r0, nrow = first >> 2, (end - first) // ALIGN
    need = (nrow + 8) * 2
    if w.shape[0] - r0 >= need:
        rows = w[r0:r0 + need].reshape(nrow + 8, 2)
    else:
        rows = np.zeros((nrow + 8, 2), np.uint32)
        tail = w[r0:]
        rows.reshape(-1)[:tail.shape[0]] = tail
    # cheap first cut over every position (sll_family == AF_PACKET), the full check on what is left
    fam = blk[first + TP3_HDR:first + TP3_HDR + nrow * ALIGN].view(np.uint16)[::ALIGN // 2]
    idx = np.flatnonzero(fam == AF_PACKET)
    nxt, snap, status = rows[idx, 0], rows[idx + 1, 1], rows[idx + 2, 1]
    mac = rows[idx + 3, 0] & 0xFFFF
    link = (mac + snap + (ALIGN - 1)) & ~np.uint32(ALIGN - 1)
    cand = (mac >= TP3_HDRLEN) & ((status & TP_STATUS_USER) != 0) & ((nxt == link) | (nxt == 0))
    if ifindex is not None:
        cand &= rows[idx + 6, 1] == ifindex
    idx = idx[cand]
    nxt = rows[:, 0]
    for _ in range(4):
        if idx.shape[0] == npk or idx.shape[0] == 0:
            break
        # payload that looks like a header: keep the first frame and what some candidate points to
        succ = idx + nxt[idx] // ALIGN
        keep = np.isin(idx, succ[nxt[idx] > 0])
        keep[0] |= idx[0] == 0
        if keep.all():
            break
        idx = idx[keep]
    if idx.shape[0] != npk or idx[0] != 0 or nxt[idx[-1]] != 0:
        return None, None, None, None, None
    pos = idx.astype(np.int64) * ALIGN  # relative to first
    if npk > 1 and not np.array_equal(pos[1:] - pos[:-1], nxt[idx[:-1]].astype(np.int64)):
        return None, None, None, None, None
    caplen = rows[idx + 1, 1]
    mac = rows[idx + 3, 0] & 0xFFFF
    wire = rows[idx + 2, 0]
    ts = rows[idx, 1].astype(np.float64) + rows[idx + 1, 0].astype(np.float64) * 1e-9
    st = rows[idx + 2, 1]
    if int(pos[-1]) + int(mac[-1]) + int(caplen[-1]) > blen - first:
        return None, None, None, None, None
    off = pos + mac
    vlan = (st & TP_STATUS_VLAN_VALID) != 0
    data = blk[first:blen].copy() if copy or vlan.any() else blk[first:blen]
    if vlan.any():
        tv = rows[idx + 4]             # tp_vlan_tci, tp_vlan_tpid | padding
        off, caplen, wire = _insert_vlan(data, off, caplen, wire, vlan, tv[:, 0] & 0xFFFF,
                                         np.where(st & TP_STATUS_VLAN_TPID_VALID, tv[:, 1] & 0xFFFF, 0x8100),
                                         pos + TP3_HDRLEN)
    return data, off, caplen, wire, ts


def _insert_vlan(data, off, caplen, wire, vlan, tci, tpid, floor):
    """Put kernel-stripped 802.1Q tags back after the MAC addresses: move those 12 bytes 4 back (the gap
    before a frame is at least 14 bytes on Ethernet) and write the tag."""
    sel = np.flatnonzero(vlan & (off - 4 >= floor) & (caplen >= 12))
    o = off[sel]
    idx = o[:, None] + np.arange(12)
    data[idx - 4] = data[idx]
    tag = np.empty((sel.shape[0], 4), np.uint8)
    tag[:, 0], tag[:, 1] = tpid[sel] >> 8, tpid[sel] & 0xFF
    tag[:, 2], tag[:, 3] = tci[sel] >> 8, tci[sel] & 0xFF
    data[(o + 8)[:, None] + np.arange(4)] = tag
    off = off.copy()
    off[sel] -= 4
    caplen = caplen.copy()
    caplen[sel] += 4
    wire = wire.copy()
    wire[sel] += 4
    return off, caplen, wire


def walk_block(blk: np.ndarray):
    """The exact, slow way: follow ``tp_next_offset`` frame by frame (for blocks ``parse_block`` refuses)."""
    w = blk.view(np.uint32)
    npk, first, blen = int(w[3]), int(w[4]), int(w[5])
    blen = min(blen, blk.shape[0])
    offs, caps, wires, tss, vl = [], [], [], [], []
    p = first
    for _ in range(npk):
        if p < BLOCK_HDR or p + TP3_HDRLEN > blen or p % 4:
            break
        nxt, sec, nsec, snap, ln, status = (int(x) for x in w[p >> 2:(p >> 2) + 6])
        mac = int(w[(p >> 2) + 6]) & 0xFFFF
        if p + mac + snap > blen:
            break
        offs.append(p + mac)
        caps.append(snap)
        wires.append(ln)
        tss.append(sec + nsec * 1e-9)
        vl.append((status, int(w[(p >> 2) + 8]) & 0xFFFF, int(w[(p >> 2) + 9]) & 0xFFFF, p))
        if nxt == 0:
            break
        p += nxt
    data = blk[first:blen].copy()
    off = np.asarray(offs, np.int64) - first
    caplen, wire = np.asarray(caps, np.uint32), np.asarray(wires, np.uint32)
    if vl:
        st = np.asarray([v[0] for v in vl], np.uint32)
        vlan = (st & TP_STATUS_VLAN_VALID) != 0
        if vlan.any():
            tci = np.asarray([v[1] for v in vl], np.uint32)
            tpid = np.where(st & TP_STATUS_VLAN_TPID_VALID, np.asarray([v[2] for v in vl], np.uint32), 0x8100)
            floor = np.asarray([v[3] for v in vl], np.int64) - first + TP3_HDRLEN
            off, caplen, wire = _insert_vlan(data, off, caplen, wire, vlan, tci, tpid, floor)
    return data, off, caplen, wire, np.asarray(tss, np.float64)


# ----------------------------------------------------------------------------- synthetic blocks (tests, bench)
def build_block(frames: list[bytes] | None = None, *, block_size: int = 1 << 20, ifindex: int = 1,
                ts0: float = 1.7e9, snaplen: int = 256, maclen: int = 14, vlan: dict[int, tuple[int, int]] | None = None,
                n: int | None = None, frame: bytes | None = None) -> np.ndarray:
    """A TPACKET_V3 block laid out exactly as the kernel fills one (tpacket_rcv / prb_fill_curr_block):
    for the parser's tests and the drain benchmark. ``vlan``: frame index -> (tci, tpid) stripped by "the NIC"."""
    if frames is None:
        frames = [frame or bytes(64)] * (n or 1)
    vlan = vlan or {}
    blk = np.zeros(block_size, np.uint8)
    b = memoryview(blk).cast("B")
    netoff = (TP3_HDRLEN + max(maclen, 16) + TP_ALIGN - 1) // TP_ALIGN * TP_ALIGN
    macoff = netoff - maclen
    p = BLOCK_HDR
    prev = None
    count = 0
    for i, fr in enumerate(frames):
        snap = min(len(fr), snaplen)
        total = (macoff + snap + ALIGN - 1) // ALIGN * ALIGN
        if p + total > block_size:
            break
        t = ts0 + i * 1e-6
        sec, nsec = int(t), int(round((t - int(t)) * 1e9)) % 1_000_000_000
        status = TP_STATUS_USER
        tci, tpid = vlan.get(i, (0, 0))
        if i in vlan:
            status |= TP_STATUS_VLAN_VALID | TP_STATUS_VLAN_TPID_VALID
        struct.pack_into("IIIIIIHHIIHH", b, p, total, sec, nsec, snap, len(fr), status, macoff, netoff,
                         0, tci, tpid, 0)
        struct.pack_into("HHiHBB8s", b, p + TP3_HDR, AF_PACKET, 0x0008, ifindex, 1, 0, 6, b"")
        b[p + macoff:p + macoff + snap] = fr[:snap]
        prev = p
        p += total
        count += 1
    if prev is not None:
        struct.pack_into("I", b, prev, 0)
    struct.pack_into("IIIIII", b, 0, 1, 0, TP_STATUS_USER, count, BLOCK_HDR if count else 0, p)
    return blk
