"""One ingest process: fetch its partitions → decode → dead letters → micro-batches → shared-memory slots.

Started by :class:`streamtrain.ingest.pool.IngestPool` (``spawn``: no torch, no inherited threads).
Messages on its pipe, all small and per batch, never per event:

from the trainer: ``("assign", generation, {partition key: next offset | EARLIEST})`` (replaces the
  assignment and drops the open batch; ``{}`` stops reading), ``("free", slot)``, ``("flush",)``,
  ``("stop",)``;
to the trainer: ``("batch", slot)`` (a slot holds a ready batch, :mod:`streamtrain.ingest.slots`),
  ``("packed", arrays)`` (one that did not fit a slot), ``("reset", key, stored, new, log start)`` (the
  log no longer holds ``stored``), ``("ack", generation)`` (first fetch of an assignment done),
  ``("status", pending, last_message_at, poll_ok, error, counters)``,
  ``("fatal", text)``.

Dead letters: rejects are sent when decoded, and the producer is flushed before any batch that covers
them is handed over, so a trained (and later committed) offset never passes an unsent dead letter.
The trainer's pipe end closing (it exited or was killed) ends this process.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Mapping
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

from prometheus_client import CollectorRegistry

from streamtrain.events import decode_batch
from streamtrain.ingest.counters import CounterSnapshot
from streamtrain.ingest.fetch import Fetched, Fetcher, FetchError, KafkaPythonFetcher, OutOfRange
from streamtrain.ingest.fetch_confluent import ConfluentFetcher
from streamtrain.ingest.slots import SlotLayout, pack
from streamtrain.log_limit import limit_client_logs
from streamtrain.metrics import Metrics
from streamtrain.events.ids import KeyedIds
from streamtrain.ingest.batcher import Batcher
from streamtrain.events.records import MicroBatch, PartitionKey

__all__ = ["main"]

log = logging.getLogger(__name__)

_FETCH_TIMEOUT_S = 0.1
_STATUS_EVERY_S = 0.2



def make_fetcher(client: str, options: Mapping[str, Any], max_records: int) -> Fetcher:
    """``options`` as :func:`streamtrain.worker.build.kafka_client_options` returns them."""
    if client == "confluent":
        return ConfluentFetcher(options, max_records)
    if client == "kafka-python":
        return KafkaPythonFetcher(options, max_records)
    raise ValueError(f"kafka.client must be 'confluent' or 'kafka-python', got {client!r}")


# How long one wait for the dead-letter producer's confirmation lasts before a batch goes out; between
# waits the child keeps answering stop/assign, so this bounds latency, not correctness.
DEAD_LETTER_FLUSH_S = 10.0


class _Stop(Exception):
    pass


class IngestChild:
    def __init__(self, index: int, conn: Connection, shm: SharedMemory, layout: SlotLayout, count: int,
                 settings: dict[str, Any]) -> None:
        self.index, self.conn, self.settings = index, conn, settings
        self.slots = [layout.view(shm.buf, i) for i in range(count)]
        self.free = deque(range(count))
        self.fetcher = make_fetcher(settings["client"], settings["options"], settings["max_records"])
        self.metrics = Metrics(CollectorRegistry())
        self.counters = CounterSnapshot(self.metrics.registry)
        self.batcher = Batcher(settings["batch_size"], settings["max_latency_s"])
        self.generation = 0
        self.ready: deque[MicroBatch] = deque()
        self._dead_letters: Any = None
        self._dl_unflushed = False
        self._sent_below: dict[PartitionKey, int] = {}
        self._last_message_at: float | None = None
        self._poll_ok = True
        self._error = ""
        self._status_at = 0.0
        self._backoff_s = 0.0
        self._ack = False

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        try:
            while True:
                self._serve(wait_s=0.05 if (self.ready and not self.free) else 0.0)
                while self.ready and self.free:
                    self._publish(self.ready.popleft())
                if not self.ready:
                    self._fetch_once()
                self._status()
        except _Stop:
            pass
        finally:
            self._close()

    def _serve(self, wait_s: float) -> None:
        try:
            if not self.conn.poll(wait_s):
                return
            while True:
                self._handle(self.conn.recv())
                if not self.conn.poll(0):
                    return
        except (EOFError, OSError):  # the trainer is gone
            raise _Stop from None

    def _handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "free":
            self.free.append(msg[1])
        elif kind == "assign":
            self.generation, positions = msg[1], msg[2]
            self.batcher.reset()
            self.ready.clear()
            self.fetcher.assign(positions)
            self._ack = True  # after the next fetch: the trainer's idle clock starts once every process reads
            log.debug("ingest %d: generation %d, partitions %s", self.index, self.generation, sorted(positions))
        elif kind == "flush":
            batch = self.batcher.flush(self.generation)
            if batch is not None:
                self.ready.append(batch)
            self._status(force=True)
        elif kind == "stop":
            raise _Stop

    def _fetch_once(self) -> None:
        deadline = self.batcher.deadline()
        timeout = _FETCH_TIMEOUT_S if deadline is None else max(0.0, min(_FETCH_TIMEOUT_S, deadline - time.monotonic()))
        try:
            fetched = self.fetcher.fetch(timeout)
            self._poll_ok, self._backoff_s = True, 0.0
        except OutOfRange as exc:
            self._resolve_out_of_range(exc)
            return
        except FetchError as exc:
            self._poll_ok, self._error = False, str(exc)[:300]  # the trainer counts it (broker health)
            self._backoff_s = min(5.0, max(0.1, self._backoff_s * 2))
            log.warning("ingest %d: fetch failed (%s); retrying in %.1f s", self.index, exc, self._backoff_s)
            self._serve(self._backoff_s)
            return
        if self._ack:
            self._ack = False
            self._send(("ack", self.generation))
        now = time.monotonic()
        for part in fetched:
            self._last_message_at = now
            self.ready.extend(self._decode(part, now))
        due = self.batcher.poll_due(time.monotonic(), self.generation)
        if due is not None:
            self.ready.append(due)

    def _decode(self, part: Fetched, now: float) -> list[MicroBatch]:
        result = decode_batch(part.values, max_bytes=self.settings["max_message_bytes"])
        self.metrics.events_consumed.inc(len(part.values))
        if result.rejects:
            below = self._sent_below.get(part.key, -1)
            fresh = [r for r in result.rejects if part.offsets[r.index] >= below]
            if fresh:
                self._sink().send_rejects(part.key[0], part.key[1], fresh, part.records())
                self._sent_below[part.key] = int(part.offsets[fresh[-1].index]) + 1
                self._dl_unflushed = True
        return self.batcher.add(part.key, part.offsets, result.batch, result.good_index, now, self.generation)

    def _resolve_out_of_range(self, exc: OutOfRange) -> None:
        self.metrics.kafka_errors.labels(operation="offset_out_of_range").inc()
        try:
            marks = self.fetcher.watermarks(list(exc.positions))
        except FetchError as lookup:
            self._poll_ok, self._error = False, str(lookup)[:300]
            self._serve(1.0)
            return
        for key, stored in exc.positions.items():
            start, end = marks[key]
            new = start if stored < start else end if stored > end else stored
            self.fetcher.seek(key, new)
            self._send(("reset", key, stored, new, start))

    def _publish(self, batch: MicroBatch) -> None:
        while self._dl_unflushed:
            if self._sink().flush(DEAD_LETTER_FLUSH_S):
                self._dl_unflushed = False
            else:
                self._serve(1.0)  # keep noticing stop/assign while the producer retries
        if batch.generation != self.generation:
            return
        users, items = KeyedIds.of(batch.events.user_ids), KeyedIds.of(batch.events.item_ids)
        slot = self.free[0]
        if self.slots[slot].write(batch, users, items):
            self.free.popleft()
            self._send(("batch", slot))
        else:
            self._send(("packed", pack(batch, users, items)))

    # ------------------------------------------------------------------ helpers
    def _sink(self) -> Any:
        if self._dead_letters is None:  # most runs never reject: no producer until needed
            from kafka import KafkaProducer

            from streamtrain.ingest.dead_letter import DeadLetterSink

            s = self.settings
            producer = KafkaProducer(**s["options"], linger_ms=5, max_request_size=s["dead_letter_max_bytes"])
            self._dead_letters = DeadLetterSink(producer, s["dead_letter_topic"], self.metrics)
        return self._dead_letters

    def _status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._status_at < _STATUS_EVERY_S:
            return
        self._status_at = now
        pending = self.batcher.pending_messages or bool(self.ready)
        self._send(("status", pending, self._last_message_at, self._poll_ok, self._error, self.counters.changed()))

    def _send(self, msg: tuple[Any, ...]) -> None:
        try:
            self.conn.send(msg)
        except (BrokenPipeError, OSError):
            raise _Stop from None

    def _close(self) -> None:
        try:
            if self._dead_letters is not None:
                self._dead_letters.flush(5.0)
                self._dead_letters._producer.close(timeout=5)
            self.fetcher.close()
        except Exception as exc:  # closing is best effort: the trainer owns offsets
            log.debug("ingest %d: close failed: %s", self.index, exc)


def main(index: int, conn: Connection, shm_name: str, layout: SlotLayout, count: int,
         settings: dict[str, Any]) -> None:
    """Process entry point (see the module docstring)."""
    logging.basicConfig(level=settings.get("log_level", "INFO"), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [ingest-{index} pid {os.getpid()}] %(name)s: %(message)s")
    for noisy in ("kafka", "streamtrain.ingest.fetch_confluent"):
        if settings.get("log_level", "INFO") != "DEBUG":
            logging.getLogger(noisy).setLevel(logging.WARNING)
    repeat = limit_client_logs(settings.get("log_repeat_interval_s", 30.0))
    shm = SharedMemory(name=shm_name)
    try:
        child = IngestChild(index, conn, shm, layout, count, settings)
        if repeat is not None:  # held-back lines reach the trainer's /metrics with the other counters
            repeat.on_suppressed = lambda name: child.metrics.log_lines_suppressed.labels(logger=name).inc()
        child.run()
    except Exception as exc:
        log.exception("ingest %d failed", index)
        try:
            conn.send(("fatal", f"ingest process {index}: {type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        shm.close()
