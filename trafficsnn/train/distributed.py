"""`trafficsnn train --nproc N`: data-parallel training through torch's own elastic launcher.

The parent process builds the samples once (filling the sample cache with ``-j`` worker
processes), checks the options, then starts N workers with
``torch.distributed.launcher.api.elastic_launch`` on a free localhost port (c10d
rendezvous on port 0, as ``torchrun --standalone``): gloo on CPU, NCCL on GPU (one GPU
per worker). Every worker reads the samples back from the cache and runs the very same
``train_run``: each rank takes its contiguous shard of every global batch, gradients are
summed across ranks (the loss is normalised by the whole global batch, so unequal or
empty last shards weigh right), and all ranks draw the same shuffling and augmentation,
so training follows the one-process run with the same global batch up to float32
summation order. Rank 0 alone writes the model, split.json, logs, plots and state.
A failed worker stops the others (the elastic agent) and gives one error line.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, TrafficSNNError
from .datasets import usable_cores

log = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT = timedelta(minutes=10)   # a rank waiting longer than this on the others is an error
RENDEZVOUS_TIMEOUT_S = 300                   # workers that do not all start within this fail the run
TORCH_MODELS = ("snn", "mlp")


class WorkerError(TrafficSNNError):
    """A training worker failed (its traceback is in OUT/worker_errors.log)."""

    exit_code = 1


@dataclass
class Group:
    """This process's place in a data-parallel run (rank 0 of 1 when training alone)."""

    rank: int = 0
    world: int = 1
    device: Any = "cpu"      # where collective tensors live (NCCL: this rank's GPU)

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0

    def shard(self, n: int) -> np.ndarray:
        """Positions 0..n-1 of a global batch that this rank computes (contiguous, sizes differ by <= 1)."""
        return np.array_split(np.arange(n), self.world)[self.rank]

    def sum(self, t):
        """All-reduce ``t`` (a torch tensor) in place by summation; returns it."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def max(self, t):
        """All-reduce ``t`` in place by maximum; returns it."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def sum_grads(self, params) -> None:
        """Sum every parameter's gradient over ranks in one flat all-reduce.

        A parameter without a gradient on every rank keeps none (as alone: the optimiser skips it).
        """
        if self.world == 1:
            return
        import torch

        params = [p for p in params if p.requires_grad]
        has = torch.tensor([p.grad is not None for p in params], dtype=params[0].dtype, device=self.device)
        flat = self.sum(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                   for p in params] + [has]))
        a = 0
        for p, seen in zip(params, flat[-len(params):].tolist()):
            n = p.numel()
            p.grad = flat[a:a + n].view_as(p).clone() if seen else None
            a += n

    def broadcast(self, model) -> None:
        """Rank 0's parameters and buffers to every rank (equal by seed already; this makes sure)."""
        if self.world > 1:
            import torch.distributed as dist

            for t in model.state_dict().values():
                dist.broadcast(t, 0)


SINGLE = Group()


def _backend(device: str, nproc: int) -> str:
    """gloo on CPU, NCCL on GPU (one per worker); a clear error when the GPUs are too few."""
    import torch

    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not want_cuda:
        return "gloo"
    if not torch.cuda.is_available():
        raise ConfigError("--device cuda: no usable CUDA GPU here; use --device cpu (gloo) or auto")
    n = torch.cuda.device_count()
    if n < nproc:
        raise ConfigError(f"--nproc {nproc} on GPU needs {nproc} GPUs (NCCL runs one worker per GPU), this host "
                          f"has {n}: use --nproc {n} or --device cpu")
    import torch.distributed as dist

    if not dist.is_nccl_available():
        raise ConfigError("this torch build has no NCCL: use --device cpu (gloo)")
    return "nccl"


def launch(data, out, opts, nproc: int, entry=None) -> dict:
    """Prepare once here, train on ``nproc`` workers, return rank 0's summary (see module doc).

    ``entry``: the function each worker runs (default ``worker``; tests wrap it).
    """
    import warnings

    import torch.distributed as dist

    from .runner import load_samples, split_samples
    from .splits import LeakySplitWarning

    if opts.model not in TORCH_MODELS:
        raise ConfigError(f"--nproc applies to the torch models ({', '.join(TORCH_MODELS)}); "
                          f"--model {opts.model} trains in one process")
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed: use --nproc 1")
    backend = _backend(opts.device, nproc)
    out = Path(out)
    if opts.resume:
        from .loop import load_state

        load_state(out / "state")             # no saved state: the one clear error, before any worker starts
    out.mkdir(parents=True, exist_ok=True)
    tmp_cache = None
    if opts.no_cache:   # the workers still read what was extracted once, from a cache of their own
        tmp_cache = tempfile.mkdtemp(prefix="trafficsnn-samples-")
        opts = dataclasses.replace(opts, cache_dir=tmp_cache, no_cache=False)
    try:
        ds = load_samples(data, opts)          # extraction, once, with -j worker processes
        if len(ds.classes) < 2:
            raise ConfigError(f"need at least two classes to train, found {ds.classes}")
        split_samples(ds, opts)                # bad manifests fail here; the leaky-split warning shows once
        del ds
        worker_opts = dataclasses.replace(opts, jobs=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LeakySplitWarning)
            results = _run_workers(str(data), str(out), worker_opts, nproc, backend, entry or worker)
    finally:
        if tmp_cache:
            shutil.rmtree(tmp_cache, ignore_errors=True)
    return results[0]


def _run_workers(data: str, out: str, opts, nproc: int, backend: str, entry) -> dict:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    cfg = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"trafficsnn-{uuid.uuid4().hex[:12]}",
                       rdzv_backend="c10d", rdzv_endpoint="localhost:0",   # a free port, picked by the store
                       rdzv_configs={"join_timeout": RENDEZVOUS_TIMEOUT_S}, max_restarts=0, monitor_interval=0.2,
                       start_method="spawn")
    threads = max(1, usable_cores() // nproc)
    quiet = [logging.getLogger(n) for n in ["torch.distributed", "torch.multiprocessing", *(
        n for n in logging.root.manager.loggerDict if n.startswith(("torch.distributed.", "torch.multiprocessing.")))]]
    levels = [q.level for q in quiet]
    for q in quiet:           # their tracebacks go to worker_errors.log; the user gets one line
        q.setLevel(logging.CRITICAL)
    try:
        return elastic_launch(cfg, entry)(data, out, opts, backend, threads)
    except ChildFailedError as err:
        raise _worker_error(err, Path(out), nproc) from None
    except SignalException:          # Ctrl-C or a kill: the agent has stopped the workers
        raise KeyboardInterrupt from None
    finally:
        for q, lv in zip(quiet, levels):
            q.setLevel(lv)


def _worker_error(err, out: Path, nproc: int) -> WorkerError:
    """One line naming the first failed rank and why; every traceback into OUT/worker_errors.log."""
    rank, first = err.get_first_failure()
    lines = []
    for r, f in sorted(err.failures.items()):
        msg = f.message
        tb = msg.get("extraInfo", {}).get("py_callstack", "") if isinstance(msg, dict) else ""
        lines.append(f"rank {r} (exit code {f.exitcode}): {_failure_text(f)}\n{tb}\n")
    path = out / "worker_errors.log"
    try:
        path.write_text("".join(lines))
        where = f" (tracebacks: {path})"
    except OSError:
        where = ""
    return WorkerError(f"training worker rank {rank} of {nproc} failed: {_failure_text(first)}{where}")


def _failure_text(f) -> str:
    msg = f.message
    if isinstance(msg, dict):
        msg = msg.get("message", "")
    msg = str(msg or "").strip()
    for prefix in ("ConfigError: ", "ModelError: ", "CaptureError: "):   # our own errors read as they are
        if msg.startswith(prefix):
            return msg[len(prefix):]
    if not msg or msg.startswith("To enable traceback"):
        msg = f"exit code {f.exitcode}" + (f" (signal {f.signal_name()})" if f.exitcode < 0 else "")
    return msg


def worker(data: str, out: str, opts, backend: str, threads: int) -> dict | None:
    """One rank of the run (module level so that spawn can start it)."""
    import torch
    import torch.distributed as dist

    from .runner import train_run

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads)
    logging.getLogger("trafficsnn").setLevel(logging.ERROR)   # the parent already said what was wrong with the data
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = "cpu"
    if backend == "nccl":
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
        opts = dataclasses.replace(opts, device=device)
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT,
                            **({"device_id": torch.device(device)} if backend == "nccl" else {}))
    try:
        group = Group(rank, world, torch.device(device))
        if rank:
            opts = dataclasses.replace(opts, quiet=True)
        summary = train_run(data, out, opts, group=group)
        return summary if rank == 0 else None
    finally:
        dist.destroy_process_group()
