"""`train --nproc 2` on CPU (gloo): the one-process result with the same global batch, files written once.

Tolerance: float32 summation order only (a global batch's gradient is summed from two shards
instead of one pass; Adam's normalisation magnifies the last bits of near-cancelling gradient
elements): measured at most 4.5e-5 on any weight over 3 epochs of several batch layouts (most
weights within 1e-6), asserted 2e-4; ranks drawing their own dropout masks instead of the global
batch's give 5e-2. Spiking thresholds can amplify last-bit differences: a membrane potential
within rounding of its threshold spikes in one run and not the other, and the runs part (seed 0 of
the CLI defaults on these data: 4e-3 after one epoch, exactly what perturbing --lr by 1e-7 relative
does to one process). This configuration (6 steps) does not cross one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from trafficsnn.train.distributed import WorkerError, launch, worker
from trafficsnn.train.runner import TrainOptions, train_run
from trafficsnn.train.synth import synthesize

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "data"
    synthesize(out, classes=["Chat", "VoIP", "Video"], flows_per_class=4, captures_per_class=4, duration=(20, 24),
               seed=2, snaplen=96)
    return out


def per_rank_out(data, out, opts, backend, threads):
    """The real worker, each rank writing under OUT/rank<r>: shows which rank writes what."""
    return worker(data, str(Path(out) / f"rank{os.environ['RANK']}"), opts, backend, threads)


def fail_on_rank1(data, out, opts, backend, threads):
    if os.environ["RANK"] == "1":
        raise RuntimeError("rank 1 gave up")
    return worker(data, out, opts, backend, threads)


def _opts(tmp_path, **kw) -> TrainOptions:
    kw = {"epochs": 3, **kw}
    return TrainOptions( seed=1, device="cpu", quiet=True, cache_dir=str(tmp_path / "c"), **kw)


def test_two_processes_match_one_and_only_rank0_writes(data, tmp_path):
    # packet preset (default): augmentation, dropout, anytime loss, ensemble members. One epoch = the
    # training side in global batches of n - 1: the last batch has 1 sample and rank 1 gets none.
    from trafficsnn.train.runner import load_samples, split_samples

    side, _ = split_samples(load_samples(data, _opts(tmp_path)), _opts(tmp_path))
    n_train = int((side == 0).sum())
    assert n_train >= 4
    opts = _opts(tmp_path, batch_size=n_train - 1, recipe={"min_batches": 1})
    one = tmp_path / "one"
    s1 = train_run(data, one, opts)
    s2 = launch(data, tmp_path / "two", opts, 2, entry=per_rank_out)
    r0, r1 = tmp_path / "two" / "rank0", tmp_path / "two" / "rank1"
    assert [p for p in r1.rglob("*") if p.is_file()] == []          # rank 1 wrote nothing
    names = sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())
    assert sorted(p.relative_to(r0).as_posix() for p in r0.rglob("*") if p.is_file()) == names
    a, b = load_file(str(one / "model.safetensors")), load_file(str(r0 / "model.safetensors"))
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=2e-4, err_msg=k)
    log1 = [json.loads(x) for x in (one / "train_log.jsonl").read_text().splitlines()]
    log2 = [json.loads(x) for x in (r0 / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log2] == [0, 1, 2]                 # one line per epoch: written once
    for k in ("train_loss", "val_loss"):
        np.testing.assert_allclose([r[k] for r in log2], [r[k] for r in log1], rtol=1e-5)
    assert [r["val_macro_f1"] for r in log2] == [r["val_macro_f1"] for r in log1]
    assert s2["samples"] == s1["samples"]
    np.testing.assert_allclose(s2["test"]["macro_f1"], s1["test"]["macro_f1"], atol=1e-9)


def test_failed_worker_is_one_clear_error(data, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"rank 1 of 2 failed: RuntimeError: rank 1 gave up") as err:
        launch(data, tmp_path / "out", _opts(tmp_path, epochs=1), 2, entry=fail_on_rank1)
    assert "\n" not in str(err.value)
    assert "rank 1 gave up" in (tmp_path / "out" / "worker_errors.log").read_text()
    assert time.monotonic() - t0 < 120          # the other rank is stopped, not left waiting


def test_cli_nproc_refuses_what_cannot_run_in_parallel(data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    import torch

    cases = [(["--model", "gbt"], "--model gbt trains in one process"), (["--resume"], "no saved training state")]
    if torch.cuda.device_count() < 2:
        cases.append((["--device", "cuda"], "--device cuda" if not torch.cuda.is_available() else "needs 2 GPUs"))
    for extra, msg in cases:
        r = subprocess.run([sys.executable, "-m", "trafficsnn", "train", str(data), "--out", str(tmp_path / "o"),
                            "--nproc", "2", "--device", "cpu", "-q", *extra], capture_output=True, text=True, env=env,
                           timeout=120)
        assert r.returncode == 2, r.stderr
        assert msg in r.stderr and "Traceback" not in r.stderr
