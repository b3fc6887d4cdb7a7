"""SpikingClassifier: input events -> LIF hidden layer -> leaky mean readout -> class scores.

Fast path (default): input currents I = x W1 are gathered from the sparse events
(one row of W1 per event, ``index_add``), the 300-step recurrence runs fused
(``kernels.lif_scan``), and the readout uses its closed form (no time loop).
``reference=True`` runs the paper's computation literally (dense einsum, Python
loop over steps with the autograd surrogate, readout loop) for tests and the
speed benchmark.

Streaming: ``init_state(n)``, ``advance(state, events)`` over new complete steps,
``logits(state)``. The readout averages over the steps seen so far, so a verdict
exists after any number of steps and equals ``forward`` on the whole input.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from .encoding import SparseBatch
from .kernels import lif_scan, lif_scan_events, make_events
from .layers import LeakyMeanReadout, LIFLayer
from .neurons import (EPS, LIFState, lif_step, readout_loop_scores, readout_time_weights)
from .registry import register_architecture

Input = torch.Tensor | SparseBatch


class ModelOutput(NamedTuple):
    logits: torch.Tensor          # (B, C)
    hidden_counts: torch.Tensor   # (B, H) spikes per hidden neuron


class StreamState(NamedTuple):
    """Per-flow network state between updates (rows = flows)."""

    v: torch.Tensor       # (n, H) hidden membrane
    s: torch.Tensor       # (n, H) hidden spikes of the last step
    m: torch.Tensor       # (n, H) leaky readout trace in hidden space (M_t = m_t W2)
    acc: torch.Tensor     # (n, H) sum of m over the steps seen
    steps: torch.Tensor   # (n,) steps seen
    counts: torch.Tensor  # (n, H) hidden spikes so far

    def index(self, idx) -> "StreamState":
        """Rows ``idx`` (a slice, index tensor or mask) as a new state."""
        return StreamState(*(x[idx] for x in self))

    def put(self, idx, sub: "StreamState") -> None:
        """Write ``sub`` into rows ``idx`` in place."""
        for dst, src in zip(self, sub):
            dst[idx] = src

    @staticmethod
    def cat(states: "list[StreamState]") -> "StreamState":
        return StreamState(*(torch.cat(xs) for xs in zip(*states)))


@register_architecture("lif")
class SpikingClassifier(nn.Module):
    """The paper's SNN: n_inputs -> n_hidden LIF -> n_classes leaky mean readout."""

    def __init__(self, n_inputs: int = 300, n_hidden: int = 100, n_classes: int = 14,
                 n_steps: int = 300, init_std: float = 0.15, beta_init: float = 0.7,
                 b_init: float = 1.0, surrogate_slope: float = 10.0, kernel: str = "auto"):
        super().__init__()
        for name, v in (("n_inputs", n_inputs), ("n_hidden", n_hidden), ("n_classes", n_classes),
                        ("n_steps", n_steps)):
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        self.config: dict[str, Any] = dict(n_inputs=int(n_inputs), n_hidden=int(n_hidden),
                                           n_classes=int(n_classes), n_steps=int(n_steps),
                                           init_std=float(init_std), beta_init=float(beta_init),
                                           b_init=float(b_init), surrogate_slope=float(surrogate_slope))
        self.n_inputs, self.n_hidden, self.n_classes, self.n_steps = (int(n_inputs), int(n_hidden),
                                                                      int(n_classes), int(n_steps))
        self.kernel = kernel
        self.preset: str | None = None
        self.hidden = LIFLayer(n_inputs, n_hidden, init_std, beta_init, b_init, surrogate_slope)
        self.readout = LeakyMeanReadout(n_hidden, n_classes, init_std, beta_init, b_init)

    # ------------------------------------------------------------------ helpers
    def clamp_parameters(self) -> None:
        """Project beta to [0, 1] and b to >= 0; call after every optimiser step (as the paper)."""
        self.hidden.clamp_()
        self.readout.clamp_()

    def input_currents(self, x: Input) -> torch.Tensor:
        """I = x W1 as (B, T, H): gathered from events for a SparseBatch, a matmul if dense."""
        w = self.hidden.weight
        if isinstance(x, SparseBatch):
            if x.n_inputs != self.n_inputs:
                raise ValueError(f"batch has {x.n_inputs} input neurons, model expects {self.n_inputs}")
            rows = w.index_select(0, x.neuron) * x.value.to(w.dtype).unsqueeze(1)
            flat = x.sample * x.n_steps + x.step
            cur = w.new_zeros(x.n_samples * x.n_steps, self.n_hidden)
            cur = cur.index_add(0, flat, rows)
            return cur.view(x.n_samples, x.n_steps, self.n_hidden)
        if x.dim() != 3 or x.shape[2] != self.n_inputs:
            raise ValueError(f"expected input (B, T, {self.n_inputs}), got {tuple(x.shape)}")
        return torch.matmul(x.to(w.dtype), w)

    def _scores(self, acc: torch.Tensor, steps: torch.Tensor | float) -> torch.Tensor:
        w2 = self.readout.weight
        norm2 = (w2 * w2).sum(0)
        if isinstance(steps, torch.Tensor):
            steps = steps.clamp(min=1).unsqueeze(1)
        return (acc @ w2) / steps / (norm2 + EPS) - self.readout.b

    # ------------------------------------------------------------------ whole windows
    def run(self, x: Input, reference: bool = False) -> ModelOutput:
        """Logits and hidden spike counts of whole inputs (from rest)."""
        if reference:
            return self._run_reference(x)
        b, t = (x.n_samples, x.n_steps) if isinstance(x, SparseBatch) else x.shape[:2]
        beta2 = self.readout.beta
        wts = torch.stack([readout_time_weights(beta2, t), torch.ones_like(beta2).expand(t)])
        zero = self.hidden.weight.new_zeros(b, self.n_hidden)
        out, _, _ = self._scan(x, zero, zero, wts)
        return ModelOutput(self._scores(out[:, 0], float(t)), out[:, 1].detach())

    def _scan(self, x: Input, v0: torch.Tensor, s0: torch.Tensor, wts: torch.Tensor):
        """Fused hidden layer: sparse events go straight to the kernel (no (B, T, H) currents)."""
        p = self.hidden.params()
        if isinstance(x, SparseBatch):
            if x.n_inputs != self.n_inputs:
                raise ValueError(f"batch has {x.n_inputs} input neurons, model expects {self.n_inputs}")
            ev = make_events(x.sample, x.step, x.neuron, x.value, x.n_samples, x.n_steps,
                             self.hidden.weight.dtype, self.n_inputs)
            return lif_scan_events(ev, self.hidden.weight, p.norm, p.b, p.beta, v0, s0, wts,
                                   p.slope, self.kernel)
        cur = self.input_currents(x)
        return lif_scan(cur, p.norm, p.b, p.beta, v0, s0, wts, p.slope, self.kernel)

    def forward(self, x: Input, reference: bool = False) -> torch.Tensor:
        """Class scores (B, C) of whole inputs: dense (B, T, N) tensor or SparseBatch."""
        return self.run(x, reference).logits

    def prefix_logits(self, x: SparseBatch, steps) -> torch.Tensor:
        """Anytime scores of each sample after its first ``steps[i]`` steps (1..T).

        Equals ``logits`` of a stream fed those steps, i.e. what the daemon reports
        before a flow's window is complete; differentiable, so it can also train
        early verdicts. Samples are grouped by step count (one kernel call per value).
        """
        k = torch.as_tensor(steps, dtype=torch.long).cpu()
        if k.numel() != x.n_samples:
            raise ValueError(f"need one step count per sample ({x.n_samples}), got {k.numel()}")
        if k.numel() and (int(k.min()) < 1 or int(k.max()) > x.n_steps):
            raise ValueError(f"step counts must be within 1..{x.n_steps}")
        out = self.hidden.weight.new_zeros(x.n_samples, self.n_classes)
        for kv in torch.unique(k).tolist():
            rows = torch.nonzero(k == kv).flatten()
            sub = x.select(rows.to(x.sample.device)).steps(0, kv)
            out = out.index_copy(0, rows.to(out.device), self.run(sub).logits)
        return out

    def _run_reference(self, x: Input) -> ModelOutput:
        """The paper's code path: dense einsum input, Python loop over steps, readout loop."""
        dense = x.to_dense(self.hidden.weight.dtype) if isinstance(x, SparseBatch) else x
        cur = torch.einsum("btn,nh->bth", dense.to(self.hidden.weight.dtype), self.hidden.weight)
        b, t, h = cur.shape
        p = self.hidden.params()
        st = LIFState(cur.new_zeros(b, h), cur.new_zeros(b, h))
        spikes = []
        for i in range(t):
            s, st = lif_step(cur[:, i], st, p)
            spikes.append(s)
        sp = torch.stack(spikes, 1)
        return ModelOutput(readout_loop_scores(sp, self.readout.params()), sp.sum(1).detach())

    # ------------------------------------------------------------------ streaming
    def init_state(self, n: int) -> StreamState:
        """State of ``n`` flows at rest (no steps seen)."""
        w = self.hidden.weight
        z = w.new_zeros(n, self.n_hidden)
        return StreamState(z, z.clone(), z.clone(), z.clone(), w.new_zeros(n), z.clone())

    @torch.no_grad()
    def advance(self, state: StreamState, events: SparseBatch | torch.Tensor,
                n_steps: int | None = None) -> StreamState:
        """Advance every flow of ``state`` by the steps of ``events`` (all flows the same count).

        ``events`` holds the new steps renumbered from 0 (``SparseBatch.n_steps`` of
        them, or ``n_steps`` if given; a dense (n, k, N) tensor also works). Feed
        only complete steps. Inference only (no gradients).
        """
        if isinstance(events, SparseBatch):
            if n_steps is not None and n_steps != events.n_steps:
                events = SparseBatch(events.sample, events.step, events.neuron, events.value,
                                     events.n_samples, int(n_steps), events.n_inputs)
            n = events.n_samples
        else:
            n = events.shape[0]
        if n != state.v.shape[0]:
            raise ValueError(f"events are for {n} flows but the state holds {state.v.shape[0]}")
        k = events.n_steps if isinstance(events, SparseBatch) else events.shape[1]
        if k == 0:
            return state
        beta2 = self.readout.beta.reshape(())
        dt, dev = beta2.dtype, beta2.device
        pw = beta2 ** torch.arange(k, 0, -1, dtype=dt, device=dev)        # beta2^(k-tau)
        pm = beta2 ** torch.arange(k - 1, -1, -1, dtype=dt, device=dev)   # beta2^(k-1-tau)
        wts = torch.stack([1 - pw, (1 - beta2) * pm, torch.ones_like(pw)])
        out, v, s = self._scan(events, state.v, state.s, wts)
        geo = (beta2 ** torch.arange(1, k + 1, dtype=dt, device=dev)).sum()
        acc = state.acc + state.m * geo + out[:, 0]
        m = state.m * beta2 ** k + out[:, 1]
        return StreamState(v, s, m, acc, state.steps + k, state.counts + out[:, 2])

    def logits(self, state: StreamState) -> torch.Tensor:
        """Anytime class scores: readout mean over the steps each flow has seen."""
        return self._scores(state.acc, state.steps)

    def extra_repr(self) -> str:
        return f"preset={self.preset!r}, n_steps={self.n_steps}, kernel={self.kernel!r}"
