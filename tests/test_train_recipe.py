"""The improved preset's defaults are the tuned recipe; flags still override them."""
from __future__ import annotations

import pytest

from trafficsnn.errors import ConfigError
from trafficsnn.snn.presets import build_model, preset
from trafficsnn.train.loop import TrainConfig, balance_recipe
from trafficsnn.train.loop import recipe_overrides as _recipe


def test_improved_defaults_are_the_tuned_recipe():
    r = TrainConfig(preset="improved").recipe()
    assert r["batch_size"] == 32 and r["weight_decay"] == 1e-3 and r["label_smoothing"] == 0.1
    assert r["augment"] == {"prefix": 0.5, "drop": 0.1}
    assert r["sampler"] == "shuffle" and r["class_weight"] == "balanced"
    assert build_model("improved", 6).n_hidden == 200
    assert preset("improved")["encoding"]["value"] == "log1p"


def test_flags_override_the_preset():
    r = TrainConfig(preset="improved", batch_size=128, extra=_recipe(False, 1e-5, 0.0)).recipe()
    assert r["batch_size"] == 128 and r["weight_decay"] == 1e-5 and r["label_smoothing"] == 0.0
    assert not r["augment"]
    assert _recipe(None, None, None) == {}
    r = TrainConfig(preset="improved", extra=_recipe(None, None, None, balance="sampler")).recipe()
    assert r["sampler"] == "balanced" and not r["class_weight"]


def test_paper_and_mlp_recipes_unchanged():
    p = TrainConfig(preset="paper").recipe()
    assert p["batch_size"] == 128 and p["weight_decay"] == 1e-5
    assert not p.get("augment") and not p.get("label_smoothing")
    assert p.get("sampler", "balanced") == "balanced" and not p.get("class_weight")
    assert build_model("paper").n_hidden == 100
    m = TrainConfig(preset="improved", model="mlp").recipe()
    assert m["batch_size"] == 64 and not m.get("augment") and not m.get("class_weight")


def test_balance_recipe():
    assert balance_recipe("loss") == {"sampler": "shuffle", "class_weight": "balanced"}
    with pytest.raises(ConfigError):
        balance_recipe("nope")
