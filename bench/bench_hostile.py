"""What a hostile peer can cost the classifier: peak memory under oversized messages.

Issue 8's repro: schema-valid UPDATES messages of 12.5 M packets each (one update holding
them all), sent as fast as ZeroMQ takes them. Before the caps, three such messages took
the classifier to 3.5 GB and eleven to 14.8 GB. Here the classifier runs with its default
caps (``--max-message-mb``, ``--max-update-packets``, ``--batch-packets``, ``--rcvhwm``);
after the flood one normal message must still be classified. Prints the classifier's peak
RSS (VmHWM) beside the bytes offered, and the drop counters it reports at exit.

    .venv/bin/python bench/bench_hostile.py [--messages 11] [--packets 12500000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import PeakRSS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=11)
    ap.add_argument("--packets", type=int, default=12_500_000)
    a = ap.parse_args()
    from trafficsnn import wire
    from trafficsnn.flows.records import FlowKey, FlowUpdate

    key = FlowKey(0, 17, 0, 0xFFFF_0A00_0001, 5000, 0, 0xFFFF_0A00_0002, 53)
    n = a.packets
    big = FlowUpdate(1, key, 1000.0, 0, 1000.0 + np.arange(n) * 1e-6, np.full(n, 100, np.uint32),
                     np.zeros(n, np.uint8), tcp_flags=np.zeros(n, np.uint8))
    frames = wire.encode_updates([big], sensor="hostile")
    offered = sum(memoryview(f).nbytes for f in frames)
    small = wire.encode_updates([FlowUpdate(2, key, 2000.0, 0, 2000.0 + np.arange(12) * 0.01,
                                            np.full(12, 120, np.uint32), np.zeros(12, np.uint8), final=True,
                                            reason="eof", tcp_flags=np.zeros(12, np.uint8))], sensor="ok")
    with tempfile.TemporaryDirectory() as d:
        ep, out, err = f"ipc://{d}/u", Path(d) / "v.jsonl", Path(d) / "err"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        cls = subprocess.Popen([sys.executable, "-m", "trafficsnn.cli", "classify", "--bind", ep, "--device", "cpu",
                                "--threads", "1", "--jsonl", str(out), "--emit", "final"],
                               stdout=subprocess.DEVNULL, stderr=open(err, "w"), env=env)
        peak = PeakRSS(cls)
        peak.start()
        time.sleep(4)
        ctx = zmq.Context()
        t0 = time.time()
        for _ in range(a.messages):          # a fresh connection per message: a cap may drop the peer
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.SNDHWM, 1000)
            push.connect(ep)
            push.send_multipart(frames, copy=False)
            push.close(linger=3000)
        push = ctx.socket(zmq.PUSH)
        push.connect(ep)
        push.send_multipart(small, copy=False)
        push.close(linger=3000)
        deadline = time.time() + 60
        while time.time() < deadline and not (out.exists() and out.read_text().strip()):
            time.sleep(0.2)
        got = out.read_text().strip().splitlines() if out.exists() else []
        cls.terminate()
        cls.wait(60)
        peak.join(2)
        tail = err.read_text().strip().splitlines()
        stats = next((json.loads(x.split(" ", 1)[1]) for x in reversed(tail) if x.startswith("classify ")), {})
    print("| messages | packets each | bytes offered | classifier peak RSS MB | normal verdict after flood | seconds |")
    print("|---|---|---|---|---|---|")
    print(f"| {a.messages} | {n:,} | {a.messages * offered / 1e9:.1f} GB | {peak.peak:.0f} | "
          f"{'yes' if got else 'NO'} | {time.time() - t0:.1f} |")
    if stats:
        print("drops:", json.dumps(stats.get("drops", stats), sort_keys=True)[:600])


if __name__ == "__main__":
    main()
