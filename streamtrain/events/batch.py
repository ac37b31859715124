"""EventBatch: the columnar contract between the decoder, the worker and the trainer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamtrain.events.schema import ContextValue
from streamtrain.events.ids import KeyedIds

__all__ = ["EventBatch", "normalize_id", "object_array"]

_ID_COLUMNS = ("user_ids", "item_ids")
_COLUMN_DTYPES = {
    "user_ids": np.dtype(object),
    "item_ids": np.dtype(object),
    "event_time": np.dtype(np.float64),
    "weight": np.dtype(np.float32),
    "event_type": np.dtype(object),
}


def normalize_id(value: Any) -> str:
    """The canonical id string: strings as they are, integers as their decimal string.

    Used wherever ids enter outside the decoder (tests, benchmarks, offline data) so that
    ``42`` and ``"42"`` are the same id everywhere.

    Raises:
        ValueError: for anything that is not a non-empty string or a non-bool integer.
    """
    if isinstance(value, str):
        if not value:
            raise ValueError("an id must not be an empty string")
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    raise ValueError(f"an id must be a str or an int, got {type(value).__name__}")


def object_array(values: Sequence[Any]) -> np.ndarray:
    # np.array(list, dtype=object) would build a 2-D array from tuples; assigning into a
    # preallocated 1-D array never does.
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


@dataclass(frozen=True, eq=False, slots=True)
class EventBatch:
    """A batch of decoded interaction events, one numpy column per field.

    All columns have the same length n and are never mutated after construction (slices
    share memory with their parent).

    Attributes:
        user_ids: (n,) object, each a non-empty ``str`` (integer ids as decimal strings); or, from the
            ingest processes, a :class:`KeyedIds` (keys + UTF-8 bytes, no Python strings).
        item_ids: (n,) object, same rules.
        event_time: (n,) float64, seconds since the Unix epoch.
        weight: (n,) float32, > 0 (1.0 when the event had none).
        event_type: (n,) object, ``str`` or ``None``.
        context: one dict per event (``{}`` for events without one), or ``None`` when no
            event in the batch had a non-empty context.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    event_time: np.ndarray
    weight: np.ndarray
    event_type: np.ndarray
    context: list[dict[str, ContextValue]] | None = None

    def __post_init__(self) -> None:
        """Check shapes and dtypes; a ValueError here is a bug in the code building the batch."""
        n = len(self.user_ids)
        for name, dtype in _COLUMN_DTYPES.items():
            column = getattr(self, name)
            if name in _ID_COLUMNS and isinstance(column, KeyedIds):
                if len(column) != n:
                    raise ValueError(f"EventBatch.{name} has {len(column)} rows, user_ids has {n}")
                continue
            if not isinstance(column, np.ndarray) or column.ndim != 1:
                raise ValueError(f"EventBatch.{name} must be a 1-D numpy array")
            if column.dtype != dtype:
                raise ValueError(f"EventBatch.{name} must have dtype {dtype}, got {column.dtype}")
            if len(column) != n:
                raise ValueError(f"EventBatch.{name} has {len(column)} rows, user_ids has {n}")
        if self.context is not None and len(self.context) != n:
            raise ValueError(f"EventBatch.context has {len(self.context)} rows, user_ids has {n}")

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def empty(cls) -> EventBatch:
        """A batch with no events (what the decoder returns when every message was rejected)."""
        return cls(
            user_ids=np.empty(0, dtype=object),
            item_ids=np.empty(0, dtype=object),
            event_time=np.empty(0, dtype=np.float64),
            weight=np.empty(0, dtype=np.float32),
            event_type=np.empty(0, dtype=object),
            context=None,
        )

    @classmethod
    def from_ids(
        cls,
        users: Sequence[str | int] | np.ndarray,
        items: Sequence[str | int] | np.ndarray,
        event_time: Sequence[float] | np.ndarray | None = None,
    ) -> EventBatch:
        """Build a batch from ids alone, for tests and benchmarks.

        Ids are normalised with :func:`normalize_id`; ``event_time`` defaults to 0, 1, 2, ...
        seconds, weights to 1.0, event types to None and context to None.

        Raises:
            ValueError: on an invalid id or columns of different lengths.
        """
        user_ids = object_array([normalize_id(u) for u in users])
        item_ids = object_array([normalize_id(i) for i in items])
        n = len(user_ids)
        if event_time is None:
            times = np.arange(n, dtype=np.float64)
        else:
            times = np.asarray(event_time, dtype=np.float64).reshape(-1)
        return cls(
            user_ids=user_ids,
            item_ids=item_ids,
            event_time=times,
            weight=np.ones(n, dtype=np.float32),
            event_type=np.full(n, None, dtype=object),
            context=None,
        )

    @classmethod
    def concat(cls, batches: Sequence[EventBatch]) -> EventBatch:
        """Join batches in order (e.g. several decoded chunks into one micro-batch).

        Context stays None only if it is None in every input; otherwise batches without
        context contribute ``{}`` per event.
        """
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        if all(b.context is None for b in batches):
            context = None
        else:
            context = []
            for b in batches:
                context.extend(b.context if b.context is not None else [{} for _ in range(len(b))])
        return cls(
            user_ids=_concat_ids([b.user_ids for b in batches]),
            item_ids=_concat_ids([b.item_ids for b in batches]),
            event_time=np.concatenate([b.event_time for b in batches]),
            weight=np.concatenate([b.weight for b in batches]),
            event_type=np.concatenate([b.event_type for b in batches]),
            context=context,
        )

    def slice(self, start: int, stop: int) -> EventBatch:
        """Rows ``start:stop`` with Python slice semantics; the columns are views, not copies."""
        window = slice(start, stop)
        context = None
        if self.context is not None:
            context = self.context[window]
            # A window may hold only events without context; keep the "None when none" rule.
            if not any(context):
                context = None
        return EventBatch(
            user_ids=_slice_ids(self.user_ids, start, stop),
            item_ids=_slice_ids(self.item_ids, start, stop),
            event_time=self.event_time[window],
            weight=self.weight[window],
            event_type=self.event_type[window],
            context=context,
        )


def _slice_ids(column: np.ndarray | KeyedIds, start: int, stop: int) -> np.ndarray | KeyedIds:
    if isinstance(column, KeyedIds):
        return column.slice(start, stop)
    return column[start:stop]


def _concat_ids(columns: Sequence[np.ndarray | KeyedIds]) -> np.ndarray | KeyedIds:
    if all(isinstance(c, KeyedIds) for c in columns):
        return KeyedIds.concat(columns)  # type: ignore[arg-type]
    # Mixed kinds happen only in tests: fall back to strings.
    return np.concatenate([c.to_strings() if isinstance(c, KeyedIds) else c for c in columns])
