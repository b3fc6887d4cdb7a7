"""RecurrentALIF: a recurrent spiking network of adaptive LIF neurons with anytime readout.

Made for the packet-clocked encoding (one step per packet). Per hidden layer and
step, with learned per-neuron time constants (Norse-style pure step function
:func:`alif_step` over an explicit :class:`ALIFState`)::

    I_t = x_t W_in + s_{t-1} W_rec + bias                  (recurrent)
    a_t = rho a_{t-1} + (1 - rho) s_{t-1}                    (spike-triggered adaptation)
    A_t = 1 + beta a_t                                       (adaptive threshold)
    v_t = alpha v_{t-1} + g I_t - A_{t-1} s_{t-1}            (soft reset)
    s_t = H(v_t - A_t)                                       (surrogate gradient)

g = 1 (``current="direct"``, default: a packet's input drives the membrane at once, so
the first packet can already make neurons fire) or 1 - alpha (``"leaky"``: the input is
low-pass filtered, the first packets barely move a slow neuron).
alpha = exp(-1/tau_mem) and rho = exp(-1/tau_adapt) come from learned per-neuron
time constants (initialised spread over a range of packets), beta >= 0. The
readout is non-spiking: a leaky trace m_t = kappa m_{t-1} + (1 - kappa) s_t of the
last layer's spikes (learned kappa per neuron) and the running spike rate c_t / t;
class scores at step t are ``[m_t, c_t / t] W_out + b_out``, so a verdict exists
after every packet and ``forward`` on a whole flow equals streaming it packet by
packet (``init_state`` / ``advance`` / ``logits``).

``members`` K > 1 makes the module a seed ensemble: K independent networks (own
initialisation, time constants and readout) stepped together as one batched tensor
(one op per step for all members, so the Python loop costs as much as for one),
each trained on its own loss; the verdict averages the members' class scores.

``run`` loops over steps with torch ops (the vectorised path: input currents of all
steps and members in one einsum, one fused update per step); ``reference=True``
runs :func:`alif_step` member by member from a dense input, the plain loop the
tests compare with.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import nn

from .encoding import SparseBatch
from .neurons import heaviside
from .registry import register_architecture


class ALIFParameters(NamedTuple):
    alpha: torch.Tensor   # (H,) membrane decay per step
    rho: torch.Tensor     # (H,) adaptation decay per step
    beta: torch.Tensor    # (H,) adaptation strength (>= 0)
    gain: torch.Tensor | float = 1.0   # input gain g: 1 or 1 - alpha
    slope: float = 5.0


class ALIFState(NamedTuple):
    v: torch.Tensor       # (B, H) membrane
    a: torch.Tensor       # (B, H) adaptation trace
    s: torch.Tensor       # (B, H) spikes of the previous step


def alif_step(current: torch.Tensor, state: ALIFState, p: ALIFParameters) -> tuple[torch.Tensor, ALIFState]:
    """One step of an adaptive LIF layer given its total input current (module docstring)."""
    thr_prev = 1.0 + p.beta * state.a
    a = p.rho * state.a + (1 - p.rho) * state.s
    v = p.alpha * state.v + p.gain * current - thr_prev * state.s
    s = heaviside(v - (1.0 + p.beta * a), p.slope)
    return s, ALIFState(v, a, s)


class StreamStateALIF(NamedTuple):
    """Per-flow state between updates (rows = flows; K members, L layers, H neurons)."""

    v: torch.Tensor       # (n, L, K, H) membrane
    a: torch.Tensor       # (n, L, K, H) adaptation
    s: torch.Tensor       # (n, L, K, H) spikes of the last step
    m: torch.Tensor       # (n, K, H) leaky readout trace of the last layer
    c: torch.Tensor       # (n, K, H) spike count of the last layer
    u: torch.Tensor       # (n, N) input spike count (direct pathway; N = 0 without it)
    steps: torch.Tensor   # (n,) steps seen


def _tau_param(shape, lo: float, hi: float) -> nn.Parameter:
    """log(tau - 1) of time constants spread log-uniformly over [lo, hi] steps."""
    u = torch.rand(shape)
    tau = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    return nn.Parameter(torch.log(tau - 1.0))


def _decay(p: torch.Tensor) -> torch.Tensor:
    return torch.exp(-1.0 / (1.0 + torch.exp(p)))   # tau = 1 + e^p > 1 step


@register_architecture("alif")
class RecurrentALIF(nn.Module):
    """n_inputs -> n_layers x n_hidden recurrent ALIF -> leaky/rate readout -> n_classes (x members)."""

    def __init__(self, n_inputs: int, n_classes: int, n_steps: int = 64, n_hidden: int = 64, n_layers: int = 1,
                 recurrent: bool = True, tau_mem: tuple[float, float] = (2.0, 20.0),
                 tau_adapt: tuple[float, float] = (5.0, 100.0), tau_readout: tuple[float, float] = (2.0, 30.0),
                 beta_init: float = 0.5, input_std: float = 0.6, surrogate_slope: float = 5.0,
                 dropout: float = 0.1, input_skip: bool = False, members: int = 1, current: str = "direct"):
        super().__init__()
        for name, v in (("n_inputs", n_inputs), ("n_hidden", n_hidden), ("n_classes", n_classes),
                        ("n_steps", n_steps), ("n_layers", n_layers), ("members", members)):
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be within [0, 1), got {dropout}")
        if current not in ("direct", "leaky"):
            raise ValueError(f"current must be 'direct' or 'leaky', got {current!r}")
        self.config: dict[str, Any] = dict(
            n_inputs=int(n_inputs), n_classes=int(n_classes), n_steps=int(n_steps), n_hidden=int(n_hidden),
            n_layers=int(n_layers), recurrent=bool(recurrent), tau_mem=[float(x) for x in tau_mem],
            tau_adapt=[float(x) for x in tau_adapt], tau_readout=[float(x) for x in tau_readout],
            beta_init=float(beta_init), input_std=float(input_std), surrogate_slope=float(surrogate_slope),
            dropout=float(dropout), input_skip=bool(input_skip), members=int(members), current=str(current))
        self.n_inputs, self.n_classes, self.n_steps = int(n_inputs), int(n_classes), int(n_steps)
        self.n_hidden, self.n_layers, self.recurrent = int(n_hidden), int(n_layers), bool(recurrent)
        self.slope, self.dropout = float(surrogate_slope), float(dropout)
        self.input_skip, self.members, self.current = bool(input_skip), int(members), str(current)
        self.preset: str | None = None
        # (first row, global batch size, global steps) while this process trains one shard of each
        # batch (train --nproc): dropout masks are drawn for the whole global batch and for as many
        # steps as its longest sample, as one process draws them, so every rank stays in step
        self.batch_shard: tuple[int, int, int] | None = None
        K, H, C = self.members, self.n_hidden, self.n_classes
        self.w_in = nn.ParameterList()
        self.w_rec = nn.ParameterList()
        self.bias = nn.ParameterList()
        self.tau_mem = nn.ParameterList()
        self.tau_adapt = nn.ParameterList()
        self.beta = nn.ParameterList()
        for layer in range(self.n_layers):
            n_in = self.n_inputs if layer == 0 else H
            std = input_std if layer == 0 else 1.5 / math.sqrt(H)
            self.w_in.append(nn.Parameter(torch.randn(K, n_in, H) * std))
            if self.recurrent:
                self.w_rec.append(nn.Parameter(torch.randn(K, H, H) * (0.5 / math.sqrt(H))))
            self.bias.append(nn.Parameter(torch.zeros(K, H)))
            self.tau_mem.append(_tau_param((K, H), *tau_mem))
            self.tau_adapt.append(_tau_param((K, H), *tau_adapt))
            self.beta.append(nn.Parameter(torch.full((K, H), float(beta_init))))
        self.tau_out = _tau_param((K, H), *tau_readout)
        bound = 1.0 / math.sqrt(2 * H)                      # nn.Linear's default initialisation
        self.w_out = nn.Parameter(torch.empty(K, 2 * H, C).uniform_(-bound, bound))
        self.b_out = nn.Parameter(torch.empty(K, C).uniform_(-bound, bound))
        # optional direct pathway: the readout also integrates the input spikes (their rate per neuron)
        self.w_skip = nn.Parameter(torch.zeros(K, self.n_inputs, C)) if self.input_skip else None

    # ------------------------------------------------------------------ parameters
    def clamp_parameters(self) -> None:
        """Keep adaptation strengths >= 0 (call after each optimiser step)."""
        with torch.no_grad():
            for b in self.beta:
                b.clamp_(min=0.0)

    def params(self, layer: int) -> ALIFParameters:
        alpha = _decay(self.tau_mem[layer])
        gain = (1 - alpha) if self.current == "leaky" else torch.ones_like(alpha)
        return ALIFParameters(alpha, _decay(self.tau_adapt[layer]), self.beta[layer].clamp(min=0.0), gain, self.slope)

    def time_constants(self) -> dict[str, Any]:
        """Learned time constants in steps (packets), per layer and member: for model cards and export."""
        f = (lambda p: (1.0 + torch.exp(p.detach())).cpu().tolist())
        return {"tau_mem": [f(p) for p in self.tau_mem], "tau_adapt": [f(p) for p in self.tau_adapt],
                "tau_readout": f(self.tau_out)}

    # ------------------------------------------------------------------ inputs
    def _dense(self, x: SparseBatch | torch.Tensor) -> torch.Tensor:
        w = self.w_in[0]
        if isinstance(x, SparseBatch):
            if x.n_inputs != self.n_inputs:
                raise ValueError(f"batch has {x.n_inputs} input neurons, model expects {self.n_inputs}")
            return x.to_dense(w.dtype)
        if x.dim() != 3 or x.shape[2] != self.n_inputs:
            raise ValueError(f"expected input (B, T, {self.n_inputs}), got {tuple(x.shape)}")
        return x.to(w.dtype)

    @staticmethod
    def lengths(x: SparseBatch | torch.Tensor) -> torch.Tensor:
        """Steps each sample really has: its last step with an event, plus one (>= 1)."""
        if isinstance(x, SparseBatch):
            n = torch.zeros(x.n_samples, dtype=torch.long, device=x.step.device)
            if x.nnz:
                n = n.scatter_reduce(0, x.sample, x.step + 1, reduce="amax")
            return n.clamp(min=1)
        active = (x != 0).any(2)
        t = torch.arange(1, x.shape[1] + 1, device=x.device)
        return (active * t).amax(1).clamp(min=1)

    # ------------------------------------------------------------------ the recurrence
    def init_state(self, n: int) -> StreamStateALIF:
        w = self.w_in[0]
        z = w.new_zeros(n, self.n_layers, self.members, self.n_hidden)
        zh = w.new_zeros(n, self.members, self.n_hidden)
        zu = w.new_zeros(n, self.n_inputs if self.input_skip else 0)
        return StreamStateALIF(z, z.clone(), z.clone(), zh, zh.clone(), zu, w.new_zeros(n))

    def _scan(self, dense: torch.Tensor, st: StreamStateALIF):
        """Run ``dense`` (B, T, N) from state ``st``: readout features of every step
        (m, c: (B, T, K, H); u: (B, T, N or 0)) and the new state.

        Inside the loop tensors are laid out (K, B, H) so every member's matmul is one
        ``bmm`` (several times faster than an einsum at these sizes)."""
        B, T, N = dense.shape
        K, H = self.members, self.n_hidden
        drop = self.training and self.dropout > 0
        # input currents of all steps and members in one batched matmul: (K, T, B, H)
        cur0 = torch.matmul(dense.transpose(0, 1).reshape(T * B, N), self.w_in[0]).view(K, T, B, H)
        cur0 = cur0 + self.bias[0][:, None, None, :]
        ps = []
        for layer in range(self.n_layers):
            p = self.params(layer)
            ps.append(ALIFParameters(p.alpha[:, None], p.rho[:, None], p.beta[:, None], p.gain[:, None], p.slope))
        states = [ALIFState(*(x[:, layer].transpose(0, 1) for x in (st.v, st.a, st.s)))
                  for layer in range(self.n_layers)]
        kappa = _decay(self.tau_out)[:, None]
        m, c = st.m.transpose(0, 1), st.c.transpose(0, 1)
        ms, cs = [], []
        for t in range(T):
            inp = None
            for layer in range(self.n_layers):
                if layer == 0:
                    cur = cur0[:, t]
                else:
                    cur = torch.baddbmm(self.bias[layer][:, None], inp, self.w_in[layer])
                if self.recurrent:
                    cur = torch.baddbmm(cur, states[layer].s, self.w_rec[layer])
                s, states[layer] = alif_step(cur, states[layer], ps[layer])
                inp = s
            if drop:
                inp = self._dropout(inp)
            m = kappa * m + (1 - kappa) * inp
            c = c + inp
            ms.append(m)
            cs.append(c)
        u_all = (st.u.unsqueeze(1) + dense.cumsum(1)) if self.input_skip else dense.new_zeros(B, T, 0)
        back = (lambda xs: torch.stack(xs, 0).permute(2, 0, 1, 3))  # L x (K, B, H) -> (B, L, K, H)
        new = StreamStateALIF(back([x.v for x in states]), back([x.a for x in states]), back([x.s for x in states]),
                              m.transpose(0, 1), c.transpose(0, 1), u_all[:, -1] if T else st.u, st.steps + T)
        if T:
            feats = (torch.stack(ms, 0).permute(2, 0, 1, 3), torch.stack(cs, 0).permute(2, 0, 1, 3), u_all)
        else:
            feats = (dense.new_zeros(B, 0, K, H), dense.new_zeros(B, 0, K, H), u_all)
        return feats, new

    def _member_scores(self, m: torch.Tensor, c: torch.Tensor, u: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Class scores of each member, (..., K, C), from readout features (..., K, H) and (..., N)."""
        n = steps.clamp(min=1).to(c.dtype)
        feat = torch.cat([m, c / n[..., None, None]], -1)
        K, F = feat.shape[-2], feat.shape[-1]
        lead = feat.shape[:-2]
        x = feat.reshape(-1, K, F).transpose(0, 1)                       # (K, M, F)
        out = torch.baddbmm(self.b_out[:, None], x, self.w_out)          # (K, M, C)
        if self.w_skip is not None:
            out = out + torch.matmul((u / n[..., None]).reshape(-1, u.shape[-1]), self.w_skip)
        return out.transpose(0, 1).reshape(*lead, K, self.n_classes)

    def _score(self, m, c, u, steps) -> torch.Tensor:
        return self._member_scores(m, c, u, steps).mean(-2)

    def step_member_logits(self, x: SparseBatch | torch.Tensor) -> torch.Tensor:
        """Each member's class scores after every step, (B, T, K, C), from rest."""
        dense = self._dense(x)
        B, T, _ = dense.shape
        (m, c, u), _ = self._scan(dense, self.init_state(B))
        steps = torch.arange(1, T + 1, device=dense.device, dtype=dense.dtype).expand(B, T)
        return self._member_scores(m, c, u, steps)

    def step_logits(self, x: SparseBatch | torch.Tensor) -> torch.Tensor:
        """Class scores (members averaged) after every step, (B, T, C), from rest."""
        return self.step_member_logits(x).mean(2)

    def run(self, x: SparseBatch | torch.Tensor, reference: bool = False):
        """Scores at each sample's last real step, and the last layer's spike counts (members summed)."""
        from .model import ModelOutput

        lens = self.lengths(x)
        dense = self._dense(x)
        T = self._n_steps_run(lens)
        dense = dense[:, :T]
        B = dense.shape[0]
        if reference:
            return ModelOutput(self._reference(dense, lens), dense.new_zeros(B, self.n_hidden))
        (m, c, u), _ = self._scan(dense, self.init_state(B))
        rows = torch.arange(B, device=dense.device)
        m_l, c_l, u_l = m[rows, lens - 1], c[rows, lens - 1], u[rows, lens - 1]
        return ModelOutput(self._score(m_l, c_l, u_l, lens), c_l.sum(1).detach())

    def forward(self, x: SparseBatch | torch.Tensor, reference: bool = False) -> torch.Tensor:
        return self.run(x, reference).logits

    def _n_steps_run(self, lens: torch.Tensor) -> int:
        """Steps to run a batch for: its longest sample (the global batch's under ``batch_shard``)."""
        T = int(lens.max()) if lens.numel() else 1
        return max(T, self.batch_shard[2]) if self.batch_shard is not None and self.training else T

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout of (K, B, H) spikes; with ``batch_shard`` the rows of the global batch's mask
        (on CPU, F.dropout's mask is this very bernoulli draw, so shards match one process)."""
        if self.batch_shard is None:
            return nn.functional.dropout(x, self.dropout, True)
        a, n, _ = self.batch_shard
        keep = x.new_empty(x.shape[0], n, *x.shape[2:]).bernoulli_(1.0 - self.dropout)[:, a:a + x.shape[1]]
        return x * keep.div_(1.0 - self.dropout)

    def train_logits(self, x: SparseBatch, checkpoints=(1, 2, 3, 5, 10, 20, 30, 50)):
        """Member scores for anytime training: final (B, K, C), early (B, P, K, C), mask (B, P).

        Early scores are taken after the first k packets for each checkpoint k shorter than
        the sample, so the loss asks for good verdicts from the first packets on; each
        member is scored on its own (an ensemble of independently trained networks).
        """
        lens = self.lengths(x)
        dense = self._dense(x)
        T = self._n_steps_run(lens)
        logits = self.step_member_logits(dense[:, :T])
        B = logits.shape[0]
        final = logits[torch.arange(B, device=logits.device), lens - 1]
        ks = torch.as_tensor([k for k in checkpoints if k <= T], dtype=torch.long, device=logits.device)
        if not ks.numel():
            return final, logits[:, :0], torch.zeros(B, 0, dtype=torch.bool, device=logits.device)
        return final, logits[:, ks - 1], ks.unsqueeze(0) < lens.unsqueeze(1)

    def prefix_logits(self, x: SparseBatch, steps) -> torch.Tensor:
        """Anytime scores of each sample after its first ``steps[i]`` steps."""
        k = torch.as_tensor(steps, dtype=torch.long, device=self.w_in[0].device)
        logits = self.step_logits(x)
        k = torch.minimum(k.clamp(min=1), self.lengths(x).to(k.device))
        return logits[torch.arange(logits.shape[0], device=logits.device), k - 1]

    def _reference(self, dense: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """The plain loop: member by member, one :func:`alif_step` per step and layer (2-D matmuls)."""
        B, T, _ = dense.shape
        H = self.n_hidden
        total = dense.new_zeros(B, self.n_classes)
        params = [self.params(layer) for layer in range(self.n_layers)]
        for k in range(self.members):
            states = [ALIFState(dense.new_zeros(B, H), dense.new_zeros(B, H), dense.new_zeros(B, H))
                      for _ in range(self.n_layers)]
            kappa = _decay(self.tau_out[k])
            m = c = dense.new_zeros(B, H)
            u = dense.new_zeros(B, self.n_inputs)
            out = dense.new_zeros(B, self.n_classes)
            for t in range(T):
                inp = dense[:, t]
                for layer in range(self.n_layers):
                    cur = inp @ self.w_in[layer][k] + self.bias[layer][k]
                    if self.recurrent:
                        cur = cur + states[layer].s @ self.w_rec[layer][k]
                    p = params[layer]
                    pk = ALIFParameters(p.alpha[k], p.rho[k], p.beta[k], p.gain[k], p.slope)
                    inp, states[layer] = alif_step(cur, states[layer], pk)
                m = kappa * m + (1 - kappa) * inp
                c = c + inp
                u = u + dense[:, t]
                n = float(t + 1)
                sc = torch.cat([m, c / n], 1) @ self.w_out[k] + self.b_out[k]
                if self.w_skip is not None:
                    sc = sc + (u / n) @ self.w_skip[k]
                out = torch.where((lens == t + 1).unsqueeze(1), sc, out)
            total = total + out
        return total / self.members

    # ------------------------------------------------------------------ streaming
    @torch.no_grad()
    def advance(self, state: StreamStateALIF, events: SparseBatch | torch.Tensor,
                n_steps: int | None = None) -> StreamStateALIF:
        """Advance every flow of ``state`` by the steps of ``events`` (all flows the same count)."""
        if isinstance(events, SparseBatch):
            if n_steps is not None and n_steps != events.n_steps:
                events = SparseBatch(events.sample, events.step, events.neuron, events.value,
                                     events.n_samples, int(n_steps), events.n_inputs)
        dense = self._dense(events)
        if dense.shape[0] != state.v.shape[0]:
            raise ValueError(f"events are for {dense.shape[0]} flows but the state holds {state.v.shape[0]}")
        if dense.shape[1] == 0:
            return state
        _, new = self._scan(dense, state)
        return new

    def fused_stepper(self):
        """The compiled inference step (``alif_fused.FusedALIF``) for serving on CPU, or None where only
        the torch path applies (training, not float32 on CPU, wide layers, no C compiler)."""
        from . import alif_fused

        w = self.w_in[0]
        if self.training or w.device.type != "cpu" or w.dtype != torch.float32 or self.n_hidden > alif_fused.MAX_HIDDEN:
            return None
        lib = alif_fused.library()
        return alif_fused.FusedALIF(self, lib) if lib is not None else None

    def logits(self, state: StreamStateALIF) -> torch.Tensor:
        """Anytime class scores of each flow after the steps it has seen."""
        return self._score(state.m, state.c, state.u, state.steps)

    def extra_repr(self) -> str:
        return (f"preset={self.preset!r}, layers={self.n_layers}x{self.n_hidden}, members={self.members}, "
                f"recurrent={self.recurrent}, skip={self.input_skip}, n_steps={self.n_steps}")
