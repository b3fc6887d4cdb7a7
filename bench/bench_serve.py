"""End-to-end serving benchmark: capture agent -> ZeroMQ ipc:// -> classifier daemon, two processes.

Runs (each prints one row of the table):
  top-speed   the pcap as fast as the agent reads it, lossless (waits for the classifier):
              end-to-end packets/s
  paced       the pcap replayed at a fixed packet rate (--rate, default 300k/s; the agent's --pps),
              drops allowed:
              packets/s, dropped updates, verdict latency p50/p99
  live        the same pcap sent by tcpreplay --topspeed onto loopback, captured live (-i lo)
  1M-flows    one million distinct flows (2 packets each, all alive at once): peak RSS stays bounded

Latency is measured per verdict from the wall-clock time the agent read the
update's last packet to the time the classifier made the verdict (same host
clock). Peak RSS is each process's VmHWM. Usage:

    nice python bench/bench_serve.py                 # 1 M packets, all three runs
    python bench/bench_serve.py --packets 200000 --flows-run 100000   # quick
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trafficsnn.serve.demo import make_random_model, write_demo_pcap  # noqa: E402


def _hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class PeakRSS(threading.Thread):
    """Polls VmHWM (the kernel's own peak) of a process until it exits."""

    def __init__(self, proc: subprocess.Popen):
        super().__init__(daemon=True)
        self.proc, self.peak = proc, 0.0

    def run(self) -> None:
        while self.proc.poll() is None:
            v = _hwm_mb(self.proc.pid)
            if v == v:
                self.peak = max(self.peak, v)
            time.sleep(0.05)


_ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _start_classifier(ep: str, model: Path, out: Path, err: Path, classify_args: list[str]) -> subprocess.Popen:
    """``trafficsnn classify`` on one CPU thread, verdicts to ``out``, exiting after the agent's end of stream."""
    return subprocess.Popen([sys.executable, "-m", "trafficsnn.cli", "classify", "--bind", ep, "--model", str(model),
                             "--device", "cpu", "--threads", "1", "--jsonl", str(out), "--exit-after-eos", "1",
                             *classify_args], stdout=subprocess.DEVNULL, stderr=open(err, "w"), env=_ENV)


def run_pipeline(pcap: Path, model: Path, tmp: Path, *, pps: float | None, lossless: bool,
                 classify_args: list[str], capture_args: list[str], label: str) -> dict:
    slug = "".join(c if c.isalnum() else "_" for c in label)
    ep = f"ipc://{tmp}/{slug}.sock"
    out = tmp / f"{slug}.jsonl"
    cerr, aerr = tmp / f"{slug}.classify.err", tmp / f"{slug}.capture.err"
    cls = _start_classifier(ep, model, out, cerr, classify_args)
    time.sleep(3.0)  # torch import and model load, so the clock starts with a ready classifier
    cmd = [sys.executable, "-m", "trafficsnn.cli", "capture", "--pcap", str(pcap), "--connect", ep,
           "--sensor", "bench", *capture_args]
    if pps:
        cmd += ["--pps", str(pps)]
    if lossless:
        cmd += ["--lossless"]
    t0 = time.time()
    cap = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(aerr, "w"), env=_ENV)
    mc, ma = PeakRSS(cls), PeakRSS(cap)
    mc.start()
    ma.start()
    cap.wait()
    t_cap = time.time() - t0
    cls.wait(timeout=3600)
    mc.join()
    ma.join()
    cstats = _last_json(cerr, "classify")
    astats = _last_json(aerr, "capture")
    lat = []
    t_last, t_first = t0, float("inf")
    with open(out) as fh:
        for line in fh:
            v = json.loads(line)
            t_last = max(t_last, v["verdict_ts"])
            if "latency_ms" in v:
                # the agent read this update's last packet at verdict_ts - latency
                t_first = min(t_first, v["verdict_ts"] - v["latency_ms"] / 1e3)
                if v["reason"] != "eof":
                    lat.append(v["latency_ms"])
    # from the first packet read (not the agent's start-up) to the last verdict
    wall = t_last - min(t_first, t_last)
    lat_a = np.array(lat) if lat else np.array([np.nan])
    return {
        "load": os.getloadavg()[0],
        "run": label,
        "packets": astats["packets"],
        "flows": astats.get("flows_created", 0),
        "seconds": wall,
        "capture_s": t_cap,
        "pps": astats["packets"] / wall if wall > 0 else float("nan"),
        "updates_sent": astats["updates_sent"],
        "updates_dropped": astats["updates_dropped"],
        "packets_dropped": astats["packets_dropped"],
        "classified_packets": cstats["counters"].get("packets", 0),
        "verdicts": cstats["counters"].get("verdicts", 0),
        "state_evicted": cstats["counters"].get("state_evicted", 0),
        "lat_p50_ms": float(np.percentile(lat_a, 50)),
        "lat_p99_ms": float(np.percentile(lat_a, 99)),
        "lat_n": len(lat),
        "rss_capture_mb": max(ma.peak, _hwm_mb(cap.pid)),
        "rss_classify_mb": mc.peak,
    }


def run_live(n_live: int, model: Path, tmp: Path, classify_args: list[str]) -> dict | None:
    """tcpreplay --topspeed onto loopback, captured live by the agent (-i lo), classified."""
    import shutil
    import signal

    from trafficsnn.packets.live import can_capture

    ok, why = can_capture("lo")
    if not ok or not shutil.which("tcpreplay"):
        print(f"live run skipped: {why or 'tcpreplay not installed (apt-get install tcpreplay)'}", file=sys.stderr)
        return None
    full = tmp / "live.pcap"  # real frame lengths: what goes on the wire must be consistent
    write_demo_pcap(full, n_flows=max(1, n_live // 25), packets_per_flow=25, duration=20.0, seed=3, heavy=True,
                    full=True)
    ep = f"ipc://{tmp}/live.sock"
    out = tmp / "live.jsonl"
    cerr, aerr = tmp / "live.classify.err", tmp / "live.capture.err"
    cls = _start_classifier(ep, model, out, cerr, classify_args)
    cap = subprocess.Popen([sys.executable, "-m", "trafficsnn.cli", "capture", "-i", "lo", "-f", "udp or tcp",
                            "--connect", ep, "--sensor", "live"], stdout=subprocess.DEVNULL,
                           stderr=open(aerr, "w"), env=_ENV)
    mc, ma = PeakRSS(cls), PeakRSS(cap)
    mc.start()
    ma.start()
    time.sleep(4.0)
    rep = subprocess.run(["tcpreplay", "-i", "lo", "--topspeed", str(full)], capture_output=True, text=True)
    time.sleep(1.5)
    cap.send_signal(signal.SIGTERM)
    cap.wait(timeout=120)
    cls.wait(timeout=600)
    mc.join()
    ma.join()
    a = _last_json(aerr, "capture")
    c = _last_json(cerr, "classify")
    lat = [v["latency_ms"] for v in map(json.loads, open(out)) if "latency_ms" in v and v["reason"] != "eof"]
    lat_a = np.array(lat) if lat else np.array([np.nan])
    sent = next((int(ln.split()[1]) for ln in rep.stdout.splitlines() if ln.strip().startswith("Actual:")), 0)
    rate = next((ln.split(",")[-1].strip() for ln in rep.stdout.splitlines() if "Rated:" in ln), "?")
    return {"load": os.getloadavg()[0], "run": f"live lo (tcpreplay {rate})", "packets": a["packets"], "flows": a.get("flows_created", 0),
            "pps": float("nan"), "updates_sent": a["updates_sent"], "updates_dropped": a["updates_dropped"],
            "packets_dropped": a["packets_dropped"], "lat_p50_ms": float(np.percentile(lat_a, 50)),
            "lat_p99_ms": float(np.percentile(lat_a, 99)),
            "rss_capture_mb": ma.peak, "rss_classify_mb": mc.peak, "state_evicted": 0,
            "note": f"tcpreplay sent {sent}, agent captured {a['packets']}, kernel drops {a.get('kernel_drops')}, "
                    f"classified {c['counters'].get('packets', 0)} packets"}


def _last_json(path: Path, key: str) -> dict:
    for line in reversed(path.read_text().splitlines()):
        if line.startswith("{") and f'"{key}"' in line:
            return json.loads(line)[key]
    raise SystemExit(f"{path} has no final counters:\n{path.read_text()[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=1_000_000, help="packets in the throughput/latency runs")
    ap.add_argument("--flows", type=int, default=40_000, help="flows in the throughput/latency runs")
    ap.add_argument("--rate", type=float, default=300_000, help="packets/s of the paced run")
    ap.add_argument("--flows-run", type=int, default=1_000_000, help="distinct flows of the memory run (0 = skip)")
    ap.add_argument("--model", type=Path, default=None, help="model dir (default: a random model)")
    ap.add_argument("--runs", default="top,paced,live,flows")
    ap.add_argument("--live-packets", type=int, default=300_000, help="packets tcpreplay sends in the live run")
    ap.add_argument("--batch-ms", type=float, default=10.0, help="classifier micro-batch wait")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    runs = set(args.runs.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as t:
        tmp = Path(t)
        model = args.model or make_random_model(tmp / "model")
        ppf = max(1, args.packets // args.flows)
        duration = 60.0
        pcap = tmp / "load.pcap"
        n = write_demo_pcap(pcap, n_flows=args.flows, packets_per_flow=ppf, duration=duration, spread=duration,
                            seed=1, heavy=True)
        if n < args.packets:  # heavy-tailed sizes: top up to at least the asked number of packets
            ppf = int(np.ceil(ppf * args.packets / n * 1.02))
            n = write_demo_pcap(pcap, n_flows=args.flows, packets_per_flow=ppf, duration=duration,
                                spread=duration, seed=1, heavy=True)


        common_c = ["--emit", "first", "--min-confidence", "0", "--batch", "4096", "--batch-ms", str(args.batch_ms),
                    "--rcvhwm", "1000"]
        if "top" in runs:
            rows.append(run_pipeline(pcap, model, tmp, pps=None, lossless=True, classify_args=common_c,
                                     capture_args=["--hwm", "1000"], label="top-speed"))
        if "paced" in runs:
            rows.append(run_pipeline(pcap, model, tmp, pps=args.rate, lossless=False,
                                     classify_args=common_c, capture_args=["--hwm", "1000"],
                                     label=f"paced {args.rate / 1e3:.0f}k/s"))
        if "live" in runs:
            r = run_live(args.live_packets, model, tmp, common_c)
            if r:
                rows.append(r)
        if "flows" in runs and args.flows_run:
            big = tmp / "flows.pcap"
            write_demo_pcap(big, n_flows=args.flows_run, packets_per_flow=2, duration=1.0, spread=100.0, seed=2)
            rows.append(run_pipeline(big, model, tmp, pps=None, lossless=True,
                                     classify_args=[*common_c, "--max-flows", "250000"],
                                     capture_args=["--hwm", "1000", "--max-flows", "1000000"],
                                     label=f"{args.flows_run / 1e6:g}M flows"))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    hdr = ("run", "packets", "flows", "pkt/s e2e", "upd sent", "upd drop", "pkt drop", "lat p50 ms",
           "lat p99 ms", "RSS cap MB", "RSS cls MB", "evicted", "load avg")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        print(f"| {r['run']} | {r['packets']:,} | {r['flows']:,} | {r['pps']:,.0f} | {r['updates_sent']:,} | "
              f"{r['updates_dropped']:,} | {r['packets_dropped']:,} | {r['lat_p50_ms']:.1f} | {r['lat_p99_ms']:.1f} | "
              f"{r['rss_capture_mb']:.0f} | {r['rss_classify_mb']:.0f} | {r['state_evicted']:,} | "
              f"{r.get('load', float('nan')):.1f} |")
    for r in rows:
        if r.get("note"):
            print(f"\n{r['run']}: {r['note']}")
    print(f"\n(cpu count {os.cpu_count()}; latency over first verdicts of flows, emit=first/min-confidence 0)")


if __name__ == "__main__":
    main()
