"""Thin nn.Module wrappers that own the parameters of the pure neuron functions."""
from __future__ import annotations

import math

import torch
from torch import nn

from .neurons import LIFParameters, ReadoutParameters


class _WeightedLayer(nn.Module):
    """Shared parameters of both layers: ``weight`` (n_in, n_out) ~ N(0, (init_std/sqrt(n_in))^2),
    a per-unit ``b`` (kept >= 0) and one leak ``beta`` per layer (kept in [0, 1])."""

    def __init__(self, n_in: int, n_out: int, init_std: float, beta_init: float, b_init: float):
        super().__init__()
        self.n_in, self.n_out = n_in, n_out
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.b = nn.Parameter(torch.full((n_out,), float(b_init)))
        self.beta = nn.Parameter(torch.full((1,), float(beta_init)))
        self.init_std = float(init_std)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.normal_(0.0, self.init_std / math.sqrt(self.n_in))

    @torch.no_grad()
    def clamp_(self) -> None:
        self.beta.clamp_(0.0, 1.0)
        self.b.clamp_(min=0.0)


class LIFLayer(_WeightedLayer):
    """Dense input -> LIF hidden layer of the paper (weight-normalised threshold).

    Parameters: ``weight`` (n_in, n_out) ~ N(0, (init_std/sqrt(n_in))^2), ``b``
    per neuron (init 1, kept >= 0), ``beta`` one per layer (init 0.7, in [0, 1]).
    """

    def __init__(self, n_in: int, n_out: int, init_std: float = 0.15, beta_init: float = 0.7,
                 b_init: float = 1.0, slope: float = 10.0):
        super().__init__(n_in, n_out, init_std, beta_init, b_init)
        self.slope = float(slope)

    def norm(self) -> torch.Tensor:
        """n_j = sum_i W_ij^2, recomputed (and differentiated) every pass."""
        return (self.weight * self.weight).sum(0)

    def params(self) -> LIFParameters:
        return LIFParameters(self.beta, self.b, self.norm(), self.slope)


class LeakyMeanReadout(_WeightedLayer):
    """Non-spiking leaky readout whose time mean, normalised by ||W2_k||^2, minus b2 is the score."""

    def params(self) -> ReadoutParameters:
        return ReadoutParameters(self.beta, self.b, self.weight)
