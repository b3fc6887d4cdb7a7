"""Packet sources (pcap, pcapng, live) and the vectorised header decoder.

Never imports torch: a sensor host runs this without it.

    from trafficsnn.packets import read_packets
    reader = read_packets("trace.pcapng")
    for batch in reader:          # PacketBatch objects
        ...
    reader.errors                 # damage found (CaptureError list), reading stopped there
    reader.stats                  # {"capture": reader stats, "decode": decoder stats}
"""
from __future__ import annotations

from .batch import PACKET_COLUMNS, FrameBatch, PacketBatch
from .decode import LINKTYPE_NAMES, SUPPORTED_LINKTYPES, Decoder
from .readers import CaptureReader, open_capture
from .source import PacketReader, read_packets

__all__ = [
    "PACKET_COLUMNS", "FrameBatch", "PacketBatch", "LINKTYPE_NAMES", "SUPPORTED_LINKTYPES",
    "Decoder", "CaptureReader", "open_capture", "PacketReader", "read_packets",
]
