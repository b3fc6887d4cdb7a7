"""`trafficsnn synth` writes real, deterministic pcaps that our reader turns back into the flows."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from trafficsnn.errors import ConfigError
from trafficsnn.train.synth import synthesize


def _records(path: Path):
    data = path.read_bytes()
    magic, vmaj, vmin, _, _, snap, link = struct.unpack_from("<IHHiIII", data, 0)
    assert magic == 0xA1B2C3D4 and (vmaj, vmin) == (2, 4) and link == 1
    off = 24
    while off < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, off)
        frame = data[off + 16: off + 16 + incl]
        assert len(frame) == incl and incl <= orig and usec < 1_000_000
        yield sec + usec * 1e-6, frame, orig
        off += 16 + incl


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.pcap")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, flows_per_class=4, captures_per_class=2, duration=(45, 50), seed=3, snaplen=96)
    return out


def test_layout_and_manifest(small):
    m = json.loads((small / "synth.json").read_text())
    assert {c["class"] for c in m["captures"]} == {"Browsing", "Chat", "FileTransfer", "Video", "VoIP"}
    assert len(m["captures"]) == 10
    for c in m["captures"]:
        assert (small / c["path"]).is_file() and c["flows"] == 2


def test_records_are_valid_frames(small):
    ts_prev = 0.0
    n6 = 0
    for ts, frame, orig in _records(small / "Video" / "video_1.pcap"):
        assert ts >= ts_prev
        ts_prev = ts
        etype = frame[12:14]
        if etype == b"\x08\x00":
            ip_len = struct.unpack(">H", frame[16:18])[0]
            hdr = frame[14:34]
            words = struct.unpack(">10H", hdr)
            assert (sum(words) + (sum(words) >> 16)) & 0xFFFF == 0xFFFF   # checksum ok
        else:
            assert etype == b"\x86\xdd"
            ip_len = struct.unpack(">H", frame[18:20])[0] + 40
            n6 += 1
        assert orig == ip_len + 14


def test_deterministic_by_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for p, seed in ((a, 7), (b, 7), (c, 8)):
        synthesize(p, classes=["VoIP", "Chat"], flows_per_class=2, duration=(45, 46), seed=seed, snaplen=64)
    assert _digest(a) == _digest(b) != _digest(c)


def test_bad_class():
    with pytest.raises(ConfigError, match="unknown synthetic class"):
        synthesize("/nonexistent", classes=["Email"])


def test_reader_recovers_flows(small):
    flows_mod = pytest.importorskip("trafficsnn.flows")
    if not hasattr(flows_mod, "flows_from_capture"):
        pytest.skip("flow engine not available yet")
    m = json.loads((small / "synth.json").read_text())
    for cap in m["captures"]:
        flows = list(flows_mod.flows_from_capture([small / cap["path"]], idle_timeout=None, active_timeout=None,
                                                  tcp_close=False))
        assert len(flows) == cap["flows"], cap["path"]
        assert sorted(f.packets for f in flows) == sorted(cap["flow_packets"])
        # the client (direction 0) sent each flow's first packet
        assert all(int(f.direction[0]) == 0 for f in flows)
        assert all(np.all(np.diff(f.ts) >= 0) for f in flows)
