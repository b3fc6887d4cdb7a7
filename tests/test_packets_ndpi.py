"""Real captures (nDPI's regression set): every file reads without a crash, frame counts and
formats match pcaps.csv, damage is reported, and decoded fields agree with scapy."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from trafficsnn.errors import CaptureError
from trafficsnn.packets import Decoder, open_capture, read_packets
from trafficsnn.packets.batch import words_to_ip

SETS = ("robustness", "developer")


def is_damaged(problems: str) -> bool:
    """pcaps.csv ``problems`` minus the harmless notes (odd extension, pcap minor version)."""
    items = [x.strip() for x in problems.split(";") if x.strip()]
    return any(x != "extension does not match format" and not x.startswith("version 2.") for x in items)


def inventory(shared_data: Path) -> list[tuple[Path, dict]]:
    out = []
    for s in SETS:
        d = shared_data / "ndpi" / s
        if not (d / "pcaps.csv").is_file():
            continue
        with open(d / "pcaps.csv", newline="") as f:
            out += [(d / "pcap" / r["pcap"], r) for r in csv.DictReader(f)]
    if not out:
        pytest.skip("no nDPI pcaps.csv in the shared data")
    return out


def test_every_capture_reads_and_matches_its_inventory(shared_data):
    problems = []
    for path, r in inventory(shared_data):
        reader = read_packets(path)
        n = sum(len(b) for b in reader)                     # must never raise
        st = reader.stats["capture"]
        damaged = is_damaged(r["problems"])
        if damaged:
            if not reader.errors:
                problems.append(f"{path.name}: damage {r['problems']!r} not reported")
            elif not all(isinstance(e, CaptureError) and e.offset is not None for e in reader.errors):
                problems.append(f"{path.name}: bad error objects {reader.errors}")
            continue
        if reader.errors:
            problems.append(f"{path.name}: unexpected errors {reader.errors}")
        if st["frames"] != int(r["records"]):
            problems.append(f"{path.name}: {st['frames']} frames, pcaps.csv says {r['records']}")
        if st["format"] != r["format"]:
            problems.append(f"{path.name}: format {st['format']}, pcaps.csv says {r['format']}")
        want_lt = {int(x.split(":")[0]) for x in r["linktypes"].split(";") if x}
        if set(st["linktypes"]) != want_lt:
            problems.append(f"{path.name}: link types {set(st['linktypes'])} != {want_lt}")
        if n > st["frames"]:
            problems.append(f"{path.name}: more packets than frames")
    assert not problems, "\n".join(problems)


def test_damaged_capture_is_fatal_in_strict_mode(shared_data):
    damaged = [p for p, r in inventory(shared_data) if is_damaged(r["problems"])]
    if not damaged:
        pytest.skip("no damaged capture listed")
    for p in damaged:
        with pytest.raises(CaptureError) as ei:
            list(open_capture(p, strict=True))
        assert str(p) in str(ei.value) and ei.value.offset is not None


def _scapy_view(pkt):
    """(src, dst, sport, dport, ip_len, flags) of a plain (untunnelled, unfragmented) IP packet, else None."""
    from scapy.all import IP, TCP, UDP, IPv6, IPv6ExtHdrFragment, NoPayload

    layer, ips = pkt, []
    while layer is not None and not isinstance(layer, NoPayload):
        if isinstance(layer, (IP, IPv6)):
            ips.append(layer)
        layer = layer.payload
    if len(ips) != 1:
        return None
    ip = ips[0]
    if isinstance(ip, IP) and (ip.frag or ip.flags.MF or ip.version != 4 or ip.ihl < 5):
        return None
    if isinstance(ip, IPv6) and IPv6ExtHdrFragment in ip:
        return None
    l4 = ip.payload
    if isinstance(l4, UDP) and {l4.sport, l4.dport} & {2152, 4789, 5247}:
        return None                                          # tunnels scapy does not open
    ported = isinstance(l4, (TCP, UDP))
    ip_len = ip.len if isinstance(ip, IP) else ip.plen + 40
    return (ip.src, ip.dst, l4.sport if ported else 0, l4.dport if ported else 0, ip_len,
            int(l4.flags) if isinstance(l4, TCP) else 0)


def test_decoded_fields_agree_with_scapy(ndpi_dev):
    from scapy.all import rdpcap

    files = sorted((ndpi_dev / "pcap").iterdir())[::6]
    compared, diffs = 0, []
    for path in files:
        try:
            pkts = rdpcap(str(path), count=40)
        except Exception:                                    # scapy itself cannot read it: not our test
            continue
        fb = next(iter(open_capture(path)), None)
        if fb is None:
            continue
        dec = Decoder()
        for i, pkt in enumerate(pkts[: len(fb)]):
            want = _scapy_view(pkt)
            if want is None:
                continue
            sub = type(fb)(data=fb.data, offset=fb.offset[i:i + 1], caplen=fb.caplen[i:i + 1],
                           wire_len=fb.wire_len[i:i + 1], ts=fb.ts[i:i + 1], linktype=fb.linktype[i:i + 1])
            pb = dec.decode(sub)
            compared += 1
            if len(pb) != 1:
                diffs.append(f"{path.name}#{i}: skipped")
                continue
            got = (words_to_ip(pb.src_hi[0], pb.src_lo[0]), words_to_ip(pb.dst_hi[0], pb.dst_lo[0]),
                   int(pb.sport[0]), int(pb.dport[0]), int(pb.ip_len[0]), int(pb.tcp_flags[0]))
            if got != want:
                diffs.append(f"{path.name}#{i}: {got} != scapy {want}")
            assert pb.wire_len[0] == len(pkt.original) if hasattr(pkt, "original") else True
            assert np.isclose(pb.ts[0], float(pkt.time), atol=1e-6)
    assert compared > 200
    assert not diffs, "\n".join(diffs[:20])
