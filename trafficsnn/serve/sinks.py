"""Where verdicts go: JSON lines (file or stdout) and a ZeroMQ PUB socket.

A verdict is a plain dict (see ``Verdict.to_dict``); every sink writes the same
JSON. Never imports torch.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from ..flows.records import FlowKey


@dataclass
class Verdict:
    key: FlowKey
    flow_id: int
    sensor: str
    label: str
    confidence: float
    probabilities: dict[str, float]
    packets: int
    first_ts: float
    verdict_ts: float
    model_id: str
    model_sha256: str
    final: bool = False
    reason: str = ""
    steps: int = 0                      # SNN time steps the verdict is based on
    latency_s: float | None = None      # sender read time of the update's last packet -> verdict
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        k = self.key
        d: dict[str, Any] = {
            "sensor": self.sensor,
            "flow_id": self.flow_id,
            "flow": {"proto": k.proto, "client": k.client_ip, "client_port": k.client_port,
                     "server": k.server_ip, "server_port": k.server_port, "vlan": k.vlan},
            "class": self.label,
            "confidence": round(self.confidence, 6),
            "probabilities": {c: round(p, 6) for c, p in self.probabilities.items()},
            "packets": self.packets,
            "first_ts": self.first_ts,
            "verdict_ts": self.verdict_ts,
            "final": self.final,
            "reason": self.reason,
            "steps": self.steps,
            "model": {"id": self.model_id, "sha256": self.model_sha256},
        }
        if self.latency_s is not None:
            d["latency_ms"] = round(self.latency_s * 1e3, 3)
        d.update(self.extra)
        return d


class Sink(Protocol):
    def write(self, verdicts: list[Verdict]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class JsonLinesSink:
    """One JSON object per line to a file (appended) or to stdout ("-")."""

    def __init__(self, target: str | Path = "-"):
        self.target = str(target)
        self._own = self.target != "-"
        self._fh: IO[str] = open(self.target, "a", encoding="utf-8", buffering=1 << 16) if self._own else sys.stdout
        self.written = 0

    def write(self, verdicts: list[Verdict]) -> None:
        if verdicts:
            self._fh.write("".join(json.dumps(v.to_dict(), separators=(",", ":")) + "\n" for v in verdicts))
            self.written += len(verdicts)

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self.flush()
        if self._own:
            self._fh.close()


class PubSink:
    """Verdicts on a ZeroMQ PUB socket as [topic = class name, JSON]; subscribers filter by class prefix."""

    def __init__(self, socket: Any):
        import zmq

        self._zmq = zmq
        self.sock = socket
        self.written = self.dropped = 0

    def write(self, verdicts: list[Verdict]) -> None:
        for v in verdicts:
            try:
                self.sock.send_multipart([v.label.encode(), json.dumps(v.to_dict()).encode()],
                                         flags=self._zmq.NOBLOCK)
                self.written += 1
            except self._zmq.Again:
                self.dropped += 1

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class ListSink:
    """Keeps verdicts in memory (replay --inproc, tests)."""

    def __init__(self) -> None:
        self.verdicts: list[Verdict] = []

    def write(self, verdicts: list[Verdict]) -> None:
        self.verdicts.extend(verdicts)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
