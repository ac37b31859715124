"""What the model has trained: next offset per partition, event count, and (test mode) trained ranges.

Updated by the training thread after each micro-batch and read by the checkpoint, the rebalance
callback (to seek) and the lag tracker. A plain lock guards it; every method is short.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping

from streamtrain.events.records import MicroBatch, PartitionKey
from streamtrain.state.redis_store import TrainedRange
from streamtrain.events.records import EARLIEST

__all__ = ["Progress"]

log = logging.getLogger(__name__)


class Progress:
    """Trained offsets of one worker; the in-memory counterpart of the committed Redis offsets."""

    def __init__(
        self,
        offsets: Mapping[PartitionKey, int],
        events: int,
        *,
        record_ranges: bool = False,
        skipped: Mapping[PartitionKey, int] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._skipped: dict[PartitionKey, int] = dict(skipped or {})
        self._offsets: dict[PartitionKey, int] = dict(offsets)
        self._discovered: set[PartitionKey] = set()
        self._last_event_time: dict[PartitionKey, float] = {}
        self.events = events
        self._record = record_ranges
        self._ranges: list[TrainedRange] = []

    def offset(self, key: PartitionKey) -> int | None:
        """Next offset to train for ``key`` (EARLIEST for a fresh partition), None when unknown."""
        with self._lock:
            return self._offsets.get(key)

    def is_new_partition(self, key: PartitionKey) -> bool:
        """True when ``key`` has no stored offset and lies past every partition of its topic this run owned.

        Kafka only ever adds partitions, with higher numbers, and one job owns every partition of its run
        (the lease), so such a partition was added after the run last checkpointed: it starts at its
        earliest offset. A missing partition *below* a known one was owned and its offset was lost, and a
        topic with no known partition at all is another topic than the run's: both stay errors.
        """
        with self._lock:
            if key in self._offsets:
                return False
            # Partitions found new in this process do not count as owned: an assignment may list the new
            # partitions in any order (2 before 1).
            known = [p for t, p in self._offsets if t == key[0] and (t, p) not in self._discovered]
        return bool(known) and key[1] > max(known)

    def add_discovered(self, key: PartitionKey) -> None:
        """Start a partition the topic gained (``is_new_partition``) at its beginning."""
        with self._lock:
            self._discovered.add(key)
            self._offsets.setdefault(key, EARLIEST)

    def set_earliest(self, keys: Iterable[PartitionKey]) -> None:
        """Mark partitions of a fresh run as starting at their beginning."""
        with self._lock:
            for key in keys:
                self._offsets.setdefault(key, EARLIEST)

    def reset_offset(self, key: PartitionKey, offset: int, log_start: int | None = None) -> int:
        """Move ``key`` to ``offset`` because the log no longer holds the stored one; returns offsets skipped.

        Below the log start (retention, deleted records) the offsets in between are lost and counted.
        Past the log end (a truncated or recreated topic) the position moves back to the end; with
        ``log_start`` known, the log's ``[log_start, offset)`` is jumped over and counted as skipped.
        """
        with self._lock:
            old = self._offsets.get(key)
            lost = max(0, offset - old) if old is not None and old >= 0 else 0
            if old is not None and old >= 0 and offset < old and log_start is not None:
                lost = max(0, offset - log_start)
            self._offsets[key] = offset
            if lost:
                self._skipped[key] = self._skipped.get(key, 0) + lost
            return lost

    def skipped(self) -> dict[PartitionKey, int]:
        """Offsets lost to retention per partition over the run's history (stored with each checkpoint)."""
        with self._lock:
            return dict(self._skipped)

    def offsets(self) -> dict[PartitionKey, int]:
        with self._lock:
            return dict(self._offsets)

    def last_event_times(self) -> dict[PartitionKey, float]:
        with self._lock:
            return dict(self._last_event_time)

    def accepts(self, batch: MicroBatch) -> bool:
        """False when the batch overlaps what was already trained (a stale batch after a seek)."""
        with self._lock:
            for key, r in batch.ranges.items():
                trained = self._offsets.get(key)
                if trained is not None and trained >= 0 and r.first_offset < trained:
                    return False
        return True

    def advance(self, batch: MicroBatch) -> None:
        """Record a trained (or rejects-only) batch; called by the training thread after the step."""
        with self._lock:
            for key, r in batch.ranges.items():
                trained = self._offsets.get(key)
                if trained is not None and trained >= 0 and r.first_offset > trained:
                    # Normal around transaction markers and compaction; worth a debug line only.
                    log.debug("%s[%d]: gap %d..%d in the log", key[0], key[1], trained, r.first_offset)
                self._offsets[key] = r.next_offset
                if r.last_event_time is not None:
                    self._last_event_time[key] = r.last_event_time
                if self._record:
                    self._ranges.append((key[0], key[1], r.first_offset, r.next_offset, r.events))
            self.events += len(batch.events)

    def pending_ranges(self) -> list[TrainedRange]:
        """Ranges trained since the last successful checkpoint (test mode; empty otherwise)."""
        with self._lock:
            return list(self._ranges)

    def drop_committed_ranges(self, count: int) -> None:
        """Forget the first ``count`` ranges after a checkpoint that included them succeeded."""
        with self._lock:
            del self._ranges[:count]
