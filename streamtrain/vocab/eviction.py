"""Which vocabulary rows to evict: the least recently seen stale rows, found without a per-batch scan.

The queue holds up to ``limit`` rows (the least recently seen when it was built), sorted by (last
sighting, row). ``floor`` is a lower bound on the last sighting of every row *outside* the queue:
the partition bound at build time, lowered by each batch's earliest event time (rows seen since
their entry was queued are outside it in effect). Entries queued as seen before both the staleness
cutoff and ``floor`` therefore precede every other row, and are taken from the head in order;
entries whose row was seen since (its ``last_seen`` changed) or that the current batch refers to are
skipped and dropped. When that runs out while some row outside may be stale (``floor`` < cutoff),
the queue is rebuilt with one pass over the owned rows. So the order is exactly least recently seen
(ties: lowest row), and the pass happens about once per ``limit`` evictions while event time moves
forward; an old event time lowers ``floor`` and costs one more pass.
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
        just_rebuilt = False
        while k:
            # Queued rows seen before `floor` precede every row outside the queue: safe to take.
            bound = min(cutoff, self.floor)
            chunk, seen = self.rows[: 2 * k + 64], self.seen[: 2 * k + 64]
            usable = int(np.searchsorted(seen, bound, side="left"))
            if usable:
                ok = (last_seen[chunk[:usable]] == seen[:usable]) & ~np.isin(chunk[:usable], batch_rows)
                take = np.flatnonzero(ok)[:k]
                used = int(take[-1]) + 1 if len(take) == k else usable  # skipped entries are dropped
                victims.append(chunk[take])
                last_seen[victims[-1]] = now  # taken: a queue rebuilt below must not offer them again
                k -= len(take)
                self.rows, self.seen = self.rows[used:], self.seen[used:]
                just_rebuilt = just_rebuilt and not len(take)
                if k and usable == len(chunk) and self.rows.size:
                    continue  # the next part of the queue
            if not k or self.floor >= cutoff or just_rebuilt:
                break  # done; nothing outside the queue is stale; or a fresh queue had nothing more
            self._rebuild(owned_rows(), last_seen, batch_rows)
            just_rebuilt = True
        return np.concatenate(victims) if victims else np.empty(0, dtype=np.int64)

    def _rebuild(self, rows: np.ndarray, last_seen: np.ndarray, batch_rows: np.ndarray) -> None:
        """Queue the owned ``rows`` (sorted) seen before the ``limit``-th smallest last sighting (all
        of them when ties leave none), so that every row left out was seen at or after ``floor``.
        The batch's rows are left out (they cannot be taken now, and this batch's earliest time
        lowers ``floor`` for them when it ends)."""
        referred = np.unique(batch_rows)
        at = np.minimum(np.searchsorted(rows, referred), max(len(rows) - 1, 0))
        if len(rows) and len(referred):
            keep = np.ones(len(rows), dtype=bool)
            keep[at[rows[at] == referred]] = False
            rows = rows[keep]
        seen = last_seen[rows]
        if len(rows) > self.limit:
            bound = np.partition(seen, self.limit)[self.limit]
            inside = seen < bound
            if not inside.any():
                inside = seen <= bound
            left_out = seen[~inside]
            self.floor = float(left_out.min()) if left_out.size else np.inf
            rows, seen = rows[inside], seen[inside]
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
