"""``--device auto|cpu|cuda``: one place that turns the option into a torch device."""
from __future__ import annotations

import torch

from ..errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """auto -> cuda when a GPU is usable, else cpu; cuda without a GPU is an error."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no usable CUDA GPU here (torch {torch.__version__}); "
                              "use --device cpu or auto")
        return torch.device(name)
    raise ConfigError(f"unknown device {name!r}: use one of {', '.join(DEVICE_CHOICES)}")
