"""Where each partition resumes, for the source: the trained offset, the beginning of a partition the
run never owned, and a jump the log forced on the stored offset (retention, a truncated or recreated
topic), recorded loudly and counted."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from streamtrain.events.records import EARLIEST, PartitionKey
from streamtrain.metrics import Metrics
from streamtrain.state.checkpoint import Checkpointer
from streamtrain.worker.progress import Progress

__all__ = ["Positions"]

log = logging.getLogger(__name__)


class Positions:
    """The source's questions about offsets, answered from the worker's :class:`Progress`.

    ``engine_lock`` is the worker's: an offset reset changes what the next checkpoint stores, so it
    must not interleave with a snapshot.
    """

    def __init__(self, progress: Progress, metrics: Metrics, checkpointer: Checkpointer, *, fresh: bool,
                 engine_lock: threading.Lock) -> None:
        self.progress = progress
        self.metrics = metrics
        self.checkpointer = checkpointer
        self._fresh = fresh
        self._engine_lock = engine_lock

    def resolve_position(self, key: PartitionKey) -> int | None:
        self.metrics.offsets_skipped.labels(topic=key[0], partition=str(key[1]))  # the series exists at 0
        position = self.progress.offset(key)
        if position is None and self._fresh:
            self.progress.set_earliest([key])
            return EARLIEST
        if position is None and self.progress.is_new_partition(key):
            self.progress.add_discovered(key)
            self.metrics.partitions_discovered.labels(topic=key[0]).inc()
            log.info("%s[%d] is a partition this run never owned (the topic grew): reading it from its earliest "
                     "offset", key[0], key[1])
            return EARLIEST
        return position

    def trained_offsets(self) -> Mapping[PartitionKey, int]:
        return self.progress.offsets()

    def on_offset_reset(self, key: PartitionKey, stored: int, new: int, log_start: int | None = None) -> None:
        """The log no longer holds ``stored`` (source thread): record the jump, loudly and counted."""
        with self._engine_lock:
            lost = self.progress.reset_offset(key, new, log_start)
            if new < stored:
                self.checkpointer.accept_offset_reset(key, new)
        if lost:
            self.metrics.offsets_skipped.labels(topic=key[0], partition=str(key[1])).inc(lost)
        if new >= stored:
            log.error("%s[%d]: stored offset %d is below the log start %d (retention or deleted records): "
                      "%d offsets were never trained and are skipped; resuming at %d",
                      key[0], key[1], stored, new, lost, new)
        else:
            log.error("%s[%d]: stored offset %d is past the log end %d (topic truncated or recreated): the log's "
                      "%d offsets before it are skipped, never trained; resuming at %d",
                      key[0], key[1], stored, new, lost, new)

    def last_event_times(self) -> Mapping[PartitionKey, float]:
        return self.progress.last_event_times()
