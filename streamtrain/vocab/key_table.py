"""A vectorised open-addressing hash index: int64 keys → entry numbers, a whole batch per call.

The index stores only int32 entry numbers (4 bytes a slot); the keys themselves live in the
owner's ``entry_keys`` array (the vocabulary's per-row keys), passed to every call, so the index
adds no second copy of them. Linear probing over a power-of-two table: every operation advances
all unresolved keys of the batch one slot per numpy pass, so a batch costs a few passes (the
longest probe chain), not one Python iteration per key. Removed keys leave tombstones that
inserts reuse; the table is rebuilt (and grown when mostly live) once live + tombstones pass
:data:`MAX_LOAD`.

Slot of a key: Fibonacci hashing, the top bits of ``key · 0x9E3779B97F4A7C15`` (mod 2^64), so
structured keys (small integers) spread as well as hashed ones.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EMPTY", "KeyIndex", "MAX_LOAD"]

EMPTY = -1
TOMBSTONE = -2
MAX_LOAD = 0.7  # live + tombstone slots beyond this share trigger a rebuild
_FIB = np.uint64(0x9E3779B97F4A7C15)


class KeyIndex:
    """Maps int64 keys to int32 entries; the caller keeps ``entry_keys[entry] == key`` for every
    entry it inserted (and passes that array to each call)."""

    def __init__(self, expected_entries: int) -> None:
        # Load ≤ 0.5 at the expected size keeps probe chains short (a lookup pass per extra probe).
        self._alloc(max(8, 1 << int(max(1, 2 * expected_entries) - 1).bit_length()))

    def _alloc(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self._bits = num_slots.bit_length() - 1
        self._mask = num_slots - 1
        self.table = np.full(num_slots, EMPTY, dtype=np.int32)  # (slots,) entry, EMPTY or TOMBSTONE
        self.live = 0
        self.tombstones = 0

    @property
    def nbytes(self) -> int:
        return int(self.table.nbytes)

    def _home(self, keys: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            mixed = keys.view(np.uint64) * _FIB
        return (mixed >> np.uint64(64 - self._bits)).astype(np.int64) if self._bits else np.zeros(len(keys), np.int64)

    def _probe(self, keys: np.ndarray, entry_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(entries, slots) of ``keys`` (n,): entry -1 and slot -1 where the key is absent."""
        n = len(keys)
        entries = np.full(n, -1, dtype=np.int64)
        slots = np.full(n, -1, dtype=np.int64)
        if n == 0 or self.live == 0:
            return entries, slots
        table, mask = self.table, self._mask
        todo = np.arange(n)
        want = keys
        slot = self._home(keys)
        while True:
            e = table[slot]  # (m,) int32
            found = (e >= 0) & (entry_keys[np.maximum(e, 0)] == want)
            if found.any():
                entries[todo[found]] = e[found]
                slots[todo[found]] = slot[found]
            go_on = ~found & (e != EMPTY)
            if not go_on.any():
                return entries, slots
            todo, want = todo[go_on], want[go_on]
            slot = (slot[go_on] + 1) & mask

    def find(self, keys: np.ndarray, entry_keys: np.ndarray) -> np.ndarray:
        """(n,) int64 entry of each key, -1 where absent."""
        return self._probe(np.asarray(keys, dtype=np.int64), entry_keys)[0]

    def insert(self, keys: np.ndarray, entries: np.ndarray, entry_keys: np.ndarray) -> None:
        """Add distinct ``keys`` (k,) that are absent, pointing at ``entries`` (k,)."""
        keys = np.asarray(keys, dtype=np.int64)
        entries = np.asarray(entries, dtype=np.int64)
        if not len(keys):
            return
        if self.live + self.tombstones + len(keys) > MAX_LOAD * self.num_slots:
            self._rebuild(entry_keys, extra=len(keys))
        table, mask = self.table, self._mask
        slot = self._home(keys)
        todo = np.arange(len(keys))
        while todo.size:
            e = table[slot]
            free = np.flatnonzero(e < 0)
            placed = np.zeros(len(todo), dtype=bool)
            if free.size:
                # Several keys may want the same free slot: the first (in batch order) takes it,
                # the others probe on (deterministic, so a restart rebuilds the same behaviour).
                won_slots, first = np.unique(slot[free], return_index=True)
                winners = free[first]
                self.tombstones -= int(np.count_nonzero(e[winners] == TOMBSTONE))
                table[won_slots] = entries[todo[winners]]
                placed[winners] = True
            self.live += int(np.count_nonzero(placed))
            left = ~placed
            todo = todo[left]
            slot = (slot[left] + 1) & mask

    def remove(self, keys: np.ndarray, entry_keys: np.ndarray) -> int:
        """Drop ``keys`` (absent ones are ignored); call before ``entry_keys`` forgets them."""
        _, slots = self._probe(np.asarray(keys, dtype=np.int64), entry_keys)
        slots = np.unique(slots[slots >= 0])
        self.table[slots] = TOMBSTONE
        self.live -= len(slots)
        self.tombstones += len(slots)
        return len(slots)

    def clear(self) -> None:
        self.table.fill(EMPTY)
        self.live = 0
        self.tombstones = 0

    def entries(self) -> np.ndarray:
        """(live,) int64 every entry in the index (slot order)."""
        return self.table[self.table >= 0].astype(np.int64)

    def _rebuild(self, entry_keys: np.ndarray, extra: int) -> None:
        """Re-insert the live entries without tombstones, doubling the table while it would still
        be more than half full afterwards."""
        live = self.entries()
        slots = self.num_slots
        while (len(live) + extra) > slots // 2:
            slots *= 2
        self._alloc(slots)
        self.insert(entry_keys[live], live, entry_keys)
