"""Fused inference step of RecurrentALIF over all new steps of many flows (CPU, float32, C).

Serving advances each flow's recurrent network one step per packet; as a loop of
torch ops on small (B, H) tensors that costs ~15 op dispatches per step. The C
kernel in ``alif_kernel.c`` runs every step of every flow of a micro-batch in one
call, in place on the serving engine's state slab, reading the input events as
they come from the encoder (no dense tensor). Built by ``trafficsnn._native``'s rule
(system C compiler, private per-user cache, per CPU). The torch path (``RecurrentALIF.advance``)
stays the reference and the path for CUDA, float64, training and hosts without a
compiler; tests hold this kernel equal to it within 1e-5. ``TRAFFICSNN_KERNEL=torch``
turns it off.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import torch

from .. import _native

MAX_HIDDEN = 1024   # MAXH in the C source


def _setup(lib: ctypes.CDLL) -> None:
    fn = lib.alif_stream_f32
    p, i, q = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    fn.argtypes = [i, p, p, p, p, p, p, p, p, q, i, i, i, i, i, i,
                   q, q, q, q, q, q, q, p, p, p, p, p, p, p, p, p, p, p]
    fn.restype = None


KERNEL = _native.Lazy("alif_kernel", Path(__file__).with_name("alif_kernel.c"), what="the fused ALIF serving step",
                      fallback="the torch loop", setup=_setup, flags=("-O3", "-ffp-contract=off"), libs=("-lm",))


def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None (no compiler, or turned off with TRAFFICSNN_KERNEL=torch)."""
    if os.environ.get("TRAFFICSNN_KERNEL", "").strip() == "torch":
        return None
    return KERNEL.get()


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous()


class FusedALIF:
    """The model's weights laid out for the kernel (taken once; rebuild after the weights change)."""

    def __init__(self, model, lib: ctypes.CDLL):
        L, K, H = model.n_layers, model.members, model.n_hidden
        with torch.no_grad():
            ps = [model.params(layer) for layer in range(L)]
            stack = (lambda xs: _f32(torch.stack([x.expand(K, H) for x in xs])))   # (L, K, H)
            self.alpha = stack([p.alpha for p in ps])
            self.rho = stack([p.rho for p in ps])
            self.one_m_rho = stack([1 - p.rho for p in ps])
            self.beta = stack([p.beta for p in ps])
            self.gain = stack([p.gain for p in ps])
            self.bias = _f32(torch.stack([b for b in model.bias]))
            self.w_in0 = _f32(model.w_in[0])
            self.w_in_rest = _f32(torch.stack(list(model.w_in)[1:])) if L > 1 else torch.zeros(1)
            self.w_rec = _f32(torch.stack(list(model.w_rec))) if model.recurrent else torch.zeros(1)
            from .alif import _decay
            kappa = _decay(model.tau_out)
            self.kappa, self.one_m_kappa = _f32(kappa), _f32(1 - kappa)
        self.dims = (L, K, H, model.n_inputs, int(model.recurrent), int(model.input_skip))
        self.lib = lib

    def run(self, slab: torch.Tensor, offsets: dict[str, int], rows: np.ndarray, done: np.ndarray, k: np.ndarray,
            ev_off: np.ndarray, ev_step: np.ndarray, ev_neuron: np.ndarray, ev_value: np.ndarray) -> None:
        """Advance slab rows ``rows`` by ``k`` steps from ``done``, in place (see the C source for the layout)."""
        if not (slab.dtype == torch.float32 and slab.device.type == "cpu" and slab.is_contiguous()):
            raise ValueError("the fused ALIF step needs a contiguous float32 CPU slab")
        i64 = (lambda a: np.ascontiguousarray(a, np.int64))
        rows, done, k, ev_off, ev_step, ev_neuron = map(i64, (rows, done, k, ev_off, ev_step, ev_neuron))
        ev_value = np.ascontiguousarray(ev_value, np.float32)
        if len(rows) and (rows.min() < 0 or rows.max() >= slab.shape[0]):
            raise ValueError("slab row out of range")
        if ev_off.shape != (len(rows) + 1,) or ev_off[-1] != len(ev_step) or len(ev_neuron) != len(ev_step):
            raise ValueError("event offsets do not match the events")
        if len(ev_neuron) and (ev_neuron.min() < 0 or ev_neuron.max() >= self.dims[3]):
            raise ValueError("input neuron out of range")
        if len(ev_step):   # the kernel walks each flow's events in step order, inside its new steps
            f = np.repeat(np.arange(len(rows)), np.diff(ev_off))
            rel = ev_step - done[f]
            if (rel < 0).any() or (rel >= k[f]).any() or ((np.diff(ev_step) < 0) & (np.diff(f) == 0)).any():
                raise ValueError("events must lie in their flow's new steps, in step order")
        P = (lambda a: a.ctypes.data)
        T = (lambda t: t.data_ptr())
        o = offsets
        self.lib.alif_stream_f32(len(rows), P(rows), P(done), P(k), P(ev_off), P(ev_step), P(ev_neuron), P(ev_value),
                                 T(slab), slab.shape[1], *self.dims, o["v"], o["a"], o["s"], o["m"], o["c"], o["u"],
                                 o["steps"], T(self.w_in0), T(self.w_in_rest), T(self.w_rec), T(self.bias),
                                 T(self.alpha), T(self.rho), T(self.one_m_rho), T(self.beta), T(self.gain),
                                 T(self.kappa), T(self.one_m_kappa))
