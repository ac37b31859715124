"""The records every package shares: where a message came from and what a micro-batch covers.

They live here, below ingest, training, state and distributed, so none of those has to import another
to name a partition or a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from streamtrain.events.batch import EventBatch

__all__ = ["PartitionKey", "PartitionRange", "MicroBatch", "EARLIEST"]

PartitionKey = tuple[str, int]
"""(topic, partition); kafka's ``TopicPartition`` namedtuple compares equal to it."""


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """The messages of one partition a micro-batch covers.

    Attributes:
        first_offset: offset of the first message covered (good or rejected).
        next_offset: offset after the last message covered; what a checkpoint stores.
        events: good events from this partition in the batch.
        last_event_time: event time of the partition's last good event, None when it had none.
    """

    first_offset: int
    next_offset: int
    events: int
    last_event_time: float | None


@dataclass(frozen=True, slots=True)
class MicroBatch:
    """A ready batch for the trainer: decoded events plus the offsets they consumed.

    Attributes:
        events: the good events, in consumption order; may be empty (only rejects).
        ranges: per partition, what the batch covers.
        messages: offsets covered (events, rejects and any gaps in the log).
        generation: the source's assignment generation when it was cut; stale after a rebalance.
        closed_by: "count", "latency" or "flush".
        release: set on a batch whose columns live in an ingest process's shared-memory slot; whoever
            consumes or drops the batch calls it once, after which the columns must not be read.
    """

    events: EventBatch
    ranges: Mapping[PartitionKey, PartitionRange]
    messages: int
    generation: int = 0
    closed_by: str = "count"
    release: Callable[[], None] | None = None
    # Events of each rank, in rank order, when this is a global batch (merge_batches); () otherwise.
    rank_sizes: tuple[int, ...] = ()


EARLIEST = -2
"""Stored next offset meaning "the beginning of the partition" (nothing consumed yet in a fresh run)."""
