"""The worker's side of one-step-late statistics: submit steps, flush, hand over what to record.

The engine reads a step's statistics from the device while the next step runs
(:meth:`Trainer.submit_step <streamtrain.training.trainer.Trainer.submit_step>` returns the
previous step's). Whatever a flush hands over (before a checkpoint, so the checkpoint holds the
rolling metrics of every trained step; when the stream is idle; at stop) is queued here until the
training loop records it, so every step is counted once in the metrics, the progress log line and
the skipped-updates counter. A probe taken on the first step, whose stats come later, is carried
to the next record.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from streamtrain.training.engine import StepResult, TrainingEngine

__all__ = ["LateSteps"]


class LateSteps:
    """Wraps an engine's ``submit_step``/``flush_stats``."""

    def __init__(self, engine: TrainingEngine) -> None:
        self.engine = engine
        self._unreported: deque[StepResult] = deque()
        self._carried_probe: dict[str, float] | None = None

    def submit(self, events: Any, rank_sizes: tuple[int, ...] = ()) -> StepResult | None:
        """Train on ``events``; returns the previous step's statistics (None for the first one).
        ``rank_sizes``: a global batch's events per rank (used by an engine in split mode)."""
        return self.engine.submit_step(events, rank_sizes or None)

    def flush(self) -> None:
        """Read the last step's statistics now and queue them; call under the engine lock."""
        stats = self.engine.flush_stats()
        if stats is not None:
            self._unreported.append(stats)

    def take(self) -> list[StepResult]:
        """Statistics flushed since the last call, oldest first (the loop records them)."""
        out = []
        while self._unreported:
            out.append(self._unreported.popleft())
        return out

    def carry(self, probe: dict[str, float]) -> None:
        """Keep a probe whose step's statistics are not reported yet."""
        self._carried_probe = probe

    def probe_for_record(self, probe: dict[str, float] | None) -> dict[str, float] | None:
        """``probe``, or the carried one (once)."""
        if probe is None:
            probe, self._carried_probe = self._carried_probe, None
        return probe
