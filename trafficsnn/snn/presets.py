"""Model presets: architecture, input encoding and training hyperparameters in one place.

The training loop (trafficsnn.train) reads ``PRESETS[name]["training"]``; the
daemon reads the encoding from the checkpoint, which copies it from here.

* ``paper``: the reference paper exactly (paper_model.md §3-4, §10): 300 inputs,
  100 hidden, 14 classes, 31,516 parameters, Adam 5e-4 / wd 1e-5 (coupled L2, on
  every parameter), clip by value 5, batch 128, 30 epochs, ReduceLROnPlateau on the
  *training* loss from epoch 5, balanced sampler, last-epoch weights.
* ``improved``: the fixes of §9: fixed 200 ms steps on one clock, client->server
  direction, symmetric size bins (encoding.ImprovedEncoder); model selection and
  LR schedule on validation, early stopping; anytime readout; classes from data.
  Its defaults are the recipe tuned by grouped cross-validation on the nDPI 6-class
  task (models/ndpi6-snn/MODEL_CARD.md: 0.263 vs 0.217 macro-F1 for the untuned
  defaults): 200 hidden neurons, log1p input, batch 32, weight decay 1e-3, label
  smoothing 0.1, prefix/thinning augmentation, and (since) shuffled epochs with a
  class-weighted loss instead of the balanced sampler (0.299 vs 0.263).
"""
from __future__ import annotations

import copy
from typing import Any

from ..errors import ConfigError
from .model import SpikingClassifier

PAPER_CLASSES = ["Video_nonVPN", "Video_Tor", "Video_VPN", "VOIP_nonVPN", "VOIP_Tor", "VOIP_VPN",
                 "FileTransfer_nonVPN", "FileTransfer_Tor", "FileTransfer_VPN", "Chat_nonVPN",
                 "Chat_Tor", "Chat_VPN", "Browsing_nonVPN", "Browsing_Tor"]

_MODEL = dict(n_inputs=300, n_hidden=100, n_steps=300, init_std=0.15, beta_init=0.7,
              b_init=1.0, surrogate_slope=10.0)

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "description": "Rasteh et al. 2022 exactly: per-sample histogram time axis, asymmetric size bins",
        "model": dict(_MODEL),
        "n_classes": 14,
        "classes": PAPER_CLASSES,
        "encoding": {"kind": "paper", "n_steps": 300, "n_inputs": 300},
        "windows": {"kind": "paper", "length_s": 60.0, "hop_s": 15.0, "min_span_s": 40.0,
                    "min_packets": 10},
        "training": {
            "optimizer": "adam", "lr": 5e-4, "betas": [0.9, 0.999], "eps": 1e-8,
            "weight_decay": 1e-5,            # coupled L2 (torch.optim.Adam), all parameter groups
            "grad_clip_value": 5.0,          # torch.nn.utils.clip_grad_value_
            "clamp_after_step": True,        # model.clamp_parameters() after each optimiser step
            "batch_size": 128, "epochs": 30,
            "sampler": "balanced",           # WeightedRandomSampler 1/count(class), replacement, len = train size
            "scheduler": {"kind": "plateau", "monitor": "train_loss", "mode": "min", "factor": 0.1,
                          "patience": 3, "threshold": 1e-4, "threshold_mode": "rel",
                          "start_epoch": 5},   # stepped when the 0-based epoch index >= 5
            "early_stopping": None,
            "selection": "last_epoch",
            "split": "paper",                # random window-level 65/15/20 (leaks; comparison only)
            "loss": "cross_entropy",
        },
    },
    "improved": {
        "description": "paper network with the fixes of paper_model.md §9: fixed 200 ms steps on one "
                       "clock, client->server direction, symmetric size bins, validation selection",
        "model": dict(_MODEL, n_hidden=200),   # tuned (paper: 100)
        "n_classes": None,                   # set by the data
        "classes": None,
        "encoding": {"kind": "improved", "bin_s": 0.2, "n_steps": 300, "n_inputs": 300, "value": "log1p"},
        "windows": {"kind": "flow_start", "length_s": 60.0},
        "training": {
            "optimizer": "adam", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8,
            "weight_decay": 1e-3, "grad_clip_value": 5.0, "clamp_after_step": True,
            "batch_size": 32, "epochs": 40,
            # small data sets still get 10 optimiser steps per epoch (no change from ~320 samples up)
            "min_batches": 10,
            # every sample once per epoch, cross-entropy weighted n / (k * count(class)): beat the
            # balanced sampler by +0.038 macro-F1 over 10 seeds of grouped 5-fold CV (MODEL_CARD.md)
            "sampler": "shuffle", "class_weight": "balanced",
            "label_smoothing": 0.1,
            # random flow prefixes (p = 0.5) and binomial packet thinning (count inputs only)
            "augment": {"prefix": 0.5, "drop": 0.1},
            "scheduler": {"kind": "plateau", "monitor": "val_loss", "mode": "min", "factor": 0.3,
                          "patience": 3, "threshold": 1e-4, "threshold_mode": "rel", "start_epoch": 0},
            "early_stopping": {"monitor": "val_macro_f1", "mode": "max", "patience": 8},
            "selection": "best_val_macro_f1",
            "split": "grouped",              # by capture file, stratified, seeded
            "loss": "cross_entropy",
        },
    },
}

MODEL_KEYS = set(_MODEL) | {"n_classes", "kernel"}


def preset(name: str) -> dict[str, Any]:
    """A deep copy of a preset (safe to modify)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def build_model(preset_name: str, n_classes: int | None = None, **overrides: Any) -> SpikingClassifier:
    """A fresh SpikingClassifier of a preset; ``overrides`` change model fields (e.g. n_hidden)."""
    p = preset(preset_name)
    unknown = set(overrides) - MODEL_KEYS
    if unknown:
        raise ConfigError(f"unknown model option(s) {', '.join(sorted(unknown))} for preset "
                          f"{preset_name!r}; known: {', '.join(sorted(MODEL_KEYS))}")
    cfg = dict(p["model"])
    cfg.update({k: v for k, v in overrides.items() if k != "n_classes"})
    n = n_classes if n_classes is not None else overrides.get("n_classes", p["n_classes"])
    if n is None:
        raise ConfigError(f"preset {preset_name!r} needs n_classes (the number of classes in the data)")
    enc = p["encoding"]
    if preset_name == "paper" and (cfg["n_inputs"] != 300 or cfg["n_steps"] != 300):
        raise ConfigError("the paper preset has exactly 300 inputs and 300 steps")
    if cfg["n_steps"] != enc["n_steps"] and preset_name != "improved":
        raise ConfigError(f"n_steps {cfg['n_steps']} does not match the encoding's {enc['n_steps']}")
    model = SpikingClassifier(n_classes=int(n), **cfg)
    model.preset = preset_name
    return model


def count_parameters(model: SpikingClassifier) -> int:
    """Trainable parameters (31,516 for the paper preset)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def encoding_spec(model: SpikingClassifier, preset_name: str | None = None, **changes: Any) -> dict[str, Any]:
    """The encoding spec of a model's preset, kept consistent with the model (n_steps, n_inputs)."""
    name = preset_name or model.preset or "paper"
    enc = preset(name)["encoding"]
    enc.update(changes)
    if enc["kind"] == "improved":
        enc["n_steps"] = model.n_steps
    if enc["n_steps"] != model.n_steps or enc.get("n_inputs", model.n_inputs) != model.n_inputs:
        raise ConfigError(f"encoding {enc} does not fit the model ({model.n_steps} steps, "
                          f"{model.n_inputs} inputs)")
    return enc
