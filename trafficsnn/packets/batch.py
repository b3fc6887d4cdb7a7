"""The two batch types that carry packets through the pipeline as numpy arrays.

``FrameBatch`` is what a source produces (raw frame bytes plus capture metadata);
``PacketBatch`` is what the decoder produces (one row per decoded IP packet).
Nothing on the hot path creates a Python object per packet.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Column name -> dtype of a PacketBatch. The flow table, the extract file format
# and the wire protocol all rely on these exact names and dtypes.
PACKET_COLUMNS: dict[str, np.dtype] = {
    "ts": np.dtype(np.float64),        # seconds since the epoch
    "src_hi": np.dtype(np.uint64),     # IPv6 address (IPv4 as ::ffff:a.b.c.d), high 64 bits
    "src_lo": np.dtype(np.uint64),     #   low 64 bits
    "dst_hi": np.dtype(np.uint64),
    "dst_lo": np.dtype(np.uint64),
    "sport": np.dtype(np.uint16),      # 0 for port-less L4 protocols and non-first fragments
    "dport": np.dtype(np.uint16),
    "proto": np.dtype(np.uint8),       # IP protocol number of the (innermost) L4 header
    "ip_len": np.dtype(np.uint32),     # IP total length (IPv6: payload length + 40)
    "wire_len": np.dtype(np.uint32),   # original frame length on the wire
    "tcp_flags": np.dtype(np.uint8),   # 0 for non-TCP
    "vlan": np.dtype(np.uint16),       # outermost 802.1Q VLAN id, 0 if none
    "ip_version": np.dtype(np.uint8),  # 4 or 6 (of the innermost IP header)
}

# TCP flag bits as they appear in ``tcp_flags``.
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass
class FrameBatch:
    """Raw frames as read from a capture: one contiguous byte buffer plus per-frame columns.

    Frame ``i`` is ``data[offset[i] : offset[i] + caplen[i]]``.
    """

    data: np.ndarray       # uint8, all frames' captured bytes back to back
    offset: np.ndarray     # int64, start of each frame in ``data``
    caplen: np.ndarray     # uint32, captured bytes of each frame
    wire_len: np.ndarray   # uint32, original length on the wire
    ts: np.ndarray         # float64, seconds since the epoch
    linktype: np.ndarray   # uint16, link-layer type (DLT/LINKTYPE) of each frame

    def __len__(self) -> int:
        return int(self.offset.shape[0])


@dataclass
class PacketBatch:
    """Decoded packets: one row per IP packet, columns as in ``PACKET_COLUMNS``."""

    ts: np.ndarray
    src_hi: np.ndarray
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    proto: np.ndarray
    ip_len: np.ndarray
    wire_len: np.ndarray
    tcp_flags: np.ndarray
    vlan: np.ndarray
    ip_version: np.ndarray
    # frames of the input batch that were not decodable IP packets (non-IP, too short, ...)
    skipped: int = field(default=0)

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @classmethod
    def empty(cls) -> "PacketBatch":
        return cls(**{k: np.empty(0, dtype=d) for k, d in PACKET_COLUMNS.items()})

    @classmethod
    def from_columns(cls, skipped: int = 0, **cols: np.ndarray) -> "PacketBatch":
        """Build a batch, casting each column to its declared dtype (and checking lengths)."""
        missing = set(PACKET_COLUMNS) - set(cols)
        if missing:
            raise ValueError(f"PacketBatch is missing columns: {sorted(missing)}")
        out = {k: np.ascontiguousarray(cols[k], dtype=d) for k, d in PACKET_COLUMNS.items()}
        n = {v.shape[0] for v in out.values()}
        if len(n) > 1:
            raise ValueError(f"PacketBatch columns have different lengths: {sorted(n)}")
        return cls(skipped=skipped, **out)

    def take(self, index: np.ndarray) -> "PacketBatch":
        """Rows selected by a boolean mask or an index array."""
        return PacketBatch(skipped=0, **{k: getattr(self, k)[index] for k in PACKET_COLUMNS})

    @staticmethod
    def concat(batches: list["PacketBatch"]) -> "PacketBatch":
        if not batches:
            return PacketBatch.empty()
        return PacketBatch(
            skipped=sum(b.skipped for b in batches),
            **{k: np.concatenate([getattr(b, k) for b in batches]) for k in PACKET_COLUMNS},
        )


def ip_to_words(addr: str) -> tuple[int, int]:
    """An IPv4 or IPv6 address string -> (hi, lo) 64-bit words (IPv4 mapped into ::ffff:0:0/96)."""
    import ipaddress

    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        ip = ipaddress.IPv6Address("::ffff:" + str(ip))
    v = int(ip)
    return v >> 64, v & 0xFFFF_FFFF_FFFF_FFFF


def words_to_ip(hi: int, lo: int) -> str:
    """Inverse of ``ip_to_words``: IPv4-mapped addresses come back in dotted form."""
    import ipaddress

    ip = ipaddress.IPv6Address((int(hi) << 64) | int(lo))
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)
