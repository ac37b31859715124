"""The external id string of every vocabulary row, packed as UTF-8 bytes in one growing arena.

Rows need their id only to be read back (export, ``recommend``, evaluation reports), never on the
training path, so ids are kept as bytes: ``offsets[row]``/``lengths[row]`` into one uint8 arena
(12 bytes per row plus the id's bytes), where a Python ``str`` per row would cost ~50 bytes plus
a pointer. A row that changes owner leaves its old bytes behind as garbage; the arena is
compacted when garbage passes half of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from streamtrain.events.ids import EncodedIds

__all__ = ["IdStore"]

_NONE = -1  # lengths[row] for a row without an id


class IdStore:
    """Id bytes per row, for ``capacity`` rows."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.offsets = np.zeros(capacity, dtype=np.int64)  # (capacity,) start in the arena
        self.lengths = np.full(capacity, _NONE, dtype=np.int32)  # (capacity,) bytes, -1 = no id
        self._arena = np.zeros(1024, dtype=np.uint8)
        self._used = 0
        self._garbage = 0

    @property
    def nbytes(self) -> int:
        return int(self.offsets.nbytes + self.lengths.nbytes + self._arena.nbytes)

    def put(self, rows: np.ndarray, enc: EncodedIds) -> None:
        """Store the ids ``enc`` (k ids) for ``rows`` (k,), replacing what those rows held."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        self.drop(rows)
        packed = enc.take(np.arange(len(enc)))  # contiguous, in order
        total = int(packed.lengths.sum())
        self._reserve(total)
        self._arena[self._used : self._used + total] = packed.data[:total]
        self.offsets[rows] = self._used + packed.starts
        self.lengths[rows] = packed.lengths
        self._used += total

    def drop(self, rows: np.ndarray) -> None:
        """Forget the ids of ``rows`` (their bytes become garbage)."""
        held = self.lengths[rows]
        self._garbage += int(held[held > 0].sum())
        self.lengths[rows] = _NONE

    def get(self, row: int) -> str | None:
        n = int(self.lengths[row])
        if n < 0:
            return None
        start = int(self.offsets[row])
        return self._arena[start : start + n].tobytes().decode("utf-8")

    def get_many(self, rows: np.ndarray | Sequence[int]) -> list[str | None]:
        """Ids for ``rows`` (None for rows without one); one gather, then one decode per id."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        lengths = self.lengths[rows].astype(np.int64)
        has = lengths >= 0
        enc = EncodedIds(
            np.concatenate([self._arena[: self._used], np.zeros(8, np.uint8)]),
            self.offsets[rows][has],
            lengths[has],
        )
        decoded = iter(enc.take(np.arange(int(has.sum()))).decode())
        return [next(decoded) if h else None for h in has.tolist()]

    def _reserve(self, extra: int) -> None:
        need = self._used + extra
        if need <= len(self._arena):
            return
        if self._garbage > self._used // 2:
            self._compact()
            need = self._used + extra
        if need > len(self._arena):
            grown = np.zeros(max(need, 2 * len(self._arena)), dtype=np.uint8)
            grown[: self._used] = self._arena[: self._used]
            self._arena = grown

    def _compact(self) -> None:
        rows = np.flatnonzero(self.lengths >= 0)
        packed, new_offsets = self._packed(rows)
        self._arena = np.zeros(max(1024, 2 * len(packed)), dtype=np.uint8)
        self._arena[: len(packed)] = packed
        self.offsets[rows] = new_offsets
        self._used = len(packed)
        self._garbage = 0

    def _packed(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The bytes of ``rows`` concatenated in row order, and each row's start in them."""
        lengths = self.lengths[rows].astype(np.int64)
        starts = np.cumsum(lengths) - lengths
        src = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(self.offsets[rows] - starts, lengths)
        return self._arena[src], starts

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Compact state: ``id_rows`` (m,) rows with an id, ``id_lengths`` (m,), ``id_bytes``
        their UTF-8 bytes concatenated in that order."""
        rows = np.flatnonzero(self.lengths >= 0).astype(np.int64)
        packed, _ = self._packed(rows)
        return {"id_rows": rows, "id_lengths": self.lengths[rows].astype(np.int64), "id_bytes": packed.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rows = np.asarray(state["id_rows"], dtype=np.int64)
        lengths = np.asarray(state["id_lengths"], dtype=np.int64)
        data = np.asarray(state["id_bytes"], dtype=np.uint8)
        if rows.shape != lengths.shape or int(lengths.sum()) != data.size:
            raise ValueError("saved id bytes do not match their lengths")
        if len(rows) and (rows.min() < 0 or rows.max() >= self.capacity):
            raise ValueError("saved id rows are outside the vocabulary")
        self.lengths.fill(_NONE)
        self.lengths[rows] = lengths
        self.offsets[rows] = np.cumsum(lengths) - lengths
        self._arena = np.zeros(max(1024, 2 * data.size), dtype=np.uint8)
        self._arena[: data.size] = data
        self._used = data.size
        self._garbage = 0
