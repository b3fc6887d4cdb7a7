"""Micro-batching: collect decoded update messages until B updates, P packets or W milliseconds, whichever first."""
from __future__ import annotations

import time

from ..wire import UpdateBatch


class Batcher:
    def __init__(self, max_updates: int = 512, max_wait_ms: float = 5.0, max_packets: int = 1 << 62):
        if max_updates < 1:
            raise ValueError(f"batch size must be >= 1 update, got {max_updates}")
        if max_wait_ms < 0:
            raise ValueError(f"batch wait must be >= 0 ms, got {max_wait_ms}")
        if max_packets < 1:
            raise ValueError(f"batch packets must be >= 1, got {max_packets}")
        self.max_updates, self.max_wait, self.max_packets = max_updates, max_wait_ms / 1e3, max_packets
        self.items: list[UpdateBatch] = []
        self.updates = 0
        self.packets = 0
        self.since = 0.0

    def add(self, msg: UpdateBatch, now: float | None = None) -> None:
        if not self.items:
            self.since = time.monotonic() if now is None else now
        self.items.append(msg)
        self.updates += len(msg)
        self.packets += msg.n_packets

    @property
    def full(self) -> bool:
        return self.updates >= self.max_updates or self.packets >= self.max_packets

    def due(self, now: float | None = None) -> bool:
        if not self.items:
            return False
        now = time.monotonic() if now is None else now
        return self.full or now - self.since >= self.max_wait

    def wait_s(self, now: float | None = None, idle: float = 0.2) -> float:
        """How long the receive loop may block before this batch is due."""
        if not self.items:
            return idle
        now = time.monotonic() if now is None else now
        return max(0.0, self.max_wait - (now - self.since))

    def take(self) -> list[UpdateBatch]:
        items, self.items, self.updates, self.packets = self.items, [], 0, 0
        return items

    def __len__(self) -> int:
        return self.updates
