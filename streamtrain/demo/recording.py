"""A training engine that records what each step reported: the demo's loss and progressive-recall series.

The worker takes any :class:`~streamtrain.training.engine.TrainingEngine`; :class:`StepRecorder` wraps the
real Trainer, forwards every call, and appends one :class:`StepPoint` per ``train_step``. So the demo gets
the per-step series without a change to the worker or the Trainer (their metrics keep only the last
value). Appended by the worker's training thread; read after the worker stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamtrain.training.engine import StepResult, TrainingEngine

__all__ = ["StepPoint", "StepRecorder"]


@dataclass(frozen=True)
class StepPoint:
    """One training step as reported; ``events`` counts trained events up to and including it."""

    step: int
    events: int
    loss: float
    seconds: float  # since the recorder was created
    progressive: Mapping[str, float] | None  # rolling Recall@K/NDCG@K when the step was evaluated
    # baseline name ("popular_all", "popular_recent", "covisit") -> its rolling metrics, when evaluated
    baselines: Mapping[str, Mapping[str, float]] | None = None


class StepRecorder:
    """Forwards every :class:`TrainingEngine` call to ``engine`` and records each step it reports."""

    def __init__(self, engine: TrainingEngine, clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._clock = clock
        self._started = clock()
        self._events = 0
        self.points: list[StepPoint] = []

    @property
    def step(self) -> int:
        return self._engine.step

    @property
    def device(self) -> Any:
        return self._engine.device

    def train_step(self, batch: Any) -> StepResult:
        return self._record(self._engine.train_step(batch))

    def submit_step(self, batch: Any, rank_sizes: Sequence[int] | None = None) -> StepResult | None:
        """The engine's one-step-late path: records the previous step when it is reported."""
        return self._record(self._engine.submit_step(batch, rank_sizes))

    def flush_stats(self) -> StepResult | None:
        return self._record(self._engine.flush_stats())

    def enable_split(self, ctx: Any) -> None:
        self._engine.enable_split(ctx)

    def probe(self, batch: Any) -> dict[str, float]:
        return self._engine.probe(batch)

    def vocabulary_sizes(self) -> dict[str, int]:
        return self._engine.vocabulary_sizes()

    def vocabulary_stats(self) -> dict[str, dict[str, int]]:
        return self._engine.vocabulary_stats()

    def file_state(self) -> dict[str, Any]:
        return self._engine.file_state()

    def load_file_state(self, state: Mapping[str, Any]) -> None:
        self._engine.load_file_state(state)

    def shared_state(self) -> dict[str, np.ndarray]:
        return self._engine.shared_state()

    def load_shared_state(self, state: Mapping[str, np.ndarray]) -> None:
        self._engine.load_shared_state(state)

    def _record(self, stats: Any) -> Any:
        if stats is None:
            return None
        self._events += stats.num_events
        progressive = dict(stats.progressive) if stats.progressive else None
        baselines = getattr(stats, "baselines", None)
        baselines = {name: dict(values) for name, values in baselines.items()} if baselines else None
        self.points.append(
            StepPoint(stats.step, self._events, float(stats.loss), self._clock() - self._started, progressive, baselines)
        )
        return stats
