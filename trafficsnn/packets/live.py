"""Live capture from a network interface into ``FrameBatch``es.

``open_live`` picks the path: the TPACKET_V3 ring of ``ring.py`` (whole
blocks per call, what libpcap does) unless it is turned off or the kernel
refuses it, then the socket path below, and says which one runs.

The socket path (``LiveSource``) opens scapy's layer-2 listening socket (``conf.L2listen``: an ``AF_PACKET`` raw
socket) so scapy attaches the kernel BPF filter (compiled through libpcap) and
optional promiscuous membership, then reads the raw frames straight off that
socket with ``recvmsg_into``: no scapy packet object and no dissection per
packet. Kernel timestamps come from ``SO_TIMESTAMPNS``, the original length and
stripped VLAN tags from ``PACKET_AUXDATA`` (the tag is put back into the frame,
as libpcap does), and kernel drops from ``PACKET_STATISTICS``.

Needs CAP_NET_RAW (promiscuous mode: also CAP_NET_ADMIN), not root.
Never imports torch.
"""
from __future__ import annotations

import errno
import select
import socket
import struct
import time
from typing import Iterator

import numpy as np

from ..errors import CaptureError
from .batch import FrameBatch

SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_STATISTICS = 6
SO_TIMESTAMPNS = 35          # == SCM_TIMESTAMPNS
SO_RCVBUFFORCE = 33
PACKET_OUTGOING = 4
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
_AUX = struct.Struct("IIIHHHH")
_TS = struct.Struct("qq")
_ANCBUF = socket.CMSG_SPACE(_AUX.size) + socket.CMSG_SPACE(_TS.size) + 64
LOOPBACK_ARPHRD = 772


def open_l2_listen(iface: str, bpf_filter: str | None, promisc: bool, snaplen: int = 262144):
    """scapy's L2 listening socket with the kernel filter attached; CaptureError with a hint on failure."""
    try:
        import scapy.arch  # noqa: F401  (sets conf.L2listen for this platform)
        from scapy.config import conf
        from scapy.error import Scapy_Exception
    except ImportError as err:  # pragma: no cover - scapy is a core dependency
        raise CaptureError(iface, None, "scapy is not installed", "pip install scapy") from err
    import logging

    quiet = logging.getLogger("scapy.runtime")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # scapy warns that it cannot dissect lo: we never dissect
    try:
        l2 = conf.L2listen(iface=iface, filter=None, promisc=promisc)
        try:
            attach_kernel_filter(l2.ins, bpf_filter, iface, snaplen,
                                 drop_outgoing=l2.ins.getsockname()[3] == LOOPBACK_ARPHRD)
        except BaseException:
            l2.close()
            raise
        return l2
    except PermissionError as err:
        need = "CAP_NET_RAW and CAP_NET_ADMIN" if promisc else "CAP_NET_RAW"
        raise CaptureError(iface, None, f"cannot open a raw socket: {err}",
                           f"run as root or grant {need} (setcap cap_net_raw+ep, or AmbientCapabilities=)") from err
    except OSError as err:
        raise CaptureError(iface, None, f"cannot capture on this interface: {err}",
                           "check the name with `ip link`") from err
    except (Scapy_Exception, ImportError) as err:
        raise CaptureError(iface, None, f"cannot set the BPF filter {bpf_filter!r}: {err}",
                           "check the filter syntax (tcpdump's); it needs libpcap installed") from err
    finally:
        quiet.setLevel(level)


SKF_AD_PKTTYPE = -0x1000 + 4     # SKF_AD_OFF + SKF_AD_PKTTYPE: the packet type, as an ancillary load
SO_ATTACH_FILTER = 26
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x20, 0x15, 0x06


def kernel_program(bpf_filter: str | None, iface: str, snaplen: int,
                   drop_outgoing: bool) -> list[tuple[int, int, int, int]]:
    """The classic BPF program to attach: libpcap's compilation of ``bpf_filter`` (through scapy),
    its accept verdicts capped at ``snaplen`` (the kernel then copies only that much), and on
    loopback a prefix that drops the outgoing copy of each packet in the kernel (libpcap drops
    it in user space)."""
    insns: list[tuple[int, int, int, int]] = []
    if bpf_filter:
        from scapy.arch.common import compile_filter

        prog = compile_filter(bpf_filter, iface)
        insns = [(prog.bf_insns[i].code, prog.bf_insns[i].jt, prog.bf_insns[i].jf, prog.bf_insns[i].k)
                 for i in range(prog.bf_len)]
        insns = [(c, jt, jf, min(k, snaplen)) if c == _BPF_RET_K and k else (c, jt, jf, k)
                 for c, jt, jf, k in insns]
    else:
        insns = [(_BPF_RET_K, 0, 0, snaplen)]
    if drop_outgoing:
        insns = [(_BPF_LD_W_ABS, 0, 0, SKF_AD_PKTTYPE & 0xFFFFFFFF), (_BPF_JEQ_K, 0, 1, PACKET_OUTGOING),
                 (_BPF_RET_K, 0, 0, 0)] + insns
    return insns


def attach_kernel_filter(sock: socket.socket, bpf_filter: str | None, iface: str, snaplen: int,
                         drop_outgoing: bool) -> None:
    import ctypes

    insns = kernel_program(bpf_filter, iface, snaplen, drop_outgoing)
    arr = (ctypes.c_uint8 * (8 * len(insns)))()
    for i, (c, jt, jf, k) in enumerate(insns):
        struct.pack_into("HBBI", arr, 8 * i, c, jt, jf, k)
    fprog = struct.pack("HL", len(insns), ctypes.addressof(arr))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class LiveSource:
    """Reads frames from ``iface`` in batches (iterate, or call ``read()``).

    ``read(timeout)`` returns the frames available now (up to ``batch_size``),
    waiting at most ``timeout`` seconds for the first one; an empty batch means
    the link was quiet, so the caller can advance its clock.
    """

    path = "socket"

    def __init__(self, iface: str, *, bpf_filter: str | None = None, snaplen: int = 256, promisc: bool = False,
                 batch_size: int = 8192, timeout: float = 0.1, rcvbuf: int = 64 << 20,
                 skip_outgoing_loopback: bool = True):
        if snaplen < 64 or snaplen > 262144:
            raise ValueError(f"snaplen must be within 64..262144 bytes, got {snaplen}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.iface, self.snaplen, self.batch_size, self.timeout = iface, snaplen, batch_size, timeout
        self._l2 = open_l2_listen(iface, bpf_filter, promisc, snaplen)
        self.sock: socket.socket = self._l2.ins
        for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
                break
            except OSError:
                continue
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setblocking(False)
        hatype = self.sock.getsockname()[3]
        from scapy.data import ARPHRD_TO_DLT

        self.linktype = int(ARPHRD_TO_DLT.get(hatype, 1))
        self._skip_out = skip_outgoing_loopback and hatype == LOOPBACK_ARPHRD
        self._buf = bytearray(max(1 << 22, snaplen * 64))
        self._view = memoryview(self._buf)
        self.frames = self.bytes = self.outgoing_skipped = 0
        self.kernel_packets = self.kernel_drops = 0
        self.closed = False

    # -- reading
    def read(self, timeout: float | None = None) -> FrameBatch:
        timeout = self.timeout if timeout is None else timeout
        sock, view, snap, cap = self.sock, self._view, self.snaplen, len(self._buf)
        recv = sock.recvmsg_into
        offs: list[int] = []
        caps: list[int] = []
        lens: list[int] = []
        tss: list[float] = []
        pos = 0
        waited = False
        aux_unpack, ts_unpack = _AUX.unpack, _TS.unpack
        while len(offs) < self.batch_size and pos + snap + 4 <= cap:
            try:
                n, anc, _flags, addr = recv([view[pos:pos + snap]], _ANCBUF)
            except BlockingIOError:
                if offs or waited:
                    break
                select.select([sock], [], [], timeout)
                waited = True
                continue
            except InterruptedError:
                break
            except OSError as err:
                if err.errno in (errno.ENETDOWN, errno.ENXIO):
                    raise CaptureError(self.iface, None, f"interface went away: {err}") from err
                raise
            if self._skip_out and addr[2] == PACKET_OUTGOING:
                self.outgoing_skipped += 1
                continue
            caplen, wire, t = n, n, 0.0
            for level, typ, data in anc:
                if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS:
                    s, ns = ts_unpack(data[:16])
                    t = s + ns * 1e-9
                elif level == SOL_PACKET and typ == PACKET_AUXDATA:
                    status, wire, _snap, _mac, _net, tci, tpid = aux_unpack(data[:20])
                    if status & TP_STATUS_VLAN_VALID and caplen >= 12:
                        caplen = self._insert_vlan(pos, caplen, tci,
                                                   tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100)
                        wire += 4
            if t == 0.0:
                t = time.time()
            offs.append(pos)
            caps.append(caplen)
            lens.append(wire)
            tss.append(t)
            pos += caplen
        nf = len(offs)
        self.frames += nf
        self.bytes += pos
        data = np.frombuffer(self._buf, dtype=np.uint8, count=pos).copy()
        return FrameBatch(
            data=data,
            offset=np.asarray(offs, dtype=np.int64),
            caplen=np.asarray(caps, dtype=np.uint32),
            wire_len=np.asarray(lens, dtype=np.uint32),
            ts=np.asarray(tss, dtype=np.float64),
            linktype=np.full(nf, self.linktype, dtype=np.uint16),
        )

    def _insert_vlan(self, pos: int, caplen: int, tci: int, tpid: int) -> int:
        """Put a kernel-stripped 802.1Q tag back after the two MAC addresses (libpcap does the same)."""
        b = self._buf
        end = min(pos + caplen, pos + self.snaplen)
        b[pos + 16:end + 4] = b[pos + 12:end]
        b[pos + 12:pos + 16] = struct.pack("!HH", tpid, tci)
        return min(caplen + 4, self.snaplen + 4)

    def __iter__(self) -> Iterator[FrameBatch]:
        while not self.closed:
            yield self.read()

    # -- counters
    def kernel_stats(self) -> dict[str, int]:
        """Cumulative packets seen / dropped by the kernel for this socket (PACKET_STATISTICS resets on read)."""
        if not self.closed:
            try:
                pk, dr = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
                self.kernel_packets += pk
                self.kernel_drops += dr
            except OSError:
                pass
        return {"kernel_packets": self.kernel_packets, "kernel_drops": self.kernel_drops}

    @property
    def stats(self) -> dict[str, int]:
        return {"frames": self.frames, "bytes": self.bytes, "outgoing_skipped": self.outgoing_skipped,
                **self.kernel_stats()}

    def close(self) -> None:
        if not self.closed:
            self.kernel_stats()
            self.closed = True
            try:
                self._l2.close()
            except OSError:
                pass

    def __enter__(self) -> "LiveSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_live(iface: str, *, bpf_filter: str | None = None, snaplen: int = 256, promisc: bool = False,
              ring: bool = True, ring_mb: float = 64, block_kb: int = 1024, block_timeout_ms: int = 10,
              fanout_group: int | None = None, batch_size: int = 8192, timeout: float = 0.1,
              batch_wait_ms: int = 20):
    """A live source on ``iface`` and one line saying which path runs.

    The TPACKET_V3 ring when ``ring`` (default) and the kernel gives one; otherwise
    the socket path (one ``recvmsg`` per packet). A fanout group needs the ring."""
    why = "turned off (--no-ring)"
    if ring:
        from .ring import RingSource, RingUnavailable

        try:
            src = RingSource(iface, bpf_filter=bpf_filter, snaplen=snaplen, promisc=promisc, ring_mb=ring_mb,
                             block_kb=block_kb, block_timeout_ms=block_timeout_ms, fanout_group=fanout_group,
                             timeout=timeout, batch_wait_ms=batch_wait_ms)
            fan = f", fanout group {fanout_group} (hash)" if fanout_group is not None else ""
            return src, (f"live capture on {iface}: TPACKET_V3 ring, {src.block_nr} blocks x "
                         f"{src.block_size >> 10} KiB, block timeout {block_timeout_ms} ms, batch wait {batch_wait_ms} ms{fan}")
        except RingUnavailable as err:
            if fanout_group is not None:
                raise
            why = f"ring unavailable: {err.reason}"
    elif fanout_group is not None:
        raise ValueError("a fanout group (--workers > 1 or --fanout-group) needs the ring path")
    src = LiveSource(iface, bpf_filter=bpf_filter, snaplen=snaplen, promisc=promisc, batch_size=batch_size,
                     timeout=timeout)
    return src, f"live capture on {iface}: socket path, one recvmsg per packet ({why})"


def can_capture(iface: str = "lo") -> tuple[bool, str]:
    """Whether this process may open a raw socket on ``iface`` (and why not)."""
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    except PermissionError:
        return False, "no CAP_NET_RAW (run as root or grant cap_net_raw)"
    except OSError as err:
        return False, f"raw sockets unavailable: {err}"
    try:
        s.bind((iface, 3))
    except OSError as err:
        return False, f"cannot bind a raw socket to {iface}: {err}"
    finally:
        s.close()
    return True, ""
