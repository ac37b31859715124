"""Online id vocabulary: external ids → embedding rows, growing (and evicting) as events arrive.

Row 0 is the shared *fallback* row. It serves ids that are not admitted yet (seen fewer than
``admission_threshold`` times), ids that arrive while the table is full and nothing is old enough to
evict, and unknown ids at query time (``lookup(ids, admit=False)``); so an unseen id never crashes a
caller, it gets a clear, trained "unknown" embedding.

Ids are handled as stable 64-bit keys (:mod:`streamtrain.events.ids`: a hash of the UTF-8
bytes, the same in every process), and every step of a lookup is a numpy operation over the whole
batch: keys → rows through an open-addressing index (:mod:`streamtrain.vocab.key_table`), pending
sightings counted by key, new rows handed out in batch order, last-seen times updated with one
scatter. A source that hashed the ids already passes ``keys=`` and the strings are touched only for
the ids this batch admits (their bytes are stored per row for export and serving,
:mod:`streamtrain.vocab.id_store`). At 10M ids that is ~56 resident bytes per id against
~190 for the ``OrderedDict`` of strings it replaced, and 6-15M lookups/s on one core (BENCHMARKS.md).

Rows are handed out in order 1, 2, ...; when the table is full, rows unseen for more than
``eviction_after_s`` (event time when the batch carries it, else the clock passed in) are evicted,
least recently seen first, and reused; a row the batch itself refers to is never evicted by it.
``eviction_after_s=0`` (the configuration's default) is plain LRU at capacity: any row the batch does
not use may go. Only ``None`` freezes a full table (every later new id then shares the fallback row).
Candidates come from :class:`~streamtrain.vocab.eviction.EvictionQueue` (no scan per batch).
Each lookup tells the caller which rows were (re)assigned so the model re-initialises them.

:meth:`IdVocabulary.state_dict` holds everything (keys, ids, last-seen times, pending sightings,
eviction queue, counters), so a restart maps every id to the same row and continues identically.
States written before format 2 (a list of id strings and blake2b keys) are migrated on load: the
keys are recomputed with the current function and :attr:`IdVocabulary.keys_migrated` is set, so the
trainer knows that frequency statistics keyed by the old keys no longer apply.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamtrain.vocab.admission_sketch import SketchSightings
from streamtrain.vocab.eviction import EvictionQueue
from streamtrain.events.ids import KEY_FUNCTION, EncodedIds, KeyedIds, encode_ids, id_keys, keys_of_encoded
from streamtrain.vocab.id_store import IdStore
from streamtrain.vocab.key_table import KeyIndex
from streamtrain.vocab.pending import PendingSightings
from streamtrain.vocab.migration import VocabularyStateError, check_state, migrate_state

__all__ = ["FALLBACK_ROW", "IdVocabulary", "VocabLookup", "VocabularyStateError", "stable_key"]

log = logging.getLogger(__name__)

FALLBACK_ROW = 0
STATE_FORMAT = 2
_FALLBACK_KEY_ID = "\x00streamtrain-fallback"


def _uint8(raw: bytes | np.ndarray) -> np.ndarray:
    """Bytes saved as ``bytes`` (a state dict) or a uint8 array (read back from a checkpoint file)."""
    return np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, bytes) else np.asarray(raw, dtype=np.uint8)


def stable_key(item_id: str) -> int:
    """A 64-bit signed key of ``item_id`` that is the same in every process (see ``id_keys``)."""
    return int(id_keys([item_id])[0])


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
        admission_sketch_width: int | None = None,
    ) -> None:
        """``admission_sketch_width``: count sightings below the admission threshold in a count-min sketch of
        about this many cells per row (fixed memory; :mod:`streamtrain.vocab.admission_sketch`) instead of
        exactly per id (``max_pending`` ids at most)."""
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2 (row 0 is the fallback), got {capacity}")
        if admission_threshold < 1:
            raise ValueError(f"admission_threshold must be >= 1, got {admission_threshold}")
        if eviction_after_s is not None and eviction_after_s < 0:
            raise ValueError(f"eviction_after_s must be >= 0 or None, got {eviction_after_s}")
        self.capacity = capacity
        self.admission_threshold = admission_threshold
        self.eviction_after_s = eviction_after_s
        self._clock = clock
        self.max_pending = max_pending if max_pending is not None else max(1024, capacity)
        self.row_keys = np.zeros(capacity, dtype=np.int64)  # (capacity,) stable key per row
        self.row_keys[FALLBACK_ROW] = stable_key(_FALLBACK_KEY_ID)
        self.last_seen = np.full(capacity, -np.inf, dtype=np.float64)  # (capacity,) time of last sighting
        self._index = KeyIndex(capacity)  # key -> row, for rows that own an id
        self._ids = IdStore(capacity)
        self._pending = PendingSightings(self.max_pending)
        self._sketch = SketchSightings(admission_sketch_width) if admission_sketch_width and admission_threshold > 1 else None
        self._next_row = 1  # rows [1, _next_row) have been handed out at least once
        self._free = np.zeros(0, dtype=np.int64)  # rows released and not yet reused (only via migration)
        self._sightings = 0  # events looked up with admit=True: the order pending ids are forgotten in
        self._evictions = EvictionQueue(max(4096, capacity // 64))
        self._arange: dict[str, torch.Tensor] = {}  # device -> (capacity-1,) rows 1.., for known_rows
        self.keys_migrated = False  # set when a pre-format-2 state was loaded (its keys were blake2b)
        self.fallback_total = 0  # lookups that ended on the fallback row (admit=True ones)
        self.evictions_total = 0
        self.admissions_total = 0
        self.lookups_total = 0  # ids looked up with admit=True (the fallback share's denominator)
        self.held_back_total = 0  # fallback sightings of ids below the admission threshold
        self.table_full_total = 0  # fallback sightings of ids that qualified but found no free or evictable row

    @classmethod
    def from_config(cls, model: Any, capacity: int) -> IdVocabulary:
        """A vocabulary of ``capacity`` rows with the admission and eviction rules of ``model`` (ModelConfig)."""
        sketch = 2 * capacity if model.admission_counter == "sketch" else None
        return cls(capacity, admission_threshold=model.admission_threshold, eviction_after_s=model.eviction_after_s,
                   admission_sketch_width=sketch)

    @property
    def _counter(self) -> Any:
        """Where sightings below the admission threshold are counted (the sketch, or exactly per id)."""
        return self._sketch if self._sketch is not None else self._pending

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        """Ids that own a row (the fallback row is not counted)."""
        return self._index.live

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self.row_of(item_id) != FALLBACK_ROW

    def row_of(self, item_id: str) -> int:
        """The row of one id, ``FALLBACK_ROW`` if it has none; no state change."""
        return int(self.lookup([item_id], admit=False).rows[0])

    def id_of(self, row: int) -> str | None:
        """The id that owns ``row`` (None for the fallback row and free rows)."""
        return self._ids.get(int(row))

    def ids_of(self, rows: np.ndarray | Sequence[int]) -> list[str | None]:
        """Ids for many rows (for recommendations: rows → external ids)."""
        return self._ids.get_many(np.asarray(rows, dtype=np.int64))

    def known_rows(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(N,) int64 sorted rows owned by an id (fallback excluded), on ``device``; read-only.

        Called every training step and by evaluation. In the usual case (no holes: rows are
        reused only right after an eviction) it is a view of an ``arange`` cached per device, so it
        costs nothing whatever the capacity and needs no host→device copy.
        """
        if not self._free.size:
            # A view of a cached arange: building a fresh 10M-row arange each step costs ~40 ms.
            key = str(torch.device(device) if device is not None else torch.device("cpu"))
            cached = self._arange.get(key)
            if cached is None:
                cached = self._arange[key] = torch.arange(1, self.capacity, dtype=torch.int64, device=device)
            return cached[: self._next_row - 1]
        return torch.from_numpy(self._known_rows_np()).to(device)

    def known_rows_host(self) -> np.ndarray | None:
        """The known rows as a host array when they have holes (so a caller can upload them its own
        way, e.g. through pinned memory); None in the usual case, where :meth:`known_rows` is a view
        of a cached device ``arange`` and needs no copy."""
        return self._known_rows_np() if self._free.size else None

    def known_rows_np(self) -> np.ndarray:
        """The known rows as a host array (a fresh ``arange`` when there are no holes): for host-side users."""
        return self._known_rows_np()

    def _known_rows_np(self) -> np.ndarray:
        rows = np.arange(1, self._next_row, dtype=np.int64)
        return np.setdiff1d(rows, self._free, assume_unique=True) if self._free.size else rows

    def stats(self) -> dict[str, int]:
        """Counters for metrics: ids with a row, pending ids, lookups, fallbacks (and why), evictions, admissions."""
        return {
            "size": len(self),
            "pending": len(self._pending),
            "lookups_total": self.lookups_total,
            "fallback_total": self.fallback_total,
            "held_back_total": self.held_back_total,
            "table_full_total": self.table_full_total,
            "evictions_total": self.evictions_total,
            "admissions_total": self.admissions_total,
        }

    def memory_bytes(self) -> int:
        """Bytes held by the arrays of this vocabulary (for benchmarks)."""
        arrays = self.row_keys.nbytes + self.last_seen.nbytes + self._free.nbytes + self._evictions.nbytes
        sketch = self._sketch.nbytes if self._sketch is not None else 0
        return int(arrays + self._index.nbytes + self._ids.nbytes + self._pending.nbytes + sketch)

    # ------------------------------------------------------------------ the hot path
    def lookup(
        self,
        ids: Sequence[str] | np.ndarray | KeyedIds,
        *,
        admit: bool = True,
        event_time: np.ndarray | None = None,
        keys: np.ndarray | None = None,
    ) -> VocabLookup:
        """Map ``ids`` to rows; called once per micro-batch per tower (``admit=True``) and at query
        time (``admit=False``: a pure read, unknown ids get ``FALLBACK_ROW``, nothing changes).

        ``event_time`` (n,) seconds, if given, drives last-seen times and eviction; otherwise the
        clock passed at construction does. ``keys`` (n,) int64, if given, are the ids' keys computed
        by the source (:func:`streamtrain.events.ids.id_keys`); then ``ids`` is read only at the
        positions of ids this call admits. ``ids`` may be a :class:`KeyedIds` (the ingest processes'
        column): its keys are used and only the admitted ids' bytes are copied.
        """
        encoded: EncodedIds | None = None
        if isinstance(ids, KeyedIds):  # from the ingest processes: keys and bytes, no str objects
            keys, encoded = ids.keys, ids.encoded
        elif keys is None:
            encoded = encode_ids(ids)
            keys = keys_of_encoded(encoded)
        else:
            keys = np.asarray(keys, dtype=np.int64)
            if len(keys) != len(ids):
                raise ValueError(f"{len(keys)} keys for {len(ids)} ids")
        n = len(keys)
        rows = self._index.find(keys, self.row_keys)  # (n,) -1 where the key has no row
        if not admit:
            return VocabLookup(rows=np.maximum(rows, FALLBACK_ROW), assigned=np.empty(0, dtype=np.int64))
        if event_time is not None:
            times = np.asarray(event_time, dtype=np.float64)
            if times.shape != (n,):
                raise ValueError(f"event_time has shape {times.shape}, expected ({n},)")
            now = float(times.max()) if n else self._clock()
        else:
            times = None
            now = self._clock()
        assigned = np.empty(0, dtype=np.int64)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            rows[missing] = FALLBACK_ROW
            assigned = self._admit(ids, encoded, keys, rows, missing, now)
        owned = rows != FALLBACK_ROW
        self.fallback_total += n - int(np.count_nonzero(owned))
        self.lookups_total += n
        if times is None:
            self.last_seen[rows[owned]] = now
        elif n:
            np.maximum.at(self.last_seen, rows[owned], times[owned])
            self._evictions.note_seen(float(times.min()))  # seen rows' new last_seen is at least this
        self._evictions.note_seen(now)  # rows assigned by this call
        self._sightings += n
        if self._sketch is not None:
            self._sketch.note_sightings(n)
        return VocabLookup(rows=rows, assigned=assigned)

    def _admit(
        self, ids: Any, encoded: EncodedIds | None, keys: np.ndarray, rows: np.ndarray, missing: np.ndarray,
        now: float,
    ) -> np.ndarray:
        """Count sightings of the ``missing`` positions' ids, give rows to those that reach the
        admission threshold (in batch order), write them into ``rows``; returns the rows assigned."""
        uniq, inverse, counts = np.unique(keys[missing], return_inverse=True, return_counts=True)  # (u,)
        # Rank of each missing position among the positions of its id, in batch order.
        order = np.argsort(inverse, kind="stable")
        group_start = np.cumsum(counts) - counts  # (u,)
        rank = np.empty(len(missing), dtype=np.int64)
        rank[order] = np.arange(len(missing)) - group_start[inverse[order]]
        threshold = self.admission_threshold
        prior = self._counter.counts_of(uniq) if threshold > 1 else np.zeros(len(uniq), np.int64)
        need = np.maximum(threshold - 1 - prior, 0)  # (u,) rank of the sighting that admits the id
        admitting = np.flatnonzero(rank == need[inverse])  # positions in `missing`, batch order
        admitted_u = inverse[admitting]  # (a,) ids in admission order
        new_rows = self._take_rows(len(admitting), now, rows[rows != FALLBACK_ROW])
        got = len(new_rows)
        row_of_u = np.zeros(len(uniq), dtype=np.int64)
        row_of_u[admitted_u[:got]] = new_rows
        ready = rank >= need[inverse]  # (len(missing),) sightings at or past the admission threshold
        rows[missing] = np.where(ready, row_of_u[inverse], FALLBACK_ROW)
        refused = rows[missing] == FALLBACK_ROW
        full = int(np.count_nonzero(refused & ready))
        self.table_full_total += full
        self.held_back_total += int(np.count_nonzero(refused)) - full
        if got:
            new_keys = uniq[admitted_u[:got]]
            self.row_keys[new_rows] = new_keys
            self.last_seen[new_rows] = now  # so a later id of this batch cannot evict it
            self._index.insert(new_keys, new_rows, self.row_keys)
            positions = missing[admitting[:got]]
            if encoded is None:
                picked = [ids[int(p)] for p in positions]  # only the admitted few
                encoded_new = encode_ids(np.asarray(picked, dtype=object) if picked else [])
            else:
                encoded_new = encoded.take(positions)
            self._ids.put(new_rows, encoded_new)
            self.admissions_total += got
        if threshold > 1:
            self._count_pending(uniq, counts, prior, admitted_u, got, missing, order, group_start)
        return new_rows

    def _count_pending(
        self, uniq: np.ndarray, counts: np.ndarray, prior: np.ndarray, admitted_u: np.ndarray, got: int,
        missing: np.ndarray, order: np.ndarray, group_start: np.ndarray,
    ) -> None:
        """Pending sightings after a batch: admitted ids leave, ids that reached the threshold but
        found no row keep threshold − 1 (their next sighting retries), the others add theirs."""
        last_pos = missing[order[group_start + counts - 1]]  # (u,) batch position of each id's last sighting
        total = prior + counts
        total[admitted_u[got:]] = self.admission_threshold - 1
        stays = np.ones(len(uniq), dtype=bool)
        stays[admitted_u[:got]] = False
        self._counter.remove(uniq[~stays])
        self._counter.set(uniq[stays], total[stays], self._sightings + last_pos[stays])

    def _take_rows(self, k: int, now: float, batch_rows: np.ndarray) -> np.ndarray:
        """Up to ``k`` rows for new ids: free ones, never-used ones, then stale ones (evicted)."""
        parts = []
        if k and self._free.size:
            parts.append(self._free[:k])
            self._free = self._free[k:]
            k -= len(parts[-1])
        if k and self._next_row < self.capacity:
            fresh = np.arange(self._next_row, min(self.capacity, self._next_row + k), dtype=np.int64)
            self._next_row += len(fresh)
            parts.append(fresh)
            k -= len(fresh)
        if k and self.eviction_after_s is not None:
            for part in parts:  # rows just taken are no eviction candidates
                self.last_seen[part] = now
            victims = self._evictions.take(
                k, now, self.eviction_after_s, self.last_seen, batch_rows, self._known_rows_np
            )
            if victims.size:
                self._index.remove(self.row_keys[victims], self.row_keys)
                self._ids.drop(victims)
                self.evictions_total += len(victims)
            parts.append(victims)
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Plain numpy/bytes state; with :meth:`load_state_dict` a restart maps ids to the same rows
        and continues identically. ``ids`` is the UTF-8 bytes of the ids of ``id_rows``
        concatenated (``id_lengths`` each); ``pending_ids`` the pending ids' keys (int64 bytes)."""
        ids = self._ids.state_dict()
        return {
            "format": STATE_FORMAT,
            "key_function": KEY_FUNCTION,
            "capacity": self.capacity,
            "ids": ids["id_bytes"].tobytes(),
            "id_rows": ids["id_rows"],
            "id_lengths": ids["id_lengths"],
            "row_keys": self.row_keys.copy(),
            "last_seen": self.last_seen.copy(),
            "next_row": self._next_row,
            "free": self._free.copy(),
            **self._pending.state_dict(),
            **(self._sketch.state_dict() if self._sketch is not None else {}),
            "sightings": self._sightings,
            **self._evictions.state_dict(),
            "counters": {
                "fallback_total": self.fallback_total,
                "evictions_total": self.evictions_total,
                "admissions_total": self.admissions_total,
                "lookups_total": self.lookups_total,
                "held_back_total": self.held_back_total,
                "table_full_total": self.table_full_total,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (or migrate a pre-format-2 one); called once at resume.
        Raises VocabularyStateError on mismatch."""
        if int(state["capacity"]) != self.capacity:
            raise VocabularyStateError(
                f"saved vocabulary has capacity {int(state['capacity'])}, this one {self.capacity}; "
                "keep model.*_capacity unchanged across restarts"
            )
        migrated = "format" not in state
        if migrated:
            state = migrate_state(state)
        check_state(state, self.capacity)
        self.row_keys = np.asarray(state["row_keys"], dtype=np.int64).copy()
        self.last_seen = np.asarray(state["last_seen"], dtype=np.float64).copy()
        self._ids = IdStore(self.capacity)
        self._ids.load_state_dict(
            {"id_rows": state["id_rows"], "id_lengths": state["id_lengths"],
             "id_bytes": _uint8(state["ids"])}
        )
        owned = np.asarray(state["id_rows"], dtype=np.int64)
        self._index = KeyIndex(self.capacity)
        self._index.insert(self.row_keys[owned], owned, self.row_keys)
        self._next_row = int(state["next_row"])
        self._free = np.asarray(state["free"], dtype=np.int64).copy()
        self._pending = PendingSightings(self.max_pending)
        self._pending.load_state_dict(state)
        if self._sketch is not None:
            self._sketch.load_state_dict(state)
            if len(self._pending):  # written with the exact counter: its counts move into the sketch
                pending = self._pending.state_dict()
                self._sketch.set(np.frombuffer(pending["pending_ids"], "<i8").astype(np.int64), pending["pending_counts"])
                self._pending = PendingSightings(self.max_pending)
        self._sightings = int(state["sightings"])
        self._evictions = EvictionQueue(max(4096, self.capacity // 64))
        self._evictions.load_state_dict(state)
        counters = state["counters"]
        self.fallback_total = int(counters["fallback_total"])
        self.evictions_total = int(counters["evictions_total"])
        self.admissions_total = int(counters["admissions_total"])
        # Counters added later: states written before them start these at 0.
        self.lookups_total = int(counters.get("lookups_total", 0))
        self.held_back_total = int(counters.get("held_back_total", 0))
        self.table_full_total = int(counters.get("table_full_total", 0))
        self.keys_migrated = migrated
