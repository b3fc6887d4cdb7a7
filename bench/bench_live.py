"""Live capture under real load: trafgen -> loopback of a private network namespace -> capture.

Every run sends a fixed number of UDP packets with trafgen (netsniff-ng) onto the
loopback of a network namespace this script creates (and removes at the end), while
``trafficsnn capture`` and ``tcpdump`` capture the very same packets side by side.
For each run it prints offered packets/s, packets captured, kernel drops and capture
CPU-seconds per million packets (user + system of the capture process and its
workers, from /proc, from just before the load
starts until both have drained it: start-up and shutdown left out), for trafficsnn and tcpdump. A ZeroMQ PULL sink in this
process drains the agent's updates (a real consumer, not dropped sends).

Mixes: about 100 flows (source ports 10000..10099) and about 50 k flows
(10000..59999), 60-byte frames. Paths: the ring with 1 and 2 workers, the old
socket path (--no-ring). Generator: trafgen's top speed with 1 and 2 threads, and
a fixed rate. Then the drain micro-benchmark: the ring parser on pre-filled blocks.

Needs root (network namespace, raw sockets), trafgen and tcpdump. Usage:

    python bench/bench_live.py                 # every run, ~2 minutes
    python bench/bench_live.py --quick         # one run per path, fewer packets
    python bench/bench_live.py --drain-only    # the parser alone (no privileges)
    python bench/bench_live.py --paths ring-1 --no-extra --e2e   # 1 worker, both mixes, + end to end

The end-to-end rows (--e2e) add the classifier: trafgen -> `trafficsnn capture -i lo` ->
ZeroMQ -> `trafficsnn classify` (the shipped model on the CPU, one thread), with every packet
accounted: kernel drops, agent send drops, the classifier's caps, received; see ``ledger``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NS = f"tsnn-bench-{os.getpid()}"


def ns(cmd: list[str]) -> list[str]:
    return ["ip", "netns", "exec", NS] + cmd


def wait_rusage(p: subprocess.Popen, timeout: float = 60) -> float:
    """CPU seconds (user + system) of a child and the children it waited for."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return ru.ru_utime + ru.ru_stime
        if time.monotonic() > deadline:
            p.kill()
        time.sleep(0.02)


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) so far of a process and all its descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tick
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(x) for x in (t / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


def settle(pids: list[int], limit: float = 15.0) -> None:
    """Wait until the capture processes go idle (their backlog drained), at most ``limit`` s."""
    last, quiet, t0 = None, 0, time.monotonic()
    while time.monotonic() - t0 < limit and quiet < 3:
        time.sleep(0.2)
        now = [tree_cpu(p) for p in pids]
        if last is not None and all(b - a < 0.02 for a, b in zip(last, now)):
            quiet += 1
        else:
            quiet = 0
        last = now


def trafgen_cfg(path: Path, flows: int, dport: int = 9000) -> None:
    path.write_text("{ eth(da=00:00:00:00:00:00, sa=00:00:00:00:00:00, type=0x0800), "
                    "ipv4(saddr=127.0.0.1, daddr=127.0.0.1, ttl=64), "
                    f"udp(sp=dinc(10000, {10000 + flows - 1}, 1), dp={dport}), fill(0x41, 18) }}\n")


class Sink(threading.Thread):
    def __init__(self, ep: str):
        super().__init__(daemon=True)
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.bind(ep)
        self.msgs = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            if self.sock.poll(100):
                self.sock.recv_multipart(copy=False)
                self.msgs += 1

    def close(self) -> None:
        self.done.set()
        self.join()
        self.sock.close(0)
        self.ctx.term()


def one_run(tmp: Path, *, flows: int, packets: int, path: str, threads: int = 1, rate: str | None = None,
            batch_wait: int | None = None) -> dict:
    cfg = tmp / f"tg{flows}.cfg"
    trafgen_cfg(cfg, flows)
    ep = f"ipc://{tmp}/u"
    sink = Sink(ep)
    sink.start()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cap_args = ["-i", "lo", "-f", "udp", "--connect", ep, "--sensor", "bench", "--hwm", "100000"]
    if path == "socket":
        cap_args.append("--no-ring")
    elif path.startswith("ring-"):
        cap_args += ["--workers", path.split("-")[1]]
    if batch_wait is not None:
        cap_args += ["--batch-wait", str(batch_wait)]
    cap = subprocess.Popen(ns([sys.executable, "-m", "trafficsnn.cli", "capture", *cap_args]),
                           stderr=subprocess.PIPE, text=True, env=env)
    tcpd = subprocess.Popen(ns(["tcpdump", "-i", "lo", "-n", "-s", "96", "-B", "65536", "-w", "/dev/null", "udp"]),
                            stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)  # both capturing (python start-up, imports, ring set-up)
    tg = ["trafgen", "-o", "lo", "-i", str(cfg), "-n", str(packets), "-P", str(threads),
          "--no-sock-mem", "--notouch-irq", "--no-cpu-stats"]
    if rate:
        tg += ["-b", rate]
    settle([cap.pid, tcpd.pid], limit=5.0)
    cpu0 = tree_cpu(cap.pid), tree_cpu(tcpd.pid)
    t0 = time.monotonic()
    r = subprocess.run(ns(tg), capture_output=True, text=True, timeout=120)
    gen_s = time.monotonic() - t0
    settle([cap.pid, tcpd.pid])  # both drain their backlog
    # CPU while the load ran and drained: start-up (imports, ring set-up) and shutdown left out
    cap_cpu, td_cpu = tree_cpu(cap.pid) - cpu0[0], tree_cpu(tcpd.pid) - cpu0[1]
    for p in (cap, tcpd):
        os.kill(p.pid, signal.SIGTERM)  # ip netns exec execs the command: this is the process itself
    wait_rusage(cap)
    cap_err = cap.stderr.read()
    wait_rusage(tcpd)
    td_err = tcpd.stderr.read()
    sink.close()
    out = json.loads(cap_err.strip().splitlines()[-1]) if cap_err.strip().startswith("{") or "{" in cap_err else {}
    c = out.get("capture", {})
    m = re.search(r"(\d+) packets captured", td_err)
    d = re.search(r"(\d+) packets dropped by kernel", td_err)
    td_cap, td_drop = (int(m.group(1)) if m else -1), (int(d.group(1)) if d else -1)
    row = {
        "flows": flows, "path": path + ("" if batch_wait is None else f", --batch-wait {batch_wait}"),
        "gen_threads": threads, "rate": rate or "top",
        "offered": packets, "offered_pps": packets / gen_s if gen_s > 0 else 0.0, "trafgen_rc": r.returncode,
        "captured": c.get("packets", -1), "kernel_drops": c.get("kernel_drops", -1),
        "cpu_s_per_M": cap_cpu / max(c.get("packets", 0), 1) * 1e6, "live_path": out.get("live_path"),
        "updates_sent": c.get("updates_sent", 0), "updates_dropped": c.get("updates_dropped", 0),
        "tcpdump_captured": td_cap, "tcpdump_drops": td_drop,
        "tcpdump_cpu_s_per_M": td_cpu / max(td_cap, 1) * 1e6,
    }
    if r.returncode != 0:
        row["trafgen_err"] = r.stderr[-300:]
    return row


def ledger(offered: int, cap: dict, cls: dict) -> dict:
    """Where every offered packet went, from the agent's and the classifier's final counters.

    offered = kernel drops + agent send drops + dropped by the classifier's message caps
              + received by the classifier's engine + unaccounted (lost in transport uncounted: must be 0);
    received = classified (advanced a flow's network) + beyond the model's window (by design: a
              flow is classified from its first n_steps packets) + refused (state table full)."""
    c, drops = cls.get("counters", {}), cls.get("drops", {})
    received = int(c.get("packets", 0))
    oversize = int(c.get("oversize_packets_dropped", 0))
    after = int(c.get("packets_after_window", 0)) + int(c.get("packets_late", 0))
    refused = int(c.get("packets_refused_state_full", 0))
    out = {
        "offered": offered, "kernel_drops": int(cap.get("kernel_drops", 0)), "captured": int(cap.get("packets", 0)),
        "non_ip": int(cap.get("non_ip", 0)),
        "agent_send_dropped": int(cap.get("packets_dropped", 0)), "agent_sent": int(cap.get("packets_sent", 0)),
        "classifier_oversize_dropped": oversize, "classifier_received": received,
        "classified": received - after - refused, "beyond_model_window": after, "state_full_refused": refused,
        "gap_packets_seen": int(drops.get("gap_packets", 0)), "verdicts": int(c.get("verdicts", 0)),
        "classifier_flows": int(c.get("flows", 0)),
    }
    out["unaccounted"] = (offered - out["kernel_drops"] - out["agent_send_dropped"] - oversize - received)
    out["adds_up"] = (out["unaccounted"] == 0 and out["captured"] + out["kernel_drops"] == offered
                      and out["agent_sent"] + out["agent_send_dropped"] == out["captured"]
                      and out["agent_sent"] == received + oversize)
    return out


def e2e_run(tmp: Path, *, flows: int, packets: int, model: Path, rate: str | None = None, warm: int = 2000,
            emit: str = "update") -> dict:
    """trafgen -> `trafficsnn capture -i lo` -> ZeroMQ ipc -> `trafficsnn classify` (shipped model, CPU, 1 thread).

    Every packet accounted (see ``ledger``); packets/s end to end = packets the classifier
    received / (trafgen start -> both processes idle); verdict latency from the verdict
    JSON lines (the agent's wall clock when it read the update's last packet -> the verdict;
    --emit update: a verdict per update, or --emit first --min-confidence 0: each flow's first update;
    flows flushed at shutdown left out). ``warm`` packets of
    other flows go first, so the classifier's first-call set-up is not timed (they are offered,
    counted and accounted like the rest; their verdicts are left out of the latency)."""
    import numpy as np

    cfg = tmp / f"tg{flows}.cfg"
    trafgen_cfg(cfg, flows)
    ep = f"ipc://{tmp}/e2e{flows}.sock"
    out, cerr = tmp / f"e2e{flows}.jsonl", tmp / f"e2e{flows}.classify.err"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cls = subprocess.Popen([sys.executable, "-m", "trafficsnn.cli", "classify", "--bind", ep, "--model", str(model),
                            "--device", "cpu", "--threads", "1", "--jsonl", str(out), "--exit-after-eos", "1",
                            "--batch-ms", "10", "--emit", emit] + (["--min-confidence", "0"] if emit == "first" else []),
                           stdout=subprocess.DEVNULL, stderr=open(cerr, "w"), env=env)
    time.sleep(4.0)  # torch import and model load
    cap = subprocess.Popen(ns([sys.executable, "-m", "trafficsnn.cli", "capture", "-i", "lo", "-f", "udp",
                               "--connect", ep, "--sensor", "e2e"]), stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(2.5)
    tg = ["trafgen", "-o", "lo", "-P", "1", "--no-sock-mem", "--notouch-irq", "--no-cpu-stats"]
    wcfg = tmp / "warm.cfg"
    trafgen_cfg(wcfg, 50, dport=9001)
    subprocess.run(ns(tg + ["-i", str(wcfg), "-n", str(warm), "-b", "20000pps"]), capture_output=True, timeout=60)
    settle([cap.pid, cls.pid], limit=10.0)
    cpu0 = tree_cpu(cap.pid), tree_cpu(cls.pid)
    tg += ["-i", str(cfg), "-n", str(packets)] + (["-b", rate] if rate else [])
    t_load = time.time()
    t0 = time.monotonic()
    r = subprocess.run(ns(tg), capture_output=True, text=True, timeout=120)
    gen_s = time.monotonic() - t0
    settle([cap.pid, cls.pid], limit=120.0)
    busy_s = time.monotonic() - t0 - 0.6  # settle ends after 3 quiet polls of 0.2 s
    cap_cpu, cls_cpu = tree_cpu(cap.pid) - cpu0[0], tree_cpu(cls.pid) - cpu0[1]
    os.kill(cap.pid, signal.SIGTERM)
    wait_rusage(cap)
    cap_err = cap.stderr.read()
    try:
        cls.wait(timeout=60)  # it exits after the agent's end of stream
    except subprocess.TimeoutExpired:  # the end-of-stream message itself was dropped: stop it (drains, exits 0)
        cls.send_signal(signal.SIGTERM)
        cls.wait(timeout=60)
    c = json.loads(next(ln for ln in reversed(cap_err.splitlines()) if ln.startswith("{")))["capture"]
    k = next(json.loads(ln)["classify"] for ln in reversed(cerr.read_text().splitlines()) if ln.startswith("{"))
    lat = [v["latency_ms"] for v in map(json.loads, out.read_text().splitlines())
           if "latency_ms" in v and v.get("reason") != "eof" and v["verdict_ts"] - v["latency_ms"] / 1e3 >= t_load]
    la = np.array(lat) if lat else np.array([np.nan])
    row = {"flows": flows, "rate": rate or "top", "emit": emit, "offered_pps": packets / gen_s if gen_s > 0 else 0.0,
           "trafgen_rc": r.returncode, "warm_up": warm, **ledger(warm + packets, c, k),
           "e2e_pps": k.get("counters", {}).get("packets", 0) / busy_s if busy_s > 0 else 0.0,
           "capture_cpu_s_per_M": cap_cpu / max(c.get("packets", 0), 1) * 1e6, "classify_cpu_s": cls_cpu,
           "lat_p50_ms": float(np.percentile(la, 50)), "lat_p99_ms": float(np.percentile(la, 99)), "lat_n": len(lat),
           "load": os.getloadavg()[0]}
    return row


def drain_bench(seconds: float = 2.0) -> list[dict]:
    """The ring parser alone on pre-filled kernel-shaped blocks (1 MiB, 60- and 200-byte frames),
    as RingSource.read() runs it: parse and copy out each block, build the FrameBatch."""
    import numpy as np

    from trafficsnn.packets.ring import RingSource, build_block, parse_block

    rows = []
    for size in (60, 200):
        blocks = [build_block(frame=bytes(size), n=100_000) for _ in range(8)]
        per = len(parse_block(blocks[0], 1)[1])
        src = RingSource.__new__(RingSource)  # only the batch builder, no socket
        src.frames = src.bytes = 0
        src.linktype = 1
        n = 0
        t0 = time.process_time()
        while time.process_time() - t0 < seconds:
            for i in range(0, 8, 4):  # read() hands over up to several blocks per call
                fb = src._batch([parse_block(b, 1, copy=True) for b in blocks[i:i + 4]])
                n += len(fb)
        dt = time.process_time() - t0
        assert isinstance(fb.data, np.ndarray)
        rows.append({"frame_bytes": size, "frames_per_block": per, "frames": n, "cpu_s": dt,
                     "mpps_per_core": n / dt / 1e6})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=1_500_000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--drain-only", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--mixes", default="100,50000", help="flow mixes to run (comma-separated)")
    ap.add_argument("--paths", default="ring-1,ring-2,socket",
                    help="capture paths of the top-speed runs (the 2-thread and fixed-rate rows run with ring-1)")
    ap.add_argument("--no-extra", action="store_true", help="leave out the 2-thread and fixed-rate rows")
    ap.add_argument("--batch-wait", type=int, default=None, metavar="MS",
                    help="pass --batch-wait MS to the ring runs (default: the agent's)")
    ap.add_argument("--e2e", action="store_true", help="also the live end-to-end rows (capture -> classify)")
    ap.add_argument("--e2e-only", action="store_true", help="only the live end-to-end rows")
    ap.add_argument("--e2e-packets", type=int, default=600_000)
    ap.add_argument("--e2e-rates", default="top",
                    help="trafgen rates of the end-to-end rows, comma-separated: top or trafgen's -b (40000pps)")
    ap.add_argument("--e2e-emit", choices=("update", "first"), default="update",
                    help="classifier verdicts: one per update, or each flow's first (latency of first verdicts)")
    ap.add_argument("--model", type=Path, default=REPO / "models" / "ndpi6-snn", help="classifier model (e2e)")
    a = ap.parse_args()
    rows: list[dict] = []
    e2e: list[dict] = []
    if not a.drain_only:
        for tool in ("trafgen", "tcpdump", "ip"):
            if not shutil.which(tool):
                sys.exit(f"bench_live: {tool} not found (Debian: apt-get install netsniff-ng tcpdump iproute2)")
        if os.geteuid() != 0:
            sys.exit("bench_live: needs root (network namespace, raw sockets); --drain-only runs without")
        subprocess.run(["ip", "netns", "add", NS], check=True)
        try:
            subprocess.run(ns(["ip", "link", "set", "lo", "up"]), check=True)
            with tempfile.TemporaryDirectory() as td:
                tmp = Path(td)
                plan = [(100, "ring-1", 1, None), (100, "ring-2", 1, None), (100, "socket", 1, None),
                        (50_000, "ring-1", 1, None), (50_000, "ring-2", 1, None), (50_000, "socket", 1, None),
                        (100, "ring-1", 2, None), (50_000, "ring-1", 2, None),
                        (100, "ring-1", 1, "200000pps"), (100, "socket", 1, "200000pps")]
                mixes, paths = {int(x) for x in a.mixes.split(",")}, set(a.paths.split(","))
                plan = [p for i, p in enumerate(plan) if p[0] in mixes and p[1] in paths
                        and not (a.no_extra and i >= 6)]
                if a.quick:
                    plan = plan[:3]
                if a.e2e_only:
                    plan = []
                n = a.packets // (3 if a.quick else 1)
                for flows, path, threads, rate in plan:
                    row = one_run(tmp, flows=flows, packets=n, path=path, threads=threads, rate=rate,
                                  batch_wait=a.batch_wait if path != "socket" else None)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                if a.e2e or a.e2e_only:
                    for rate in a.e2e_rates.split(","):
                        for flows in sorted(mixes):
                            row = e2e_run(tmp, flows=flows, packets=a.e2e_packets, model=a.model,
                                          rate=None if rate == "top" else rate, emit=a.e2e_emit)
                            e2e.append(row)
                            print(json.dumps({"e2e": row}), flush=True)
        finally:
            subprocess.run(["ip", "netns", "del", NS])
    drain = drain_bench()
    for d in drain:
        print(json.dumps({"drain": d}), flush=True)
    print()
    print("| flows | capture | gen threads | rate | offered pkt/s | captured | kernel drops | CPU s / M pkt "
          "| tcpdump captured | tcpdump drops | tcpdump CPU s / M |")
    print("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['flows']:,} | {r['path']} | {r['gen_threads']} | {r['rate']} | {r['offered_pps']:,.0f} "
              f"| {r['captured']:,} / {r['offered']:,} | {r['kernel_drops']:,} | {r['cpu_s_per_M']:.2f} "
              f"| {r['tcpdump_captured']:,} | {r['tcpdump_drops']:,} | {r['tcpdump_cpu_s_per_M']:.2f} |")
    if e2e:
        print()
        print("| flows | rate | offered pkt/s | offered | kernel drops | agent send drops | classifier caps dropped "
              "| classifier received | classified | beyond model window | state full | unaccounted | adds up "
              "| e2e pkt/s | verdicts | latency p50 ms | p99 ms | capture CPU s / M |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
        for r in e2e:
            print(f"| {r['flows']:,} | {r['rate']}, emit {r['emit']} | {r['offered_pps']:,.0f} | {r['offered']:,} | {r['kernel_drops']:,} "
                  f"| {r['agent_send_dropped']:,} | {r['classifier_oversize_dropped']:,} | {r['classifier_received']:,} "
                  f"| {r['classified']:,} | {r['beyond_model_window']:,} | {r['state_full_refused']:,} "
                  f"| {r['unaccounted']:,} | {'yes' if r['adds_up'] else 'NO'} | {r['e2e_pps']:,.0f} "
                  f"| {r['verdicts']:,} | {r['lat_p50_ms']:.1f} | {r['lat_p99_ms']:.1f} | {r['capture_cpu_s_per_M']:.2f} |")
    print()
    print("| drain: frame bytes | frames per 1 MiB block | M frames/s per core |")
    print("|---:|---:|---:|")
    for d in drain:
        print(f"| {d['frame_bytes']} | {d['frames_per_block']:,} | {d['mpps_per_core']:.2f} |")
    if a.json:
        a.json.write_text(json.dumps({"runs": rows, "e2e": e2e, "drain": drain}, indent=1))


if __name__ == "__main__":
    main()
