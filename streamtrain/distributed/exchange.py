"""The lockstep exchange: one small all-reduce of flags per turn, and the global batch.

Every turn of the training loop, each rank contributes its flags (has a batch, wants to stop,
is idle, failed) and the element-wise max decides for all: step, stop, or wait. When some rank
has a batch, every rank all-gathers the micro-batches (a rank without one contributes an empty
one) and holds the *same* global batch, concatenated in rank order (with each rank's size: the
split step, :mod:`.split_step`, trains each rank's own slice of it). So the vocabulary admission,
the frequency estimator, XIR's cache, the user histories, the progressive evaluation and the
progress (every partition's trained offset) are updated identically on every rank, from the
shared seed; the replicas stay bit-identical without a gradient exchange, and W ranks train
exactly what one process would train on the same global batches.

What crosses the wire per step: the flags (4 int64) and the global batch's columns (ids as
strings, times, weights, types; B·W events), see BENCHMARKS.md "Distributed training".
"""

from __future__ import annotations

import dataclasses

import logging
from dataclasses import dataclass

from streamtrain.distributed.context import DistContext
from streamtrain.events.batch import EventBatch
from streamtrain.events.records import MicroBatch

__all__ = ["Agreement", "StepExchange", "merge_batches"]

log = logging.getLogger(__name__)

_HAS_BATCH, _STOP, _BUSY, _FAILED = range(4)


@dataclass(frozen=True)
class Agreement:
    """What all ranks decided this turn."""

    step: bool  # some rank has a batch: every rank trains the global batch
    stop: bool  # some rank stops (signal, max steps, source failure): every rank stops
    all_idle: bool  # every rank is past its idle bound with nothing pending
    failed: bool  # some rank failed (e.g. rank 0's checkpoint was fenced): stop without a checkpoint


def merge_batches(parts: list[MicroBatch | None], generation: int) -> MicroBatch:
    """One micro-batch from every rank's (partitions are disjoint across ranks), in rank order."""
    present = [p for p in parts if p is not None]
    events = EventBatch.concat([p.events for p in present]) if present else EventBatch.empty()
    ranges = {}
    for p in present:
        ranges.update(p.ranges)
    closed = "+".join(sorted({p.closed_by for p in present})) or "empty"
    sizes = tuple(0 if p is None else len(p.events) for p in parts)
    return MicroBatch(events, ranges, sum(p.messages for p in present), generation, closed, rank_sizes=sizes)


class StepExchange:
    """The per-turn agreement and the batch all-gather (both the identity for W = 1)."""

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx
        self.steps_exchanged = 0

    def agree(self, *, has_batch: bool, stop: bool, idle: bool, failed: bool = False) -> Agreement:
        flags = [0, 0, 0, 0]
        flags[_HAS_BATCH], flags[_STOP], flags[_BUSY], flags[_FAILED] = int(has_batch), int(stop), int(not idle), int(failed)
        got = self.ctx.all_reduce_max(flags)
        return Agreement(bool(got[_HAS_BATCH]), bool(got[_STOP]), not got[_BUSY], bool(got[_FAILED]))

    def global_batch(self, local: MicroBatch | None, generation: int) -> MicroBatch | None:
        """Every rank's batch merged; for W = 1 the local batch itself."""
        if not self.ctx.distributed:
            return local
        self.steps_exchanged += 1
        if local is not None and local.release is not None:
            # Columns in an ingest slot: the gather pickles a copy; the caller releases the slot.
            local = dataclasses.replace(local, release=None)
        return merge_batches(self.ctx.all_gather_object(local), generation)
