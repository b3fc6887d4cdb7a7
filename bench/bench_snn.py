"""Speed of the faithful SNN preset: our fast path vs a straightforward implementation.

Both run the same equations with the same parameters on the same batches in the
same process. The straightforward one is what the paper's code does: a dense
(B, 300, 300) histogram, I = einsum(x, W1), a Python loop over the 300 steps with
the autograd surrogate, and a loop for the readout (``model.run(reference=True)``).
Ours: input currents gathered from the sparse events, the fused recurrence
(``kernels.lif_scan``), and the closed-form readout.

Inputs are the paper's histograms of synthetic 60 s windows with a few hundred
packets each (bursty two-direction traffic), so sparsity is realistic.

    nice .venv/bin/python bench/bench_snn.py            # one CPU thread (default)
    .venv/bin/python bench/bench_snn.py --device cuda   # GPU figures when one is present
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from trafficsnn.snn.device import resolve_device
from trafficsnn.snn.encoding import PaperEncoder, collate
from trafficsnn.snn.kernels import c_kernel
from trafficsnn.snn.presets import PRESETS, build_model


def synthetic_windows(n: int, seed: int = 0, packets: tuple[int, int] = (100, 600)):
    """(t1, s1, t2, s2) of n paper windows: bursts of small/large packets both ways."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(*packets))
        k1 = max(10, int(k * rng.uniform(0.3, 0.7)))
        k2 = max(10, k - k1)

        def direction(m: int) -> tuple[np.ndarray, np.ndarray]:
            n_bursts = int(rng.integers(3, 30))
            centers = rng.uniform(0, 60, n_bursts)
            t = np.clip(centers[rng.integers(0, n_bursts, m)] + rng.exponential(0.3, m), 0, 60)
            t = np.sort(t) - t.min()
            t[-1] = max(t[-1], 45.0)
            small = rng.random(m) < rng.uniform(0.2, 0.8)
            s = np.where(small, rng.choice([40, 52, 60, 80], m), rng.integers(200, 1500, m))
            return t, s

        t1, s1 = direction(k1)
        t2, s2 = direction(k2)
        out.append((t1, s1, t2, s2))
    return out


CLOCK = time.process_time   # CPU seconds of this process: fair on a shared machine


def timeit(fn, repeat: int) -> float:
    """Seconds per call (CPU time with one thread; wall time on a GPU)."""
    fn()                                   # warm-up (kernel build, allocator)
    t0 = CLOCK()
    for _ in range(repeat):
        fn()
    return (CLOCK() - t0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="auto|cpu|cuda (default cpu)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--train-batches", type=int, default=4)
    ap.add_argument("--ref-train-batches", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128, help="training batch (paper: 128)")
    ap.add_argument("--infer-batch", type=int, default=256)
    ap.add_argument("--big-batch", type=int, default=4096, help="extra inference row for our path")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    global CLOCK
    if dev.type == "cuda" or args.threads > 1:
        CLOCK = time.perf_counter
    enc = PaperEncoder()

    n = max(args.batch * args.train_batches, args.infer_batch, args.big_batch)
    t0 = time.perf_counter()
    wins = synthetic_windows(n)
    samples = [enc.sample(*w) for w in wins]
    prep = time.perf_counter() - t0
    nnz = np.mean([s.nnz for s in samples])
    pk = np.mean([len(w[0]) + len(w[2]) for w in wins])
    labels = torch.randint(0, 14, (n,), generator=torch.Generator().manual_seed(0))

    def batch(i: int, size: int):
        return collate(samples[i * size:(i + 1) * size], 300, 300).to(dev)

    torch.manual_seed(0)
    model = build_model("paper").to(dev)
    tr = PRESETS["paper"]["training"]
    opt = torch.optim.Adam(model.parameters(), lr=tr["lr"], weight_decay=tr["weight_decay"])
    sparse_train = [batch(i, args.batch) for i in range(args.train_batches)]
    dense_train = [b.to_dense() for b in sparse_train[: args.ref_train_batches]]
    ys = [labels[i * args.batch:(i + 1) * args.batch].to(dev) for i in range(args.train_batches)]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train_step(x, y, reference: bool):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x, reference=reference), y)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), tr["grad_clip_value"])
        opt.step()
        model.clamp_parameters()

    def run_train(reference: bool):
        data = dense_train if reference else sparse_train
        for x, y in zip(data, ys):
            train_step(x, y, reference)
        sync()

    rows = []
    t_ref = timeit(lambda: run_train(True), 1) / len(dense_train)
    t_fast = timeit(lambda: run_train(False), 3) / len(sparse_train)
    rows.append(("training (fwd+bwd+Adam)", args.batch, args.batch / t_ref, args.batch / t_fast))

    xs = batch(0, args.infer_batch)
    xd = xs.to_dense()
    with torch.inference_mode():
        def infer(x, reference):
            model(x, reference=reference)
            sync()
        t_ref_i = timeit(lambda: infer(xd, True), 1)
        t_fast_i = timeit(lambda: infer(xs, False), 5)
        rows.append(("inference", args.infer_batch, args.infer_batch / t_ref_i, args.infer_batch / t_fast_i))
        xb = batch(0, args.big_batch)
        t_big = timeit(lambda: infer(xb, False), 3)
        rows.append(("inference, ours only", args.big_batch, float("nan"), args.big_batch / t_big))
        # streaming (daemon): advance 4096 flows by 5 new steps each, then score them
        sub = xb.steps(100, 105)
        st = model.init_state(xb.n_samples)
        t_adv = timeit(lambda: (model.logits(model.advance(st, sub)), sync()), 5)
        rows.append(("stream: advance 5 steps+score", xb.n_samples, float("nan"), xb.n_samples / t_adv))
        # sanity: both implementations agree on these inputs
        diff = (model(xd[:32], reference=True) - model(xs.to_dense()[:32])).abs().max().item()

    kern = "c (fused C kernel)" if (dev.type == "cpu" and c_kernel() is not None) else "torch loop"
    clock = "CPU time" if CLOCK is time.process_time else "wall time"
    print(f"device {dev} ({torch.get_num_threads()} thread(s)), torch {torch.__version__}, kernel: {kern}, "
          f"timed by {clock}")
    print(f"inputs: paper histograms of {n} synthetic windows, {pk:.0f} packets and {nnz:.0f} "
          f"non-zero bins each on average ({nnz / 900:.2f}% of 300x300); encoding {n / prep:.0f} windows/s")
    print(f"max |logit difference| ours vs straightforward: {diff:.2e}")
    print()
    print(f"| {'what':29} | {'batch':>5} | {'straightforward /s':>18} | {'ours /s':>10} | {'ratio':>7} |")
    print(f"|{'-' * 31}|{'-' * 7}|{'-' * 20}|{'-' * 12}|{'-' * 9}|")
    for what, bs, ref, fast in rows:
        ratio = f"{fast / ref:6.1f}x" if ref == ref else "    -  "
        refs = f"{ref:18.0f}" if ref == ref else f"{'-':>18}"
        print(f"| {what:29} | {bs:5d} | {refs} | {fast:10.0f} | {ratio} |")


if __name__ == "__main__":
    main()
