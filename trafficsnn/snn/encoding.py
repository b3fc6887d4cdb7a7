"""Input encoding: packets -> sparse (time step, input neuron, count) events.

Two encoders, one sparse batch type:

* :class:`PaperEncoder` reproduces the reference paper exactly (paper_model.md
  §2.4): a 2-D histogram of a 60 s window, 300 time bins spread over the sample's
  *own* min..max time, 300 asymmetric size bins with direction-2 sizes shifted by
  1590. :func:`paper_histogram` is the dense form, :meth:`PaperEncoder.sample` the
  sparse one; both equal ``np.histogram2d`` bit for bit.
* :class:`ImprovedEncoder` fixes the paper's flaws (§9): fixed 200 ms steps on a
  single clock starting at the flow's first packet, direction 0 = client->server,
  the same size bins for both directions (table below) with an overflow bin.

Both register themselves in :mod:`trafficsnn.snn.registry` (``registry.encoder_for``
builds the encoder a preset or checkpoint names); the packet-clocked encoder lives in
:mod:`trafficsnn.snn.packet_encoding`. Training and serving both call :func:`collate`
to batch samples and a streaming encoder's ``stream`` method to turn packets into
steps, so a model sees in production exactly what it saw in training. This module
needs only numpy; torch is imported lazily by :class:`SparseBatch` helpers.

Improved size bins (per direction; neuron = direction * 150 + bin)::

    bin      IP length (bytes)   width
    0        0 .. 39             catch-all (shorter than any TCP/IPv4 packet)
    1-50     40 .. 89            1 B   (ACKs, keep-alives, small UDP: exact sizes matter)
    51-100   90 .. 589           10 B
    101-148  590 .. 1549         20 B  (1500-byte MTU packets land in bin 146)
    149      >= 1550             overflow (jumbo frames, GRO/TSO-merged segments)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence

import numpy as np

from ..errors import ConfigError
from .registry import register_encoder
from .streaming import StreamEvents, StreamInput

if TYPE_CHECKING:  # pragma: no cover
    import torch

PAPER_N_STEPS = 300
PAPER_N_INPUTS = 300
PAPER_SHIFT = 1590


# --------------------------------------------------------------------------- size bins
def calibration_bins_size(n_bins: int, steps: Sequence[int], start: int) -> tuple[np.ndarray, int]:
    """The paper's ``utils.calibration_bins_size``: size edges for two directions.

    Direction 1: one catch-all bin [0, start), then ``n_bins/2`` bins split evenly
    over the widths in ``steps`` starting at ``start``. Direction 2 (sizes shifted
    by the end of direction 1): the same widths starting at 0, with one bin fewer so
    that the total is ``n_bins`` bins (``n_bins + 1`` edges).
    Returns ``(edges, shift)``.
    """
    half = n_bins // 2
    per = half // len(steps)
    edges = [0.0]
    x = float(start)
    for w in steps:
        for _ in range(per):
            edges.append(x)
            x += w
    edges.append(x)                      # end of direction 1 == shift
    shift = int(x)
    x = float(shift)
    n2 = n_bins - half - 1               # direction 2 gets one bin fewer
    count = 0
    for w in steps:
        for _ in range(per):
            if count == n2:
                break
            x += w
            edges.append(x)
            count += 1
    return np.asarray(edges, dtype=np.float64), shift


def paper_size_edges() -> np.ndarray:
    """The 301 size edges of the paper (``calibration_bins_size(300, [1, 10, 20], 40)``)."""
    edges, shift = calibration_bins_size(300, [1, 10, 20], 40)
    assert shift == PAPER_SHIFT and len(edges) == 301
    return edges


_PAPER_EDGES = paper_size_edges()


def _histogramdd_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index as numpy.histogramdd computes it; -1 for values outside the edges."""
    idx = np.searchsorted(edges, values, side="right")
    idx[values == edges[-1]] -= 1        # the last bin is closed on the right
    idx = idx - 1
    idx[(idx < 0) | (idx >= len(edges) - 1)] = -1
    return idx


def paper_size_bins(size: np.ndarray, direction2: bool = False) -> np.ndarray:
    """Paper input neuron of each size (-1 = dropped); direction 2 is shifted by 1590."""
    v = np.asarray(size, dtype=np.float64) + (PAPER_SHIFT if direction2 else 0)
    return _histogramdd_index(v, _PAPER_EDGES)


def _paper_time_edges(times: np.ndarray, n_bins: int = PAPER_N_STEPS) -> np.ndarray:
    """numpy.histogram2d's automatic time edges: linspace over min..max (±0.5 if equal)."""
    lo, hi = float(times.min()), float(times.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n_bins + 1)


def _paper_points(t1, s1, t2, s2) -> tuple[np.ndarray, np.ndarray]:
    t = np.concatenate([np.asarray(t1, np.float64), np.asarray(t2, np.float64)])
    s = np.concatenate([np.asarray(s1, np.float64), np.asarray(s2, np.float64) + PAPER_SHIFT])
    if t.size == 0:
        raise ValueError("paper window has no packets")
    return t, s


def paper_histogram(t1, s1, t2, s2) -> np.ndarray:
    """The paper's dense input (300 time bins, 300 size bins), float64 packet counts.

    Times of both directions are concatenated (each relative to its own direction's
    first packet, as the paper does), direction-2 sizes are shifted by 1590, and
    ``np.histogram2d(times, sizes, bins=[300, paper_size_edges()])`` is returned.
    """
    t, s = _paper_points(t1, s1, t2, s2)
    h, _, _ = np.histogram2d(t, s, bins=[PAPER_N_STEPS, _PAPER_EDGES])
    return h


# --------------------------------------------------------------------------- samples
class SparseSample(NamedTuple):
    """One sample as aggregated events: counts per distinct (step, neuron)."""

    step: np.ndarray     # int16 / int32, time step
    neuron: np.ndarray   # int16 / int32, input neuron
    value: np.ndarray    # float32 count (or transformed count)

    @property
    def nnz(self) -> int:
        return int(self.step.shape[0])

    def to_dense(self, n_steps: int, n_inputs: int, dtype=np.float64) -> np.ndarray:
        out = np.zeros((n_steps, n_inputs), dtype=dtype)
        np.add.at(out, (self.step.astype(np.int64), self.neuron.astype(np.int64)), self.value)
        return out


def aggregate(step: np.ndarray, neuron: np.ndarray, n_inputs: int,
              weight: np.ndarray | None = None, value: str = "count") -> SparseSample:
    """Sum per-packet events into counts per (step, neuron), sorted by step then neuron."""
    step = np.asarray(step, dtype=np.int64)
    neuron = np.asarray(neuron, dtype=np.int64)
    flat = step * n_inputs + neuron
    keys, inv = np.unique(flat, return_inverse=True)
    counts = np.bincount(inv.ravel(), weights=weight, minlength=keys.size).astype(np.float64)
    counts = apply_value_transform(counts, value)
    dt = np.int16 if n_inputs < 32768 and (keys.size == 0 or keys[-1] // n_inputs < 32768) else np.int32
    return SparseSample((keys // n_inputs).astype(dt), (keys % n_inputs).astype(dt),
                        counts.astype(np.float32))


def apply_value_transform(counts: np.ndarray, value: str) -> np.ndarray:
    if value == "count":
        return counts
    if value == "log1p":
        return np.log1p(counts)
    raise ConfigError(f"unknown input value transform {value!r} (use 'count' or 'log1p')")


@register_encoder("paper")
class PaperEncoder:
    """The paper's histogram encoding (faithful preset), as sparse events.

    Not streaming: its time axis spans each window's own min..max, known only at the end.
    """

    streaming = False

    def __init__(self, n_steps: int = PAPER_N_STEPS):
        if n_steps != PAPER_N_STEPS:
            raise ConfigError(f"the paper encoding has exactly {PAPER_N_STEPS} time bins, not {n_steps}")
        self.n_steps = PAPER_N_STEPS
        self.n_inputs = PAPER_N_INPUTS
        self.value = "count"

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "PaperEncoder":
        return cls(int(spec.get("n_steps", PAPER_N_STEPS)))

    def spec(self) -> dict[str, Any]:
        return {"kind": "paper", "n_steps": self.n_steps, "n_inputs": self.n_inputs,
                "size_edges": "calibration_bins_size(300,[1,10,20],40)", "dir2_shift": PAPER_SHIFT,
                "time_bins": "300 over the sample's own min..max time", "value": "count"}

    def sample(self, t1, s1, t2, s2) -> SparseSample:
        """Sparse form of :func:`paper_histogram` (identical counts)."""
        t, s = _paper_points(t1, s1, t2, s2)
        ti = _histogramdd_index(t, _paper_time_edges(t))
        si = _histogramdd_index(s, _PAPER_EDGES)
        keep = (ti >= 0) & (si >= 0)
        return aggregate(ti[keep], si[keep], self.n_inputs)

    def window(self, w) -> SparseSample:
        """Encode an object with ``t1, s1, t2, s2`` attributes (flows.PaperWindow)."""
        return self.sample(w.t1, w.s1, w.t2, w.s2)

    histogram = staticmethod(paper_histogram)


# improved encoder: symmetric size bins (see module docstring)
IMPROVED_SIZE_EDGES = np.concatenate([
    [0.0],
    np.arange(40, 90, 1.0),        # bins 1..50
    np.arange(90, 590, 10.0),      # bins 51..100
    np.arange(590, 1550 + 1, 20.0),  # bins 101..148, last edge 1550
])  # 150 edges -> 149 bounded bins + overflow bin 149
IMPROVED_BINS_PER_DIRECTION = 150


def improved_size_bins(size: np.ndarray) -> np.ndarray:
    """Size bin (0..149) of each IP length for the improved encoder; 149 = overflow."""
    s = np.asarray(size, dtype=np.float64)
    return np.searchsorted(IMPROVED_SIZE_EDGES, s, side="right") - 1


@register_encoder("improved")
class ImprovedEncoder:
    """Fixed-step encoding on one clock (improved preset).

    Step = floor((ts_rel - t0) / bin_s), kept when 0 <= step < n_steps, where ts_rel
    is seconds since the flow's first packet (both directions share it) and t0 the
    window start (0 for the first 60 s of a flow). Neuron = direction * 150 +
    size bin. For streaming, feed only *complete* steps to the network (a step is
    complete once a packet or the clock has passed its end), so that counts per
    step are final and equal to the offline encoding.
    """

    streaming = True

    def __init__(self, bin_s: float = 0.2, n_steps: int = 300, value: str = "count"):
        if not (bin_s > 0 and np.isfinite(bin_s)):
            raise ConfigError(f"bin_s must be a positive number of seconds, got {bin_s!r}")
        if int(n_steps) != n_steps or n_steps < 1:
            raise ConfigError(f"n_steps must be a positive integer, got {n_steps!r}")
        apply_value_transform(np.zeros(1), value)
        self.bin_s = float(bin_s)
        self.n_steps = int(n_steps)
        self.n_inputs = 2 * IMPROVED_BINS_PER_DIRECTION
        self.value = value

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "ImprovedEncoder":
        return cls(float(spec.get("bin_s", 0.2)), int(spec.get("n_steps", 300)), str(spec.get("value", "count")))

    def window_mask(self, rel_ts: np.ndarray) -> np.ndarray:
        """Which packets of a flow (seconds since its first) a sample covers."""
        return np.asarray(rel_ts) < self.duration_s

    def spec(self) -> dict[str, Any]:
        return {"kind": "improved", "bin_s": self.bin_s, "n_steps": self.n_steps,
                "n_inputs": self.n_inputs, "value": self.value,
                "size_edges": [float(x) for x in IMPROVED_SIZE_EDGES],
                "direction": "0 = client->server, 1 = server->client"}

    @property
    def duration_s(self) -> float:
        return self.bin_s * self.n_steps

    def steps_of(self, ts_rel: np.ndarray, t0: float = 0.0) -> np.ndarray:
        """Time step of each timestamp (may be out of range)."""
        return np.floor((np.asarray(ts_rel, dtype=np.float64) - t0) / self.bin_s).astype(np.int64)

    def events(self, ts_rel, size, direction, t0: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Per-packet (step, neuron) int64 arrays, packets outside the window dropped."""
        step = self.steps_of(ts_rel, t0)
        d = np.asarray(direction, dtype=np.int64)
        neuron = d * IMPROVED_BINS_PER_DIRECTION + improved_size_bins(size)
        keep = (step >= 0) & (step < self.n_steps)
        return step[keep], neuron[keep]

    def sample(self, ts_rel, size, direction, t0: float = 0.0) -> SparseSample:
        """Aggregated counts per (step, neuron) of one flow or window."""
        step, neuron = self.events(ts_rel, size, direction, t0)
        return aggregate(step, neuron, self.n_inputs, value=self.value)

    def flow(self, flow, t0: float = 0.0) -> SparseSample:
        """Encode a flows.Flow (or anything with ts, size, direction arrays)."""
        ts = np.asarray(flow.ts, dtype=np.float64)
        rel = ts - ts[0] if ts.size else ts
        return self.sample(rel, flow.size, flow.direction, t0)

    def stream(self, x: StreamInput) -> StreamEvents:
        """Events of the steps the new packets complete.

        A step is complete once a later packet (or the flow's end) has passed it; the
        packets of a flow's newest, still-open step are held back (``hold``) and must
        come again with its next packets, so each step's counts are final and equal the
        offline encoding. At the flow's end every step up to ``n_steps`` is complete.
        """
        f = np.asarray(x.flow, np.int64)
        n = x.n_flows
        done = np.asarray(x.steps_done, np.int64)
        step = self.steps_of(np.asarray(x.ts, np.float64) - np.asarray(x.start_ts, np.float64)[f])
        neuron = np.asarray(x.direction, np.int64) * IMPROVED_BINS_PER_DIRECTION + improved_size_bins(x.size)
        target = done.copy()
        if step.size:
            last = np.full(n, -1, np.int64)
            np.maximum.at(last, f, step)
            np.maximum(target, np.minimum(last, self.n_steps), out=target)
        final = np.asarray(x.final, bool)
        target[final] = np.maximum(done[final], self.n_steps)
        in_window = (step >= done[f]) & (step < self.n_steps)
        feed = in_window & (step < target[f])
        hold = in_window & ~feed & ~final[f]
        # aggregate counts per (flow, step, neuron), then the value transform
        flat = (f[feed] * self.n_steps + step[feed]) * self.n_inputs + neuron[feed]
        uniq, counts = np.unique(flat, return_counts=True)
        values = apply_value_transform(counts.astype(np.float64), self.value).astype(np.float32)
        rest = uniq // self.n_inputs
        return StreamEvents(rest // self.n_steps, rest % self.n_steps, uniq % self.n_inputs, values, target, hold,
                            int((step < done[f]).sum()), int((step >= self.n_steps).sum()))


# --------------------------------------------------------------------------- batches
@dataclass
class SparseBatch:
    """A batch in COO form: one row per non-zero (sample, step, neuron) with its value.

    Duplicates are allowed (they add up). Used by training, evaluation and the
    daemon alike; ``to_dense`` gives the (B, T, N) tensor of the paper's code.
    """

    sample: "torch.Tensor"   # (nnz,) int64
    step: "torch.Tensor"     # (nnz,) int64
    neuron: "torch.Tensor"   # (nnz,) int64
    value: "torch.Tensor"    # (nnz,) float
    n_samples: int
    n_steps: int
    n_inputs: int

    @property
    def nnz(self) -> int:
        return int(self.sample.shape[0])

    @property
    def device(self):
        return self.value.device

    def to(self, device=None, dtype=None) -> "SparseBatch":
        return SparseBatch(self.sample.to(device), self.step.to(device), self.neuron.to(device),
                           self.value.to(device=device, dtype=dtype), self.n_samples,
                           self.n_steps, self.n_inputs)

    def to_dense(self, dtype=None) -> "torch.Tensor":
        import torch
        out = torch.zeros(self.n_samples * self.n_steps * self.n_inputs,
                          dtype=dtype or self.value.dtype, device=self.value.device)
        flat = (self.sample * self.n_steps + self.step) * self.n_inputs + self.neuron
        out.index_add_(0, flat, self.value.to(out.dtype))
        return out.view(self.n_samples, self.n_steps, self.n_inputs)

    @staticmethod
    def from_dense(x: "torch.Tensor") -> "SparseBatch":
        b, t, n = x.nonzero(as_tuple=True)
        return SparseBatch(b, t, n, x[b, t, n], int(x.shape[0]), int(x.shape[1]), int(x.shape[2]))

    def select(self, rows) -> "SparseBatch":
        """Samples ``rows`` (index sequence or tensor), renumbered 0..len(rows)-1, in that order."""
        import torch
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.sample.device)
        new_id = torch.full((self.n_samples,), -1, dtype=torch.long, device=self.sample.device)
        new_id[rows] = torch.arange(rows.numel(), device=self.sample.device)
        ns = new_id[self.sample]
        keep = ns >= 0
        order = torch.argsort(ns[keep] * self.n_steps + self.step[keep], stable=True)
        return SparseBatch(ns[keep][order], self.step[keep][order], self.neuron[keep][order],
                           self.value[keep][order], int(rows.numel()), self.n_steps, self.n_inputs)

    def steps(self, start: int, stop: int) -> "SparseBatch":
        """Events of steps [start, stop), renumbered from 0 (for streaming in pieces)."""
        keep = (self.step >= start) & (self.step < stop)
        return SparseBatch(self.sample[keep], self.step[keep] - start, self.neuron[keep],
                           self.value[keep], self.n_samples, stop - start, self.n_inputs)


def collate(samples: Sequence[SparseSample | tuple], n_steps: int, n_inputs: int,
            dtype=None, device=None) -> SparseBatch:
    """Stack sparse samples (SparseSample or (step, neuron, value) tuples) into a batch."""
    lens = [len(s[0]) for s in samples]
    if sum(lens):
        step = np.concatenate([np.asarray(s[0]) for s in samples])
        neuron = np.concatenate([np.asarray(s[1]) for s in samples])
        value = np.concatenate([np.asarray(s[2]) for s in samples])
    else:
        step = neuron = value = np.zeros(0)
    return collate_events(lens, step, neuron, value, n_steps, n_inputs, dtype=dtype, device=device)


def collate_events(lens: Sequence[int] | np.ndarray, step: np.ndarray, neuron: np.ndarray, value: np.ndarray,
                   n_steps: int, n_inputs: int, dtype=None, device=None) -> SparseBatch:
    """A batch from samples already laid end to end: ``lens[i]`` events of sample i, in order
    (what :func:`collate` builds, without a Python object per sample)."""
    import torch
    step = np.asarray(step).astype(np.int64)
    neuron = np.asarray(neuron).astype(np.int64)
    value = np.asarray(value).astype(np.float32)
    if step.size and (step.min() < 0 or step.max() >= n_steps or neuron.min() < 0 or neuron.max() >= n_inputs):
        raise ValueError(f"events outside the {n_steps} x {n_inputs} input grid")
    sample = np.repeat(np.arange(len(lens), dtype=np.int64), lens)
    dtype = dtype or torch.get_default_dtype()
    return SparseBatch(torch.from_numpy(sample).to(device), torch.from_numpy(step).to(device),
                       torch.from_numpy(neuron).to(device),
                       torch.from_numpy(value).to(device=device, dtype=dtype),
                       len(lens), int(n_steps), int(n_inputs))

