#!/usr/bin/env python
"""Benchmark: `trafficsnn extract` vs nfstream on the same generated capture, same run.

    python bench/bench_extract.py                 # 2 M packets, 20 000 flows: speed table
    python bench/bench_extract.py --memory        # + peak memory and bytes per live flow at 1 M flows
    python bench/bench_extract.py --packets 500000 --no-nfstream   # quick look

The capture is generated vectorised (Ethernet, IPv4 + IPv6, TCP + UDP, headers only,
snaplen 96) into a temporary folder. Every timing is wall-clock on one core
(OMP/BLAS threads pinned to 1; nfstream runs with n_meters=1); the CPU seconds are
shown too (on a shared machine they are the steadier number). Our output file is
deleted before each timed run (nfstream writes none). The CLI is timed after one
untimed run that leaves the bytecode cache an installed package has. Stages of our path are also
timed alone, best of 3 CPU time (read streamed, decode of the read batches, flow
table on pre-decoded batches) to show where the time goes.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


# --------------------------------------------------------------------------- capture generator
def _be(x: np.ndarray, nbytes: int) -> np.ndarray:
    """(n,) unsigned ints -> (n, nbytes) big-endian bytes."""
    x = x.astype(np.uint64)
    sh = np.arange(nbytes - 1, -1, -1, dtype=np.uint64) * np.uint64(8)
    return ((x[:, None] >> sh[None, :]) & np.uint64(0xFF)).astype(np.uint8)


def generate_capture(path: Path, n_packets: int = 2_000_000, n_flows: int = 20_000, duration: float = 600.0,
                     seed: int = 1, chunk: int = 250_000) -> dict:
    """Write a pcap of ``n_packets`` over ``n_flows`` bidirectional flows; returns a summary."""
    rng = np.random.default_rng(seed)
    # packets per flow: heavy-tailed, at least 2, summing to n_packets
    w = rng.pareto(1.2, n_flows) + 1.0
    per = np.maximum(2, np.floor(w / w.sum() * n_packets)).astype(np.int64)
    per[np.argmax(per)] += n_packets - per.sum()
    fid = np.repeat(np.arange(n_flows), per)
    v6 = rng.random(n_flows) < 0.3
    tcp = rng.random(n_flows) < 0.7
    start = rng.uniform(0, duration * 0.9, n_flows)
    length = np.minimum(rng.exponential(duration / 10, n_flows), duration - start)
    # per-packet time: start + sorted uniform offsets within the flow's lifetime
    u = rng.random(n_packets)
    off = np.concatenate(([0], np.cumsum(per)[:-1]))
    order_in = np.lexsort((u, fid))
    u = u[order_in]
    u[off] = 0.0
    ts = 1.7e9 + start[fid] + u * length[fid]
    pos = np.arange(n_packets) - off[fid]
    is_last = pos == per[fid] - 1
    rev = rng.random(n_packets) < 0.45
    rev[off] = False
    rev[off + 1] = True
    ctcp = tcp[fid]
    flags = np.where(ctcp, 0x18, 0).astype(np.uint8)          # PSH|ACK
    flags[off[tcp]] = 0x02                                     # SYN
    flags[(off + 1)[tcp]] = 0x12                               # SYN|ACK
    flags[is_last & ctcp] = 0x11                               # FIN|ACK (from one side only)
    payload = np.where(rng.random(n_packets) < 0.5, 0, rng.integers(1, 1400, n_packets))
    payload[flags == 0x02] = 0
    cport = rng.integers(1024, 65535, n_flows)
    sport_srv = rng.choice(np.array([443, 80, 53, 8080, 5060]), n_flows)
    cip4, sip4 = rng.integers(0x0A000000, 0x0AFFFFFF, n_flows), rng.integers(0xC0000000, 0xDFFFFFFF, n_flows)
    cip6 = rng.integers(0, 2**62, (n_flows, 2), dtype=np.int64).astype(np.uint64)
    sip6 = rng.integers(0, 2**62, (n_flows, 2), dtype=np.int64).astype(np.uint64)
    glob = np.argsort(ts, kind="stable")

    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 96, 1))
        for a in range(0, n_packets, chunk):
            idx = glob[a:a + chunk]
            f = fid[idx]
            n = len(idx)
            r, six, t_ = rev[idx], v6[f], ctcp[idx]
            l4h = np.where(t_, 20, 8)
            iph = np.where(six, 40, 20)
            ip_len = iph + l4h + payload[idx]
            cap = 14 + iph + l4h
            wire = 14 + ip_len
            rec = np.zeros((n, 16 + 14 + 40 + 20), np.uint8)
            tsv = ts[idx]
            sec = np.floor(tsv).astype(np.uint64)
            usec = np.round((tsv - sec) * 1e6).astype(np.uint64)
            rec[:, 0:4] = _be(sec, 4)[:, ::-1]
            rec[:, 4:8] = _be(usec, 4)[:, ::-1]
            rec[:, 8:12] = _be(cap, 4)[:, ::-1]
            rec[:, 12:16] = _be(wire, 4)[:, ::-1]
            e = 16
            rec[:, e:e + 6] = (0x02, 0, 0, 0, 0, 1)
            rec[:, e + 6:e + 12] = (0x02, 0, 0, 0, 0, 2)
            rec[:, e + 12:e + 14] = np.where(six[:, None], [[0x86, 0xDD]], [[0x08, 0x00]])
            ip = e + 14
            proto = np.where(t_, 6, 17).astype(np.uint64)
            sp = np.where(r, sport_srv[f], cport[f])
            dp = np.where(r, cport[f], sport_srv[f])
            # IPv4 rows
            m4 = ~six
            if m4.any():
                v4 = np.zeros((int(m4.sum()), 20), np.uint8)
                v4[:, 0] = 0x45
                v4[:, 2:4] = _be(ip_len[m4], 2)
                v4[:, 6] = 0x40
                v4[:, 8] = 64
                v4[:, 9] = proto[m4]
                a4 = np.where(r[m4], sip4[f[m4]], cip4[f[m4]])
                b4 = np.where(r[m4], cip4[f[m4]], sip4[f[m4]])
                v4[:, 12:16] = _be(a4, 4)
                v4[:, 16:20] = _be(b4, 4)
                rec[m4, ip:ip + 20] = v4
            m6 = six
            if m6.any():
                k = int(m6.sum())
                v = np.zeros((k, 40), np.uint8)
                v[:, 0] = 0x60
                v[:, 4:6] = _be(ip_len[m6] - 40, 2)
                v[:, 6] = proto[m6]
                v[:, 7] = 64
                ff = f[m6]
                rr = r[m6][:, None]
                src = np.where(rr, sip6[ff], cip6[ff])
                dst = np.where(rr, cip6[ff], sip6[ff])
                v[:, 8:16], v[:, 16:24] = _be(src[:, 0], 8), _be(src[:, 1], 8)
                v[:, 24:32], v[:, 32:40] = _be(dst[:, 0], 8), _be(dst[:, 1], 8)
                rec[m6, ip:ip + 40] = v
            l4 = ip + iph                                      # per-row L4 offset
            rows = np.arange(n)
            l4b = np.zeros((n, 20), np.uint8)
            l4b[:, 0:2] = _be(sp, 2)
            l4b[:, 2:4] = _be(dp, 2)
            tt = t_
            l4b[tt, 12] = 0x50
            l4b[tt, 13] = flags[idx][tt]
            l4b[tt, 14:16] = (0xFF, 0xFF)
            l4b[~tt, 4:6] = _be((ip_len - iph)[~tt], 2)
            cols = l4[:, None] + np.arange(20)[None, :]
            ok = np.arange(20)[None, :] < l4h[:, None]
            rec[np.broadcast_to(rows[:, None], cols.shape)[ok], cols[ok]] = l4b[ok]
            reclen = 16 + cap
            mask = np.arange(rec.shape[1])[None, :] < reclen[:, None]
            fh.write(rec[mask].tobytes())
    return {"packets": n_packets, "flows": n_flows, "bytes": path.stat().st_size,
            "ipv6_flows": int(v6.sum()), "tcp_flows": int(tcp.sum())}


# --------------------------------------------------------------------------- timings
def time_extract(pcap: Path, out: Path) -> dict:
    from trafficsnn.commands.extract import extract_files

    out.unlink(missing_ok=True)     # a repeat must not pay for the OS freeing the previous run's file
    gc.collect()
    t, c = time.perf_counter(), time.process_time()
    s = extract_files([str(pcap)], str(out), fmt="npz", progress=False, warn=lambda m: None)
    s["seconds"], s["cpu"] = time.perf_counter() - t, time.process_time() - c
    return s


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_cli(pcap: Path, out: Path, *, warm_up: bool = False) -> dict:
    """`trafficsnn extract` as a user runs it (a fresh process, imports included).

    ``warm_up``: an untimed run that may write the bytecode cache (``__pycache__``, as an
    installed package has), even where PYTHONDONTWRITEBYTECODE is set: otherwise every
    timed run would compile our modules from source, which no installed CLI does.
    """
    exe = Path(sys.executable).parent / "trafficsnn"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "trafficsnn.cli"]
    out.unlink(missing_ok=True)
    env = None
    if warm_up:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    c0, t = _children_cpu(), time.perf_counter()
    r = subprocess.run(cmd + ["extract", str(pcap), "-o", str(out), "-q"], capture_output=True, text=True,
                       env=env)
    wall, cpu = time.perf_counter() - t, _children_cpu() - c0
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    return {"seconds": wall, "cpu": cpu}


def time_stages(pcap: Path) -> dict:
    from trafficsnn.flows import FlowTable
    from trafficsnn.packets import Decoder, open_capture

    from trafficsnn.flows import Columnar

    out = {}
    best = float("inf")
    for _ in range(3):              # streamed, as extract reads (batches dropped as they go)
        t = time.process_time()
        for _f in open_capture(pcap):
            pass
        best = min(best, time.process_time() - t)
    out["read"] = best
    frames = list(open_capture(pcap))
    best = float("inf")
    for _ in range(3):
        dec = Decoder()
        t = time.process_time()
        batches = [dec.decode(f) for f in frames]
        best = min(best, time.process_time() - t)
    out["decode"] = best
    del frames
    gc.collect()
    best = float("inf")
    for _ in range(3):
        table = FlowTable(policy=Columnar())
        t = time.process_time()
        n = 0
        for b in batches:
            n += sum(len(x) for x in table.add(b))
        n += sum(len(x) for x in table.flush())
        best = min(best, time.process_time() - t)
    out["table"] = best
    out["flows"] = n
    return out


def time_nfstream(pcap: Path) -> dict:
    code = (
        "import time,sys\n"
        "from nfstream import NFStreamer\n"
        "t=time.perf_counter(); n=0; p=0\n"
        f"s=NFStreamer(source={str(pcap)!r}, n_dissections=0, statistical_analysis=False, splt_analysis=20, n_meters=1)\n"
        "for f in s:\n    n+=1; p+=f.bidirectional_packets\n"
        "print(time.perf_counter()-t, n, p)\n"
    )
    c0 = _children_cpu()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    cpu = _children_cpu() - c0
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    sec, n, p = r.stdout.split()[-3:]
    return {"seconds": float(sec), "cpu": cpu, "flows": int(n), "packets": int(p)}


def extract_peak_rss(pcap: Path, out: Path) -> float:
    """Peak RSS (MiB) of a `trafficsnn extract` subprocess on ``pcap``."""
    code = ("import sys\nfrom trafficsnn.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(_vmhwm_kib())\n")
    code = _VMHWM_SRC + code
    r = subprocess.run([sys.executable, "-c", code, "extract", str(pcap), "-o", str(out), "-q"],
                       capture_output=True, text=True)
    return int(r.stdout.split()[-1]) / 1024 if r.returncode == 0 else float("nan")


_VMHWM_SRC = (
    "def _vmhwm_kib():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            return int(line.split()[1])\n"
    "    return 0\n")


def _vmhwm_kib() -> int:
    """Peak RSS of this process image (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_at(n_flows: int = 1_000_000, packets_per_flow: int = 2, batch: int = 65536) -> dict:
    """Bytes per live flow with ``n_flows`` concurrent flows (no timeouts fire)."""
    import tracemalloc

    from trafficsnn.flows import FlowTable
    from trafficsnn.packets.batch import PacketBatch

    rng = np.random.default_rng(0)
    table = FlowTable(idle_timeout=3600, active_timeout=None, max_flows=None)
    rss0 = _vmhwm_kib()
    tracemalloc.start()
    t = time.perf_counter()
    n_total = n_flows * packets_per_flow
    keys = np.tile(np.arange(n_flows, dtype=np.uint64), packets_per_flow)
    for a in range(0, n_total, batch):
        k = keys[a:a + batch]
        m = len(k)
        pb = PacketBatch.from_columns(
            ts=1000.0 + a / n_total * 100 + np.arange(m) * 1e-6, src_hi=np.zeros(m, np.uint64),
            src_lo=0x0A000000 + (k >> np.uint64(16)), dst_hi=np.zeros(m, np.uint64), dst_lo=np.full(m, 0xC0A80001),
            sport=(k & np.uint64(0xFFFF)), dport=np.full(m, 443), proto=np.full(m, 17), ip_len=rng.integers(40, 1500, m),
            wire_len=np.full(m, 100), tcp_flags=np.zeros(m), vlan=np.zeros(m), ip_version=np.full(m, 4))
        table.add(pb)
    el = time.perf_counter() - t
    cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    live = len(table)
    return {"live_flows": live, "packets": n_total, "traced_bytes": cur, "traced_peak": peak,
            "bytes_per_flow": cur / max(live, 1), "table_estimate_per_flow": table.memory_bytes() / max(live, 1),
            "peak_rss_mib": _vmhwm_kib() / 1024,
            "rss_before_mib": rss0 / 1024, "seconds": el}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--flows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3, help="best of N for our extract")
    ap.add_argument("--no-nfstream", action="store_true")
    ap.add_argument("--memory", action="store_true", help="also measure memory at --live-flows concurrent flows")
    ap.add_argument("--live-flows", type=int, default=1_000_000)
    ap.add_argument("--keep", metavar="DIR", help="write the capture here and keep it")
    ap.add_argument("--_memory-child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._memory_child:                     # a clean process: its peak RSS is the table's alone
        print(json.dumps(memory_at(a._memory_child)))
        return

    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        d = Path(a.keep or tmp)
        d.mkdir(parents=True, exist_ok=True)
        pcap = d / "bench.pcap"
        t = time.perf_counter()
        info = generate_capture(pcap, a.packets, a.flows)
        print(f"capture: {info['packets']:,} packets, {info['flows']:,} flows ({info['tcp_flows']:,} TCP, "
              f"{info['ipv6_flows']:,} IPv6), {info['bytes'] / 2**20:.0f} MiB, generated in "
              f"{time.perf_counter() - t:.1f} s")
        runs = [time_extract(pcap, d / "flows.npz") for _ in range(max(1, a.repeat))]
        ours = min(runs, key=lambda s: s["seconds"])
        st = time_stages(pcap)
        time_cli(pcap, d / "flows_cli.npz", warm_up=True)
        cli = min((time_cli(pcap, d / "flows_cli.npz") for _ in range(max(1, a.repeat))),
                  key=lambda s: s.get("seconds", float("inf")))
        nf = None if a.no_nfstream else time_nfstream(pcap)
        rss = extract_peak_rss(pcap, d / "flows2.npz")

        n = info["packets"]
        rows = [("trafficsnn extract, in-process (best of %d)" % len(runs), ours["seconds"], ours["cpu"], ours["flows"])]
        if "error" not in cli:
            rows.append(("trafficsnn extract, CLI process (best of %d)" % max(1, a.repeat), cli["seconds"], cli["cpu"], ours["flows"]))
        if nf and "error" not in nf:
            rows.append(("nfstream (n_dissections=0, splt 20, 1 meter)", nf["seconds"], nf["cpu"], nf["flows"]))
        print()
        print(f"| {'tool':<46} | {'wall s':>7} | {'CPU s':>7} | {'packets/s (wall)':>16} | {'packets/CPU-s':>13} | {'flows':>7} |")
        print(f"|{'-' * 48}|{'-' * 8}:|{'-' * 8}:|{'-' * 17}:|{'-' * 14}:|{'-' * 8}:|")
        for name, sec, cpu, fl in rows:
            print(f"| {name:<46} | {sec:7.2f} | {cpu:7.2f} | {n / sec:16,.0f} | {n / cpu:13,.0f} | {fl:7,} |")
        if nf and "error" not in nf:
            print(f"\nratio trafficsnn / nfstream, packets/s: {nf['seconds'] / ours['seconds']:.1f}x wall in-process, "
                  f"{nf['seconds'] / cli.get('seconds', float('nan')):.1f}x wall CLI; per CPU-second "
                  f"{nf['cpu'] / ours['cpu']:.1f}x in-process, {nf['cpu'] / cli.get('cpu', float('nan')):.1f}x CLI")
        elif nf:
            print(f"\nnfstream failed: {nf['error']}")
        print(f"\nour stages alone (CPU time, best of 3): read {n / st['read']:,.0f} pkt/s, decode {n / st['decode']:,.0f} pkt/s, "
              f"flow table {n / st['table']:,.0f} pkt/s ({st['read']:.2f} + {st['decode']:.2f} + "
              f"{st['table']:.2f} s; writing the .npz is the rest)")
        print(f"peak RSS of `trafficsnn extract` on this capture: {rss:,.0f} MiB")
        from trafficsnn.flows import FlowTable
        from trafficsnn.packets import kernel

        print(f"kernels: flow table {FlowTable().kernel}, reader/decoder {'c' if kernel.enabled() else 'numpy'} "
              f"(TRAFFICSNN_FLOWS_KERNEL={os.environ.get('TRAFFICSNN_FLOWS_KERNEL', '') or 'auto'})")
        if a.memory:
            r = subprocess.run([sys.executable, __file__, "--_memory-child", str(a.live_flows)],
                               capture_output=True, text=True, check=True)
            m = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"\nmemory with {m['live_flows']:,} concurrent flows ({m['packets']:,} packets stored): "
                  f"{m['bytes_per_flow']:,.0f} B/flow traced by tracemalloc "
                  f"({m['traced_bytes'] / 2**20:,.0f} MiB, peak {m['traced_peak'] / 2**20:,.0f} MiB); "
                  f"table estimate {m['table_estimate_per_flow']:,.0f} B/flow; process peak RSS "
                  f"{m['peak_rss_mib']:,.0f} MiB ({m['rss_before_mib']:,.0f} MiB before the table); "
                  f"{m['packets'] / m['seconds']:,.0f} pkt/s into the table (under tracemalloc)")


if __name__ == "__main__":
    main()
