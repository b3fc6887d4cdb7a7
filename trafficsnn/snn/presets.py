"""Presets: named training recipes (architecture, its options, input encoding, hyperparameters).

Architectures and encoders are registered in :mod:`trafficsnn.snn.registry`; a preset only
names them, so the CLI, checkpoints and the daemon never list architectures themselves.
The training loop (trafficsnn.train) reads ``PRESETS[name]["training"]``; the daemon
reads the encoding from the checkpoint, which copies it from here.

* ``packet`` (default): the packet-clocked encoding (one step per packet: payload size
  by direction, log inter-arrival time, TCP flags, L4 protocol) into a recurrent
  adaptive-LIF network with anytime readout (``alif``), trained with an anytime loss
  over the first 1..50 packets. Recipe chosen by grouped cross-validation on the
  developer side of the nDPI task (bench/RESULTS.md).
* ``paper``: the reference paper exactly (paper_model.md §3-4, §10): 300 inputs,
  100 hidden, 14 classes, 31,516 parameters, Adam 5e-4 / wd 1e-5 (coupled L2, on
  every parameter), clip by value 5, batch 128, 30 epochs, ReduceLROnPlateau on the
  *training* loss from epoch 5, balanced sampler, last-epoch weights.
* ``improved``: the fixes of §9: fixed 200 ms steps on one clock, client->server
  direction, symmetric size bins (encoding.ImprovedEncoder); model selection and
  LR schedule on validation, early stopping; anytime readout; classes from data.
  200 hidden neurons, log1p input, batch 32, weight decay 1e-3, label smoothing 0.1,
  prefix/thinning augmentation, shuffled epochs with a class-weighted loss.
"""
from __future__ import annotations

import copy
import inspect
from typing import Any

from ..errors import ConfigError
from .registry import architecture

PAPER_CLASSES = ["Video_nonVPN", "Video_Tor", "Video_VPN", "VOIP_nonVPN", "VOIP_Tor", "VOIP_VPN",
                 "FileTransfer_nonVPN", "FileTransfer_Tor", "FileTransfer_VPN", "Chat_nonVPN",
                 "Chat_Tor", "Chat_VPN", "Browsing_nonVPN", "Browsing_Tor"]

_MODEL = dict(n_inputs=300, n_hidden=100, n_steps=300, init_std=0.15, beta_init=0.7,
              b_init=1.0, surrogate_slope=10.0)

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "description": "Rasteh et al. 2022 exactly: per-sample histogram time axis, asymmetric size bins",
        "architecture": "lif",
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
    "packet": {
        "description": "packet-clocked events (size, direction, gap, TCP flags, protocol) into a recurrent "
                       "adaptive-LIF network with anytime readout",
        "architecture": "alif",
        "model": dict(n_hidden=64, n_layers=1, recurrent=True, dropout=0.1),
        "n_classes": None,
        "classes": None,
        "encoding": {"kind": "packet", "n_steps": 128},
        "windows": {"kind": "flow_start", "packets": 128},
        "training": {
            "optimizer": "adam", "lr": 3e-3, "betas": [0.9, 0.999], "eps": 1e-8,
            "weight_decay": 1e-4, "grad_clip_value": 1.0, "clamp_after_step": True,
            "batch_size": 32, "epochs": 40, "min_batches": 10,
            "sampler": "shuffle", "class_weight": "balanced",
            "label_smoothing": 0.1,
            "augment": {"prefix": 0.3, "drop": 0.0},
            "anytime_loss": 0.8,             # weight of the mean loss after 1,2,3,5,...,50 packets (0.5: -0.034 whole, 5 seeds)
            "select_from_epoch": 5,          # never select one of the first 5 epochs (noisy small validation)
            "scheduler": {"kind": "plateau", "monitor": "val_loss", "mode": "min", "factor": 0.3,
                          "patience": 3, "threshold": 1e-4, "threshold_mode": "rel", "start_epoch": 0},
            "early_stopping": {"monitor": "val_macro_f1", "mode": "max", "patience": 8},
            "selection": "best_val_macro_f1",
            "split": "grouped",
            "loss": "cross_entropy",
        },
    },
}
DEFAULT_PRESET = "packet"

def preset(name: str) -> dict[str, Any]:
    """A deep copy of a preset (safe to modify)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def model_keys(arch: str) -> set[str]:
    """The options an architecture's constructor takes (besides n_classes)."""
    params = inspect.signature(architecture(arch).__init__).parameters
    return {k for k in params if k not in ("self", "n_classes")}


def build_model(preset_name: str, n_classes: int | None = None, **overrides: Any):
    """A fresh model of a preset's architecture; ``overrides`` change model options (e.g. n_hidden)."""
    p = preset(preset_name)
    arch = p.get("architecture", "lif")
    keys = model_keys(arch)
    unknown = set(overrides) - keys - {"n_classes"}
    if unknown:
        raise ConfigError(f"unknown model option(s) {', '.join(sorted(unknown))} for preset "
                          f"{preset_name!r} (architecture {arch!r}); known: {', '.join(sorted(keys))}")
    cfg = dict(p["model"])
    enc = p["encoding"]
    cfg.setdefault("n_inputs", enc.get("n_inputs") or _encoder_inputs(enc))
    cfg.setdefault("n_steps", enc["n_steps"])
    cfg.update({k: v for k, v in overrides.items() if k != "n_classes"})
    n = n_classes if n_classes is not None else overrides.get("n_classes", p["n_classes"])
    if n is None:
        raise ConfigError(f"preset {preset_name!r} needs n_classes (the number of classes in the data)")
    if preset_name == "paper" and (cfg["n_inputs"] != 300 or cfg["n_steps"] != 300):
        raise ConfigError("the paper preset has exactly 300 inputs and 300 steps")
    if cfg["n_steps"] != enc["n_steps"] and preset_name == "paper":
        raise ConfigError(f"n_steps {cfg['n_steps']} does not match the encoding's {enc['n_steps']}")
    model = architecture(arch)(n_classes=int(n), **cfg)
    model.preset = preset_name
    return model


def _encoder_inputs(enc: dict) -> int:
    from .registry import encoder_for
    return int(encoder_for(enc).n_inputs)


def count_parameters(model) -> int:
    """Trainable parameters (31,516 for the paper preset)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def encoding_spec(model, preset_name: str | None = None, **changes: Any) -> dict[str, Any]:
    """The encoding spec of a model's preset, kept consistent with the model (n_steps, n_inputs)."""
    from .registry import encoder_for

    name = preset_name or model.preset or "paper"
    enc = preset(name)["encoding"]
    enc.update(changes)
    if enc["kind"] != "paper":
        enc["n_steps"] = model.n_steps
    spec = encoder_for(enc).spec()
    if spec["n_steps"] != model.n_steps or spec["n_inputs"] != model.n_inputs:
        raise ConfigError(f"encoding {enc} does not fit the model ({model.n_steps} steps, "
                          f"{model.n_inputs} inputs)")
    return spec
