"""Neuron dynamics as pure functions over explicit state (Norse style).

The reference model path runs them over a whole window (the daemon's per-flow
state is ``model.StreamState``, advanced by the fused kernel). Equations
(paper_model.md §4, golden README)::

    n_j = sum_i W_ij^2                                  (weight-normalised threshold)
    V_t = beta (V_{t-1} - b_j n_j S_{t-1}) + (1 - beta) I_t,   V_0 = S_0 = 0
    S_t = H(V_t / (n_j + 1e-8) - b_j)                    (sigmoid surrogate, slope 10)
    M_t = beta2 M_{t-1} + (1 - beta2) S_t W2             (leaky readout, no spikes)
    out_k = mean_t M_tk / (sum_j W2_jk^2 + 1e-8) - b2_k

These per-step functions are the *reference* (slow, autograd through a Python
loop); ``kernels.lif_scan`` is the fused equivalent used for speed.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

EPS = 1e-8


class SurrogateHeaviside(torch.autograd.Function):
    """Heaviside step forward (u > 0); sigmoid-derivative surrogate backward."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, slope: float = 10.0) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(u)
        ctx.slope = slope
        return (u > 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        s = ctx.slope
        return grad * s * torch.sigmoid(s * u) * torch.sigmoid(-s * u), None


def heaviside(u: torch.Tensor, slope: float = 10.0) -> torch.Tensor:
    return SurrogateHeaviside.apply(u, slope)


def surrogate_grad(u: torch.Tensor, slope: float = 10.0) -> torch.Tensor:
    """dS/du of the sigmoid surrogate: slope * sig(slope u) * sig(-slope u)."""
    return slope * torch.sigmoid(slope * u) * torch.sigmoid(-slope * u)


class LIFParameters(NamedTuple):
    """Hidden layer parameters. ``norm`` is n_j = ||W_j||^2 (derived from W each pass)."""

    beta: torch.Tensor        # () or (1,): leak, kept in [0, 1]
    b: torch.Tensor           # (H,): threshold factor, kept >= 0
    norm: torch.Tensor        # (H,)
    slope: float = 10.0


class LIFState(NamedTuple):
    v: torch.Tensor           # (B, H) membrane potential
    s: torch.Tensor           # (B, H) spikes of the previous step


def lif_step(current: torch.Tensor, state: LIFState, p: LIFParameters) -> tuple[torch.Tensor, LIFState]:
    """One step of the paper's hidden LIF: soft reset with the previous step's spike."""
    thr = p.b * p.norm
    v = p.beta * (state.v - thr * state.s) + (1 - p.beta) * current
    s = heaviside(v / (p.norm + EPS) - p.b, p.slope)
    return s, LIFState(v, s)


class ReadoutParameters(NamedTuple):
    beta: torch.Tensor        # () or (1,)
    b: torch.Tensor           # (C,) subtracted bias, kept >= 0
    weight: torch.Tensor      # (H, C)


def readout_loop_scores(spikes: torch.Tensor, p: ReadoutParameters) -> torch.Tensor:
    """The paper's readout literally: M_t = beta2 M_{t-1} + (1-beta2) S_t W2, time mean."""
    b, t, _ = spikes.shape
    h = spikes @ p.weight                                   # (B, T, C)
    m = torch.zeros(b, h.shape[2], dtype=h.dtype, device=h.device)
    total = torch.zeros_like(m)
    for i in range(t):
        m = p.beta * m + (1 - p.beta) * h[:, i]
        total = total + m
    norm2 = (p.weight * p.weight).sum(0)
    return total / t / (norm2 + EPS) - p.b


def readout_time_weights(beta: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Weights w_t with sum_t M_t = sum_t w_t S_t W2 over a window of n_steps from rest.

    Closed form (paper_model.md §4.3): w_t = 1 - beta2^(T - t + 1), t = 1..T.
    """
    k = torch.arange(n_steps, 0, -1, dtype=beta.dtype, device=beta.device)
    return 1 - beta.reshape(()) ** k


def readout_closed_form(spikes: torch.Tensor, p: ReadoutParameters) -> torch.Tensor:
    """Same scores as :func:`readout_loop_scores` without the time loop."""
    t = spikes.shape[1]
    w = readout_time_weights(p.beta, t)
    c = torch.einsum("bth,t->bh", spikes, w)
    norm2 = (p.weight * p.weight).sum(0)
    return (c @ p.weight) / t / (norm2 + EPS) - p.b
