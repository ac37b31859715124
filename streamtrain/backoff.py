"""Exponential backoff for retrying checkpoints while Redis (or the disk) is failing."""

from __future__ import annotations

__all__ = ["Backoff"]


class Backoff:
    """Delays ``initial, 2·initial, 4·initial, ...`` capped at ``maximum``; ``reset`` after a success.

    Deterministic on purpose (no jitter): there is one worker per run, so there is no herd to spread.
    """

    def __init__(self, initial_s: float, maximum_s: float) -> None:
        if initial_s <= 0:
            raise ValueError(f"initial_s must be > 0, got {initial_s}")
        if maximum_s < initial_s:
            raise ValueError(f"maximum_s ({maximum_s}) must be >= initial_s ({initial_s})")
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self._failures = 0

    @property
    def failures(self) -> int:
        """Consecutive failures since the last reset."""
        return self._failures

    def next_delay(self) -> float:
        """Record one more failure and return how long to wait before the next attempt."""
        delay = min(self.maximum_s, self.initial_s * (2.0 ** self._failures))
        self._failures += 1
        return delay

    def reset(self) -> None:
        """Called after a success: the next failure waits ``initial_s`` again."""
        self._failures = 0
