"""Sighting counts of ids not admitted yet (the vocabulary's admission threshold), by key.

Only the 64-bit keys are kept: an id needs its string once it is admitted, and the batch that
admits it carries it. Counts are dense arrays reached through a :class:`KeyIndex`; the number of
pending ids is bounded (a long tail of one-off ids must not grow memory without limit): beyond
``max_pending`` the half sighted longest ago is forgotten.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamtrain.vocab.key_table import KeyIndex

__all__ = ["PendingSightings"]


class PendingSightings:
    """key → (sightings, sequence number of the last sighting), for at most ``max_pending`` keys."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self._reset(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))

    def _reset(self, keys: np.ndarray, counts: np.ndarray, seq: np.ndarray) -> None:
        size = max(64, 2 * len(keys))
        self.keys = np.zeros(size, dtype=np.int64)  # (size,) entry -> key
        self.counts = np.zeros(size, dtype=np.int64)  # (size,) 0 = dead entry
        self.seq = np.zeros(size, dtype=np.int64)  # (size,) last sighting, for forgetting the oldest
        self._used = len(keys)
        self.keys[: self._used], self.counts[: self._used], self.seq[: self._used] = keys, counts, seq
        self._index = KeyIndex(size)
        self._index.insert(keys, np.arange(len(keys)), self.keys)

    def __len__(self) -> int:
        return self._index.live

    @property
    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.counts.nbytes + self.seq.nbytes + self._index.nbytes)

    def counts_of(self, keys: np.ndarray) -> np.ndarray:
        """(n,) sightings so far of each key (0 for keys not pending)."""
        entry = self._index.find(keys, self.keys)
        return np.where(entry >= 0, self.counts[np.maximum(entry, 0)], 0)

    def set(self, keys: np.ndarray, counts: np.ndarray, seq: np.ndarray) -> None:
        """Set the counts and last-sighting numbers of distinct ``keys`` (k,), adding new ones."""
        if not len(keys):
            return
        entry = self._index.find(keys, self.keys)
        old = entry >= 0
        self.counts[entry[old]] = counts[old]
        self.seq[entry[old]] = seq[old]
        new = np.flatnonzero(~old)
        if new.size:
            if self._used + new.size > len(self.keys):
                self._compact(extra=new.size)
            at = np.arange(self._used, self._used + new.size)
            self.keys[at], self.counts[at], self.seq[at] = keys[new], counts[new], seq[new]
            self._index.insert(keys[new], at, self.keys)
            self._used += new.size
        while len(self) > self.max_pending:
            self._forget_oldest_half()

    def remove(self, keys: np.ndarray) -> None:
        """Forget ``keys`` (admitted ones); absent keys are ignored."""
        entry = self._index.find(keys, self.keys)
        entry = entry[entry >= 0]
        if entry.size:
            self._index.remove(self.keys[entry], self.keys)
            self.counts[entry] = 0

    def _live(self) -> np.ndarray:
        return np.sort(self._index.entries())

    def _compact(self, extra: int) -> None:
        live = self._live()
        keys, counts, seq = self.keys[live], self.counts[live], self.seq[live]
        self._reset(keys, counts, seq)
        if self._used + extra > len(self.keys):  # grow the dense arrays (the index grows itself)
            size = 2 * (self._used + extra)
            for name in ("keys", "counts", "seq"):
                grown = np.zeros(size, dtype=np.int64)
                grown[: self._used] = getattr(self, name)[: self._used]
                setattr(self, name, grown)

    def _forget_oldest_half(self) -> None:
        live = self._live()
        order = np.argsort(self.seq[live], kind="stable")
        keep = np.sort(live[order[len(live) // 2 :]])
        self._reset(self.keys[keep], self.counts[keep], self.seq[keep])

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Live entries ordered by last sighting (oldest first): keys as little-endian int64 bytes
        under ``pending_ids`` (comparable with ``==``), counts and sequence numbers as arrays."""
        live = self._live()
        live = live[np.argsort(self.seq[live], kind="stable")]
        return {
            "pending_ids": self.keys[live].astype("<i8").tobytes(),
            "pending_counts": self.counts[live].copy(),
            "pending_seq": self.seq[live].copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raw = state["pending_ids"]  # bytes, or a uint8 array once it went through a checkpoint file
        keys = (np.frombuffer(raw, np.uint8) if isinstance(raw, bytes) else np.asarray(raw, np.uint8)).view("<i8")
        keys = keys.astype(np.int64)
        counts = np.asarray(state["pending_counts"], dtype=np.int64)
        seq = np.asarray(state["pending_seq"], dtype=np.int64)
        if keys.shape != counts.shape or seq.shape != counts.shape:
            raise ValueError("saved pending sightings are inconsistent")
        self._reset(keys, counts, seq)
