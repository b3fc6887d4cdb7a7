"""Export a trained network as a NIR graph (Neuromorphic Intermediate Representation).

NIR (the ``nir`` package) describes a network as continuous-time nodes (Linear, Affine,
LIF, CubaLIF, LI, ...) that each simulator discretises itself. snnTorch's NIR import steps
them with forward Euler at dt = 1e-4 s (``x_t = x_{t-1} + dt/tau * (...)``), one NIR step
per input step. The parameters written here are chosen so that exactly this
discretisation, one step per encoder step, reproduces our discrete network; they are
recorded in the graph's metadata so any other simulator can do the same.

``lif`` (the paper and improved presets; ``model.py``, ``kernels.py``)::

    V_t = beta (V_{t-1} - b_j n_j S_{t-1}) + (1 - beta) I_t,   S_t = [V_t / (n_j + eps) > b_j]
    M_t = beta2 M_{t-1} + (1 - beta2) S_t W2,   score_k = mean_t M_tk / (|W2_k|^2 + eps) - b2_k

maps, with u = V / c_j in units of each neuron's threshold c_j = b_j (n_j + eps), onto::

    input -> fc_hidden: Linear W1[:, j] / c_j
          -> hidden: subgraph { CubaLIF(tau_syn = dt/(1-beta), tau_mem = dt, r = 1, v_threshold = 1)
                             + self-connection "reset": Linear diag(-beta/(1-beta) * n_j/(n_j+eps)) }
          -> fc_readout: Linear W2[:, k] / (|W2_k|^2 + eps)
          -> readout: LI(tau = dt/(1-beta2), r = 1) -> readout_bias: Affine(identity, -b2) -> output

The CubaLIF's synaptic current is u (Euler with tau_syn gives the factor beta and the
input gain 1 - beta); its membrane, with tau_mem = dt, equals that current within the
step, so its reset-to-zero never carries over; the soft reset (subtract the threshold, one
step later, decayed by beta), which NIR's LIF reset-to-v_reset cannot express, is the
self-connection. A neuron with b_j <= 0 keeps u = V / (n_j + eps) with threshold b_j. Class
scores are the mean of the graph's output over the steps fed (all ``n_steps`` for a whole
window, as ``forward``; the steps seen so far, as the daemon's anytime verdict).

``alif`` (the ``packet`` preset, the shipped model) does not map: see :func:`_alif`.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..errors import ConfigError, ModelError
from .neurons import EPS

DT = 1e-4   # the step snnTorch's NIR import assumes (its r and w_scale checks use it)

_EXPORTERS: dict[str, Callable[..., tuple[dict, list, dict]]] = {}


def _exporter(arch: str):
    def deco(f):
        _EXPORTERS[arch] = f
        return f
    return deco


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _tau(beta: float, dt: float, what: str) -> float:
    """Time constant whose forward-Euler step at ``dt`` decays by ``beta``: tau = dt / (1 - beta)."""
    if not 0.0 <= beta < 1.0:
        raise ModelError(f"{what} beta = {beta!r} has no finite NIR time constant (need 0 <= beta < 1)")
    return dt / (1.0 - beta)


@_exporter("lif")
def _lif(model, dt: float):
    import nir

    w1, b, beta = _np(model.hidden.weight), _np(model.hidden.b), float(_np(model.hidden.beta).reshape(-1)[0])
    w2, b2, beta2 = _np(model.readout.weight), _np(model.readout.b), float(_np(model.readout.beta).reshape(-1)[0])
    H, C = model.n_hidden, model.n_classes
    n = (w1 * w1).sum(0)
    tau_syn = _tau(beta, dt, "hidden")
    # u = V / scale: in threshold units (threshold 1) where b_j > 0; else V / (n_j + eps) with threshold b_j
    pos = b > 0
    scale = np.where(pos, b * (n + EPS), n + EPS)
    v_th = np.where(pos, 1.0, b)
    reset = -beta / (1.0 - beta) * np.where(pos, 1.0, b) * n / (n + EPS)
    ones, zeros = np.ones(H), np.zeros(H)
    # the recurrence is a subgraph of its own: snnTorch 1.0 rewrites a top-level CubaLIF <-> Linear cycle into
    # one whose input enters through the recurrent weights (wrong), and leaves a ready subgraph alone
    hidden = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type=np.array([H])),
            "lif": nir.CubaLIF(tau_syn=np.full(H, tau_syn), tau_mem=np.full(H, dt), r=ones, v_leak=zeros,
                               v_threshold=v_th, v_reset=zeros.copy(), w_in=ones.copy()),
            "reset": nir.Linear(weight=np.diag(reset)),
            "output": nir.Output(output_type=np.array([H])),
        },
        edges=[("input", "lif"), ("lif", "reset"), ("reset", "lif"), ("lif", "output")],
        metadata={"role": "hidden layer: LIF with soft reset (the self-connection 'reset' subtracts the "
                          "threshold one step after a spike)"},
    )
    # the file keeps nodes sorted by name and nirtorch (2.6) walks them from the input node on, cyclically;
    # it fails on a subgraph node met before the node feeding it, so "fc_hidden" must come before "hidden"
    nodes = {
        "input": nir.Input(input_type=np.array([model.n_inputs])),
        "fc_hidden": nir.Linear(weight=(w1 / scale).T.copy()),
        "hidden": hidden,
        "fc_readout": nir.Linear(weight=(w2 / ((w2 * w2).sum(0) + EPS)).T.copy()),
        "readout": nir.LI(tau=np.full(C, _tau(beta2, dt, "readout")), r=np.ones(C), v_leak=np.zeros(C)),
        "readout_bias": nir.Affine(weight=np.eye(C), bias=-b2),
        "output": nir.Output(output_type=np.array([C])),
    }
    edges = [("input", "fc_hidden"), ("fc_hidden", "hidden"), ("hidden", "fc_readout"), ("fc_readout", "readout"),
             ("readout", "readout_bias"), ("readout_bias", "output")]
    meta = {"readout": "class scores = mean of the output over the steps fed (T = n_steps for a whole "
                       "window; the steps seen so far for an anytime verdict); argmax = class",
            "hidden_beta": beta, "readout_beta": beta2,
            "summary": f"input {model.n_inputs} -> Linear -> recurrent CubaLIF {H} (soft reset) -> Linear "
                       f"-> LI {C} -> Affine -> output"}
    return nodes, edges, meta


@_exporter("alif")
def _alif(model, dt: float):
    """The recurrent adaptive LIF has parts no NIR primitive expresses; say which, precisely."""
    beta = np.concatenate([_np(b).reshape(-1) for b in model.beta]).clip(min=0.0)
    parts = []
    if (beta > 0).any():
        parts.append(f"the adaptive threshold A_t = 1 + beta a_t ({int((beta > 0).sum())} of {beta.size} "
                     "neurons have beta > 0; NIR LIF/CubaLIF thresholds are constant) and the soft reset by "
                     "it, A_{t-1} s_{t-1}, a product of a state and a spike that no linear NIR node forms")
    parts.append("the readout's spike rate c_t / t (division by the step count, not time-invariant)")
    if model.input_skip:
        parts.append("the input skip pathway's rate u_t / t")
    raise ModelError(
        f"architecture 'alif' (preset {model.preset!r}) does not map onto NIR primitives: "
        + "; ".join(parts)
        + ". Its input and recurrent weights, membrane leak and leaky readout trace would map; "
        "export a 'paper' or 'improved' model (architecture 'lif'), which maps exactly")


def to_nir(model, dt: float = DT, metadata: dict[str, Any] | None = None):
    """The NIR graph of ``model`` (an architecture registered in :mod:`registry`).

    Raises ModelError naming what does not map when the architecture has parts without a
    NIR primitive, ConfigError when the ``nir`` package is missing.
    """
    try:
        import nir
    except ImportError:
        raise ConfigError("NIR export needs the 'nir' package: pip install 'trafficsnn[nir]'") from None
    if not dt > 0:
        raise ConfigError(f"the NIR time step dt must be positive, got {dt!r}")
    arch = getattr(model, "architecture", None)
    if arch not in _EXPORTERS:
        raise ModelError(f"architecture {arch!r} has no NIR mapping (known: {', '.join(sorted(_EXPORTERS))})")
    nodes, edges, meta = _EXPORTERS[arch](model, float(dt))
    meta = {"producer": f"trafficsnn {__version__}", "architecture": arch, "preset": str(model.preset),
            "dt": float(dt), "nir_version": nir.version,
            "discretisation": "forward Euler at dt, one NIR step per encoder step (snnTorch's NIR import: "
                              "dt = 1e-4); recurrent edges carry the previous step's output",
            "unmapped": "none", **meta, **(metadata or {})}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def export_nir(loaded, path: str | os.PathLike, dt: float = DT):
    """Write the NIR graph of a loaded checkpoint (``checkpoint.LoadedModel``) to ``path``; returns the graph.

    The file is written next to its destination and renamed into place, so a failed
    export never leaves a partial file.
    """
    meta = {"classes": json.dumps(loaded.classes), "encoding": json.dumps(loaded.spec.get("encoding", {})),
            "source_model": str(loaded.path), "source_sha256": loaded.sha256,
            "temperature": float(loaded.temperature),
            "input": "one step = one encoder step: the values the model's encoding gives each input neuron"}
    graph = to_nir(loaded.model, dt, meta)
    import nir

    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"cannot write {out}: it is a directory (give a file name, e.g. model.nir)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent if str(out.parent) else ".")
        os.close(fd)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc} (check the folder exists and is writable)") from None
    try:
        nir.write(tmp, graph)
        os.chmod(tmp, 0o644)          # mkstemp makes it 0600; a model file is not a secret
        os.replace(tmp, out)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return graph
