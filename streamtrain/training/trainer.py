"""The Trainer: sequences the steps that turn micro-batches of events into sampled-softmax training.

What a step reads and writes (model, vocabularies, optimizers, sampler, estimator, evaluator, RNGs)
is a :class:`~streamtrain.training.state.TrainState`; the Trainer holds it with the device plumbing
(prefetch, readback) and the step whose statistics are still on the device. The worker calls
:meth:`Trainer.submit_step` per micro-batch (:meth:`Trainer.flush_stats` before a checkpoint and when
idle), :meth:`Trainer.probe` every few steps, and persists :meth:`Trainer.file_state` (checkpoint file)
and :meth:`Trainer.shared_state` (Redis) together.

One step: :func:`~.staging.stage_batch` maps ids to rows on the host, uploads the batch once and
re-initialises (re)assigned rows (steps 1-3); :func:`~.step.run_step` reads the causal histories,
scores the batch before training on it (a ``progressive_eval_fraction`` of steps, baselines on the
same positives), updates the estimator, computes the loss with a :class:`~.step.StepStrategy` (local,
or the split step across ranks), applies the finite-loss-guarded optimizer steps and starts the
statistics' copy to the host (steps 4-9). Nothing in a step reads the device: the host learns step
t's statistics during step t+1. :meth:`Trainer.train_step` is the synchronous form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from streamtrain.config import Config
from streamtrain.distributed.context import DistContext
from streamtrain.distributed.split_step import SplitExchange
from streamtrain.evaluation.probe import probe_sampler
from streamtrain.events.batch import EventBatch, object_array
from streamtrain.training.device import resolve_device
from streamtrain.training.prefetch import BatchPrefetcher
from streamtrain.training.readback import StatsReadback
from streamtrain.training.staging import apply_assigned, lookup_ids, stage_batch
from streamtrain.training.state import TrainingError, TrainState
from streamtrain.training.step import LocalStep, SplitStep, finish_step, histories, run_step, sampler_input
from streamtrain.training.step_stats import PendingStep, StepStats

__all__ = ["StepStats", "Trainer", "TrainingError"]


class Trainer:
    """A :class:`~streamtrain.training.engine.TrainingEngine` over one :class:`TrainState`."""

    def __init__(self, config: Config, *, device: str | torch.device | None = None) -> None:
        self.config = config
        self.device = resolve_device(device if device is not None else config.run.device)
        self.state = TrainState.from_config(config, self.device)
        # Finite-loss guard as masked updates (CUDA: the host never reads the flag); on CPU a false flag
        # just skips the optimizer steps (same result, no masking cost). Tests force the masked path.
        self.mask_updates = self.device.type == "cuda"
        self.prefetcher = BatchPrefetcher(self.device)
        self._readback = StatsReadback(self.device)
        self._pending: PendingStep | None = None  # queued on the device, statistics not read yet
        self._done: StepStats | None = None  # read (e.g. for a checkpoint) but not handed out yet
        self.split: SplitExchange | None = None  # set by enable_split: W > 1 ranks share the step

    def enable_split(self, ctx: DistContext) -> None:
        """Train with the split step on ``ctx``'s ranks; :meth:`submit_step` then needs the per-rank sizes."""
        if ctx.distributed:
            self.split = SplitExchange(ctx, self.config.run.seed, self.device)
            self.split.reseed(self.state.step, self.device)  # after a resume: the stream of this step

    @property
    def step(self) -> int:
        """Training steps submitted (their updates are queued on the device, in order)."""
        return self.state.step

    def vocabulary_sizes(self) -> dict[str, int]:
        return self.state.vocabulary_sizes()

    def vocabulary_stats(self) -> dict[str, dict[str, int]]:
        return self.state.vocabulary_stats()

    def register_ids(self, tower: str, ids: Sequence[str] | np.ndarray, event_time: float = 0.0) -> int:
        """Admit ``ids`` into the ``"user"`` or ``"item"`` vocabulary (and initialise their rows)
        without training, e.g. to preload a catalogue so its items are candidates before anyone
        interacts with them. Subject to the admission threshold and capacity; returns rows assigned."""
        vocab = {"user": self.state.user_vocab, "item": self.state.item_vocab}[tower]
        before = vocab.admissions_total
        arr = object_array(list(ids))
        found = lookup_ids(self.state, tower, vocab, arr, np.full(len(arr), event_time))
        apply_assigned(self.state, found, self.prefetcher.upload(found.arrays()))
        return vocab.admissions_total - before

    def submit_step(self, batch: EventBatch, rank_sizes: Sequence[int] | None = None) -> StepStats | None:
        """Queue one training step on ``batch`` (test-then-train) and return the *previous* step's
        statistics (None: the first step, or right after :meth:`flush_stats`). Nothing here waits
        for the device except reading the previous step's statistics, after this step's work is
        queued. A non-finite loss skips the update on the device; the stats report it
        (``applied=False``) one step later. ``rank_sizes``: events of each rank in the global
        ``batch``; the split step trains this rank's slice, otherwise the whole batch trains."""
        if len(batch) == 0:
            raise TrainingError("train_step got an empty batch; skip empty micro-batches before training")
        split = self.split is not None and rank_sizes is not None
        strategy = SplitStep(self.split, list(rank_sizes)) if split else LocalStep()  # type: ignore[arg-type]
        self._readback.begin()
        staged = stage_batch(self.state, self.prefetcher, batch)
        step = run_step(self.state, staged, strategy, self._readback, masked=self.mask_updates, num_events=len(batch))
        previous, self._pending = self._pending, step
        if previous is not None:
            self._done = finish_step(self.state, previous, self._readback)
        done, self._done = self._done, None
        return done

    def flush_stats(self) -> StepStats | None:
        """Read the last submitted step's statistics now (waits for the device); None when every
        step was already reported. Call before a checkpoint, at stop and when the stream is idle."""
        if self._pending is not None:
            self._done, self._pending = finish_step(self.state, self._pending, self._readback), None
        done, self._done = self._done, None
        return done

    def train_step(self, batch: EventBatch, rank_sizes: Sequence[int] | None = None) -> StepStats:
        """Synchronous :meth:`submit_step`: train on ``batch`` and return *its* statistics."""
        self.submit_step(batch, rank_sizes)
        stats = self.flush_stats()
        assert stats is not None
        return stats

    def probe(self, batch: EventBatch) -> dict[str, float]:
        """Sampling-bias numbers on ``batch`` without changing any training state (vocabularies
        read-only, no optimizer step); reads its results at once (every few steps only)."""
        staged = stage_batch(self.state, self.prefetcher, batch, admit=False)
        try:
            return probe_sampler(self.state.sampler, sampler_input(self.state, staged, histories(
                self.state, staged, append=False)))
        finally:
            self.state.zero_grads()  # the probe may have backpropagated into the tables

    def file_state(self) -> dict[str, Any]:
        """The checkpoint file's content; settles a pending step first, so the rolling metrics it
        holds include every submitted step."""
        if self._pending is not None:
            self._done, self._pending = finish_step(self.state, self._pending, self._readback), None
        return self.state.file_state()

    def load_file_state(self, state: dict[str, Any]) -> None:
        self._pending = self._done = None  # statistics of steps before the restore describe another state
        self.state.load_file_state(state)
        if self.split is not None:  # the rank's own draw stream, deterministic from the resume point
            self.split.reseed(self.state.step, self.device)

    def shared_state(self) -> dict[str, np.ndarray]:
        return self.state.shared_state()

    def load_shared_state(self, state: dict[str, np.ndarray]) -> None:
        self.state.load_shared_state(state)
