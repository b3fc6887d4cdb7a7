"""A small random model for tests and benchmarks when no trained model is at hand.

Built with the real preset and written with the real checkpoint format, so the
daemon loads it exactly as it loads a trained one. Its verdicts mean nothing.
"""
from __future__ import annotations

from pathlib import Path


def make_random_model(directory: str | Path, classes: list[str] | None = None, seed: int = 0,
                      n_hidden: int = 100, preset: str = "improved") -> Path:
    import torch

    from ..snn.checkpoint import save_checkpoint
    from ..snn.presets import build_model

    classes = classes or ["Browsing", "Chat", "FileTransfer", "Streaming", "VPN_Tor", "VoIP"]
    torch.manual_seed(seed)
    m = build_model(preset, n_classes=len(classes), n_hidden=n_hidden)
    if preset == "improved":   # the paper network's own init barely spikes on sparse counts
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.rand_like(p) * (0.9 if p.numel() == 1 else 1.0))
            m.hidden.weight.mul_(3)
    elif hasattr(m, "w_in"):      # a random ALIF net: inputs strong enough to spike
        with torch.no_grad():
            m.w_in[0].mul_(3)
    m.clamp_parameters()
    save_checkpoint(directory, m, {"classes": list(classes), "preset": preset, "name": f"random-{seed}"})
    return Path(directory)


def write_demo_pcap(path: str | Path, n_flows: int = 20, packets_per_flow: int = 30, duration: float = 20.0,
                    seed: int = 0, start: float = 1_700_000_000.0, spread: float | None = None,
                    tcp_fraction: float = 0.5, heavy: bool = False, full: bool = False) -> int:
    """A pcap of ``n_flows`` IPv4 UDP/TCP flows (headers only, zero payload bytes not stored).

    Flows start uniformly over ``spread`` seconds (default ``duration``) and last up
    to ``duration``; packets of all flows are interleaved in time order. With
    ``heavy``, flow sizes are heavy-tailed (Pareto, mean ``packets_per_flow``) and
    durations log-uniform from 50 ms, closer to real traffic. Returns the
    number of packets written (``full`` stores the zero payload too). Vectorised: a million packets take about a second.
    """
    import struct

    import numpy as np

    rng = np.random.default_rng(seed)
    if heavy:
        raw = rng.pareto(1.2, n_flows) + 1.0
        counts = np.clip(np.round(raw * packets_per_flow / raw.mean()), 1, 50 * packets_per_flow).astype(np.int64)
        f_len = np.exp(rng.uniform(np.log(0.05), np.log(duration), n_flows))
    else:
        counts = np.full(n_flows, packets_per_flow, np.int64)
        f_len = rng.uniform(0.1, duration, n_flows)
    n = int(counts.sum())
    fid = np.repeat(np.arange(n_flows, dtype=np.int64), counts)
    spread = duration if spread is None else spread
    f_start = start + rng.uniform(0, spread, n_flows)
    rel = rng.uniform(0, 1, n)
    rel[np.concatenate([[0], np.cumsum(counts)[:-1]])] = 0.0  # each flow's first packet opens it
    ts = f_start[fid] + rel * f_len[fid]
    order = np.lexsort((rel, ts))
    fid, ts = fid[order], ts[order]
    first = np.zeros(n, bool)
    _, first_idx = np.unique(fid, return_index=True)
    first[first_idx] = True
    direction = np.where(first, 0, rng.integers(0, 2, n))
    tcp = (rng.uniform(0, 1, n_flows) < tcp_fraction)[fid]
    payload = rng.integers(0, 1400, n)
    l4 = np.where(tcp, 20, 8)
    ip_len = 20 + l4 + payload
    frame_len = 14 + ip_len
    cli = (0x0A000000 + fid // 60000 * 256 + 1).astype(np.uint32)        # 10.x.y.1
    srv = (0xC0A80000 + (fid % 251)).astype(np.uint32)                   # 192.168.0.x
    cport = (1024 + fid % 60000).astype(np.uint16)
    sport = np.where(tcp, 443, 53).astype(np.uint16)
    src = np.where(direction == 0, cli, srv)
    dst = np.where(direction == 0, srv, cli)
    sp = np.where(direction == 0, cport, sport)
    dp = np.where(direction == 0, sport, cport)
    hl = 14 + 20 + l4
    h = np.zeros((n, 54), np.uint8)
    h[:, 12], h[:, 13] = 0x08, 0x00
    h[:, 14] = 0x45
    h[:, 16], h[:, 17] = ip_len >> 8, ip_len & 0xFF
    h[:, 22] = 64
    h[:, 23] = np.where(tcp, 6, 17)
    for col, v in ((26, src), (30, dst)):
        for b in range(4):
            h[:, col + b] = (v >> (24 - 8 * b)) & 0xFF
    h[:, 34], h[:, 35] = sp >> 8, sp & 0xFF
    h[:, 36], h[:, 37] = dp >> 8, dp & 0xFF
    udp = ~tcp
    ulen = (8 + payload)[udp]
    h[udp, 38], h[udp, 39] = ulen >> 8, ulen & 0xFF
    h[tcp, 46] = 0x50
    h[tcp, 47] = np.where(first[tcp], 0x02, 0x18)  # SYN first, then PSH|ACK
    # headers only (payload bytes not stored, as tcpdump -s), or whole zero-filled frames (``full``:
    # what a replay onto a real interface needs, since the lengths in the headers must hold)
    incl = (frame_len if full else hl).astype(np.int64)
    rec = 16 + incl
    off = np.concatenate([[0], np.cumsum(rec)[:-1]])
    buf = np.zeros(int(rec.sum()), np.uint8)
    sec = np.floor(ts).astype(np.int64)
    usec = np.minimum(np.round((ts - sec) * 1e6).astype(np.int64), 999_999)
    rh = np.stack([sec, usec, incl, frame_len], axis=1).astype("<u4").view(np.uint8).reshape(n, 16)
    buf[(off[:, None] + np.arange(16)).ravel()] = rh.ravel()
    cols = np.arange(54)
    m = cols[None, :] < incl[:, None]
    idx = off[:, None] + 16 + cols[None, :]
    buf[idx[m]] = h[m]
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        fh.write(buf.tobytes())
    return n
