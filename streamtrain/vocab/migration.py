"""Checking a saved vocabulary state, and migrating states written before format 2.

Format 1 (checkpoints before the vectorised vocabulary) saved ``ids`` as a list of strings in LRU
order with ``rows``, blake2b ``row_keys``, ``last_seen``, ``next_row``, ``free``, ``pending_ids``
(strings) with ``pending_counts``, and ``counters``. Migration keeps every id on its row, its
last-seen time, the pending counts and the counters; it recomputes the keys with the current key
function (``stk1``; the blake2b keys are dropped) and starts an empty eviction queue (the first
eviction rebuilds it from ``last_seen``). Frequency statistics saved with the old keys no longer
match, which is why :class:`~streamtrain.vocab.vocabulary.IdVocabulary` reports ``keys_migrated``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from streamtrain.errors import StreamtrainError
from streamtrain.events.ids import KEY_FUNCTION, encode_ids, id_keys, keys_of_encoded

__all__ = ["VocabularyStateError", "check_state", "migrate_state"]

log = logging.getLogger(__name__)

_FORMAT = 2
_REQUIRED = (
    "key_function", "ids", "id_rows", "id_lengths", "row_keys", "last_seen", "next_row", "free",
    "pending_ids", "pending_counts", "pending_seq", "sightings", "evict_queue", "evict_queue_seen",
    "evict_floor", "counters",
)


class VocabularyStateError(StreamtrainError):
    """A saved vocabulary state does not fit this vocabulary (other capacity or corrupted arrays)."""


def _error(message: str) -> Exception:
    return VocabularyStateError(message)


def check_state(state: dict[str, Any], capacity: int) -> None:
    """Raise VocabularyStateError unless ``state`` is a complete format-2 state for ``capacity``."""
    if int(state.get("format", -1)) != _FORMAT:
        raise _error(
            f"saved vocabulary has state format {state.get('format')!r}; this version reads format {_FORMAT} "
            "and migrates format 1 (no 'format' entry); start the run with --fresh or use a matching version"
        )
    missing = [name for name in _REQUIRED if name not in state]
    if missing:
        raise _error(f"saved vocabulary state lacks {', '.join(missing)}")
    if state["key_function"] != KEY_FUNCTION:
        raise _error(f"saved vocabulary keys use {state['key_function']!r}, this version {KEY_FUNCTION!r}")
    rows = np.asarray(state["id_rows"], dtype=np.int64)
    lengths = np.asarray(state["id_lengths"], dtype=np.int64)
    if rows.shape != lengths.shape or int(lengths.sum()) != len(state["ids"]):
        raise _error("saved vocabulary ids/rows are inconsistent")
    if len(rows) and (rows.min() < 1 or rows.max() >= capacity or len(np.unique(rows)) != len(rows)):
        raise _error("saved vocabulary ids/rows are inconsistent")
    for name in ("row_keys", "last_seen"):
        if np.asarray(state[name]).shape != (capacity,):
            raise _error("saved vocabulary arrays do not match its capacity")
    keys = np.asarray(state["row_keys"], dtype=np.int64)[rows]
    if len(np.unique(keys)) != len(keys):
        raise _error("saved vocabulary has two rows with the same key")


def migrate_state(old: dict[str, Any]) -> dict[str, Any]:
    """A format-1 state as a format-2 one (see the module docstring)."""
    try:
        ids = list(old["ids"])
        rows = np.asarray(old["rows"], dtype=np.int64)
        last_seen = np.asarray(old["last_seen"], dtype=np.float64)
        pending_ids = list(old["pending_ids"])
        pending_counts = np.asarray(old["pending_counts"], dtype=np.int64)
        capacity = int(old["capacity"])
    except KeyError as exc:
        raise _error(f"saved vocabulary state is neither format 2 nor format 1: no {exc.args[0]!r}") from None
    if len(ids) != len(rows) or len(pending_ids) != len(pending_counts):
        raise _error("saved vocabulary ids/rows are inconsistent")
    if len(rows) and (rows.min() < 1 or rows.max() >= capacity):
        raise _error("saved vocabulary ids/rows are inconsistent")
    log.warning(
        "migrating a format-1 vocabulary state (%d ids): keys are recomputed with %s instead of blake2b",
        len(ids), KEY_FUNCTION,
    )
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    ordered_ids = np.empty(len(ids), dtype=object)
    ordered_ids[:] = ids
    encoded = encode_ids(ordered_ids[order])
    row_keys = np.zeros(capacity, dtype=np.int64)
    row_keys[0] = id_keys(["\x00streamtrain-fallback"])[0]
    row_keys[rows] = keys_of_encoded(encoded)
    packed = encoded.take(np.arange(len(encoded)))
    return {
        "format": _FORMAT,
        "key_function": KEY_FUNCTION,
        "capacity": capacity,
        "ids": packed.data[: int(packed.lengths.sum())].tobytes(),
        "id_rows": rows,
        "id_lengths": packed.lengths,
        "row_keys": row_keys,
        "last_seen": last_seen,
        "next_row": int(old["next_row"]),
        "free": np.asarray(old["free"], dtype=np.int64),
        "pending_ids": id_keys(pending_ids).astype("<i8").tobytes(),
        "pending_counts": pending_counts,
        "pending_seq": np.arange(len(pending_ids), dtype=np.int64) - len(pending_ids),  # old order, oldest first
        "sightings": 0,
        "evict_queue": np.zeros(0, dtype=np.int64),
        "evict_queue_seen": np.zeros(0, dtype=np.float64),
        "evict_floor": -np.inf,
        "counters": dict(old["counters"]),
    }
