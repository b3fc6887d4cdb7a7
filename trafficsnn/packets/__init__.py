"""Packet sources (pcap, pcapng, live) and the vectorised header decoder.

Never imports torch: a sensor host runs this without it.

    from trafficsnn.packets import read_packets
    reader = read_packets("trace.pcapng")
    for batch in reader:          # PacketBatch objects
        ...
    reader.errors                 # damage found (CaptureError list), reading stopped there
    reader.stats                  # {"capture": reader stats, "decode": decoder stats}
    reader.warnings               # one-time messages (unsupported link types, by number and name)

Reader stats: format, frames, captured_bytes, wire_bytes, sections, interfaces,
skipped_blocks, linktypes {number: frames}, position (bytes of the file consumed).
Decoder stats: frames, packets, skipped = non_ip + truncated + malformed + too_deep +
unsupported, unsupported_linktype {number: frames}, tunnels {kind: packets},
tunnel_fallback (inner packet undecodable: outer flow kept), fragments,
fragments_unmatched (later fragment with no first fragment seen: ports 0), mpls, pppoe.

``Decoder(vlan="inner", later_fragments="drop")`` counts packets the way nDPI's
reader does (innermost VLAN tag; non-first IPv4/IPv6 fragments left out).
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
