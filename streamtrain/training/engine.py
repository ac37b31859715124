"""The training engine as the worker sees it: a small protocol the real Trainer and test fakes satisfy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from streamtrain.events import EventBatch

__all__ = ["TrainingEngine", "StepResult"]


@runtime_checkable
class StepResult(Protocol):
    """What one ``train_step`` reports (the Trainer's ``StepStats``); read only for metrics and logs."""

    step: int
    num_events: int
    loss: float
    duration_s: float
    logq_mean: float
    logq_std: float
    sampler_stats: Mapping[str, Any]
    progressive: Mapping[str, Any] | None
    applied: bool  # False: the loss was not finite and the update was skipped
    # streaming baseline name -> its rolling Recall@K/NDCG@K on the same evaluated batches (None: not evaluated)
    baselines: Mapping[str, Mapping[str, float]] | None


@runtime_checkable
class TrainingEngine(Protocol):
    """Everything the worker needs from a trainer.

    The worker calls every method from one thread at a time (it serialises the training loop and the
    rebalance callback with a lock). An exception from ``train_step`` is a bug or a device failure:
    the worker stops without checkpointing the half-updated state.
    """

    @property
    def step(self) -> int:
        """Training steps taken so far (restored by ``load_shared_state``/``load_file_state``)."""
        ...

    @property
    def device(self) -> Any:
        """Where the model lives (``torch.device`` or its name); reported in the worker's build info."""
        ...

    def train_step(self, batch: EventBatch) -> StepResult:
        """One optimisation step on a micro-batch (progressive evaluation happens inside)."""
        ...

    def submit_step(self, batch: EventBatch, rank_sizes: Sequence[int] | None = None) -> StepResult | None:
        """The one-step-late path the worker uses: queue a step, return the *previous* step's result
        (None for the first one). ``rank_sizes`` (events per rank of a global batch) matters only after
        :meth:`enable_split`; an engine without a split step trains the whole batch."""
        ...

    def flush_stats(self) -> StepResult | None:
        """The last submitted step's result now (None when all were reported). The worker flushes
        before every snapshot (so ``file_state`` includes the step's rolling metrics), when idle and
        at stop, and records each result exactly once."""
        ...

    def enable_split(self, ctx: Any) -> None:
        """``distributed.step = split`` with W > 1: each rank computes its own events' queries and the
        ranks share one step through ``ctx`` (a :class:`~streamtrain.distributed.context.DistContext`)."""
        ...

    def probe(self, batch: EventBatch) -> dict[str, float]:
        """Sampling-bias diagnostics on a batch, without updating the model."""
        ...

    def vocabulary_sizes(self) -> dict[str, int]:
        """Ids holding their own row, per tower: ``{"user": n, "item": m}``."""
        ...

    def vocabulary_stats(self) -> dict[str, dict[str, int]]:
        """Per tower, the vocabulary's running totals (lookups, fallbacks, admissions, evictions, held back,
        table full), kept in its state so they survive restarts; ``{}`` for an engine without one."""
        ...

    def file_state(self) -> dict[str, Any]:
        """Model, optimizer and vocabulary, ``torch.save``-able; may share memory with the live model."""
        ...

    def load_file_state(self, state: Mapping[str, Any]) -> None:
        """Restore what ``file_state`` returned."""
        ...

    def shared_state(self) -> dict[str, np.ndarray]:
        """Frequency estimator, sampler caches and step as numpy arrays (stored in Redis)."""
        ...

    def load_shared_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what ``shared_state`` returned."""
        ...
