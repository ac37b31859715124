"""The training engine as the worker sees it: a small protocol the real Trainer and test fakes satisfy."""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from streamtrain.events import EventBatch

__all__ = ["TrainingEngine", "StepResult"]


@runtime_checkable
class StepResult(Protocol):
    """What one ``train_step`` reports (the Trainer's ``StepStats``); read only for metrics and logs.

    Optional, read with ``getattr``: ``baselines``, popularity baseline name -> its rolling
    Recall@K/NDCG@K on the same evaluated batches (None or absent when the step was not evaluated).
    """

    step: int
    num_events: int
    loss: float
    duration_s: float
    logq_mean: float
    logq_std: float
    sampler_stats: Mapping[str, Any]
    progressive: Mapping[str, Any] | None
    applied: bool  # False: the loss was not finite and the update was skipped


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

    def train_step(self, batch: EventBatch) -> StepResult:
        """One optimisation step on a micro-batch (progressive evaluation happens inside)."""
        ...

    # Optional (the worker uses them when present, else ``train_step``): the one-step-late path.
    # ``submit_step(batch) -> StepResult | None`` queues a step and returns the *previous* step's
    # result; ``flush_stats() -> StepResult | None`` returns the last one now. The worker flushes
    # before every snapshot (so ``file_state`` includes the step's rolling metrics), when idle and
    # at stop, and records each result exactly once.

    def probe(self, batch: EventBatch) -> dict[str, float]:
        """Sampling-bias diagnostics on a batch, without updating the model."""
        ...

    def vocabulary_sizes(self) -> dict[str, int]:
        """Ids holding their own row, per tower: ``{"user": n, "item": m}``."""
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
