"""The worker's source when ingest runs in processes: group membership here, records there.

:class:`PooledSource` is a :class:`~streamtrain.ingest.source.KafkaSource` whose consumer only keeps
the group membership: on assignment it seeks each partition to the trained offset (as before) and
*pauses* it, so it never fetches, then deals the partitions and their offsets to the ingest processes
(:class:`~streamtrain.ingest.pool.IngestPool`). Everything else is unchanged: the generation rule
(batches cut before a rebalance are dropped), the checkpoint on revoke, offset commits and lag from
this consumer. On revoke the processes are told to stop reading before the checkpoint runs.
"""

from __future__ import annotations

import logging
import queue
from typing import Any

from kafka.errors import KafkaError

from streamtrain.ingest.pool import IngestPool
from streamtrain.events.records import MicroBatch, PartitionKey
from streamtrain.errors import WorkerError
from streamtrain.ingest.source import KafkaSource
from streamtrain.events.records import EARLIEST

__all__ = ["PooledSource"]

log = logging.getLogger(__name__)


class PooledSource(KafkaSource):
    def __init__(self, consumer: Any, topic: str, *, pool_factory: Any, **kwargs: Any) -> None:
        super().__init__(consumer, topic, **kwargs)
        self.pool: IngestPool = pool_factory(self._from_pool, self._reset_from_pool, self._health_from_pool)
        self._positions: dict[PartitionKey, int] = {}

    def start(self) -> None:
        self.pool.start()
        super().start()

    def stop(self, timeout_s: float = 15.0) -> None:
        super().stop(timeout_s)
        self._drain()
        self.pool.stop()

    @property
    def joining(self) -> bool:
        """Also True until every ingest process has fetched once for the current assignment (a process still
        starting must not let ``--idle-exit`` call a full topic drained)."""
        return super().joining or self.pool.reading_since(self.generation) is None

    def pending_in_batcher(self) -> bool:
        return self.pool.pending()

    def request_flush(self, timeout_s: float = 5.0) -> None:
        self.pool.flush()

    # ------------------------------------------------------------------ source thread
    def _poll_once(self) -> None:
        if self.pool.fatal is not None:
            raise WorkerError(f"ingest failed: {self.pool.fatal}")
        try:
            # Every assigned partition is paused: this poll only runs the group protocol and callbacks.
            polled = self._consumer.poll(timeout_ms=100)
            self.health.poll_ok()
        except KafkaError as exc:
            self.health.failure("poll", exc)
            self._stop.wait(1.0)
            return
        if any(polled.values()):
            log.error("records polled on the group consumer although every partition is paused; ignored")
        last = self.pool.last_message_at
        if last is not None:
            self.last_message_at = last
        reading = self.pool.reading_since(self.generation)
        if reading is not None and self.assigned_at is not None and reading > self.assigned_at:
            self.assigned_at = reading  # idle time counts from when the processes read

    # ------------------------------------------------------------------ collector thread
    def _from_pool(self, batch: MicroBatch) -> None:
        self.health.success(poll=True)
        while not self._stop.is_set():
            if batch.generation != self.generation:
                break
            try:
                self.batches.put(batch, timeout=0.1)
                return
            except queue.Full:
                continue
        if batch.release is not None:
            batch.release()

    def _reset_from_pool(self, key: PartitionKey, stored: int, new: int, log_start: int | None = None) -> None:
        # Counted once, by the ingest process (its counters reach this registry); counting here too made
        # one reset read as two.
        self._hooks.on_offset_reset(key, stored, new, log_start)

    def _health_from_pool(self, ok: bool, error: str) -> None:
        if ok:
            self.health.poll_ok()
        else:
            self.health.failure("poll", WorkerError(error))

    # ------------------------------------------------------------------ rebalance (IO thread)
    def _drain(self) -> None:
        while True:
            try:
                batch = self.batches.get_nowait()
            except queue.Empty:
                return
            if batch.release is not None:
                batch.release()

    def _on_revoked(self, revoked: list[Any]) -> None:
        with self._lock:
            self.generation += 1
            generation = self.generation
        self.pool.assign(generation, {})  # stop reading before the partitions move
        super()._on_revoked(revoked)

    def _on_assigned(self, assigned: list[Any]) -> None:
        super()._on_assigned(assigned)  # seeks, bumps the generation, records self.assigned
        if self.fatal is not None:
            return
        positions: dict[PartitionKey, int] = {}
        for tp in assigned:
            key = (tp[0], tp[1])
            position = self._hooks.resolve_position(key)
            positions[key] = EARLIEST if position is None else position
        self._consumer.pause(*assigned)
        with self._lock:
            generation = self.generation
            keys = set(self.assigned)
        # Eager rebalancing revokes everything first, so `assigned` is the whole assignment.
        self.pool.assign(generation, {k: v for k, v in positions.items() if k in keys})
