"""Replay capture files through the real pipeline: capture agent -> ZeroMQ -> classifier.

Two processes joined by an ipc:// socket (the classifier is a child process
running ``trafficsnn classify``), or one process with an inproc:// socket
(``inproc=True``: the classifier runs in a thread). Either way every flow ends
with a final verdict, collected from the classifier's JSON lines.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from ..errors import ModelError, TrafficSNNError
from .agent import AgentConfig, CaptureAgent


@dataclass
class ReplayResult:
    verdicts: list[dict[str, Any]]
    capture: dict[str, Any]
    classify: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    damaged: dict[str, str] = field(default_factory=dict)   # capture file -> what was wrong with it


def replay(paths: list[str], *, model: str | None = None, inproc: bool = False, every: int = 8,
           window: float | None = 1.0, device: str = "cpu", emit: str = "final", batch: int = 4096,
           batch_ms: float = 5.0, timeout: float = 600.0, extra_classify_args: list[str] | None = None
           ) -> ReplayResult:
    with tempfile.TemporaryDirectory(prefix="trafficsnn-replay-") as tmp:
        out = Path(tmp) / "verdicts.jsonl"
        # the classifier child may take a while to import torch and load the model; if it dies
        # instead, _watch stops the agent, so waiting as long as the whole replay may take is safe
        acfg = AgentConfig(pcap=tuple(paths), sensor="replay", every=every, window=window, lossless=True,
                           hwm=100, stats_interval=0, connect_timeout=timeout)
        t0 = time.monotonic()
        if inproc:
            return _replay_inproc(acfg, model, device, emit, batch, batch_ms, t0)
        ep = f"ipc://{tmp}/updates"
        acfg.connect = (ep,)
        cmd = [sys.executable, "-P", "-m", "trafficsnn.cli", "classify", "--bind", ep, "--jsonl", str(out),
               "--emit", emit, "--exit-after-eos", "1", "--device", device, "--batch", str(batch),
               "--batch-ms", str(batch_ms), *(extra_classify_args or [])]
        if model:
            cmd += ["--model", str(model)]
        err_path = Path(tmp) / "classify.err"
        with open(err_path, "w") as err_fh:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_fh,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                agent = CaptureAgent(acfg)
                stop_when_dead = threading.Thread(target=_watch, args=(proc, agent), daemon=True)
                stop_when_dead.start()
                cap = agent.run()
                rc = proc.wait(timeout=timeout)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        err = err_path.read_text()
        if rc != 0:
            last = [ln for ln in err.splitlines() if ln.strip()]
            msg = last[-1] if last else f"exit status {rc}"
            if msg.startswith("error: "):
                msg = msg[7:]
            raise (ModelError if "model" in msg else TrafficSNNError)(f"classifier failed: {msg}")
        stats: dict[str, Any] = {}
        for line in err.splitlines():
            if line.startswith('{"classify"'):
                stats = json.loads(line)["classify"]
        verdicts = [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip()] if out.exists() else []
        return ReplayResult(verdicts, cap["counters"], stats, time.monotonic() - t0, dict(agent.damaged))


def _watch(proc: subprocess.Popen, agent: CaptureAgent) -> None:
    """Stop a lossless agent that would wait forever for a classifier that died."""
    proc.wait()
    if proc.returncode != 0:
        agent.stop()


def _replay_inproc(acfg: AgentConfig, model: str | None, device: str, emit: str, batch: int, batch_ms: float,
                   t0: float) -> ReplayResult:
    from .daemon import ClassifierDaemon, ClassifyConfig
    from .sinks import ListSink

    ctx = zmq.Context()
    ep = f"inproc://replay-{os.getpid()}-{id(acfg)}"
    sink = ListSink()
    daemon = ClassifierDaemon(ClassifyConfig(bind=(ep,), model=model, device=device, emit=emit, batch=batch,
                                             batch_ms=batch_ms, exit_after_eos=1), ctx=ctx, sinks=[sink])
    result: dict[str, Any] = {}
    th = threading.Thread(target=lambda: result.update(daemon.run()), name="classifier", daemon=True)
    th.start()
    acfg.connect = (ep,)
    try:
        agent = CaptureAgent(acfg, ctx=ctx)
        cap = agent.run()
        damaged = dict(agent.damaged)
    finally:
        th.join(timeout=600)
        if th.is_alive():
            daemon.stop()
            th.join(timeout=30)
        ctx.term()
    return ReplayResult([v.to_dict() for v in sink.verdicts], cap["counters"], result, time.monotonic() - t0,
                        damaged)


def summary_rows(verdicts: list[dict[str, Any]]) -> list[tuple[str, int, int, float]]:
    """(class, flows, packets, mean confidence) per class, most flows first."""
    agg: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for v in verdicts:
        a = agg[v["class"]]
        a[0] += 1
        a[1] += v["packets"]
        a[2] += v["confidence"]
    rows = [(c, int(a[0]), int(a[1]), a[2] / a[0]) for c, a in agg.items()]
    return sorted(rows, key=lambda r: (-r[1], r[0]))


def verdict_line(v: dict[str, Any]) -> str:
    f = v["flow"]
    proto = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6"}.get(f["proto"], str(f["proto"]))
    cli = f"[{f['client']}]" if ":" in f["client"] else f["client"]
    srv = f"[{f['server']}]" if ":" in f["server"] else f["server"]
    return (f"{proto:5} {cli}:{f['client_port']} -> {srv}:{f['server_port']}  {v['class']:<14} "
            f"{v['confidence']:.3f}  {v['packets']} pkts")
