"""Speed of the packet-clocked ALIF network: training step and the daemon's streaming step.

Training: one forward + backward of a batch (anytime loss path, ``train_logits``) against
the straightforward implementation of the same network (``run(reference=True)``: a
dense input, a Python loop over steps and members with one matmul per layer), same
parameters, same batch, one CPU thread. Streaming: ``model.advance`` by one packet for
n flows at once (what a micro-batch costs the daemon) and ``StreamingClassifier.process``
on real wire messages, in packet-steps per second per core.

Synthetic flows (bursty sizes, exponential gaps, random TCP flags); the network's
speed does not depend on what the packets are.

    .venv/bin/python bench/bench_alif.py            # one thread
    .venv/bin/python bench/bench_alif.py --device cuda
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _samples(enc, n, rng, lo=10, hi=200):
    out = []
    for _ in range(n):
        k = int(rng.integers(lo, hi))
        ts = np.cumsum(rng.exponential(0.05, k))
        out.append(enc.sample(ts, rng.integers(40, 1500, k), rng.integers(0, 2, k),
                              rng.choice([0x10, 0x18, 0x02, 0x11], k).astype(np.uint8), 6))
    return out


def _time(fn, reps):
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def bench_training(steps, hidden, members, batch, device, reps):
    from trafficsnn.snn.alif import RecurrentALIF
    from trafficsnn.snn.encoding import collate
    from trafficsnn.snn.packet_encoding import PacketEncoder

    enc = PacketEncoder(steps)
    x = collate(_samples(enc, batch, np.random.default_rng(0)), steps, enc.n_inputs).to(device)
    m = RecurrentALIF(enc.n_inputs, 6, n_steps=steps, n_hidden=hidden, members=members).to(device)

    def fast():
        m.zero_grad()
        m.train_logits(x)[0].sum().backward()

    def ref():
        m.zero_grad()
        m(x, reference=True).sum().backward()

    f, r = _time(fast, reps), _time(ref, max(1, reps // 2))
    return {"steps": steps, "hidden": hidden, "members": members, "batch": batch, "fast_ms": f * 1e3,
            "reference_ms": r * 1e3, "speedup": r / f}


def bench_advance(hidden, members, flows, device, reps):
    from trafficsnn.snn.alif import RecurrentALIF
    from trafficsnn.snn.encoding import collate
    from trafficsnn.snn.packet_encoding import PacketEncoder

    enc = PacketEncoder(64)
    m = RecurrentALIF(enc.n_inputs, 6, n_steps=64, n_hidden=hidden, members=members).to(device).eval()
    one = collate(_samples(enc, flows, np.random.default_rng(1), 1, 2), 1, enc.n_inputs).to(device)
    st = m.init_state(flows)
    t = _time(lambda: m.logits(m.advance(st, one)), reps)
    return {"flows": flows, "hidden": hidden, "members": members, "packet_steps_per_s": flows / t}


def bench_engine(hidden, members, flows, packets_per_update, reps):
    import tempfile

    from trafficsnn import wire
    from trafficsnn.flows.records import FlowKey, FlowUpdate
    from trafficsnn.serve.engine import ModelHandle, StreamingClassifier

    rng = np.random.default_rng(2)
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        from trafficsnn.snn.checkpoint import save_checkpoint
        from trafficsnn.snn.presets import build_model

        mdl = build_model("packet", 6, n_hidden=hidden, members=members)
        save_checkpoint(d, mdl, {"classes": list("abcdef"), "preset": "packet"})
        h = ModelHandle.load(d)
        eng = StreamingClassifier(h, emit="final")   # verdicts at flow end, as the state advances per packet
        k = packets_per_update
        msgs = []
        for r in range(reps + 1):
            ups = [FlowUpdate(i, FlowKey(0, 6, 0, 0xFFFF_0A00_0000 + i, 1000, 0, 0xFFFF_0A00_0001, 443), 1000.0, r * k,
                              1000.0 + r + np.arange(k) * 1e-3, rng.integers(40, 1500, k).astype(np.uint32),
                              rng.integers(0, 2, k).astype(np.uint8), tcp_flags=np.full(k, 0x10, np.uint8))
                   for i in range(flows)]
            msgs.append(wire.decode(wire.encode_updates(ups, sensor="b")))
        eng.process([msgs[0]])
        t = time.perf_counter()
        for msg in msgs[1:]:
            eng.process([msg])
        dt = (time.perf_counter() - t) / reps
    return {"flows": flows, "packets_per_update": k, "hidden": hidden, "members": members,
            "packets_per_s": flows * k / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} thread(s), device {a.device}\n")
    print("| training batch | fast ms | reference ms | speed-up |\n|---|---|---|---|")
    for steps, hidden, members in ((64, 64, 1), (128, 64, 1), (128, 64, 4)):
        r = bench_training(steps, hidden, members, 32, a.device, a.reps)
        print(f"| T={steps}, H={hidden}, K={members}, B=32 | {r['fast_ms']:.0f} | {r['reference_ms']:.0f} | "
              f"{r['speedup']:.1f}x |", flush=True)
    print("\n| streaming | packet-steps/s |\n|---|---|")
    for flows, members in ((1000, 1), (10000, 1), (10000, 4)):
        r = bench_advance(64, members, flows, a.device, a.reps)
        print(f"| advance 1 step, {flows} flows, K={members} | {r['packet_steps_per_s']:,.0f} |", flush=True)
    if a.device == "cpu":
        for flows, k, members in ((2000, 1, 1), (2000, 8, 1), (2000, 8, 4)):
            r = bench_engine(64, members, flows, k, a.reps)
            print(f"| engine.process, {flows} flows x {k} packets, K={members} | {r['packets_per_s']:,.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
