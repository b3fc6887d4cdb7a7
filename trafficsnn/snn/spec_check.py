"""Strict validation of a checkpoint's model.json before anything is built from it.

The weights file is covered by its sha256; model.json is not, so every field the
loader, the encoder or the daemon uses is checked here for type, range and size:
a hostile or damaged file becomes one ``ModelError`` naming the field, never a
TypeError deep inside torch, a NaN verdict or an allocation of many gigabytes.
``weights.file`` must name a file inside the model directory.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ..errors import ModelError

MAX_DEPTH = 32                # nesting of JSON containers anywhere in the file
MAX_NODES = 1_000_000         # JSON values in the whole file
MAX_CLASSES = 10_000
MAX_TENSORS = 1_000
MAX_DIM = 1 << 20             # any one model size (inputs, hidden, steps)
MAX_PARAMS = 1 << 28          # elements of all tensors together (1 GiB of float32)
TENSOR_DTYPES = ("float32", "float64", "float16", "bfloat16")
_SHA = re.compile(r"[0-9a-f]{64}")


def _bad(path: Path, what: str) -> ModelError:
    return ModelError(f"model {path}: {what} (fix or re-create model.json, e.g. re-train or re-download the model)")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _finite(x: Any) -> bool:
    return _is_number(x) and math.isfinite(x)


def _shape_of_json(spec: Any, path: Path) -> None:
    """Depth and size of the whole document (iterative: a deep file cannot exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(spec, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise _bad(path, f"more than {MAX_NODES} JSON values")
        if isinstance(node, (dict, list)):
            if depth > MAX_DEPTH:
                raise _bad(path, f"JSON nested deeper than {MAX_DEPTH} levels")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((c, depth + 1) for c in children)


def _positive_int(d: dict, key: str, where: str, path: Path, limit: int = MAX_DIM, required: bool = True) -> None:
    if key not in d:
        if required:
            raise _bad(path, f"{where}.{key} is missing")
        return
    v = d[key]
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= limit:
        raise _bad(path, f"{where}.{key} must be an integer in [1, {limit}], got {v!r:.60}")


def validate_spec(spec: Any, path: str | Path) -> None:
    """Raise ``ModelError`` unless ``spec`` (the parsed model.json at ``path``) is well formed and sane."""
    path = Path(path)
    if not isinstance(spec, dict):
        raise _bad(path, "model.json is not a JSON object")
    _shape_of_json(spec, path)
    for key in ("preset", "model", "encoding", "classes", "weights"):
        if key not in spec:
            raise _bad(path, f"model.json lacks a required field ({key!r})")
    for key in ("name", "model_id", "preset"):
        if key in spec and spec[key] is not None and (not isinstance(spec[key], str) or len(spec[key]) > 256):
            raise _bad(path, f"{key} must be a string of at most 256 characters")
    if not isinstance(spec.get("preset"), str):
        raise _bad(path, "preset must be a string")

    # temperature: the verdicts' softmax divides by it
    if "temperature" in spec:
        t = spec["temperature"]
        if not _finite(t) or t <= 0:
            raise _bad(path, f"temperature must be a finite number > 0, got {t!r:.60}")

    if "unknown_threshold" in spec:
        u = spec["unknown_threshold"]
        if not _finite(u) or not 0.0 <= u <= 1.0:
            raise _bad(path, f"unknown_threshold must be a number in [0, 1], got {u!r:.60}")

    classes = spec.get("classes")
    if not isinstance(classes, list) or not 1 <= len(classes) <= MAX_CLASSES:
        raise _bad(path, f"classes must be a list of 1 to {MAX_CLASSES} names")
    if not all(isinstance(c, str) and 0 < len(c) <= 256 for c in classes):
        raise _bad(path, "every class name must be a non-empty string of at most 256 characters")
    if len(set(classes)) != len(classes):
        raise _bad(path, "class names must be unique")

    model = spec.get("model")
    if not isinstance(model, dict):
        raise _bad(path, "model must be an object of model settings")
    for k, v in model.items():
        short_list = isinstance(v, list) and len(v) <= 8 and all(_finite(x) for x in v)   # e.g. a tau range
        if not isinstance(k, str) or not (v is None or isinstance(v, (str, bool)) or _finite(v) or short_list):
            raise _bad(path, f"model.{k} must be a finite number, a string, true/false, null or a short list of "
                             f"numbers, got {v!r:.60}")
    if "architecture" in spec and (not isinstance(spec["architecture"], str) or len(spec["architecture"]) > 64):
        raise _bad(path, "architecture must be a string of at most 64 characters")
    for k in ("n_inputs", "n_hidden", "n_steps"):
        _positive_int(model, k, "model", path, required=False)
    _positive_int(model, "n_classes", "model", path, limit=MAX_CLASSES)
    if int(model.get("n_inputs", 1)) * int(model.get("n_hidden", 1)) > MAX_PARAMS:
        raise _bad(path, "model.n_inputs x model.n_hidden is too large")

    enc = spec.get("encoding")
    if not isinstance(enc, dict) or not isinstance(enc.get("kind"), str):
        raise _bad(path, "encoding must be an object with a string 'kind'")
    if "bin_s" in enc and (not _finite(enc["bin_s"]) or enc["bin_s"] <= 0):
        raise _bad(path, f"encoding.bin_s must be a finite number of seconds > 0, got {enc['bin_s']!r:.60}")
    for k in ("n_steps", "n_inputs"):
        _positive_int(enc, k, "encoding", path, required=False)
    if "value" in enc and not isinstance(enc["value"], str):
        raise _bad(path, "encoding.value must be a string")
    for k, v in enc.items():
        if isinstance(v, list) and not (len(v) <= 10_000 and (all(_finite(x) for x in v)
                                                          or all(isinstance(x, str) and len(x) <= 64 for x in v))):
            raise _bad(path, f"encoding.{k} must be a list of finite numbers or of short names")
        if isinstance(v, float) and not math.isfinite(v):
            raise _bad(path, f"encoding.{k} must be finite")

    w = spec.get("weights")
    if not isinstance(w, dict):
        raise _bad(path, "weights must be an object (file, sha256, tensors)")
    f = w.get("file", "model.safetensors")
    if not isinstance(f, str) or not f or "\0" in f:
        raise _bad(path, "weights.file must be a file name")
    directory = path.parent if path.suffix == ".json" else path
    try:
        inside = (directory / f).resolve().is_relative_to(directory.resolve())
    except (OSError, ValueError, RuntimeError):
        inside = False
    if Path(f).is_absolute() or not inside:
        raise _bad(path, f"weights.file {f!r:.80} points outside the model directory {directory}")
    sha = w.get("sha256")
    if not isinstance(sha, str) or not _SHA.fullmatch(sha):
        raise _bad(path, "weights.sha256 must be 64 lowercase hex digits")
    tensors = w.get("tensors")
    if not isinstance(tensors, dict) or not 1 <= len(tensors) <= MAX_TENSORS:
        raise _bad(path, f"weights.tensors must be an object of 1 to {MAX_TENSORS} tensors")
    total = 0
    for name, info in tensors.items():
        if not isinstance(info, dict):
            raise _bad(path, f"weights.tensors[{name!r:.60}] must be an object (shape, dtype)")
        shape = info.get("shape")
        if not isinstance(shape, list) or len(shape) > 8 or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_PARAMS for s in shape):
            raise _bad(path, f"weights.tensors[{name!r:.60}].shape must be a list of at most 8 sizes")
        if info.get("dtype") not in TENSOR_DTYPES:
            raise _bad(path, f"weights.tensors[{name!r:.60}].dtype must be one of {', '.join(TENSOR_DTYPES)}")
        total += math.prod(shape)
        if total > MAX_PARAMS:
            raise _bad(path, f"weights.tensors hold more than {MAX_PARAMS} elements")
