"""The one seam for models: registries of input encoders and network architectures.

An encoder turns a flow's packets into sparse input events; an architecture is
an ``nn.Module`` with whole-input and streaming methods. Each registers itself
once, under the name that checkpoints, presets, the CLI and the daemon use::

    @register_encoder("packet")
    class PacketEncoder: ...          # from_spec(spec), spec(), flow(flow), stream(...)

    @register_architecture("alif")
    class RecurrentALIF(nn.Module): ...   # config, run/forward, init_state, advance, logits

Adding an architecture is one module plus its decorator and one line in
``_BUILTIN`` below (so it is imported when a name is looked up); nothing else
lists names. This module imports nothing of the project at import time, which
keeps ``encoding -> presets -> model`` free of cycles: lookups import the
built-in modules lazily.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from ..errors import ConfigError

ENCODERS: dict[str, type] = {}
ARCHITECTURES: dict[str, type] = {}

# modules that register the built-in encoders (numpy only) and architectures (torch)
_BUILTIN_ENCODERS = ("trafficsnn.snn.encoding", "trafficsnn.snn.packet_encoding")
_BUILTIN_ARCHITECTURES = ("trafficsnn.snn.model", "trafficsnn.snn.alif")
_loaded: set[str] = set()


def _load_builtin(encoders_only: bool = False) -> None:
    """Import the built-in registrations; encoders alone need no torch (sample-extraction workers)."""
    for m in _BUILTIN_ENCODERS + (() if encoders_only else _BUILTIN_ARCHITECTURES):
        if m not in _loaded:
            _loaded.add(m)
            importlib.import_module(m)


def _register(table: dict[str, type], attr: str, what: str, name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if name in table and table[name] is not cls:
            raise ValueError(f"{what} {name!r} is already registered by {table[name].__qualname__}")
        setattr(cls, attr, name)
        table[name] = cls
        return cls
    return deco


def register_encoder(name: str) -> Callable[[type], type]:
    """Class decorator: an input encoder known as ``name`` (sets ``cls.kind``)."""
    return _register(ENCODERS, "kind", "encoder", name)


def register_architecture(name: str) -> Callable[[type], type]:
    """Class decorator: a network architecture known as ``name`` (sets ``cls.architecture``)."""
    return _register(ARCHITECTURES, "architecture", "architecture", name)


def encoder_names() -> list[str]:
    _load_builtin(encoders_only=True)
    return sorted(ENCODERS)


def architecture_names() -> list[str]:
    _load_builtin()
    return sorted(ARCHITECTURES)


def architecture(name: str) -> type:
    _load_builtin()
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]


def encoder_for(spec: Mapping[str, Any] | str):
    """The encoder a preset name, preset dict, checkpoint spec or encoding spec names."""
    _load_builtin(encoders_only=True)
    if isinstance(spec, str):
        from .presets import PRESETS
        if spec not in PRESETS:
            raise ConfigError(f"unknown preset {spec!r}; known: {', '.join(PRESETS)}")
        spec = PRESETS[spec]["encoding"]
    elif "encoding" in spec:
        spec = spec["encoding"]
    if not isinstance(spec, Mapping):
        raise ConfigError(f"an encoding spec must be a mapping, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in ENCODERS:
        raise ConfigError(f"unknown encoding kind {kind!r} in spec (known: {', '.join(sorted(ENCODERS))})")
    return ENCODERS[kind].from_spec(spec)
