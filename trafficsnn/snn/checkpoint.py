"""Checkpoints a daemon can trust: safetensors weights (never pickle) + model.json.

Layout of a model directory::

    model.safetensors   the parameters (safetensors: no code execution on load)
    model.json          format/version, preset, model config, encoding, classes,
                        training-data summary, metrics, temperature, and the
                        sha256, shapes and dtypes of every tensor in the weights file

``load_checkpoint`` verifies the hash, the tensor names, shapes and dtypes, the
preset and the class count, and raises ModelError with a message naming the file
and what to do on any mismatch.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from .device import resolve_device
from .presets import PRESETS, encoding_spec
from .registry import architecture, encoder_for
from .spec_check import validate_spec

FORMAT = "trafficsnn-snn"
VERSION = 1
WEIGHTS = "model.safetensors"
SPEC = "model.json"
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: Any                # a registered architecture (registry.ARCHITECTURES)
    spec: dict[str, Any]
    classes: list[str]
    sha256: str
    encoder: Any              # a registered encoder (registry.ENCODERS)
    path: Path = field(default_factory=Path)

    @property
    def temperature(self) -> float:
        return float(self.spec.get("temperature", 1.0) or 1.0)


def default_model_path() -> Path:
    """$TRAFFICSNN_MODEL if set, else the shipped ``models/ndpi6-snn/``.

    A source checkout (or editable install) has it in the repository's ``models/``; a
    regular install puts the same files under ``<prefix>/share/trafficsnn/models/``.
    """
    import sys

    env = os.environ.get("TRAFFICSNN_MODEL")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2] / "models" / "ndpi6-snn"
    installed = Path(sys.prefix) / "share" / "trafficsnn" / "models" / "ndpi6-snn"
    if not repo.is_dir() and installed.is_dir():
        return installed
    return repo


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(directory: str | os.PathLike, model,
                    spec: dict[str, Any] | None = None) -> Path:
    """Write model.safetensors + model.json into ``directory``; returns the json path.

    ``spec`` may carry: classes (list of names, required unless the preset fixes
    them), encoding (defaults to the preset's), training_data, metrics,
    temperature, and any other JSON-serialisable fields (kept as they are).
    """
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    spec = dict(spec or {})
    preset_name = spec.get("preset") or model.preset
    if preset_name not in PRESETS:
        raise ModelError(f"cannot save a model without a known preset (got {preset_name!r})")
    classes = spec.get("classes") or PRESETS[preset_name].get("classes")
    if not classes or len(classes) != model.n_classes:
        raise ModelError(f"spec needs 'classes' with {model.n_classes} names, got {classes!r}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    wpath = d / WEIGHTS
    tmp = d / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "preset": preset_name})
    os.replace(tmp, wpath)
    out = {
        "format": FORMAT, "version": VERSION, "preset": preset_name,
        "architecture": getattr(model, "architecture", "lif"),
        "model": dict(model.config),
        "encoding": spec.get("encoding") or encoding_spec(model, preset_name),
        "classes": [str(c) for c in classes],
        "training_data": spec.get("training_data", {}),
        "metrics": spec.get("metrics", {}),
        "temperature": float(spec.get("temperature", 1.0)),
    }
    for k, v in spec.items():
        out.setdefault(k, v)
    out["weights"] = {
        "file": WEIGHTS, "sha256": _sha256(wpath),
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                    for k, v in tensors.items()},
    }
    jpath = d / SPEC
    tmpj = d / (SPEC + ".tmp")
    tmpj.write_text(json.dumps(out, indent=2, sort_keys=False) + "\n")
    os.replace(tmpj, jpath)
    return jpath


def _fail(path: Path, what: str, hint: str = "re-train or re-download the model") -> ModelError:
    return ModelError(f"model {path}: {what} ({hint})")


def load_checkpoint(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                    preset: str | None = None, n_classes: int | None = None) -> LoadedModel:
    """Load and verify a model directory (or its model.json); ``preset``/``n_classes`` are checked if given."""
    p = Path(path) if path is not None else default_model_path()
    d = p.parent if p.name == SPEC or p.suffix == ".json" else p
    jpath = p if d is not p else d / SPEC
    if not d.is_dir():
        raise ModelError(f"model directory {d} not found (pass a model directory, or set "
                         f"$TRAFFICSNN_MODEL; `trafficsnn train ... --out DIR` writes one)")
    if not jpath.is_file():
        raise _fail(d, f"{SPEC} is missing")
    try:
        spec = json.loads(jpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _fail(jpath, f"{SPEC} is not valid JSON: {exc}") from None
    if isinstance(spec, dict) and spec.get("format") == "trafficsnn-baseline":
        raise ModelError(f"model {d} is a baseline ({spec.get('model_kind', 'baseline')}): baselines are scored by "
                         f"`trafficsnn evaluate`; replay, classify and export need an SNN model "
                         f"(`trafficsnn train DATA --out DIR` without --model)")
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise _fail(jpath, f"not a trafficsnn SNN spec (format {spec.get('format') if isinstance(spec, dict) else None!r})")
    if spec.get("version") != VERSION:
        raise _fail(jpath, f"spec version {spec.get('version')!r} is not supported (expected {VERSION})",
                    "upgrade trafficsnn or re-train")
    validate_spec(spec, jpath)  # types, ranges, depth, weights.file inside the directory
    try:
        winfo = spec["weights"]
        want_sha, tinfo = str(winfo["sha256"]), dict(winfo["tensors"])
        preset_name, cfg, classes = spec["preset"], dict(spec["model"]), list(spec["classes"])
        enc_spec = dict(spec["encoding"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(jpath, f"{SPEC} lacks a required field ({exc})") from None
    if preset_name not in PRESETS:
        raise _fail(jpath, f"unknown preset {preset_name!r}")
    if preset is not None and preset != preset_name:
        raise _fail(jpath, f"is preset {preset_name!r}, not the requested {preset!r}", "pick a matching model")
    if n_classes is not None and n_classes != len(classes):
        raise _fail(jpath, f"has {len(classes)} classes, {n_classes} were expected", "pick a matching model")
    if cfg.get("n_classes") != len(classes):
        raise _fail(jpath, f"model has {cfg.get('n_classes')} outputs but {len(classes)} class names")
    wpath = d / str(winfo.get("file", WEIGHTS))
    if not wpath.is_file():
        raise _fail(d, f"weights file {wpath.name} is missing")
    got_sha = _sha256(wpath)
    if got_sha != want_sha:
        raise _fail(wpath, f"sha256 {got_sha[:16]}... does not match {SPEC} ({want_sha[:16]}...): "
                    "the weights file is corrupt or was replaced")
    try:
        from safetensors.torch import load_file
        tensors = load_file(str(wpath), device="cpu")
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt file
        raise _fail(wpath, f"cannot read safetensors weights: {exc}") from None
    try:
        encoder = encoder_for(enc_spec)
        arch = spec.get("architecture") or PRESETS[preset_name].get("architecture", "lif")
        model = architecture(str(arch))(n_classes=len(classes), **{k: v for k, v in cfg.items() if k != "n_classes"})
        model.preset = preset_name
    except Exception as exc:  # noqa: BLE001
        raise _fail(jpath, f"invalid model or encoding settings: {exc}") from None
    if encoder.n_steps != model.n_steps or encoder.n_inputs != model.n_inputs:
        raise _fail(jpath, f"encoding ({encoder.n_steps} steps, {encoder.n_inputs} inputs) does not fit "
                    f"the model ({model.n_steps}, {model.n_inputs})")
    expected = model.state_dict()
    if set(tensors) != set(expected) or set(tinfo) != set(expected):
        raise _fail(wpath, f"tensor names {sorted(tensors)} do not match the model's {sorted(expected)}")
    dtype = None
    for k, ref in expected.items():
        t = tensors[k]
        if list(t.shape) != list(ref.shape) or list(tinfo[k].get("shape", [])) != list(ref.shape):
            raise _fail(wpath, f"tensor {k} has shape {list(t.shape)}, expected {list(ref.shape)}")
        if str(t.dtype).replace("torch.", "") != tinfo[k].get("dtype") or t.dtype not in _DTYPES.values():
            raise _fail(wpath, f"tensor {k} has dtype {t.dtype}, spec says {tinfo[k].get('dtype')!r}")
        if dtype is None:
            dtype = t.dtype
        elif t.dtype != dtype:
            raise _fail(wpath, f"mixed dtypes ({t.dtype} and {dtype})")
        if not torch.isfinite(t).all():
            raise _fail(wpath, f"tensor {k} holds NaN or infinite values")
    model = model.to(dtype)
    model.load_state_dict(tensors)
    model = model.to(resolve_device(device)).eval()
    return LoadedModel(model, spec, [str(c) for c in classes], got_sha, encoder, d)
