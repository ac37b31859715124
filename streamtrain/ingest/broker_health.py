"""Is the broker reachable? Metrics and a ``/readyz`` verdict from the source thread's round trips.

kafka-python's ``poll`` does not raise while the broker is down (it reconnects and returns nothing),
so "no records" cannot tell an outage from a quiet topic. The evidence used instead:

* success: a poll that returned records, an ``end_offsets`` answer (the lag tracker asks every
  ``kafka.lag_interval_s``), an offset commit;
* failure: a poll that raised, an ``end_offsets`` call that failed or timed out.

``streamtrain_broker_connected`` is 1 after a success and 0 after a failure;
``streamtrain_broker_last_success_timestamp_seconds`` is the wall time of the last success. The
worker is not ready while no success happened for ``kafka.broker_unreachable_s`` after a failure,
or while polls kept failing that long (a repeating poll error is never a silent loop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from streamtrain.metrics import Metrics

__all__ = ["BrokerHealth"]

log = logging.getLogger(__name__)


class BrokerHealth:
    """Thread-safe record of the broker's last success and of failures since."""

    def __init__(
        self,
        metrics: Metrics,
        unreachable_after_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self.unreachable_after_s = unreachable_after_s
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._last_success = clock()  # start counts as contact: the bootstrap already reached a broker
        self._failing_since: float | None = None
        self._poll_failing_since: float | None = None
        self.last_error = ""
        metrics.broker_connected.set(1)
        metrics.broker_last_success_timestamp.set(wall_clock())

    def success(self, *, poll: bool = False) -> None:
        """A round trip to the broker worked (``poll``: it was a poll, which also ends a poll-error streak)."""
        with self._lock:
            self._last_success = self._clock()
            if self._failing_since is not None:
                log.info("broker reachable again after %.1f s", self._last_success - self._failing_since)
            self._failing_since = None
            if poll:
                self._poll_failing_since = None
        self._metrics.broker_connected.set(1)
        self._metrics.broker_last_success_timestamp.set(self._wall())

    def poll_ok(self) -> None:
        """A poll returned without an error (records or not): ends a poll-error streak only."""
        with self._lock:
            self._poll_failing_since = None

    def failure(self, operation: str, exc: BaseException) -> None:
        """A round trip failed; counted in ``streamtrain_kafka_errors_total{operation}``."""
        self._metrics.kafka_errors.labels(operation=operation).inc()
        now = self._clock()
        with self._lock:
            if self._failing_since is None:
                self._failing_since = now
            if operation == "poll" and self._poll_failing_since is None:
                self._poll_failing_since = now
            self.last_error = f"{operation}: {type(exc).__name__}: {exc}"[:300]
        self._metrics.broker_connected.set(0)

    def failing(self) -> bool:
        """True after a failure with no success since (or while polls keep failing)."""
        with self._lock:
            return self._failing_since is not None or self._poll_failing_since is not None

    def problem(self) -> str | None:
        """Why the broker counts as unusable now, or None (feeds ``/readyz`` and ``--idle-exit``)."""
        now = self._clock()
        with self._lock:
            if self._failing_since is not None and now - self._last_success > self.unreachable_after_s:
                return (f"Kafka broker unreachable for {now - self._last_success:.0f} s "
                        f"(last error {self.last_error})")
            if self._poll_failing_since is not None and now - self._poll_failing_since > self.unreachable_after_s:
                return f"Kafka polls failing for {now - self._poll_failing_since:.0f} s (last error {self.last_error})"
        return None
