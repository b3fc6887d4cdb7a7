"""Errors the user sees: one clear message naming the thing and what to do."""
from __future__ import annotations


class TrafficSNNError(Exception):
    """Base class: the CLI prints ``str(err)`` (no traceback) and exits with ``exit_code``."""

    exit_code = 2   # usage, configuration, bad input


class CaptureError(TrafficSNNError):
    """A capture file is damaged, truncated or of an unsupported kind."""

    def __init__(self, path: str, offset: int | None, reason: str, hint: str = ""):
        self.path, self.offset, self.reason, self.hint = str(path), offset, reason, hint
        where = f" at byte {offset}" if offset is not None else ""
        msg = f"{self.path}{where}: {reason}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class ModelError(TrafficSNNError):
    """A model checkpoint is missing, corrupt or does not match what is asked of it."""


class ConfigError(TrafficSNNError):
    """A bad option or configuration file."""


class LinkError(TrafficSNNError):
    """A ZeroMQ peer could not be reached, refused us, or stopped taking messages (a run-time failure)."""

    exit_code = 1
