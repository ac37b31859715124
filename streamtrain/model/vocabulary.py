"""Online id vocabulary: external string ids → embedding rows, growing (and evicting) as events arrive.

Row 0 is the shared *fallback* row. It serves ids that are not admitted yet (seen fewer than
``admission_threshold`` times), ids that arrive while the table is full and nothing is old enough to
evict, and unknown ids at query time (``lookup(ids, admit=False)``); so an unseen id never crashes a
caller, it gets a clear, trained "unknown" embedding.

Rows are handed out in order 1, 2, ...; when the table is full the least-recently-seen id is
evicted if it has been unseen for more than ``eviction_after_s`` (event time when the batch carries
it, else the clock passed in), and its row is reused. Each lookup tells the caller which rows were
(re)assigned so the model re-initialises their embeddings and resets their optimizer state.

Each row also caches a stable 64-bit key of its id (blake2b, independent of the process and of the
row) that the streaming frequency estimator hashes; two processes agree on it without sharing state.

The whole mapping (ids per row, keys, last-seen times, LRU order, pending sightings, counters) is
plain Python/numpy in :meth:`IdVocabulary.state_dict`, so a restart maps every id to the same row.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamtrain.errors import StreamtrainError

__all__ = ["FALLBACK_ROW", "IdVocabulary", "VocabLookup", "VocabularyStateError", "stable_key"]

log = logging.getLogger(__name__)

FALLBACK_ROW = 0
_FALLBACK_KEY_ID = "\x00streamtrain-fallback"


class VocabularyStateError(StreamtrainError):
    """A saved vocabulary state does not fit this vocabulary (other capacity or corrupted arrays)."""


def stable_key(item_id: str) -> int:
    """A 64-bit signed key of ``item_id`` that is the same in every process (blake2b, 8 bytes)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


@dataclass(frozen=True)
class VocabLookup:
    """The result of mapping one batch of ids.

    ``rows`` (n,) int64 row per id (``FALLBACK_ROW`` for ids without a row);
    ``assigned`` (k,) int64 rows given to a new id by this call (fresh or reused after eviction);
    the caller must re-initialise their embeddings and optimizer state before using them.
    """

    rows: np.ndarray  # (n,) int64
    assigned: np.ndarray  # (k,) int64


class IdVocabulary:
    """Maps external ids to rows ``1..capacity-1`` online; row 0 is the shared fallback."""

    def __init__(
        self,
        capacity: int,
        *,
        admission_threshold: int = 1,
        eviction_after_s: float | None = None,
        clock: Callable[[], float] = time.time,
        max_pending: int | None = None,
    ) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2 (row 0 is the fallback), got {capacity}")
        if admission_threshold < 1:
            raise ValueError(f"admission_threshold must be >= 1, got {admission_threshold}")
        if eviction_after_s is not None and eviction_after_s <= 0:
            raise ValueError(f"eviction_after_s must be > 0 or None, got {eviction_after_s}")
        self.capacity = capacity
        self.admission_threshold = admission_threshold
        self.eviction_after_s = eviction_after_s
        self._clock = clock
        # Pending sightings of not-yet-admitted ids are bounded: beyond this the oldest half is
        # forgotten (a long tail of one-off ids must not grow memory without limit).
        self.max_pending = max_pending if max_pending is not None else max(1024, capacity)
        # id -> row; insertion/move order is the LRU order (oldest first) when eviction is on.
        self._index: OrderedDict[str, int] = OrderedDict()
        self._pending: OrderedDict[str, int] = OrderedDict()
        self._row_ids: list[str | None] = [None] * capacity
        self.row_keys = np.zeros(capacity, dtype=np.int64)  # (capacity,) stable key per row
        self.row_keys[FALLBACK_ROW] = stable_key(_FALLBACK_KEY_ID)
        self.last_seen = np.full(capacity, -np.inf, dtype=np.float64)  # (capacity,) time of last sighting
        self._next_row = 1  # rows [1, _next_row) have been handed out at least once
        self._free: list[int] = []  # rows released and not yet reused (only via load_state_dict)
        self._arange: dict[str, torch.Tensor] = {}  # device -> (capacity-1,) rows 1.., for known_rows
        self.fallback_total = 0  # lookups that ended on the fallback row (admit=True ones)
        self.evictions_total = 0
        self.admissions_total = 0

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        """Ids that own a row (the fallback row is not counted)."""
        return len(self._index)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def row_of(self, item_id: str) -> int:
        """The row of one id, ``FALLBACK_ROW`` if it has none; no state change."""
        return self._index.get(item_id, FALLBACK_ROW)

    def id_of(self, row: int) -> str | None:
        """The id that owns ``row`` (None for the fallback row and free rows)."""
        return self._row_ids[row]

    def ids_of(self, rows: np.ndarray | Sequence[int]) -> list[str | None]:
        """Ids for many rows (for recommendations: rows → external ids)."""
        row_ids = self._row_ids
        return [row_ids[int(r)] for r in rows]

    def known_rows(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(N,) int64 sorted rows owned by an id (fallback excluded), on ``device``; read-only.

        Called every training step and by evaluation. In the usual case (no holes: rows are
        reused only right after an eviction) it is a view of an ``arange`` cached per device, so it
        costs nothing whatever the capacity and needs no host→device copy.
        """
        if not self._free:
            # A view of a cached arange: building a fresh 10M-row arange each step costs ~40 ms.
            key = str(torch.device(device) if device is not None else torch.device("cpu"))
            cached = self._arange.get(key)
            if cached is None:
                cached = self._arange[key] = torch.arange(1, self.capacity, dtype=torch.int64, device=device)
            return cached[: self._next_row - 1]
        free = np.asarray(self._free, dtype=np.int64)
        rows = np.setdiff1d(np.arange(1, self._next_row, dtype=np.int64), free, assume_unique=True)
        return torch.from_numpy(rows).to(device)

    def stats(self) -> dict[str, int]:
        """Counters for metrics: ids with a row, pending ids, fallbacks, evictions, admissions."""
        return {
            "size": len(self._index),
            "pending": len(self._pending),
            "fallback_total": self.fallback_total,
            "evictions_total": self.evictions_total,
            "admissions_total": self.admissions_total,
        }

    # ------------------------------------------------------------------ the hot path
    def lookup(
        self,
        ids: Sequence[str] | np.ndarray,
        *,
        admit: bool = True,
        event_time: np.ndarray | None = None,
    ) -> VocabLookup:
        """Map ``ids`` to rows; called once per micro-batch per tower (``admit=True``) and at query
        time (``admit=False``: a pure read, unknown ids get ``FALLBACK_ROW``, nothing changes).

        ``event_time`` (n,) seconds, if given, drives last-seen times and eviction; otherwise the
        clock passed at construction does.
        """
        n = len(ids)
        index = self._index
        if not admit:
            get = index.get
            return VocabLookup(
                rows=np.fromiter((get(i, FALLBACK_ROW) for i in ids), dtype=np.int64, count=n),
                assigned=np.empty(0, dtype=np.int64),
            )
        if event_time is not None:
            times = np.asarray(event_time, dtype=np.float64)
            if times.shape != (n,):
                raise ValueError(f"event_time has shape {times.shape}, expected ({n},)")
            now = float(times.max()) if n else self._clock()
        else:
            times = None
            now = self._clock()
        rows = np.empty(n, dtype=np.int64)
        assigned: list[int] = []
        track_lru = self.eviction_after_s is not None
        fallbacks = 0
        for pos, item_id in enumerate(ids):
            row = index.get(item_id)
            if row is not None:
                if track_lru:
                    index.move_to_end(item_id)
                rows[pos] = row
                continue
            if self.admission_threshold > 1 and not self._sighted_enough(item_id):
                rows[pos] = FALLBACK_ROW
                fallbacks += 1
                continue
            row = self._take_row(now)
            if row is None:
                rows[pos] = FALLBACK_ROW
                fallbacks += 1
                continue
            index[item_id] = row
            self._row_ids[row] = item_id
            self.row_keys[row] = stable_key(item_id)
            # A fresh row counts as seen now even before the vectorised update below, so a later
            # id of this same batch cannot evict it.
            self.last_seen[row] = now
            self.admissions_total += 1
            assigned.append(row)
            rows[pos] = row
        self.fallback_total += fallbacks
        owned = rows != FALLBACK_ROW
        if times is None:
            self.last_seen[rows[owned]] = now
        else:
            np.maximum.at(self.last_seen, rows[owned], times[owned])
        return VocabLookup(rows=rows, assigned=np.asarray(assigned, dtype=np.int64))

    def _sighted_enough(self, item_id: str) -> bool:
        """Count one sighting of a not-admitted id; True once it reaches the admission threshold."""
        seen = self._pending.pop(item_id, 0) + 1
        if seen >= self.admission_threshold:
            return True
        self._pending[item_id] = seen
        if len(self._pending) > self.max_pending:
            for _ in range(len(self._pending) // 2):
                self._pending.popitem(last=False)
        return False

    def _take_row(self, now: float) -> int | None:
        """A row for a new id: a free one, a never-used one, or the LRU id's if it is stale enough."""
        if self._free:
            return self._free.pop()
        if self._next_row < self.capacity:
            row = self._next_row
            self._next_row += 1
            return row
        if self.eviction_after_s is None or not self._index:
            return None
        oldest_id, oldest_row = next(iter(self._index.items()))
        if now - self.last_seen[oldest_row] <= self.eviction_after_s:
            return None
        del self._index[oldest_id]
        self._row_ids[oldest_row] = None
        self.evictions_total += 1
        return oldest_row

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Plain Python/numpy state; with :meth:`load_state_dict` a restart maps ids to the same rows."""
        lru_ids = list(self._index.keys())
        return {
            "capacity": self.capacity,
            "ids": lru_ids,  # in LRU order (oldest first)
            "rows": np.fromiter(self._index.values(), dtype=np.int64, count=len(self._index)),
            "row_keys": self.row_keys.copy(),
            "last_seen": self.last_seen.copy(),
            "next_row": self._next_row,
            "free": np.asarray(self._free, dtype=np.int64),
            "pending_ids": list(self._pending.keys()),
            "pending_counts": np.fromiter(self._pending.values(), dtype=np.int64, count=len(self._pending)),
            "counters": {
                "fallback_total": self.fallback_total,
                "evictions_total": self.evictions_total,
                "admissions_total": self.admissions_total,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; called once at resume. Raises VocabularyStateError on mismatch."""
        if int(state["capacity"]) != self.capacity:
            raise VocabularyStateError(
                f"saved vocabulary has capacity {int(state['capacity'])}, this one {self.capacity}; "
                "keep model.*_capacity unchanged across restarts"
            )
        ids = list(state["ids"])
        rows = np.asarray(state["rows"], dtype=np.int64)
        if len(ids) != len(rows) or (len(rows) and (rows.min() < 1 or rows.max() >= self.capacity)):
            raise VocabularyStateError("saved vocabulary ids/rows are inconsistent")
        self._index = OrderedDict(zip(ids, rows.tolist()))
        self._row_ids = [None] * self.capacity
        for item_id, row in self._index.items():
            self._row_ids[row] = item_id
        self.row_keys = np.asarray(state["row_keys"], dtype=np.int64).copy()
        self.last_seen = np.asarray(state["last_seen"], dtype=np.float64).copy()
        if self.row_keys.shape != (self.capacity,) or self.last_seen.shape != (self.capacity,):
            raise VocabularyStateError("saved vocabulary arrays do not match its capacity")
        self._next_row = int(state["next_row"])
        self._free = [int(r) for r in np.asarray(state["free"], dtype=np.int64)]
        self._pending = OrderedDict(
            zip(list(state["pending_ids"]), np.asarray(state["pending_counts"], dtype=np.int64).tolist())
        )
        counters = state["counters"]
        self.fallback_total = int(counters["fallback_total"])
        self.evictions_total = int(counters["evictions_total"])
        self.admissions_total = int(counters["admissions_total"])
