"""Cuts decoded chunks into micro-batches of exactly ``batch_size`` events, with offset bookkeeping.

Exactness rule: events are counted, never timed, except for the batch that is open when the stream
goes quiet. With one partition, the k-th batch after a resume offset holds good events
``[k·B, (k+1)·B)`` of that partition, so a restarted worker cuts the same batches as one that never
stopped. Only a batch that has waited ``max_latency_s`` since its first message arrived is closed
early ("latency"), and ``flush`` closes whatever is open (shutdown, idle exit).

Offsets: every micro-batch says, per partition, which messages it covers ``[first_offset,
next_offset)``. Rejected messages (already dead-lettered by the source) belong to the batch that is
open when they arrive, so a partition made only of poison still advances: its batch has no events
but moves the offsets. A batch cut by count ends right after its B-th event; rejects after it start
the next batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamtrain.events.records import MicroBatch, PartitionKey, PartitionRange
from streamtrain.events import EventBatch

__all__ = ["Batcher"]


@dataclass(slots=True)
class _Chunk:
    """Decoded messages of one partition waiting in the open batch."""

    key: PartitionKey
    events: EventBatch
    good_offsets: np.ndarray  # (len(events),) int64
    first_offset: int
    next_offset: int


@dataclass(slots=True)
class _Open:
    chunks: list[_Chunk] = field(default_factory=list)
    events: int = 0
    opened_at: float | None = None


class Batcher:
    """Accumulates decoded chunks and closes micro-batches by count or latency.

    Owned by the source thread; ``reset`` may be called under the source's lock by the rebalance
    callback. Not thread-safe on its own.
    """

    def __init__(self, batch_size: int, max_latency_s: float) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_latency_s <= 0:
            raise ValueError(f"max_latency_s must be > 0, got {max_latency_s}")
        self.batch_size = batch_size
        self.max_latency_s = max_latency_s
        self._open = _Open()

    @property
    def pending_events(self) -> int:
        """Good events in the open batch."""
        return self._open.events

    @property
    def pending_messages(self) -> bool:
        """True when the open batch covers at least one message."""
        return bool(self._open.chunks)

    def deadline(self) -> float | None:
        """Monotonic time at which the open batch closes by latency; None when nothing is open."""
        opened = self._open.opened_at
        return None if opened is None else opened + self.max_latency_s

    def add(
        self,
        key: PartitionKey,
        offsets: np.ndarray,
        events: EventBatch,
        good_index: np.ndarray,
        now: float,
        generation: int = 0,
    ) -> list[MicroBatch]:
        """Add one poll's messages of one partition; returns the batches that filled up (maybe none).

        Args:
            key: the partition.
            offsets: (n,) int64, offsets of all n messages polled, ascending.
            events: the decoder's good events.
            good_index: (len(events),) positions of the good events among the n messages.
            now: monotonic clock, starts the latency timer of a newly opened batch.
        """
        n = len(offsets)
        if n == 0:
            return []
        if len(events) != len(good_index):
            raise ValueError("events and good_index differ in length")
        offsets = np.asarray(offsets, dtype=np.int64)
        good_offsets = offsets[np.asarray(good_index, dtype=np.int64)]  # (E,)
        chunk = _Chunk(key, events, good_offsets, int(offsets[0]), int(offsets[-1]) + 1)
        out: list[MicroBatch] = []
        while True:
            if self._open.opened_at is None:
                self._open.opened_at = now
            room = self.batch_size - self._open.events
            if len(chunk.events) < room:
                self._append(chunk)
                return out
            # Split right after the event that fills the batch; rejects after it go to the next batch.
            split = int(chunk.good_offsets[room - 1]) + 1
            head = _Chunk(key, chunk.events.slice(0, room), chunk.good_offsets[:room], chunk.first_offset, split)
            self._append(head)
            out.append(self._close("count", generation))
            if split >= chunk.next_offset:
                return out
            chunk = _Chunk(
                key, chunk.events.slice(room, len(chunk.events)), chunk.good_offsets[room:], split, chunk.next_offset
            )

    def poll_due(self, now: float, generation: int = 0) -> MicroBatch | None:
        """Close the open batch if it has waited ``max_latency_s``; called after every poll."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return None
        return self._close("latency", generation)

    def flush(self, generation: int = 0) -> MicroBatch | None:
        """Close whatever is open (shutdown, idle exit); None when nothing is open."""
        if not self._open.chunks:
            return None
        return self._close("flush", generation)

    def reset(self) -> None:
        """Drop the open batch (after a rebalance the consumer re-reads it from the trained offsets)."""
        self._open = _Open()

    def _append(self, chunk: _Chunk) -> None:
        self._open.chunks.append(chunk)
        self._open.events += len(chunk.events)

    def _close(self, closed_by: str, generation: int) -> MicroBatch:
        chunks = self._open.chunks
        self._open = _Open()
        ranges: dict[PartitionKey, PartitionRange] = {}
        for c in chunks:
            last_time = float(c.events.event_time[-1]) if len(c.events) else None
            prev = ranges.get(c.key)
            if prev is None:
                ranges[c.key] = PartitionRange(c.first_offset, c.next_offset, len(c.events), last_time)
            else:
                ranges[c.key] = PartitionRange(
                    prev.first_offset,
                    c.next_offset,
                    prev.events + len(c.events),
                    last_time if last_time is not None else prev.last_event_time,
                )
        messages = sum(c.next_offset - c.first_offset for c in chunks)
        events = EventBatch.concat([c.events for c in chunks])
        return MicroBatch(events, ranges, messages, generation, closed_by)
