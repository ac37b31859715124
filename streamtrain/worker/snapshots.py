"""Taking the worker's snapshots: engine state and trained offsets copied between steps, into buffers
reused from one checkpoint to the next (allocated once, off the training path, at start)."""

from __future__ import annotations

import logging
import threading
import time

from streamtrain.state.checkpoint import Checkpointer, Snapshot, detached_copy, take_snapshot
from streamtrain.state.runner import CheckpointRunner
from streamtrain.training.engine import TrainingEngine
from streamtrain.worker.late_steps import LateSteps
from streamtrain.worker.progress import Progress

__all__ = ["SnapshotTaker"]

log = logging.getLogger(__name__)


class SnapshotTaker:
    """Snapshots with ids counting up from ``next_id``; ``engine_lock`` is the worker's step lock."""

    def __init__(self, engine: TrainingEngine, progress: Progress, checkpointer: Checkpointer,
                 runner: CheckpointRunner, late: LateSteps, engine_lock: threading.Lock, *, next_id: int) -> None:
        self.engine = engine
        self.progress = progress
        self.checkpointer = checkpointer
        self.runner = runner
        self.late = late
        self._engine_lock = engine_lock
        self._next_id = next_id
        self._last_snapshot: Snapshot | None = None

    def warm(self) -> None:
        """Allocate the snapshot buffers off the training path (first-touch page faults cost seconds at 1M×64).

        Holds the runner's reservation, so no checkpoint starts meanwhile. The copied values do not matter
        (every snapshot overwrites them), so only the state lookup happens under the engine lock.
        """
        try:
            start = time.perf_counter()
            with self._engine_lock:
                file_state, shared = self.engine.file_state(), self.engine.shared_state()
            warm = Snapshot(-1, detached_copy(file_state), detached_copy(shared), {}, 0, 0)
            with self._engine_lock:
                if self._last_snapshot is None:
                    self._last_snapshot = warm
            log.debug("snapshot buffers ready in %.2f s", time.perf_counter() - start)
        except Exception as exc:  # only an optimisation: the first checkpoint allocates instead
            log.warning("could not pre-allocate snapshot buffers: %s", exc)
        finally:
            self.runner.release()

    def take_if_new(self) -> Snapshot | None:
        """A snapshot of the engine and the trained offsets, or None when nothing changed since the last
        commit. Called only while this thread holds the runner's reservation (no commit runs), so the
        previous snapshot's buffers are free to reuse."""
        with self._engine_lock:
            self.late.flush()  # the checkpoint must hold the last step's statistics (rolling metrics)
            offsets = self.progress.offsets()
            if offsets == self.checkpointer.committed_offsets and self.progress.events == self.runner.committed_events:
                return None
            snap = take_snapshot(
                self.engine, self._next_id, offsets, self.progress.events, self.progress.pending_ranges(),
                reuse=self._last_snapshot, skipped=self.progress.skipped(),
            )
            self._last_snapshot = snap
            self._next_id += 1
        return snap
