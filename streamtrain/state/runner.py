"""When to checkpoint, and running the commit off the training thread with backoff after failures.

The training thread asks :meth:`CheckpointRunner.due` after every step; when it says yes it reserves
the runner (:meth:`try_acquire`), takes a snapshot (the pause) and hands it to :meth:`submit`, which
runs :meth:`Checkpointer.commit` on a background thread and releases the reservation at the end.
One commit runs at a time. A failed commit (e.g. Redis unreachable) schedules
the next attempt after an exponential backoff; training goes on in memory meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from streamtrain.backoff import Backoff
from streamtrain.state.checkpoint import Checkpointer, Snapshot
from streamtrain.errors import CheckpointError, FencedError, LeaseLostError, OffsetsBackwardsError, WorkerError

__all__ = ["CheckpointRunner"]

log = logging.getLogger(__name__)


class CheckpointRunner:
    """Schedules checkpoints by events and time; runs commits one at a time."""

    def __init__(
        self,
        checkpointer: Checkpointer,
        backoff: Backoff,
        *,
        interval_events: int,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.checkpointer = checkpointer
        self._backoff = backoff
        self._interval_events = interval_events
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._last_attempt = clock()
        self._not_before = 0.0
        self.committed_events = 0
        self.fatal: WorkerError | None = None
        self.on_success: Callable[[Snapshot], None] | None = None

    @property
    def busy(self) -> bool:
        """True while a commit is running."""
        return not self._idle.is_set()

    def due(self, events: int, now: float | None = None) -> bool:
        """Should the training thread snapshot now? ``events`` = trained events so far (total)."""
        now = self._clock() if now is None else now
        if self.busy or now < self._not_before:
            return False
        new_events = events - self.committed_events
        return new_events >= self._interval_events or (now - self._last_attempt >= self._interval_s)

    def try_acquire(self) -> bool:
        """Reserve the runner if no commit runs; the holder must ``submit``, ``run_now`` or ``release``.

        The reservation covers the snapshot too, so the snapshot's reused buffers are never still being
        written by a previous commit.
        """
        with self._lock:
            if not self._idle.is_set():
                return False
            self._idle.clear()
            return True

    def acquire(self, timeout_s: float) -> bool:
        """Wait until no commit runs, then reserve the runner; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while not self.try_acquire():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._idle.wait(remaining):
                return False
        return True

    def release(self) -> None:
        """Give up a reservation without committing (nothing new to checkpoint)."""
        self._idle.set()

    def submit(self, snap: Snapshot) -> None:
        """Commit ``snap`` on a background thread; the caller holds the reservation, which ends with it."""
        thread = threading.Thread(target=self._run, args=(snap, True), name="streamtrain-checkpoint", daemon=True)
        thread.start()

    def run_now(self, snap: Snapshot, *, kafka: bool = True) -> bool:
        """Commit ``snap`` on the calling thread (shutdown, revocation); the caller holds the reservation.

        Returns True on success.
        """
        return self._run(snap, kafka)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until no commit runs; False on timeout."""
        return self._idle.wait(timeout_s)

    def _run(self, snap: Snapshot, kafka: bool) -> bool:
        try:
            self._last_attempt = self._clock()
            seconds = self.checkpointer.commit(snap, kafka=kafka)
        except CheckpointError as exc:
            delay = self._backoff.next_delay()
            self._not_before = self._clock() + delay
            if isinstance(exc.__cause__, LeaseLostError):
                self.fatal = exc  # the worker says it once, in one line (Worker.lease_lost)
                log.debug("checkpoint %d refused: %s", snap.checkpoint_id, exc)
            elif isinstance(exc, OffsetsBackwardsError) or isinstance(exc.__cause__, FencedError):
                self.fatal = exc
                log.error("checkpoint %d refused: %s", snap.checkpoint_id, exc)
            else:
                log.warning(
                    "checkpoint %d failed (%s); training goes on in memory, retry in %.1f s",
                    snap.checkpoint_id, exc, delay,
                )
            return False
        except Exception as exc:  # a bug; keep the worker alive but make it loud
            delay = self._backoff.next_delay()
            self._not_before = self._clock() + delay
            log.exception("checkpoint %d crashed: %s", snap.checkpoint_id, exc)
            return False
        else:
            self._backoff.reset()
            self._not_before = 0.0
            self.committed_events = snap.events
            if self.on_success is not None:
                self.on_success(snap)
            log.info(
                "checkpoint %d committed: %d events, step %d, pause %.3f s, total %.3f s",
                snap.checkpoint_id, snap.events, snap.step, snap.copy_seconds, seconds,
            )
            return True
        finally:
            self._idle.set()
