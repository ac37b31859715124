"""Which vocabulary rows to evict: the least recently seen stale rows, found without a per-batch scan.

The queue holds up to ``limit`` rows (the least recently seen when it was built), sorted by (last
sighting, row). Rows are taken from its head while they are stale; an entry whose row was seen
since it was queued (its ``last_seen`` changed) or that the current batch refers to is skipped and
dropped. The queue is rebuilt, one pass over the owned rows, only when it is used up and some row
outside it may be stale: ``floor`` is a lower bound on the last sighting of every row outside the
queue (the partition bound at build time, lowered by every batch's earliest event time). With event
time moving forward this is exactly least-recently-seen order; out-of-order time makes it close.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["EvictionQueue"]


class EvictionQueue:
    """Eviction candidates of one vocabulary (``limit`` entries at most per build)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows = np.zeros(0, dtype=np.int64)  # (q,) least recently seen first
        self.seen = np.zeros(0, dtype=np.float64)  # (q,) their last_seen when queued
        self.floor = -np.inf  # every row outside the queue was last seen at or after this

    def note_seen(self, earliest: float) -> None:
        """Rows were (re)seen no earlier than ``earliest``: they may now sit outside the queue."""
        self.floor = min(self.floor, earliest)

    def take(
        self, k: int, now: float, ttl: float, last_seen: np.ndarray, batch_rows: np.ndarray,
        owned_rows: Callable[[], np.ndarray],
    ) -> np.ndarray:
        """Up to ``k`` rows unseen for more than ``ttl`` at ``now`` and not in ``batch_rows``,
        least recently seen first; their ``last_seen`` is set to ``now`` (they are being reused)."""
        cutoff = now - ttl
        victims: list[np.ndarray] = []
        rebuilt = False
        while k:
            if not self.rows.size:
                if rebuilt or not self.floor < cutoff:
                    break
                self._rebuild(owned_rows(), last_seen)
                rebuilt = True
                continue
            chunk, seen = self.rows[: 2 * k + 64], self.seen[: 2 * k + 64]
            stale = int(np.searchsorted(seen, cutoff, side="left"))  # queued rows seen before cutoff
            ok = (last_seen[chunk[:stale]] == seen[:stale]) & ~np.isin(chunk[:stale], batch_rows)
            take = np.flatnonzero(ok)[:k]
            used = int(take[-1]) + 1 if len(take) == k else stale  # skipped entries are dropped
            victims.append(chunk[take])
            last_seen[victims[-1]] = now  # taken: a queue rebuilt below must not offer them again
            k -= len(take)
            self.rows, self.seen = self.rows[used:], self.seen[used:]
            if stale < len(chunk):  # the rest of the queue is not stale yet
                break
        return np.concatenate(victims) if victims else np.empty(0, dtype=np.int64)

    def _rebuild(self, rows: np.ndarray, last_seen: np.ndarray) -> None:
        seen = last_seen[rows]
        if len(rows) > self.limit:
            part = np.argpartition(seen, self.limit)
            self.floor = float(seen[part[self.limit]])  # every row left out was seen at or after this
            rows, seen = rows[part[: self.limit]], seen[part[: self.limit]]
        else:
            self.floor = np.inf
        order = np.lexsort((rows, seen))
        self.rows, self.seen = rows[order], seen[order]

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.seen.nbytes)

    def state_dict(self) -> dict[str, Any]:
        return {"evict_queue": self.rows.copy(), "evict_queue_seen": self.seen.copy(), "evict_floor": float(self.floor)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = np.asarray(state["evict_queue"], dtype=np.int64).copy()
        self.seen = np.asarray(state["evict_queue_seen"], dtype=np.float64).copy()
        if self.rows.shape != self.seen.shape:
            raise ValueError("saved eviction queue is inconsistent")
        self.floor = float(state["evict_floor"])
