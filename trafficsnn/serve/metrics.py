"""Prometheus metrics for the capture agent and the classifier daemon.

Hot paths only bump plain Python counters (dicts); a custom collector turns
them into metric families when Prometheus scrapes, so metrics cost nothing per
packet. Histograms (batch sizes, inference latency) are observed once per batch.
Never imports torch.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

PREFIX = "trafficsnn"


def _number(v: Any) -> float | None:
    """``float(v)`` for a real number, else None (a value that would make the scrape fail)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


class StatsCollector:
    """Exports a snapshot function's result: ``counters`` (name -> value or {label: value}) and ``gauges``."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], label: str = "cause"):
        self.snapshot, self.label = snapshot, label

    def collect(self) -> Iterable[Any]:
        snap = self.snapshot()
        for name, value in snap.get("counters", {}).items():
            if isinstance(value, dict):
                lname, values = value.get("_label", self.label), {k: v for k, v in value.items() if k != "_label"}
                fam = CounterMetricFamily(f"{PREFIX}_{name}", f"{name} by {lname}", labels=[lname])
                for k, v in sorted(values.items(), key=lambda kv: str(kv[0])):
                    x = _number(v)
                    if x is not None:  # one bad value never breaks the whole scrape
                        fam.add_metric([str(k)], x)
            else:
                x = _number(value)
                if x is None:
                    continue
                fam = CounterMetricFamily(f"{PREFIX}_{name}", name.replace("_", " "), value=x)
            yield fam
        for name, value in snap.get("gauges", {}).items():
            x = _number(value)
            if x is not None:
                yield GaugeMetricFamily(f"{PREFIX}_{name}", name.replace("_", " "), value=x)
        for name, value in snap.get("info", {}).items():
            fam = InfoMetricFamily(f"{PREFIX}_{name}", name.replace("_", " "))
            fam.add_metric([], {k: str(v) for k, v in value.items()})
            yield fam


class Metrics:
    """A private registry plus the classifier's histograms; ``serve(port)`` starts the HTTP endpoint."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(snapshot))  # type: ignore[arg-type]
        self.batch_size = Histogram(f"{PREFIX}_batch_updates", "flow updates per inference batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
                                    registry=self.registry)
        self.inference = Histogram(f"{PREFIX}_inference_seconds", "SNN inference time per batch",
                                   buckets=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0),
                                   registry=self.registry)
        self.latency = Histogram(f"{PREFIX}_verdict_latency_seconds",
                                 "sensor read of an update's last packet -> its verdict",
                                 buckets=(1e-3, 3e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.3, 1.0, 3.0),
                                 registry=self.registry)
        self.up = Gauge(f"{PREFIX}_up", "1 while the process serves", registry=self.registry)
        self.up.set(1)
        self.server: Any = None

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Start the HTTP endpoint; a port in use or out of range, or a bad address, is one ConfigError."""
        from ..errors import ConfigError

        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"--metrics-port must be within 1..65535, got {port}")
        try:
            self.server = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as err:
            raise ConfigError(f"cannot serve metrics on {addr}:{port}: {err.strerror or err} (choose another "
                              "--metrics-port, stop the process using it, or fix --metrics-addr)") from None
        except (OverflowError, ValueError) as err:
            raise ConfigError(f"cannot serve metrics on {addr}:{port}: {err}") from None

    def close(self) -> None:
        if self.server is not None:
            try:
                server, thread = self.server
                server.shutdown()
                server.server_close()
            except (TypeError, ValueError):
                pass
            self.server = None
