"""Where verdicts go: JSON lines (file or stdout) and a ZeroMQ PUB socket.

A verdict is a plain dict (see ``Verdict.to_dict``); every sink writes the same
JSON. Never imports torch.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Protocol

from ..flows.community_id import flow_community_id
from ..flows.records import FlowKey
from ..packets.batch import words_to_ip


@lru_cache(maxsize=1 << 16)
def _ip(hi: int, lo: int) -> str:
    return words_to_ip(hi, lo)


@lru_cache(maxsize=4096)
def _js(text: str) -> str:
    return json.dumps(text)


def _num(x: float, digits: int | None = 6) -> float | None:
    """A JSON-safe number: NaN and infinities become null (JSON has neither)."""
    if not math.isfinite(x):
        return None
    return round(x, digits) if digits is not None else x


def _f6(x: float) -> str:
    return f"{x:.6f}" if math.isfinite(x) else "null"


def _r(x: float) -> str:
    return repr(x) if math.isfinite(x) else "null"


@lru_cache(maxsize=256)
def _probs_format(classes: tuple[str, ...]) -> str:
    """``"a":%.6f,"b":%.6f,...``: one %-format fills a verdict's probabilities (what ``_f6`` writes each)."""
    return ",".join(f"{_js(c).replace('%', '%%')}:%.6f" for c in classes)


@lru_cache(maxsize=64)
def _model_json(model_id: str, sha256: str) -> str:
    return f'"model":{{"id":{_js(model_id)},"sha256":{_js(sha256)}}}'


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
    partial: bool = False               # the flow's start or some of its updates never arrived
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        k = self.key
        d: dict[str, Any] = {
            "sensor": self.sensor,
            "flow_id": self.flow_id,
            "community_id": flow_community_id(k),
            "flow": {"proto": k.proto, "client": _ip(k.client_hi, k.client_lo), "client_port": k.client_port,
                     "server": _ip(k.server_hi, k.server_lo), "server_port": k.server_port, "vlan": k.vlan},
            "class": self.label,
            "confidence": _num(self.confidence),
            "probabilities": {c: _num(p) for c, p in self.probabilities.items()},
            "packets": self.packets,
            "first_ts": _num(self.first_ts, None),
            "verdict_ts": _num(self.verdict_ts, None),
            "final": self.final,
            "reason": self.reason,
            "steps": self.steps,
            "partial": self.partial,
            "model": {"id": self.model_id, "sha256": self.model_sha256},
        }
        if self.latency_s is not None:
            d["latency_ms"] = _num(self.latency_s * 1e3, 3)
        d.update(self.extra)
        return d

    def to_json(self) -> str:
        """``json.dumps(self.to_dict())`` (compact), built directly: the daemon writes many of these."""
        if self.extra:
            return json.dumps(self.to_dict(), separators=(",", ":"))
        k = self.key
        pr = self.probabilities
        vals = tuple(pr.values())
        if all(map(math.isfinite, vals)):
            probs = _probs_format(tuple(pr)) % vals
        else:
            probs = ",".join([f"{_js(c)}:{_f6(p)}" for c, p in pr.items()])
        c = flow_community_id(k)
        cid = "null" if c is None else f'"{c}"'   # base64 text: no JSON escaping needed
        lat = "" if self.latency_s is None else f',"latency_ms":{_r(round(self.latency_s * 1e3, 3))}'
        return (f'{{"sensor":{_js(self.sensor)},"flow_id":{self.flow_id},'
                f'"community_id":{cid},"flow":{{"proto":{k.proto},'
                f'"client":"{_ip(k.client_hi, k.client_lo)}","client_port":{k.client_port},'
                f'"server":"{_ip(k.server_hi, k.server_lo)}","server_port":{k.server_port},"vlan":{k.vlan}}},'
                f'"class":{_js(self.label)},"confidence":{_f6(self.confidence)},"probabilities":{{{probs}}},'
                f'"packets":{self.packets},"first_ts":{_r(self.first_ts)},"verdict_ts":{_r(self.verdict_ts)},'
                f'"final":{"true" if self.final else "false"},"reason":{_js(self.reason)},"steps":{self.steps},'
                f'"partial":{"true" if self.partial else "false"},{_model_json(self.model_id, self.model_sha256)}{lat}}}')


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
            self._fh.write("".join(v.to_json() + "\n" for v in verdicts))
            self.written += len(verdicts)

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self.flush()
        if self._own:
            self._fh.close()


class PubSink:
    """Verdicts on a ZeroMQ PUB socket as [topic = class name, JSON]; subscribers filter by class prefix.
    A subscriber too slow to keep up loses verdicts at the high-water mark: counted in ``dropped``
    (the daemon's ``drops.verdicts_pub``), never blocking classification."""

    kind = "pub"

    def __init__(self, socket: Any):
        import zmq

        self._zmq = zmq
        self.sock = socket
        self.written = self.dropped = 0

    def write(self, verdicts: list[Verdict]) -> None:
        for v in verdicts:
            try:
                self.sock.send_multipart([v.label.encode(), v.to_json().encode()],
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
