"""Stand-ins for Kafka and Redis so the real worker loop runs on a host that has neither (bench only).

* :class:`InProcessSource` has the attributes and methods :class:`streamtrain.worker.worker.Worker`
  uses of ``KafkaSource``; a thread decodes pre-encoded message values with the real decoder
  (``decode_values``, in poll-sized chunks) into the real :class:`Batcher`, and queues micro-batches
  for the loop exactly as the Kafka source does, one partition, offsets = message positions.
* :class:`MemoryStateStore` keeps what ``RedisStateStore`` commits in a dict, so the real
  ``Checkpointer`` and ``resume`` run unchanged.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from streamtrain.events.decoder import decode_values, encode_event
from streamtrain.ingest.batcher import Batcher
from streamtrain.events.records import MicroBatch, PartitionKey
from streamtrain.state.redis_store import StoredState, decode_array

__all__ = ["InProcessSource", "MemoryStateStore", "synthetic_messages"]

TOPIC = "in-process"


def synthetic_messages(n: int, users: int, items: int, seed: int = 0) -> list[bytes]:
    """``n`` JSON event messages, users and items uniform, event time increasing."""
    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, users, n).tolist(), rng.integers(0, items, n).tolist()
    return [encode_event(f"u{a}", f"i{b}", 1.7e9 + k) for k, (a, b) in enumerate(zip(u, i))]


class _Lag:
    pending_messages: int | None = 0

    def refresh(self, trained: Mapping[PartitionKey, int], last_event_times: Mapping[PartitionKey, float]) -> None:
        """No broker, no lag gauges."""


class InProcessSource:
    """Feeds ``values`` once through decoder and batcher into ``batches`` (bounded, as in the worker)."""

    def __init__(self, values: Sequence[bytes], batch_size: int, *, chunk: int = 5000, queue_batches: int = 4) -> None:
        self._values = values
        self._chunk = chunk
        self._batcher = Batcher(batch_size, max_latency_s=3600.0)
        self.batches: queue.Queue[MicroBatch] = queue.Queue(maxsize=queue_batches)
        self.lag = _Lag()
        self.fatal: BaseException | None = None
        self.generation = 0
        self.joining = False
        self.assigned: set[PartitionKey] = {(TOPIC, 0)}
        self.assigned_at: float | None = None
        self.last_message_at: float | None = None
        self.decode_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="in-process-source", daemon=True)

    def start(self) -> None:
        self.assigned_at = time.monotonic()
        self._thread.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def pending_in_batcher(self) -> bool:
        return self._batcher.pending_messages

    def request_flush(self, timeout_s: float = 5.0) -> None:
        """The source closes its last batch itself when the values run out."""

    def _put(self, batch: MicroBatch | None) -> None:
        while batch is not None and not self._stop.is_set():
            try:
                self.batches.put(batch, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            for start in range(0, len(self._values), self._chunk):
                if self._stop.is_set():
                    return
                t0 = time.perf_counter()
                chunk = self._values[start : start + self._chunk]
                result = decode_values(chunk)
                offsets = np.arange(start, start + len(chunk), dtype=np.int64)
                closed = self._batcher.add((TOPIC, 0), offsets, result.batch, result.good_index, time.monotonic())
                self.decode_seconds += time.perf_counter() - t0
                self.last_message_at = time.monotonic()
                for batch in closed:
                    self._put(batch)
            self._put(self._batcher.flush())
        except BaseException as exc:  # surfaced to the loop like the Kafka source does
            self.fatal = exc


class MemoryStateStore:
    """``RedisStateStore``'s interface over a dict (one run, one writer)."""

    namespace = "in-memory"

    def __init__(self) -> None:
        self._state: StoredState | None = None
        self.topic_ids: dict[str, str] = {}

    def check_lease(self) -> None:
        """One writer, no lease."""

    def load(self) -> StoredState | None:
        return self._state

    def checkpoint_id(self) -> int | None:
        return None if self._state is None else self._state.checkpoint_id

    def commit(
        self, *, checkpoint_id: int, previous_ids: Iterable[int | None], file_name: str,
        offsets: Mapping[PartitionKey, int], shared: Mapping[str, np.ndarray | bytes], events: int, step: int,
        trained_ranges: Iterable[Any] | None = None, timestamp: float | None = None, digest: str | None = None,
        writer: str | None = None, skipped: Mapping[PartitionKey, int] | None = None,
    ) -> None:
        self._state = StoredState(
            checkpoint_id=checkpoint_id, file_name=file_name, events=events, step=step,
            timestamp=time.time() if timestamp is None else timestamp, offsets=dict(offsets),
            # The checkpoint hands arrays already encoded for Redis (the file holds the same bytes).
            shared={k: decode_array(v) if isinstance(v, bytes) else np.array(v, copy=True) for k, v in shared.items()},
            digest=digest, writer=writer, skipped=dict(skipped or {}),
        )

    def clear(self) -> None:
        self._state = None

    def trained_ranges(self) -> list[Any]:
        return []
