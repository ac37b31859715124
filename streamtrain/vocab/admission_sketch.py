"""Sightings of ids not admitted yet, counted in a count-min sketch: fixed memory whatever the flood.

The exact counter (:class:`~streamtrain.vocab.pending.PendingSightings`) keeps one entry per pending id,
up to ``max(1024, capacity)`` of them (~56 bytes each). This sketch keeps ``depth`` rows of ``width``
one-byte counters instead (``4 × 2·capacity`` bytes by default): an id's count is the smallest of its
``depth`` cells, so it can only be overestimated (another id sharing all its cells), never under.
Updates are *conservative* (a cell is raised only to the id's new count), which keeps the
overestimates small. Counts age the TinyLFU way: every ``width / 2`` sightings all cells are halved,
so an id must reach the admission threshold within about that many events, and one-off ids cannot
pile up into false admissions. At ``width / 2`` sightings per period a never-seen id finds all four of
its cells non-zero with probability about ``(1 - e^-0.5)^4 ≈ 2%``: with ``admission_threshold=2`` that
is the share of one-off ids admitted anyway (measured in bench/bench_vocab_flood.py).

Same methods as ``PendingSightings`` where the vocabulary uses them; ``remove`` is a no-op (an admitted
id's count no longer matters, and it ages out).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SketchSightings"]

# Odd 64-bit multipliers, one per row (multiply-shift hashing of the already well-mixed 64-bit id keys).
_MULTIPLIERS = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                         0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x27D4EB2F165667C5, 0x94D049BB133111EB],
                        dtype=np.uint64)
_CAP = 255


class SketchSightings:
    """Count-min sketch of sightings by 64-bit key: ``depth`` × ``width`` uint8 cells, halved periodically."""

    def __init__(self, width: int, depth: int = 4) -> None:
        if not 1 <= depth <= len(_MULTIPLIERS):
            raise ValueError(f"depth must be 1..{len(_MULTIPLIERS)}, got {depth}")
        self.width = 1 << max(6, int(width - 1).bit_length())  # a power of two, at least 64
        self.depth = depth
        self._shift = np.uint64(64 - (self.width.bit_length() - 1))
        self.cells = np.zeros((depth, self.width), dtype=np.uint8)  # (depth, width)
        self.sightings = 0  # since the last halving
        self.halve_every = self.width // 2

    def __len__(self) -> int:
        """Not a count of ids (a sketch has none): the number of non-zero cells of the first row."""
        return int(np.count_nonzero(self.cells[0]))

    @property
    def nbytes(self) -> int:
        return int(self.cells.nbytes)

    def _cells(self, keys: np.ndarray) -> np.ndarray:
        """(depth, n) cell index of each key in each row."""
        k = np.asarray(keys, dtype=np.int64).view(np.uint64)
        with np.errstate(over="ignore"):
            return ((k[None, :] * _MULTIPLIERS[: self.depth, None]) >> self._shift).astype(np.int64)

    def counts_of(self, keys: np.ndarray) -> np.ndarray:
        """(n,) int64 estimated sightings (never below the true count since the last halvings)."""
        if not len(keys):
            return np.zeros(0, dtype=np.int64)
        cells = self._cells(keys)
        return self.cells[np.arange(self.depth)[:, None], cells].min(axis=0).astype(np.int64)

    def set(self, keys: np.ndarray, counts: np.ndarray, seq: np.ndarray | None = None) -> None:
        """Record that each (distinct) key has been sighted ``counts`` times: a conservative update."""
        if not len(keys):
            return
        cells = self._cells(keys)
        rows = np.arange(self.depth)[:, None]
        target = np.minimum(np.asarray(counts, dtype=np.int64), _CAP).astype(np.uint8)
        np.maximum.at(self.cells, (np.broadcast_to(rows, cells.shape), cells), np.broadcast_to(target, cells.shape))

    def remove(self, keys: np.ndarray) -> None:
        """Admitted ids need no count any more; a sketch cannot forget one id, so they age out instead."""

    def note_sightings(self, n: int) -> None:
        """``n`` ids were looked up; halve every cell each ``width / 2`` of them (aging)."""
        self.sightings += n
        while self.sightings >= self.halve_every:
            self.sightings -= self.halve_every
            self.cells >>= 1

    def state_dict(self) -> dict[str, Any]:
        return {"sketch_cells": self.cells.copy(), "sketch_sightings": self.sightings}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        cells = state.get("sketch_cells")
        if cells is None:
            return  # a state written with the exact counter: the vocabulary folds its entries in
        cells = np.asarray(cells, dtype=np.uint8)
        if cells.shape != self.cells.shape:
            raise ValueError(f"saved admission sketch has shape {cells.shape}, this one {self.cells.shape}")
        self.cells = cells.copy()
        self.sightings = int(state.get("sketch_sightings", 0))
