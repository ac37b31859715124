"""The source thread: Kafka consumer → decoder → dead letters → batcher → bounded queue of micro-batches.

It owns the ``KafkaConsumer`` (which is not thread-safe): polls, decodes each partition's values
with :func:`decode_batch`, dead-letters the rejects, cuts micro-batches and puts them on a
bounded queue (``kafka.queue_batches``) for the training thread. Other threads reach the consumer
only through requests this thread serves between polls (offset commits, flush of the open batch).

Rebalances: kafka-python calls the listener on its IO thread, but only while this thread waits in
``poll`` or ``close``. On revoke the source bumps its *generation* (batches cut before are stale and
dropped by the trainer), drops the open batch and the queue, then lets the worker checkpoint what
was trained. On assign it seeks every partition to
the worker's trained offset (or the beginning in a fresh run); a partition without one is a fatal
error (never ``auto_offset_reset``: the consumer is built with ``auto_offset_reset="none"``).
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError, OffsetOutOfRangeError
from kafka.structs import OffsetAndMetadata

from streamtrain.events import decode_batch
from streamtrain.metrics import Metrics
from streamtrain.ingest.batcher import Batcher
from streamtrain.events.records import MicroBatch, PartitionKey
from streamtrain.ingest.dead_letter import DeadLetterSink
from streamtrain.errors import WorkerError
from streamtrain.ingest.lag import LagTracker
from streamtrain.events.records import EARLIEST

__all__ = ["KafkaSource", "SourceHooks"]

log = logging.getLogger(__name__)

_POLL_TIMEOUT_S = 0.1


class SourceHooks(Protocol):
    """What the source asks the worker during rebalances (called on kafka-python's IO thread)."""

    def resolve_position(self, key: PartitionKey) -> int | None:
        """Next offset to read for a newly assigned partition; EARLIEST or None (= fatal)."""
        ...

    def on_revoked(self, keys: list[PartitionKey]) -> None:
        """Checkpoint what was trained, before the partitions go to another member."""
        ...

    def trained_offsets(self) -> Mapping[PartitionKey, int]: ...

    def on_offset_reset(self, key: PartitionKey, stored: int, new: int, log_start: int | None = None) -> None:
        """The log no longer holds ``stored``; reading resumes at ``new`` (log start or end)."""
        ...

    def last_event_times(self) -> Mapping[PartitionKey, float]: ...


class _Listener(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._source._on_revoked(list(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._source._on_assigned(list(assigned))

    def on_partitions_lost(self, lost: Any) -> None:
        self._source._on_revoked(list(lost))


class KafkaSource:
    """Runs the consumer on its own thread and feeds ``self.batches``."""

    def __init__(
        self,
        consumer: Any,
        topic: str,
        *,
        batcher: Batcher,
        dead_letters: DeadLetterSink,
        metrics: Metrics,
        lag: LagTracker,
        hooks: SourceHooks,
        queue_batches: int,
        max_message_bytes: int,
        max_poll_records: int,
        assignment_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self.topic = topic
        self._batcher = batcher
        self._dead_letters = dead_letters
        self._metrics = metrics
        self.lag = lag
        self.health = lag.health  # one BrokerHealth: polls and the lag tracker's end_offsets both report to it
        self._hooks = hooks
        self._max_bytes = max_message_bytes
        self._max_records = max_poll_records
        self._clock = clock
        self.batches: queue.Queue[MicroBatch] = queue.Queue(maxsize=queue_batches)
        self._lock = threading.Lock()  # guards batcher, generation, assigned
        self.generation = 0
        self.assigned: set[PartitionKey] = set()
        self._requests: queue.Queue[tuple[str, Any, concurrent.futures.Future[Any] | None]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamtrain-source", daemon=True)
        self.fatal: BaseException | None = None
        self.last_message_at: float | None = None
        self.assigned_at: float | None = None
        self._error_backoff_s = 0.0
        self._dead_lettered_below: dict[PartitionKey, int] = {}
        # Set while a group join is pending (start, after a revoke); see _check_join.
        self._assignment_timeout_s = assignment_timeout_s
        self._joining_since: float | None = clock()
        # Under torchrun: topic partitions -> this rank's (streamtrain.distributed.assignment); None = group.
        self.static_partitions: Callable[[list[int]], list[int]] | None = None
        self.commit_keys: set[PartitionKey] = set()  # also committed though not read here (rank 0: all)

    # ------------------------------------------------------------------ called by the worker
    def start(self) -> None:
        """Subscribe (or assign, under torchrun) and start polling on the source thread."""
        if self.static_partitions is not None:
            self._assign_static(self.static_partitions)
            self._thread.start()
            return
        self._consumer.subscribe([self.topic], listener=_Listener(self))
        # Fetch the topic's metadata after subscribing and before the first poll joins the group, so the
        # leader's first assignment already sees the partitions. Otherwise kafka-python 3.0 assigns from
        # an empty snapshot and rebalances again as soon as the metadata arrives (and that second join
        # occasionally stalls after "performing partition assignments").
        if not self._consumer.partitions_for_topic(self.topic):
            log.warning("topic %s has no partitions yet (does it exist?)", self.topic)
        self._thread.start()

    def _assign_static(self, mine: Callable[[list[int]], list[int]]) -> None:
        """``assign()`` this rank's partitions and seek them; no group membership, no rebalances."""
        partitions = self._consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise WorkerError(f"topic {self.topic} has no partitions (does it exist?); a job needs them at start")
        tps = [TopicPartition(self.topic, p) for p in mine(sorted(partitions))]
        self._consumer.assign(tps)
        self._on_assigned(tps)

    @property
    def joining(self) -> bool:
        """True while a group join is pending (at start and after each revocation)."""
        return self._joining_since is not None

    def alive(self) -> bool:
        return self._thread.is_alive()

    def pending_in_batcher(self) -> bool:
        with self._lock:
            return self._batcher.pending_messages

    def request_commit(self, offsets: Mapping[PartitionKey, int]) -> None:
        """Queue an offset commit; the source thread sends it before its next poll.

        Does not wait: the caller may be a checkpoint that a rebalance callback is waiting for,
        while this thread sits in ``poll`` running that callback. Failures are counted as
        ``kafka_errors{operation="commit"}`` and healed by the next checkpoint's commit.
        """
        if not self._thread.is_alive():
            raise WorkerError("source thread is not running; cannot commit offsets")
        self._requests.put(("commit", dict(offsets), None))

    def request_flush(self, timeout_s: float = 5.0) -> None:
        """Close the open batch now (idle exit) and queue it."""
        self._call("flush", None, timeout_s)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop polling, close the consumer (its revoke callback runs), join the thread."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("source thread did not stop within %.0f s", timeout_s)

    # ------------------------------------------------------------------ source thread
    def _call(self, kind: str, arg: Any, timeout_s: float) -> Any:
        if not self._thread.is_alive():
            raise WorkerError(f"source thread is not running; cannot {kind}")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._requests.put((kind, arg, future))
        return future.result(timeout=timeout_s)

    def _serve_requests(self) -> None:
        while True:
            try:
                kind, arg, future = self._requests.get_nowait()
            except queue.Empty:
                return
            if kind == "commit":
                self._commit(arg)
                continue
            try:
                if kind == "flush":
                    with self._lock:
                        batch = self._batcher.flush(self.generation)
                    if batch is not None:
                        self._put(batch)
                    future.set_result(None)
            except Exception as exc:
                future.set_exception(exc)

    def _commit(self, offsets: Mapping[PartitionKey, int]) -> None:
        with self._lock:
            mine = {k: v for k, v in offsets.items() if k in self.assigned or k in self.commit_keys}
        if not mine:
            return  # revoked meanwhile: the new owner commits
        try:
            self._consumer.commit(
                {TopicPartition(t, p): OffsetAndMetadata(off, "", -1) for (t, p), off in mine.items()}
            )
            self.health.success()
        except Exception as exc:  # rebalance in progress, broker down: the next checkpoint commits again
            self._metrics.kafka_errors.labels(operation="commit").inc()
            log.warning("Kafka offset commit failed: %s", exc)

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and self.fatal is None:
                self._serve_requests()
                self._poll_once()
                self._check_join()
                self._update_lag()
        except BaseException as exc:  # a bug or a fatal broker error: the worker stops
            log.exception("source thread failed")
            self.fatal = exc
        finally:
            self._serve_requests()
            try:
                self._consumer.close(autocommit=False)
            except Exception as exc:
                log.warning("closing the consumer failed: %s", exc)
            self._fail_requests()

    def _update_lag(self) -> None:
        with self._lock:
            assigned = [TopicPartition(t, p) for t, p in self.assigned]
        self.lag.maybe_update(self._consumer, assigned, self._hooks.trained_offsets(), self._hooks.last_event_times())

    def _check_join(self) -> None:
        # A group join that never completes leaves the worker idle forever (seen rarely with kafka-python
        # 3.0 right after topic creation); failing loudly lets the orchestrator restart the process.
        since = self._joining_since
        if since is not None and self._clock() - since > self._assignment_timeout_s:
            raise WorkerError(
                f"no partition assignment from group coordinator within {self._assignment_timeout_s:.0f} s; "
                "the consumer group join is stuck (restart the worker)"
            )

    def _fail_requests(self) -> None:
        while True:
            try:
                _, _, future = self._requests.get_nowait()
            except queue.Empty:
                return
            if future is not None:
                future.set_exception(WorkerError("source thread stopped"))

    def _poll_once(self) -> None:
        with self._lock:
            deadline = self._batcher.deadline()
        timeout = _POLL_TIMEOUT_S if deadline is None else max(0.0, min(_POLL_TIMEOUT_S, deadline - self._clock()))
        try:
            polled = self._consumer.poll(timeout_ms=int(timeout * 1000), max_records=self._max_records)
            self._error_backoff_s = 0.0
            self.health.poll_ok()
        except OffsetOutOfRangeError as exc:
            self._resolve_out_of_range(exc)
            return
        except KafkaError as exc:
            self.health.failure("poll", exc)
            self._error_backoff_s = min(5.0, max(0.1, self._error_backoff_s * 2))
            log.warning("poll failed (%s); retrying in %.1f s", exc, self._error_backoff_s)
            self._stop.wait(self._error_backoff_s)
            return
        if any(polled.values()):
            self.health.success(poll=True)
        # kafka-python runs rebalance callbacks only inside poll()/close() on this thread's behalf, so
        # records returned by a poll were fetched from the positions its callbacks set: none are stale.
        ready: list[MicroBatch] = []
        now = self._clock()
        with self._lock:
            for tp, records in polled.items():
                if not records:
                    continue
                self.last_message_at = now
                ready.extend(self._decode(tp, records, now))
            due = self._batcher.poll_due(self._clock(), self.generation)
            if due is not None:
                ready.append(due)
        for batch in ready:
            self._put(batch)

    def _resolve_out_of_range(self, exc: OffsetOutOfRangeError) -> None:
        """The stored offset is gone (retention, deleted records) or past the end: move on at once, loudly.

        Below the log start: resume at the start; the offsets in between are lost, and the worker logs
        and counts them (``streamtrain_offsets_skipped_total``) and the next checkpoint records them.
        Past the end (a truncated or recreated topic): resume at the end.
        """
        positions = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        self._metrics.kafka_errors.labels(operation="offset_out_of_range").inc()
        with self._lock:
            tps = [tp for tp in positions if (tp[0], tp[1]) in self.assigned]
        if not tps:
            log.warning("offset out of range for partitions not assigned here: %s", exc)
            return
        try:
            starts = self._consumer.beginning_offsets(tps)
            ends = self._consumer.end_offsets(tps)
        except Exception as lookup_exc:  # broker down: the next poll raises again and we retry
            self.health.failure("end_offsets", lookup_exc)
            self._stop.wait(min(5.0, max(0.1, self._error_backoff_s * 2)))
            return
        for tp in tps:
            stored, start, end = int(positions[tp]), int(starts[tp]), int(ends[tp])
            new = start if stored < start else end if stored > end else stored
            self._consumer.seek(tp, new)
            self._hooks.on_offset_reset((tp[0], tp[1]), stored, new, start)

    def _decode(self, tp: Any, records: list[Any], now: float) -> list[MicroBatch]:
        values = [r.value for r in records]
        offsets = np.fromiter((r.offset for r in records), dtype=np.int64, count=len(records))  # (n,)
        result = decode_batch(values, max_bytes=self._max_bytes)
        self._metrics.events_consumed.inc(len(records))
        key = (tp[0], tp[1])
        if result.rejects:
            # After a rebalance the consumer re-reads from the trained offsets; rejects this process
            # already dead-lettered are not sent twice (across a crash they may be: at least once).
            sent_below = self._dead_lettered_below.get(key, -1)
            fresh = [r for r in result.rejects if records[r.index].offset >= sent_below]
            if fresh:
                self._dead_letters.send_rejects(tp[0], tp[1], fresh, records)
                self._dead_lettered_below[key] = int(records[fresh[-1].index].offset) + 1
        return self._batcher.add(key, offsets, result.batch, result.good_index, now, self.generation)

    def _put(self, batch: MicroBatch) -> None:
        # Block while the trainer is behind, but keep serving commits and notice rebalances/stop.
        while not self._stop.is_set():
            if batch.generation != self.generation:
                return
            try:
                self.batches.put(batch, timeout=0.1)
                return
            except queue.Full:
                self._serve_requests()
                # A stalled trainer must still show growing lag (the lag alert depends on it).
                self._update_lag()

    # ------------------------------------------------------------------ rebalance (IO thread)
    def _drain(self) -> None:
        while True:
            try:
                self.batches.get_nowait()
            except queue.Empty:
                return

    def _on_revoked(self, revoked: list[Any]) -> None:
        keys = [(tp[0], tp[1]) for tp in revoked]
        with self._lock:
            self.generation += 1
            self._batcher.reset()
            self.assigned.difference_update(keys)
            count = len(self.assigned)
        self._drain()
        self._joining_since = self._clock()
        self._metrics.assigned_partitions.set(count)
        log.info("partitions revoked: %s", sorted(keys))
        if keys:
            self._hooks.on_revoked(keys)

    def _on_assigned(self, assigned: list[Any]) -> None:
        keys = [(tp[0], tp[1]) for tp in assigned]
        positions: dict[PartitionKey, int] = {}
        for tp, key in zip(assigned, keys, strict=True):
            position = self._hooks.resolve_position(key)
            if position is None:
                self._consumer.pause(tp)
                self.fatal = WorkerError(
                    f"partition {key[0]}[{key[1]}] has no stored offset in this run's state although the run "
                    "owned it (a higher partition of the topic has one); refusing to guess (use --fresh to discard the run's state and start from the beginning)"
                )
                log.error("%s", self.fatal)
                continue
            if position == EARLIEST:
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, position)
            positions[key] = position
        with self._lock:
            self.generation += 1
            self._batcher.reset()
            self.assigned.update(keys)
            count = len(self.assigned)
        self._drain()
        self.assigned_at = self._clock()
        self._joining_since = None
        self._metrics.assigned_partitions.set(count)
        log.info(
            "partitions assigned: %s",
            ", ".join(f"{t}[{p}]@{'earliest' if o == EARLIEST else o}" for (t, p), o in sorted(positions.items())),
        )
