"""The streaming worker: resume, then train every micro-batch the source delivers, checkpointing as it goes.

Threads: the *source* (consumer, decoding, batching), the *loop* (training; this module), one
*checkpoint* thread at a time (commit steps after the snapshot), the HTTP server, and kafka-python's
own IO threads (which run the rebalance callbacks). The engine is touched by the loop and by the
revoke callback only, serialised by ``_engine_lock``.

Stopping: :meth:`Worker.request_stop` (SIGTERM/SIGINT) lets the current step finish, then the loop
takes a final checkpoint (files, Redis, Kafka commit) and returns. ``max_steps`` (total engine
steps) and ``idle_exit_s`` (no message for that long; the open batch is flushed and trained first)
end the loop the same way.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from streamtrain.config import Config
from streamtrain.distributed.context import DistContext
from streamtrain.distributed.exchange import StepExchange
from streamtrain.metrics import Metrics
from streamtrain.events.records import MicroBatch, PartitionKey
from streamtrain.state.checkpoint import Checkpointer, Snapshot
from streamtrain.state.runner import CheckpointRunner
from streamtrain.training.engine import StepResult, TrainingEngine
from streamtrain.errors import FencedError, LeaseLostError, WorkerError
from streamtrain.worker.late_steps import LateSteps
from streamtrain.worker.positions import Positions
from streamtrain.worker.snapshots import SnapshotTaker
from streamtrain.worker.progress import Progress
from streamtrain.state.resume import ResumePoint
from streamtrain.ingest.source import KafkaSource
from streamtrain.worker.status_line import StatusLine
from streamtrain.worker.step_metrics import init_series, record_step
from streamtrain.worker.vocabulary_metrics import VocabularyCounters

__all__ = ["Worker"]

log = logging.getLogger(__name__)

_FINAL_CHECKPOINT_S = 20.0

class Worker:
    """Wires the loop to its collaborators; build one with :func:`streamtrain.worker.build.build_worker`."""

    def __init__(
        self,
        config: Config,
        *,
        engine: TrainingEngine,
        source: KafkaSource,
        checkpointer: Checkpointer,
        runner: CheckpointRunner,
        progress: Progress,
        start: ResumePoint,
        metrics: Metrics,
        max_steps: int | None = None,
        idle_exit_s: float | None = None,
        exchange: StepExchange | None = None,
        publisher: Any = None,
    ) -> None:
        self.config = config
        # The lockstep with the other ranks; rank 0 alone writes checkpoints (every rank holds the same state).
        self.exchange = exchange if exchange is not None else StepExchange(DistContext())
        self.writes_checkpoints = self.exchange.ctx.is_main
        if config.distributed.step == "split":
            engine.enable_split(self.exchange.ctx)  # W > 1: each rank computes its own events' queries
        self.engine = engine
        self.source = source
        self.checkpointer = checkpointer
        self.runner = runner
        self.progress = progress
        self.metrics = metrics
        self._max_steps = max_steps
        self._idle_exit_s = idle_exit_s
        self._engine_lock = threading.Lock()
        self.positions = Positions(progress, metrics, checkpointer, fresh=start.fresh, engine_lock=self._engine_lock)
        self._stop = threading.Event()
        self.fatal: BaseException | None = None
        # Set when the loop ended on purpose but not in success (idle exit while nothing could be read):
        # the final checkpoint still runs, and the command exits non-zero.
        self.exit_error: str | None = None
        self.last_step_at: float | None = None
        self.stop_reason = "running"
        self._lease_lost: LeaseLostError | None = None
        self._lease_lock = threading.Lock()
        self._log_mark = (time.monotonic(), progress.events, engine.step)
        self.status = StatusLine(config.trainer.eval_k)
        self.late = LateSteps(engine)  # step statistics arrive one step late
        self.snapshots = SnapshotTaker(engine, progress, checkpointer, runner, self.late, self._engine_lock,
                                       next_id=start.next_checkpoint_id)
        self.publisher = publisher  # an ExportPublisher when export.every_checkpoints > 0 (see build.py)
        self.loop_thread = threading.Thread(target=self._loop, name="streamtrain-loop", daemon=True)
        runner.on_success = self._on_checkpoint
        init_series(metrics, config, engine.vocabulary_sizes())
        self.vocabulary_counters = VocabularyCounters(metrics, engine)

    # ------------------------------------------------------------------ control
    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to finish its current step, checkpoint and return (signal handlers call this)."""
        if not self._stop.is_set():
            self.stop_reason = reason
            log.info("%s: finishing the current step, then checkpointing", reason)
        self._stop.set()

    def lease_lost(self, reason: str) -> None:
        """Another job holds the run's lease (heartbeat thread, or a refused checkpoint): stop writing at once.

        From here on nothing is written (no checkpoint, no Redis record, no Kafka commit): the holder may
        already have resumed from the last checkpoint, so anything this job wrote would clash with it.
        The loop stops at its next turn and the command exits non-zero. Logged once.
        """
        with self._lease_lock:
            if self._lease_lost is not None:
                return
            self._lease_lost = LeaseLostError(
                "lease", f"{reason}: this job was paused or cut off longer than distributed.lease_ttl_s and another "
                "job took over the run; stopping without writing anything (no checkpoint, no Redis record, no "
                "Kafka commit); the holder carries on from the last checkpoint")
        self.stop_reason = "lost the run's lease"
        log.error("%s", self._lease_lost)
        self._stop.set()

    def start(self) -> None:
        """Start consuming and training on background threads."""
        if self.writes_checkpoints and self.runner.try_acquire():
            threading.Thread(target=self.snapshots.warm, name="streamtrain-warmup", daemon=True).start()
        self.source.start()
        self.loop_thread.start()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the loop to end; False on timeout."""
        self.loop_thread.join(timeout_s)
        return not self.loop_thread.is_alive()

    # ------------------------------------------------------------------ source hooks (IO thread)
    def on_revoked(self, keys: list[PartitionKey]) -> None:
        """Checkpoint what was trained before the partitions move (no Kafka commit on the IO thread)."""
        if self.fatal is not None or self._lease_lost is not None:
            return  # the loop failed mid-step, or another job owns the run: nothing may be persisted
        if not self.runner.acquire(60.0):
            log.error("a checkpoint is still running after 60 s; partitions revoked without a checkpoint")
            return
        snap = self.snapshots.take_if_new()
        if snap is None:
            self.runner.release()
        else:
            self.runner.run_now(snap, kafka=False)

    # ------------------------------------------------------------------ health
    def healthy(self) -> tuple[bool, str]:
        if self.loop_thread.is_alive():
            return True, "ok"
        if self.loop_thread.ident is None and self.fatal is None:
            # The HTTP server comes up before the loop starts (resume can take seconds): alive, not dead.
            return True, "starting"
        return False, f"training loop is not running ({self.stop_reason})"

    def ready(self) -> tuple[bool, str]:
        if not self.loop_thread.is_alive():
            return False, "training loop is not running"
        problem = self.source.health.problem()
        if problem is not None:
            return False, problem
        if not self.source.assigned:
            return False, "no partitions assigned"
        stale_s = self.config.metrics.ready_stale_s
        if self.last_step_at is not None and time.monotonic() - self.last_step_at <= stale_s:
            return True, "ok"
        pending = self.source.lag.pending_messages
        if pending == 0 and self.source.batches.empty():
            return True, "ok: caught up"
        return False, f"no training step in the last {stale_s:.0f} s while {pending} messages are pending"

    # ------------------------------------------------------------------ loop
    def _loop(self) -> None:
        try:
            self._run_loop()
            self._final_checkpoint()
        except BaseException as exc:
            self.fatal = exc
            self.stop_reason = f"failed: {exc}"
            if isinstance(exc.__cause__, LeaseLostError):
                self.lease_lost(str(exc.__cause__))  # a checkpoint found it first
            if self._lease_lost is not None:
                self.fatal = self._lease_lost  # said once, in one line, by lease_lost
                self.stop_reason = "lost the run's lease"
            elif isinstance(exc.__cause__, FencedError):
                # Not a crash: another worker owns the run. Its files and Redis state stay untouched.
                log.error("fenced off (%s); stopping without a final checkpoint", exc)
            else:
                log.exception("training loop failed; no final checkpoint (state may be half-updated)")

    def _run_loop(self) -> None:
        """Turns in lockstep with the other ranks (for W = 1 the agreement is this rank's own flags).

        Each turn: take a batch if one is ready, agree with every rank (one small all-reduce), then
        all train the global batch, or all stop, or all wait.
        """
        stepped = False
        while True:
            stop_reason, failure = self._local_stop()
            batch = None
            if stop_reason is None and failure is None:
                batch = self._next_batch(0.1 if stepped is False or not self.exchange.ctx.distributed else 0.005)
            idle = batch is None and stop_reason is None and failure is None and self._idle_ready()
            agreed = self.exchange.agree(has_batch=batch is not None, stop=stop_reason is not None, idle=idle,
                                         failed=failure is not None)
            if agreed.failed:
                if failure is not None:
                    raise failure
                raise WorkerError("another rank failed; stopping without a checkpoint (the job restarts from the last one)")
            if agreed.stop:
                self.stop_reason = stop_reason or "another rank stopped"
                return
            if agreed.step:
                try:
                    self._train(self.exchange.global_batch(batch, self.source.generation))
                finally:
                    if batch is not None and batch.release is not None:  # columns in an ingest slot
                        batch.release()
                self._maybe_checkpoint()
                stepped = True
                if self._max_steps is not None and self.engine.step >= self._max_steps:
                    self.stop_reason = f"max steps {self._max_steps}"
                    log.info("reached %d steps: exiting", self._max_steps)
                    return
                continue
            stepped = False
            self._flush_stats()  # nothing to overlap with: report the last step now
            if agreed.all_idle:
                self._idle_exit()
                return
            self._maybe_checkpoint()

    def _local_stop(self) -> tuple[str | None, BaseException | None]:
        """This rank's reason to stop (signal, source failure) or its failure (a refused checkpoint)."""
        if self._lease_lost is not None:
            return None, self._lease_lost
        if self.runner.fatal is not None:
            return None, self.runner.fatal
        if self._stop.is_set():
            return self.stop_reason, None
        if self.source.fatal is not None:
            # What was trained is consistent: stop consuming but still take the final checkpoint.
            reason = f"source failed: {self.source.fatal}"
            log.error("%s", reason)
            return reason, None
        return None, None

    def _next_batch(self, timeout_s: float) -> MicroBatch | None:
        """This rank's next batch, or None when none came within ``timeout_s`` (a stale one is dropped)."""
        waited = time.perf_counter()
        try:
            batch = self.source.batches.get(timeout=timeout_s)
        except queue.Empty:
            return None
        finally:
            self.metrics.trainer_wait_seconds.inc(time.perf_counter() - waited)
        if batch.generation != self.source.generation:
            log.debug("dropping a batch cut before the last rebalance")
            return None
        return batch

    def _idle_ready(self) -> bool:
        """Idle past the bound, with nothing pending and no broker failure still within its bound."""
        if not self._idle_done():
            return False
        health = self.source.health
        # A failure not yet past the bound: wait for the broker rather than guess.
        return not health.failing() or health.problem() is not None

    def _idle_exit(self) -> None:
        problem = self.source.health.problem() if self.source.health.failing() else None
        if problem is None:
            self.stop_reason = f"idle for {self._idle_exit_s:g} s"
            log.info("no events for %.1f s: exiting", self._idle_exit_s)
            return
        # Idle because nothing could be read is not "drained": say so and exit non-zero.
        self.stop_reason = f"idle for {self._idle_exit_s:g} s, broker unusable"
        self.exit_error = f"no events for {self._idle_exit_s:g} s because {problem}"
        log.error("%s", self.exit_error)

    def _idle_done(self) -> bool:
        if self._idle_exit_s is None or self.source.assigned_at is None or self.source.joining:
            return False  # idle time counts from the last completed assignment
        last = max(self.source.last_message_at or 0.0, self.source.assigned_at)
        if time.monotonic() - last < self._idle_exit_s:
            return False
        if self.source.pending_in_batcher():
            self.source.request_flush()  # the partial batch is trained on the next turn
            return False
        return self.source.batches.empty()

    def _train(self, batch: MicroBatch) -> None:
        stats: StepResult | None = None
        probe: dict[str, float] | None = None
        with self._engine_lock:
            if batch.generation != self.source.generation:
                log.debug("dropping a batch cut before the last rebalance")
                return
            if not self.progress.accepts(batch):
                log.warning("dropping a batch that overlaps trained offsets: %s", dict(batch.ranges))
                return
            if len(batch.events):
                # The stats of the *previous* step (None for the first): this step runs on the device
                # while the loop fetches the next batch.
                stats = self.late.submit(batch.events, batch.rank_sizes)
                interval = self.config.trainer.probe_interval_steps
                if interval and self.engine.step % interval == 0:
                    probe = self.engine.probe(batch.events.slice(0, self.config.trainer.probe_batch_size))
            self.progress.advance(batch)
        self.last_step_at = time.monotonic()
        self._report_unreported()
        if stats is not None:
            self._record_step(stats, probe)
        elif probe is not None:
            self.late.carry(probe)
        self.source.lag.refresh(self.progress.offsets(), self.progress.last_event_times())

    def _flush_stats(self) -> None:
        """Loop thread: read the last step's statistics now (nothing to overlap with) and record them."""
        with self._engine_lock:
            self.late.flush()
        self._report_unreported()

    def _report_unreported(self) -> None:
        """Loop thread: record the statistics flushes handed over (checkpoint, idle, revoke)."""
        for stats in self.late.take():
            self._record_step(stats, None)

    def _record_step(self, stats: StepResult, probe: dict[str, float] | None) -> None:
        probe = self.late.probe_for_record(probe)
        record_step(self.metrics, stats, self.engine.vocabulary_sizes(), probe)
        self.vocabulary_counters.update()
        self.status.observe(stats.progressive, stats.sampler_stats, probe)
        if stats.step % self.config.trainer.log_every_steps == 0:
            self._log_progress(stats)

    def _log_progress(self, stats: StepResult) -> None:
        now = time.monotonic()
        t0, e0, _ = self._log_mark
        rate = (self.progress.events - e0) / max(now - t0, 1e-9)
        self._log_mark = (now, self.progress.events, stats.step)
        log.info("%s", self.status.format(stats.step, rate, self.source.lag.pending_messages, stats.loss,
                                          self.progress.events))

    # ------------------------------------------------------------------ checkpoints
    def _maybe_checkpoint(self) -> None:
        if not self.writes_checkpoints:
            return
        if not self.runner.due(self.progress.events) or not self.runner.try_acquire():
            return
        snap = self.snapshots.take_if_new()
        self._report_unreported()
        if snap is None:
            self.runner.release()
        else:
            self.runner.submit(snap)

    def _on_checkpoint(self, snap: Snapshot) -> None:
        self.progress.drop_committed_ranges(len(snap.trained_ranges))
        if self.publisher is not None:  # exports follow committed checkpoints only
            self.publisher.on_commit(snap)

    def _final_checkpoint(self) -> None:
        if not self.writes_checkpoints:
            log.info("rank %d stops; rank 0 writes the final checkpoint", self.exchange.ctx.rank)
            return
        deadline = time.monotonic() + _FINAL_CHECKPOINT_S
        while True:
            if not self.runner.acquire(max(1.0, deadline - time.monotonic())):
                raise WorkerError("a checkpoint is still running; exiting without the final one")
            if self.runner.fatal is not None:
                self.runner.release()
                raise self.runner.fatal
            snap = self.snapshots.take_if_new()
            self._report_unreported()
            if snap is None:
                self.runner.release()
                log.info("final checkpoint: nothing new since checkpoint %s", self.checkpointer.committed_id)
                return
            if self.runner.run_now(snap):
                return
            if self.runner.fatal is not None:
                raise self.runner.fatal
            wait = min(self.config.checkpoint.retry_backoff_s, deadline - time.monotonic())
            if wait <= 0:
                raise WorkerError(
                    f"final checkpoint failed until the {_FINAL_CHECKPOINT_S:.0f} s bound; the last committed "
                    f"state is checkpoint {self.checkpointer.committed_id} (later work is retrained after restart)"
                )
            time.sleep(wait)
