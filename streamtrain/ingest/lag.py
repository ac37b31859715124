"""Consumer lag per partition: in messages (end offset − next offset to train) and in seconds.

Seconds are now minus the event time of the partition's last trained event, and 0 once the
partition is caught up (an idle but current partition is not late). End offsets come from the
broker at most every ``interval_s``; the call runs on the source thread, which owns the consumer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from streamtrain.ingest.broker_health import BrokerHealth
from streamtrain.metrics import Metrics
from streamtrain.events.records import PartitionKey

__all__ = ["LagTracker"]

log = logging.getLogger(__name__)


class LagTracker:
    """Refreshes the lag gauges; ``pending_messages`` feeds ``/readyz``."""

    def __init__(
        self,
        metrics: Metrics,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        health: BrokerHealth | None = None,
    ) -> None:
        self._metrics = metrics
        self._interval_s = interval_s
        self._clock = clock
        self._wall = wall_clock
        self._next_at = 0.0
        self.end_offsets: dict[PartitionKey, int] = {}
        self.pending_messages: int | None = None  # None until the first successful refresh
        # end_offsets doubles as the broker-health probe; the source reads the same BrokerHealth from here
        self.health = health if health is not None else BrokerHealth(metrics, 30.0)

    def maybe_update(
        self,
        consumer: Any,
        assigned: Iterable[Any],
        trained: Mapping[PartitionKey, int],
        last_event_times: Mapping[PartitionKey, float],
    ) -> None:
        """Ask the broker for end offsets if ``interval_s`` has passed, then set the gauges."""
        now = self._clock()
        if now < self._next_at:
            return
        self._next_at = now + self._interval_s
        partitions = list(assigned)
        if not partitions:
            self.pending_messages = 0
            return
        try:
            ends = consumer.end_offsets(partitions, timeout_ms=2000)
        except Exception as exc:  # broker restarting: keep the old values
            self.health.failure("end_offsets", exc)  # counts kafka_errors_total{operation="end_offsets"}
            log.debug("end_offsets failed: %s", exc)
            return
        self.health.success()
        self.end_offsets = {(tp[0], tp[1]): int(end) for tp, end in ends.items()}
        self.refresh(trained, last_event_times)

    def refresh(self, trained: Mapping[PartitionKey, int], last_event_times: Mapping[PartitionKey, float]) -> None:
        """Recompute the gauges from the last known end offsets (also called after a training step)."""
        total = 0
        wall = self._wall()
        for key, end in self.end_offsets.items():
            next_offset = trained.get(key)
            # A fresh partition (no offset yet, or EARLIEST) counts from 0: an upper bound.
            lag = max(0, end - (next_offset if next_offset is not None and next_offset >= 0 else 0))
            total += lag
            labels = {"topic": key[0], "partition": str(key[1])}
            self._metrics.consumer_lag_messages.labels(**labels).set(lag)
            last = last_event_times.get(key)
            if lag == 0:
                self._metrics.consumer_lag_seconds.labels(**labels).set(0.0)
            elif last is not None:
                self._metrics.consumer_lag_seconds.labels(**labels).set(max(0.0, wall - last))
        self.pending_messages = total
