#!/usr/bin/env python
"""Benchmark: how fast `trafficsnn train` prepares samples (-j) and trains (--nproc), on synthetic captures.

    flock /tmp/bench.lock python bench/bench_prepare.py                 # 0.5 GB of captures, -j 1 and 2
    python bench/bench_prepare.py --gb 0.1 --epochs 2 --nproc 1        # quick look

Writes ISCX-like labelled captures with `trafficsnn.train.synth` (5 classes, full-length
frames with zero payload, so bytes per packet are those of bulk traffic: ~840 B), then:

- preparation: the samples of every capture built from an empty sample cache (hashing,
  decoding, flows, encoding, flow statistics, cache writes) with ``-j`` 1, 2, ...; MB/s and
  packets/s of capture, wall clock;
- training: the default preset on those samples from the warm cache, ``--nproc`` 1, 2, ...;
  training samples per second of the median epoch after the first (an epoch includes its
  validation pass).

Every number is wall-clock on this machine; `uptime` before and after says how loaded it was.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _cpu_s() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def make_data(root: Path, gb: float, seed: int, short_flows: int = 0) -> dict:
    """~``gb`` GB of synthetic captures: 5 classes x 4 captures, 60-100 s flows (~6.5 MB each);
    ``short_flows``: that many 1-3 s flows instead (to measure the cost per flow)."""
    from trafficsnn.train.synth import synthesize

    if short_flows:
        per = short_flows // 5      # synth addresses at most 255 flows per capture
        m = synthesize(root, flows_per_class=per, captures_per_class=max(4, -(-per // 250)), duration=(1.0, 3.0),
                       seed=seed)
    else:
        m = synthesize(root, flows_per_class=max(4, round(gb * 1e9 / 6.5e6 / 5)), captures_per_class=4,
                       duration=(60.0, 100.0), seed=seed)
    caps = [root / c["path"] for c in m["captures"]]
    return {"captures": len(caps), "bytes": sum(p.stat().st_size for p in caps),
            "packets": sum(c["packets"] for c in m["captures"]), "flows": sum(c["flows"] for c in m["captures"])}


def prepare(data: Path, cache: Path, jobs: int) -> dict:
    from trafficsnn.train.runner import TrainOptions, load_samples

    shutil.rmtree(cache, ignore_errors=True)
    c0, t0 = _cpu_s(), time.perf_counter()
    ds = load_samples(data, TrainOptions(jobs=jobs, cache_dir=str(cache), quiet=True))
    wall = time.perf_counter() - t0
    return {"jobs": jobs, "wall_s": wall, "cpu_s": _cpu_s() - c0, "samples": len(ds), "flows": ds.summary["flows"]}


def train(data: Path, cache: Path, out: Path, nproc: int, epochs: int) -> dict:
    from trafficsnn.train.distributed import launch
    from trafficsnn.train.runner import TrainOptions, train_run

    opts = TrainOptions(epochs=epochs, device="cpu", quiet=True, cache_dir=str(cache), seed=0,
                        recipe={"select_from_epoch": 0})
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = launch(data, out, opts, nproc) if nproc > 1 else train_run(data, out, opts)
    wall = time.perf_counter() - t0
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    rec = json.loads((out / "model.json").read_text())["training"]["recipe"]
    per_epoch = max(s["samples"]["train"], int(rec.get("min_batches") or 0) * int(rec["batch_size"]))
    ends = [r["seconds"] for r in log]
    secs = [b - a for a, b in zip([0.0] + ends[:-1], ends)]
    return {"nproc": nproc, "epochs": len(log), "train_samples": s["samples"]["train"],
            "val_samples": s["samples"]["val"], "samples_per_epoch": per_epoch, "epoch_s": secs,
            "samples_per_s": per_epoch / float(np.median(secs[1:] if len(secs) > 1 else secs)),
            "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=0.5, help="size of the synthetic captures (GB)")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="-j values for preparation")
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="--nproc values for training")
    ap.add_argument("--short-flows", type=int, default=2000,
                    help="also prepare this many 1-3 s flows (cost per flow; 0: skip)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per training run (the first is not timed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = ap.parse_args()
    from trafficsnn.train.runner import TrainOptions, load_samples

    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        res: dict = {"uptime_before": _uptime()}
        t0 = time.perf_counter()
        res["data"] = make_data(tmp / "data", a.gb, a.seed)
        res["data"]["generate_s"] = time.perf_counter() - t0
        d = res["data"]
        print(f"data: {d['captures']} captures, {d['bytes'] / 1e6:.0f} MB, {d['packets']:,} packets, "
              f"{d['flows']:,} flows ({d['bytes'] / d['packets']:.0f} B/packet incl. the 16-byte record header)")
        from trafficsnn.train.synth import synthesize

        synthesize(tmp / "warm", classes=["Chat", "VoIP"], flows_per_class=2, captures_per_class=1, seed=a.seed)
        prepare(tmp / "warm", tmp / "cache-warm", 1)      # imports and first calls, untimed
        res["prepare"] = []
        for j in a.jobs:
            r = prepare(tmp / "data", tmp / "cache", j)
            r["mb_per_s"] = d["bytes"] / 1e6 / r["wall_s"]
            r["packets_per_s"] = d["packets"] / r["wall_s"]
            res["prepare"].append(r)
            print(f"prepare -j {j}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} CPU-s, {r['mb_per_s']:.1f} MB/s, "
                  f"{r['packets_per_s']:,.0f} packets/s, {r['samples']} samples")
        if a.short_flows:
            sd = make_data(tmp / "short", 0, a.seed, a.short_flows)
            res["short"] = {"data": sd, "prepare": []}
            print(f"short flows: {sd['captures']} captures, {sd['bytes'] / 1e6:.0f} MB, {sd['packets']:,} packets, "
                  f"{sd['flows']:,} flows")
            for j in a.jobs:
                r = prepare(tmp / "short", tmp / "cache-short", j)
                r["mb_per_s"], r["packets_per_s"] = sd["bytes"] / 1e6 / r["wall_s"], sd["packets"] / r["wall_s"]
                r["flows_per_s"] = sd["flows"] / r["wall_s"]
                res["short"]["prepare"].append(r)
                print(f"prepare short -j {j}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} CPU-s, "
                      f"{r['packets_per_s']:,.0f} packets/s, {r['flows_per_s']:,.0f} flows/s, {r['samples']} samples")
            # one core's cost model from the two -j 1 runs: CPU-s = a * packets + b * flows
            A = np.array([[d["packets"], d["flows"]], [sd["packets"], sd["flows"]]], float)
            cpu = np.array([res["prepare"][0]["cpu_s"], res["short"]["prepare"][0]["cpu_s"]])
            per_packet, per_flow = np.linalg.solve(A, cpu)
            res["cost_model"] = {"cpu_s_per_packet": per_packet, "cpu_s_per_flow": per_flow}
            print(f"one core (-j {a.jobs[0]}): {per_packet * 1e6:.2f} CPU-us per packet + {per_flow * 1e3:.2f} CPU-ms "
                  "per flow")
        t0 = time.perf_counter()
        again = load_samples(tmp / "data", TrainOptions(cache_dir=str(tmp / "cache"), quiet=True))
        res["cached_read_s"] = time.perf_counter() - t0
        print(f"prepare again from the cache: {res['cached_read_s']:.2f} s ({len(again)} samples)")
        res["train"] = []
        for n in a.nproc:
            r = train(tmp / "data", tmp / "cache", tmp / f"run{n}", n, a.epochs)
            res["train"].append(r)
            print(f"train --nproc {n}: {r['samples_per_s']:.1f} training samples/s (median epoch after the first; "
                  f"{r['samples_per_epoch']} samples per epoch, {r['val_samples']} validation), epoch s "
                  f"{', '.join(f'{x:.1f}' for x in r['epoch_s'])}")
        res["uptime_after"] = _uptime()
        print(f"uptime before: {res['uptime_before']}\nuptime after:  {res['uptime_after']}")
        if a.json:
            a.json.write_text(json.dumps(res, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
