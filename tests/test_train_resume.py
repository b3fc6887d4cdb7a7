"""Resumable training: stop after 2 epochs, resume to 3 == 3 epochs straight; state has no pickle."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from trafficsnn.train.runner import TrainOptions, train_run
from trafficsnn.train.synth import synthesize


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "data"
    synthesize(out, classes=["Chat", "VoIP", "Video"], flows_per_class=4, captures_per_class=4,
               duration=(45, 48), seed=2, snaplen=96)
    return out


@pytest.mark.parametrize("model", ["snn", "mlp"])
def test_resume_equals_straight_run(data, tmp_path, model):
    common = dict(preset="improved", model=model, seed=3, device="cpu", quiet=True, cache_dir=str(tmp_path / "cache"))
    straight, parted = tmp_path / "straight", tmp_path / "parted"
    train_run(data, straight, TrainOptions(epochs=3, **common))
    train_run(data, parted, TrainOptions(epochs=2, **common))
    train_run(data, parted, TrainOptions(epochs=3, resume=True, **common))
    log = [json.loads(x) for x in (parted / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2]
    ref = [json.loads(x) for x in (straight / "train_log.jsonl").read_text().splitlines()]
    assert np.allclose([r["train_loss"] for r in log], [r["train_loss"] for r in ref], rtol=1e-5)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(parted / "model.safetensors"))
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7), k
    # resumable state: safetensors + JSON only
    files = sorted(p.name for p in (parted / "state").iterdir())
    assert files == ["state.json", "state.safetensors"]


def test_resume_without_state_is_an_error(data, tmp_path):
    from trafficsnn.errors import ConfigError

    with pytest.raises(ConfigError, match="no saved training state"):
        train_run(data, tmp_path / "none", TrainOptions(model="snn", epochs=1, resume=True, quiet=True,
                                                         cache_dir=str(tmp_path / "c")))
