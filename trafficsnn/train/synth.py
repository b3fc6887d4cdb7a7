"""Synthetic ISCX-like labelled captures: real pcap files with class-typical patterns.

For tests, demos and benchmarks where real labelled traffic is unavailable. Each class
gets its own subfolder (the "labelled folder" layout ``trafficsnn train`` reads), a few
captures per class and several bidirectional flows per capture. Patterns are simple
caricatures of the traffic, chosen to be separable by size *and* timing:

- VoIP: constant-size small UDP datagrams both ways every ~20 ms;
- Video: periodic client requests answered by bursts of MTU-size segments, client ACKs;
- Chat: sparse small TLS records both ways with ACKs and keep-alives;
- FileTransfer: sustained MTU bulk in one direction, ACK every second segment;
- Browsing: request/response bursts of mixed sizes separated by think time.

Frames are Ethernet + IPv4/IPv6 + TCP/UDP with zero payload bytes; TCP flows start with a
three-way handshake and end with FIN/ACK. Writing is vectorised (numpy) and fully
determined by the seed. No torch here.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError

CLASSES = ("Browsing", "Chat", "FileTransfer", "Video", "VoIP")
TCP, UDP = 6, 17
FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10
MTU_IP = 1500


@dataclass
class FlowPackets:
    """One synthetic flow before framing: times relative to its start, direction 0 = client."""

    t: np.ndarray
    direction: np.ndarray
    payload: np.ndarray
    flags: np.ndarray
    proto: int


# ---------------------------------------------------------------- class patterns
def _voip(rng: np.random.Generator, dur: float) -> tuple:
    period = 0.020
    n = int(dur / period)
    size = int(rng.integers(100, 180))
    out = []
    for d, off in ((0, 0.0), (1, rng.uniform(0.002, 0.010))):
        t = off + np.arange(n) * period + rng.normal(0, 0.0015, n)
        keep = rng.random(n) > 0.01              # 1 % loss
        out.append((np.sort(np.abs(t[keep])), np.full(keep.sum(), d), np.full(keep.sum(), size + rng.integers(0, 3))))
    return _merge(out), UDP


def _video(rng: np.random.Generator, dur: float) -> tuple:
    out = []
    t0 = 0.1
    while t0 < dur:
        out.append((np.array([t0]), np.array([0]), np.array([rng.integers(300, 700)])))
        n = int(rng.integers(120, 400))
        ts = t0 + 0.03 + np.cumsum(rng.exponential(0.0015, n))
        sz = np.full(n, MTU_IP - 40)
        sz[-1] = rng.integers(200, 1400)
        out.append((ts, np.ones(n, int), sz))
        acks = ts[1::2] + 0.0005
        out.append((acks, np.zeros(acks.size, int), np.zeros(acks.size, int)))
        t0 = ts[-1] + rng.uniform(1.5, 5.0)
    return _merge(out), TCP


def _chat(rng: np.random.Generator, dur: float) -> tuple:
    out = []
    for d in (0, 1):
        n = int(rng.poisson(dur * 0.35)) + 12
        ts = np.sort(rng.uniform(0.2, dur, n))
        out.append((ts, np.full(n, d), rng.integers(60, 420, n)))
        out.append((ts + rng.uniform(0.02, 0.08, n), np.full(n, 1 - d), np.zeros(n, int)))
    ka = np.arange(5.0, dur, 15.0)                # keep-alives
    out.append((ka, np.zeros(ka.size, int), np.full(ka.size, 31)))
    return _merge(out), TCP


def _file_transfer(rng: np.random.Generator, dur: float) -> tuple:
    rate = rng.uniform(120, 220)                 # segments/s, kept modest for small files
    n = int(dur * rate)
    ts = 0.2 + np.cumsum(rng.exponential(1.0 / rate, n))
    up = rng.random() < 0.4
    data_dir = 0 if up else 1
    out = [(ts, np.full(n, data_dir), np.full(n, MTU_IP - 40))]
    acks = ts[1::2] + rng.uniform(0.0002, 0.002, ts[1::2].size)
    out.append((acks, np.full(acks.size, 1 - data_dir), np.zeros(acks.size, int)))
    ctl = np.sort(rng.uniform(0.1, dur, 8))      # control-channel chatter
    out.append((ctl, np.zeros(8, int), rng.integers(40, 120, 8)))
    return _merge(out), TCP


def _browsing(rng: np.random.Generator, dur: float) -> tuple:
    out = []
    t0 = 0.05
    while t0 < dur:
        for _ in range(int(rng.integers(1, 6))):  # several objects per page
            out.append((np.array([t0]), np.array([0]), np.array([rng.integers(250, 800)])))
            n = int(rng.integers(2, 40))
            ts = t0 + rng.uniform(0.03, 0.15) + np.cumsum(rng.exponential(0.004, n))
            sz = np.where(rng.random(n) < 0.7, MTU_IP - 40, rng.integers(100, 1400, n))
            out.append((ts, np.ones(n, int), sz))
            acks = ts[::2] + 0.001
            out.append((acks, np.zeros(acks.size, int), np.zeros(acks.size, int)))
            t0 = ts[-1] + rng.uniform(0.01, 0.3)
        t0 += rng.uniform(3.0, 12.0)                # think time
    return _merge(out), TCP


PATTERNS: dict[str, Callable] = {
    "Browsing": _browsing, "Chat": _chat, "FileTransfer": _file_transfer, "Video": _video, "VoIP": _voip,
}


def _merge(parts: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.concatenate([p[0] for p in parts]).astype(np.float64)
    d = np.concatenate([p[1] for p in parts]).astype(np.uint8)
    s = np.concatenate([p[2] for p in parts]).astype(np.int64)
    o = np.argsort(t, kind="stable")
    return t[o], d[o], s[o]


def make_flow(cls: str, rng: np.random.Generator, duration: float) -> FlowPackets:
    """Packets of one flow of class ``cls`` (TCP flows get handshake and FIN)."""
    (t, d, payload), proto = PATTERNS[cls](rng, duration)
    if proto == UDP:
        return FlowPackets(t, d, payload, np.zeros(t.size, np.uint8), UDP)
    flags = np.where(payload > 0, PSH | ACK, ACK).astype(np.uint8)
    rtt = rng.uniform(0.005, 0.06)
    t = t + 1.5 * rtt
    end = t[-1] + 0.05 if t.size else 1.0
    hs_t = np.array([0.0, rtt / 2, rtt, end, end + rtt / 2, end + rtt])
    hs_d = np.array([0, 1, 0, 0, 1, 0], np.uint8)
    hs_f = np.array([SYN, SYN | ACK, ACK, FIN | ACK, FIN | ACK, ACK], np.uint8)
    return FlowPackets(
        np.concatenate([hs_t[:3], t, hs_t[3:]]),
        np.concatenate([hs_d[:3], d, hs_d[3:]]),
        np.concatenate([np.zeros(3, np.int64), payload, np.zeros(3, np.int64)]),
        np.concatenate([hs_f[:3], flags, hs_f[3:]]),
        TCP,
    )


# ---------------------------------------------------------------- framing
def _ipv4_checksum(h: np.ndarray) -> np.ndarray:
    """Header checksums of many 20-byte IPv4 headers (rows of ``h``, checksum field zero)."""
    words = h.reshape(h.shape[0], 10, 2).astype(np.uint32)
    s = (words[:, :, 0] << 8 | words[:, :, 1]).sum(axis=1)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def _put16(h: np.ndarray, col: int, v: np.ndarray) -> None:
    h[:, col] = (v >> 8) & 0xFF
    h[:, col + 1] = v & 0xFF


def _put32(h: np.ndarray, col: int, v: np.ndarray) -> None:
    for k in range(4):
        h[:, col + k] = (v >> (8 * (3 - k))) & 0xFF


@dataclass
class SynthFlow:
    cls: str
    v6: bool
    client: bytes
    server: bytes
    cport: int
    sport: int
    start: float
    pk: FlowPackets


def frames_of(flows: list[SynthFlow]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All packets of ``flows``, time-ordered: (ts, header rows, header lengths, frame lengths)."""
    n_per = np.array([f.pk.t.size for f in flows])
    fid = np.repeat(np.arange(len(flows)), n_per)
    ts = np.concatenate([f.start + f.pk.t for f in flows])
    d = np.concatenate([f.pk.direction for f in flows]).astype(np.int64)
    pay = np.concatenate([f.pk.payload for f in flows]).astype(np.int64)
    flags = np.concatenate([f.pk.flags for f in flows])
    v6 = np.array([f.v6 for f in flows])[fid]
    proto = np.array([f.pk.proto for f in flows])[fid]
    n = ts.size
    iphl = np.where(v6, 40, 20)
    l4hl = np.where(proto == TCP, 20, 8)
    ip_len = iphl + l4hl + pay
    frame_len = 14 + ip_len
    H = 14 + 40 + 20
    h = np.zeros((n, H), np.uint8)
    # Ethernet
    h[:, 0:6] = np.where(d[:, None] == 0, 0x02, 0x04)
    h[:, 6:12] = np.where(d[:, None] == 0, 0x04, 0x02)
    h[:, 12] = np.where(v6, 0x86, 0x08)
    h[:, 13] = np.where(v6, 0xDD, 0x00)
    # addresses per flow and direction
    src = np.zeros((n, 16), np.uint8)
    dst = np.zeros((n, 16), np.uint8)
    cl = np.stack([np.frombuffer(f.client.rjust(16, b"\0"), np.uint8) for f in flows])[fid]
    sv = np.stack([np.frombuffer(f.server.rjust(16, b"\0"), np.uint8) for f in flows])[fid]
    c2s = (d == 0)[:, None]
    src[:] = np.where(c2s, cl, sv)
    dst[:] = np.where(c2s, sv, cl)
    cport = np.array([f.cport for f in flows])[fid]
    sport = np.array([f.sport for f in flows])[fid]
    p_src = np.where(d == 0, cport, sport)
    p_dst = np.where(d == 0, sport, cport)
    l4 = np.zeros((n, 20), np.uint8)
    _put16(l4, 0, p_src)
    _put16(l4, 2, p_dst)
    # TCP sequence numbers: exclusive cumulative payload per (flow, direction), SYN/FIN count 1
    grp = fid * 2 + d
    adv = pay + ((flags & (SYN | FIN)) > 0)
    order = np.argsort(grp, kind="stable")
    cs = np.cumsum(adv[order])
    starts = np.r_[0, np.flatnonzero(np.diff(grp[order])) + 1]
    first = np.repeat(cs[starts] - adv[order][starts], np.diff(np.r_[starts, n]))
    seq = np.empty(n, np.int64)
    seq[order] = cs - adv[order] - first
    isn = (fid * 2654435761 + d * 40503) & 0xFFFFFFFF
    _put32(l4, 4, (isn + seq) & 0xFFFFFFFF)
    _put32(l4, 8, np.where(flags & ACK, (isn ^ 0x5A5A) & 0xFFFFFFFF, 0))
    l4[:, 12] = 0x50
    l4[:, 13] = flags
    _put16(l4, 14, np.full(n, 64240))
    udp = proto == UDP
    ulen = 8 + pay
    l4[udp, 4] = (ulen[udp] >> 8) & 0xFF
    l4[udp, 5] = ulen[udp] & 0xFF
    l4[udp, 6:] = 0
    # IPv4 headers
    ip4 = np.zeros((n, 20), np.uint8)
    ip4[:, 0] = 0x45
    _put16(ip4, 2, ip_len)
    _put16(ip4, 4, np.arange(n) & 0xFFFF)
    ip4[:, 6] = 0x40
    ip4[:, 8] = 64
    ip4[:, 9] = proto
    ip4[:, 12:16] = src[:, 12:]
    ip4[:, 16:20] = dst[:, 12:]
    _put16(ip4, 10, _ipv4_checksum(ip4))
    ip6 = np.zeros((n, 40), np.uint8)
    ip6[:, 0] = 0x60
    _put16(ip6, 4, ip_len - 40)
    ip6[:, 6] = proto
    ip6[:, 7] = 64
    ip6[:, 8:24] = src
    ip6[:, 24:40] = dst
    # assemble the fixed-width header rows (IPv4 rows use only the first 54/42 bytes)
    h[~v6, 14:34] = ip4[~v6]
    h[~v6, 34:54] = l4[~v6]
    h[v6, 14:54] = ip6[v6]
    h[v6, 54:74] = l4[v6]
    hdr_len = 14 + iphl + l4hl
    o = np.argsort(ts, kind="stable")
    return ts[o], h[o], hdr_len[o], frame_len[o]


def write_pcap(
    path: Path, ts: np.ndarray, headers: np.ndarray, hdr_len: np.ndarray, frame_len: np.ndarray, snaplen: int = 0
) -> None:
    """Classic little-endian microsecond pcap (linktype 1), built in one buffer.

    ``snaplen`` > 0 stores at most that many bytes per frame (the original length is kept
    in the record header, as tcpdump -s does); payload bytes are zero anyway.
    """
    n = ts.size
    incl = np.minimum(frame_len, snaplen) if snaplen > 0 else frame_len
    rec = 16 + incl
    off = np.r_[0, np.cumsum(rec)[:-1]]
    buf = np.zeros(int(rec.sum()), np.uint8)
    sec = np.floor(ts).astype(np.int64)
    usec = np.round((ts - sec) * 1e6).astype(np.int64)
    carry = usec >= 1_000_000
    sec[carry] += 1
    usec[carry] -= 1_000_000
    rh = np.stack([sec, usec, incl, frame_len], axis=1).astype("<u4").view(np.uint8).reshape(n, 16)
    cols = np.arange(16)
    buf[(off[:, None] + cols).ravel()] = rh.ravel()
    width = headers.shape[1]
    cols = np.arange(width)
    m = cols[None, :] < np.minimum(hdr_len, incl)[:, None]
    idx = off[:, None] + 16 + cols[None, :]
    buf[idx[m]] = headers[m]
    gh = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen if snaplen > 0 else 65535, 1)
    with open(path, "wb") as fh:
        fh.write(gh)
        fh.write(buf.tobytes())


def synthesize(
    out: str | Path,
    classes: list[str] | tuple[str, ...] = CLASSES,
    flows_per_class: int = 12,
    captures_per_class: int = 3,
    duration: tuple[float, float] = (60.0, 100.0),
    ipv6_fraction: float = 0.25,
    seed: int = 0,
    snaplen: int = 0,
) -> dict:
    """Write ``out/<Class>/<class>_<i>.pcap`` and ``out/synth.json`` (the ground truth)."""
    unknown = [c for c in classes if c not in PATTERNS]
    if unknown:
        raise ConfigError(f"unknown synthetic class(es) {unknown}; choose from {sorted(PATTERNS)}")
    if flows_per_class < 1 or captures_per_class < 1:
        raise ConfigError("--flows-per-class and --captures-per-class must be >= 1")
    if not (0 < duration[0] <= duration[1]):
        raise ConfigError(f"bad duration range {duration}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    manifest: dict = {"seed": seed, "classes": list(classes), "snaplen": snaplen, "captures": []}
    base = 1_700_000_000.0
    for ci, cls in enumerate(classes):
        folder = out / cls
        folder.mkdir(parents=True, exist_ok=True)
        n_caps = min(captures_per_class, flows_per_class)
        per = np.full(n_caps, flows_per_class // n_caps)
        per[: flows_per_class % n_caps] += 1
        for k in range(n_caps):
            flows = []
            for j in range(int(per[k])):
                v6 = bool(rng.random() < ipv6_fraction)
                if v6:
                    client = bytes([0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, ci + 1, j + 1])
                    server = bytes([0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, k + 1, j + 1])
                else:
                    client = bytes([10, ci + 1, k + 1, j + 1])
                    server = bytes([198, 51, 100 + ci, int(rng.integers(1, 255))])
                pk = make_flow(cls, rng, float(rng.uniform(*duration)))
                cport = int(rng.integers(32768, 61000))
                sport = 443 if pk.proto == TCP else int(rng.integers(10000, 60000))
                start = base + ci * 1000 + k * 200 + rng.uniform(0, 5)
                flows.append(SynthFlow(cls, v6, client, server, cport, sport, start, pk))
            ts, hdr, hlen, flen = frames_of(flows)
            name = f"{cls.lower()}_{k + 1}.pcap"
            write_pcap(folder / name, ts, hdr, hlen, flen, snaplen)
            manifest["captures"].append({
                "path": f"{cls}/{name}", "class": cls, "flows": len(flows),
                "packets": int(ts.size),
                "flow_packets": [int(f.pk.t.size) for f in flows],
                "ipv6_flows": sum(f.v6 for f in flows),
            })
    (out / "synth.json").write_text(json.dumps(manifest, indent=1))
    return manifest
