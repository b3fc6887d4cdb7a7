"""Spiking neural network: neuron dynamics, layers, presets, input encoding, checkpoints.

Modules (import them directly; this package imports nothing heavy by itself):

- ``encoding``: paper histogram + improved fixed-step encoder -> sparse events;
  ``SparseBatch``/``collate`` (shared by training and serving), ``encoder_for``.
- ``neurons``: pure per-step functions over explicit state tuples (reference).
- ``kernels``: the fused 300-step recurrence (C kernel via ctypes, torch fallback).
- ``layers``, ``model``: ``SpikingClassifier`` (whole windows, streaming, anytime).
- ``presets``: ``PRESETS`` ("paper", "improved"), ``build_model``.
- ``checkpoint``: safetensors + model.json, ``load_checkpoint``, ``default_model_path``.
- ``device``: ``resolve_device`` for ``--device auto|cpu|cuda``.
"""
