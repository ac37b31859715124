"""The checkpoint: the one place that persists model, Redis state and Kafka offsets, in a fixed order.

:meth:`Checkpointer.commit` runs these steps; each step starts only when the previous one succeeded:

0. Refuse offsets that go backwards (smaller than the last committed next offset of a partition), and
   write nothing while the run's lease is not this job's (checked again, atomically, in step 3).
1. Flush the dead-letter producer, so every rejected message before the new offsets is durable. A
   letter the producer or broker refuses is replaced by a bounded record of it (see
   :mod:`streamtrain.ingest.dead_letter`), so a refused letter cannot block checkpoints for good.
2. Write one self-contained restore point to ``<dir>/<run>/ckpt-<id>-<writer>.pt`` atomically (temp
   file, fsync, rename, fsync directory): model, optimizer and vocabulary, and also the shared state
   (frequency arrays, XIR cache), the next offset per partition, event count, step and skipped
   offsets (:mod:`streamtrain.state.restore_point`). The name is unique per writer and attempt, so
   this step never touches a file another writer committed. A failure of any kind (a full disk
   raises RuntimeError from ``torch.save``) removes the temp file at once and counts as a failed
   checkpoint.
3. One Redis MULTI/EXEC: the same shared-state arrays and offsets, the checkpoint id, the file's
   name, writer and sha256 digest, event count, step, timestamp (and, in test mode, the trained
   offset ranges). This is the commit point: a restart resumes from exactly what this transaction
   stored, and verifies that the file it loads is the one named here (id, step, events, digest).
   A writer fenced off here deletes the file it wrote in step 2 (its own, never committed).
4. Commit the same offsets to Kafka (only for lag tools; a failure here is counted, not fatal).
5. Prune old files, keeping the newest ``checkpoint.keep`` and always the one just committed.

Changed from the first version: step 2 used to write the model alone to ``ckpt-<id>.pt`` (replacing
any file of that name), so Redis was the only place the shared state and offsets lived. Now every
kept file can restart the run by itself (``streamtrain consume --restore``) when Redis lost its data
or the newest file is corrupt; Redis still decides which file is current.

A crash or error before step 3 leaves the previous checkpoint in force (a file written in step 2 is
an orphan, ignored at resume because Redis names another file). Kafka offsets are therefore never
committed past state that was not persisted.

The snapshot (:func:`take_snapshot`) is taken by the training thread between steps; ``commit`` may
then run on another thread while training goes on, so the training pause is only the copy.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamtrain.metrics import Metrics
from streamtrain.events.records import PartitionKey
from streamtrain.state.files import CheckpointFiles
from streamtrain.state.restore_point import RestorePoint, pack
from streamtrain.errors import (
    CheckpointError,
    FencedError,
    LeaseExpiredError,
    LeaseLostError,
    OffsetsBackwardsError,
    StateStoreError,
)
from streamtrain.state.redis_store import RedisStateStore, TrainedRange, encode_array

__all__ = ["Snapshot", "Checkpointer", "take_snapshot", "detached_copy"]

log = logging.getLogger(__name__)

OffsetCommitter = Callable[[Mapping[PartitionKey, int]], None]
"""Commits next offsets to Kafka; raises on failure. Must not be called from Kafka's IO thread."""


def detached_copy(tree: Any, reuse: Any = None) -> Any:
    """A deep copy of a state tree that shares no memory with the live model (tensors on the CPU).

    ``reuse``, the copy returned last time, provides buffers: a tensor or array of the same shape and
    dtype is overwritten in place instead of allocated. Fresh 1.5 GB allocations cost page faults
    (~3x slower than copying into warm memory), so the worker keeps its last snapshot for this; the
    caller must make sure nothing still reads ``reuse`` (one commit at a time).
    """
    if isinstance(tree, torch.Tensor):
        if (
            isinstance(reuse, torch.Tensor)
            and reuse.shape == tree.shape
            and reuse.dtype == tree.dtype
            and reuse.device.type == "cpu"
        ):
            return reuse.copy_(tree.detach())
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, np.ndarray):
        if isinstance(reuse, np.ndarray) and reuse.shape == tree.shape and reuse.dtype == tree.dtype:
            np.copyto(reuse, tree)
            return reuse
        return tree.copy()
    if isinstance(tree, dict):
        old = reuse if isinstance(reuse, dict) else {}
        return {k: detached_copy(v, old.get(k)) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        old_items = list(reuse) if isinstance(reuse, (list, tuple)) and len(reuse) == len(tree) else [None] * len(tree)
        return type(tree)(detached_copy(v, o) for v, o in zip(tree, old_items, strict=True))
    return copy.deepcopy(tree)


@dataclass
class Snapshot:
    """A consistent copy of everything one checkpoint persists, taken between training steps."""

    checkpoint_id: int
    file_state: dict[str, Any]
    shared_state: dict[str, np.ndarray]
    offsets: dict[PartitionKey, int]
    events: int
    step: int
    trained_ranges: list[TrainedRange] = field(default_factory=list)
    copy_seconds: float = 0.0
    skipped: dict[PartitionKey, int] = field(default_factory=dict)  # offsets lost to retention, cumulative


def take_snapshot(
    engine: Any,
    checkpoint_id: int,
    offsets: Mapping[PartitionKey, int],
    events: int,
    trained_ranges: list[TrainedRange],
    reuse: Snapshot | None = None,
    skipped: Mapping[PartitionKey, int] | None = None,
) -> Snapshot:
    """Copy the engine's state; called by the thread that trains, between steps (this is the pause).

    ``reuse``: a previous snapshot that is no longer being committed; its buffers are overwritten.
    """
    start = time.perf_counter()
    snap = Snapshot(
        checkpoint_id=checkpoint_id,
        file_state=detached_copy(engine.file_state(), reuse.file_state if reuse is not None else None),
        shared_state=detached_copy(engine.shared_state(), reuse.shared_state if reuse is not None else None),
        offsets=dict(offsets),
        events=events,
        step=int(engine.step),
        trained_ranges=list(trained_ranges),
        skipped=dict(skipped or {}),
    )
    snap.copy_seconds = time.perf_counter() - start
    return snap


class Checkpointer:
    """Runs the ordered commit; one commit at a time (the caller serialises them)."""

    def __init__(
        self,
        *,
        files: CheckpointFiles,
        store: RedisStateStore,
        flush_dead_letters: Callable[[float], bool],
        commit_offsets: OffsetCommitter | None,
        metrics: Metrics,
        committed_id: int | None,
        committed_offsets: Mapping[PartitionKey, int],
        flush_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        history_ranges: list[TrainedRange] | None = None,
    ) -> None:
        """``history_ranges``: test mode only, the committed trained ranges so far (None: not recording)."""
        self._files = files
        self._store = store
        self._flush_dead_letters = flush_dead_letters
        self._commit_offsets = commit_offsets
        self._metrics = metrics
        self._flush_timeout_s = flush_timeout_s
        self._clock = clock
        self.committed_id = committed_id
        self.committed_offsets: dict[PartitionKey, int] = dict(committed_offsets)
        # Ids whose Redis transaction may or may not have applied (timeout after EXEC was sent).
        self._uncertain_ids: set[int] = set()
        self.history_ranges = None if history_ranges is None else list(history_ranges)
        self.committed_file: Path | None = None

    def accept_offset_reset(self, key: PartitionKey, offset: int) -> None:
        """Let the next checkpoint store ``offset`` for ``key`` although it is below the committed one.

        Called when the stored offset lies past the end of the log (the topic was truncated or
        recreated): the only place left to read is the log's end, and step 0 must not refuse it.
        """
        if self.committed_offsets.get(key, -1) > offset:
            self.committed_offsets[key] = offset

    def commit(self, snap: Snapshot, *, kafka: bool = True) -> float:
        """Persist ``snap`` (steps in the module docstring); returns the seconds it took.

        Args:
            kafka: False skips step 4 (used from the rebalance callback, which runs on Kafka's IO
                thread where a blocking commit would deadlock).

        Raises:
            CheckpointError: step ``n`` failed; steps after it did not run. The previous checkpoint
                stays in force; the caller retries later with a new snapshot.
        """
        start = time.perf_counter()
        try:
            self._commit(snap, kafka)
        except CheckpointError:
            self._metrics.checkpoints.labels(outcome="failed").inc()
            raise
        except Exception as exc:  # whatever the type, a failed attempt is a counted failure, not a crash
            self._metrics.checkpoints.labels(outcome="failed").inc()
            raise CheckpointError(0, f"unexpected {type(exc).__name__}: {exc}") from exc
        elapsed = time.perf_counter() - start + snap.copy_seconds
        self._metrics.checkpoints.labels(outcome="ok").inc()
        # End to end (snapshot + steps 1-5); the training pause alone is snap.copy_seconds.
        self._metrics.checkpoint_duration.observe(elapsed)
        self._metrics.checkpoint_pause.observe(snap.copy_seconds)
        self._metrics.last_checkpoint_timestamp.set(self._clock())
        return elapsed

    def _refuse(self, snap: Snapshot) -> None:
        """Step 0: refuse offsets that go backwards, and any write by a job that lost the run's lease
        (it writes nothing, not even a file; checked again inside step 3)."""
        for key, previous in self.committed_offsets.items():
            new = snap.offsets.get(key)
            if new is not None and new < previous:
                raise OffsetsBackwardsError(0, f"{key[0]}[{key[1]}] next offset {new} < committed {previous}")
        try:
            self._store.check_lease()
        except (LeaseLostError, LeaseExpiredError) as exc:
            raise CheckpointError(0, str(exc)) from exc

    def _commit_kafka(self, snap: Snapshot) -> None:
        """Step 4: Kafka offsets, for lag tools only; Redis already holds the truth."""
        to_commit = {k: v for k, v in snap.offsets.items() if v >= 0}
        if to_commit and self._commit_offsets is not None:
            try:
                self._commit_offsets(to_commit)
            except Exception as exc:  # broker down, rebalance in progress: retried next checkpoint
                self._metrics.kafka_errors.labels(operation="commit").inc()
                log.warning("checkpoint %d: Kafka offset commit failed: %s", snap.checkpoint_id, exc)

    def _commit(self, snap: Snapshot, kafka: bool) -> None:
        self._refuse(snap)  # step 0

        # Step 1: dead letters durable before any offset past them is stored.
        if not self._flush_dead_letters(self._flush_timeout_s):
            raise CheckpointError(1, "dead-letter producer did not acknowledge every record")

        # Step 2: the restore point, atomically, under a name no other writer uses.
        ranges = None if self.history_ranges is None else [*self.history_ranges, *snap.trained_ranges]
        encoded = {name: encode_array(array) for name, array in snap.shared_state.items()}
        point = RestorePoint(snap.checkpoint_id, self._files.writer, snap.step, snap.events, snap.offsets,
                             snap.shared_state, snap.skipped, ranges, dict(self._store.topic_ids))
        target = self._files.path(snap.checkpoint_id)
        try:
            written = self._files.write(snap.checkpoint_id, pack(snap.file_state, point, encoded))
        except Exception as exc:  # OSError, or RuntimeError from torch.save on a full disk
            raise CheckpointError(2, f"cannot write {target}: {type(exc).__name__}: {exc}") from exc

        # Step 3: the Redis transaction (the commit point).
        try:
            self._store.commit(
                checkpoint_id=snap.checkpoint_id,
                previous_ids=[self.committed_id, *self._uncertain_ids],
                file_name=written.path.name,
                offsets=snap.offsets,
                shared=encoded,
                events=snap.events,
                step=snap.step,
                trained_ranges=ranges,
                digest=written.digest,
                writer=self._files.writer,
                skipped=snap.skipped,
            )
        except LeaseExpiredError as exc:
            self._files.remove(written.path)
            raise CheckpointError(3, str(exc)) from exc
        except FencedError as exc:
            self._metrics.redis_errors.labels(operation=exc.operation).inc()
            self._metrics.redis_connected.set(1)  # Redis answered; it said no
            # Another writer owns the run: our file was never committed and nobody else names it.
            self._files.remove(written.path)
            raise CheckpointError(3, str(exc)) from exc
        except StateStoreError as exc:
            self._metrics.redis_errors.labels(operation=exc.operation).inc()
            self._metrics.redis_connected.set(0)
            # A lost reply may hide an applied EXEC; accept this id as "previous" next time (and keep the file).
            self._uncertain_ids.add(snap.checkpoint_id)
            raise CheckpointError(3, str(exc)) from exc
        self._metrics.redis_connected.set(1)
        self.committed_file = written.path
        if ranges is not None:
            self.history_ranges = ranges
        self.committed_id = snap.checkpoint_id
        self._uncertain_ids.clear()
        self.committed_offsets.update(snap.offsets)

        if kafka:
            self._commit_kafka(snap)  # step 4

        # Step 5: prune.
        try:
            self._files.prune(protect=written.path)
        except OSError as exc:
            log.warning("cannot prune old checkpoints in %s: %s", self._files.dir, exc)
