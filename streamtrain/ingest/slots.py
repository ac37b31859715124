"""A ring of fixed-size shared-memory slots, each holding one ready micro-batch as columns.

One ``multiprocessing.shared_memory`` segment per ingest process holds ``count`` slots. A slot's
layout (B = batch size, A = id arena bytes per column, R = most partitions a batch covers)::

    header      int64[8]       events, ranges, closed_by, generation, user bytes, item bytes, messages, -
    ranges      int64[R, 4]    partition, first offset, next offset, events
    last_time   float64[R]     event time of each range's last good event (NaN: none)
    user_keys   int64[B]       stable keys (streamtrain.events.ids), so the trainer never hashes
    item_keys   int64[B]
    user_starts, user_lengths, item_starts, item_lengths   int64[B]   where each id's bytes are
    event_time  float64[B]
    weight      float32[B]
    user_bytes, item_bytes     uint8[A + 8]   UTF-8 bytes of the ids (for ids the vocabulary admits)

The writer (an ingest process) fills a slot the reader has released and sends its index over a pipe;
the reader (the trainer) builds an :class:`EventBatch` of views into the slot (no copy, no Python
object per event) and releases the slot after the step. A batch that does not fit (ids longer than
A / B bytes on average, more than R partitions) is sent as pickled arrays instead (:func:`pack`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamtrain.events import EventBatch
from streamtrain.events.ids import EncodedIds, KeyedIds
from streamtrain.events.records import MicroBatch, PartitionKey, PartitionRange

__all__ = ["SlotLayout", "SlotView", "pack", "unpack", "CLOSED_BY"]

CLOSED_BY = ("count", "latency", "flush")
_HEADER = 8


@dataclass(frozen=True)
class SlotLayout:
    batch_size: int
    arena_bytes: int  # per id column
    max_ranges: int = 64

    def _fields(self) -> list[tuple[str, Any, tuple[int, ...]]]:
        b, r = self.batch_size, self.max_ranges
        return [
            ("header", np.int64, (_HEADER,)), ("ranges", np.int64, (r, 4)), ("last_time", np.float64, (r,)),
            ("user_keys", np.int64, (b,)), ("item_keys", np.int64, (b,)),
            ("user_starts", np.int64, (b,)), ("user_lengths", np.int64, (b,)),
            ("item_starts", np.int64, (b,)), ("item_lengths", np.int64, (b,)),
            ("event_time", np.float64, (b,)), ("weight", np.float32, (b,)),
            ("user_bytes", np.uint8, (self.arena_bytes + 8,)), ("item_bytes", np.uint8, (self.arena_bytes + 8,)),
        ]

    @property
    def slot_bytes(self) -> int:
        total = 0
        for _, dtype, shape in self._fields():
            total += _align(np.dtype(dtype).itemsize * math.prod(shape))
        return total

    def view(self, buf: Any, slot: int) -> SlotView:
        """Numpy views of slot ``slot`` inside ``buf`` (a shared memory segment's buffer)."""
        arrays = {}
        offset = slot * self.slot_bytes
        for name, dtype, shape in self._fields():
            arrays[name] = np.ndarray(shape, dtype=dtype, buffer=buf, offset=offset)
            offset += _align(np.dtype(dtype).itemsize * math.prod(shape))
        return SlotView(self, arrays)


def _align(n: int) -> int:
    return (n + 63) // 64 * 64


class SlotView:
    """One slot's arrays; ``write`` in the ingest process, ``read`` in the trainer."""

    def __init__(self, layout: SlotLayout, arrays: dict[str, np.ndarray]) -> None:
        self.layout = layout
        self.a = arrays

    def write(self, batch: MicroBatch, users: KeyedIds, items: KeyedIds) -> bool:
        """Copy ``batch`` (ids already keyed) into the slot; False when it does not fit."""
        a, n = self.a, len(batch.events)
        ub, ib = int(users.encoded.lengths.sum()), int(items.encoded.lengths.sum())
        if (n > self.layout.batch_size or len(batch.ranges) > self.layout.max_ranges
                or max(ub, ib) > self.layout.arena_bytes):
            return False
        for prefix, ids, used in (("user", users, ub), ("item", items, ib)):
            packed = ids.encoded
            if packed.data.size - 8 != used:  # not packed back to back (a slice): re-pack
                packed = packed.take(np.arange(n, dtype=np.int64))
            a[f"{prefix}_keys"][:n] = ids.keys
            a[f"{prefix}_starts"][:n] = packed.starts
            a[f"{prefix}_lengths"][:n] = packed.lengths
            a[f"{prefix}_bytes"][:used] = packed.data[:used]
            a[f"{prefix}_bytes"][used:used + 8] = 0
        a["event_time"][:n] = batch.events.event_time
        a["weight"][:n] = batch.events.weight
        _write_ranges(a["ranges"], a["last_time"], batch.ranges)
        a["header"][:] = (n, len(batch.ranges), CLOSED_BY.index(batch.closed_by), batch.generation, ub, ib,
                          batch.messages, 0)
        return True

    def read(self, topic: str) -> MicroBatch:
        """A MicroBatch whose columns are views into the slot (valid until the slot is released)."""
        a = self.a
        n, r, closed, generation, ub, ib, messages, _ = (int(x) for x in a["header"])
        users = KeyedIds(a["user_keys"][:n], EncodedIds(a["user_bytes"][:ub + 8], a["user_starts"][:n],
                                                        a["user_lengths"][:n]))
        items = KeyedIds(a["item_keys"][:n], EncodedIds(a["item_bytes"][:ib + 8], a["item_starts"][:n],
                                                        a["item_lengths"][:n]))
        events = _batch(users, items, a["event_time"][:n], a["weight"][:n])
        ranges = _read_ranges(topic, a["ranges"][:r], a["last_time"][:r])
        return MicroBatch(events, ranges, messages, generation, CLOSED_BY[closed])


def _batch(users: KeyedIds, items: KeyedIds, event_time: np.ndarray, weight: np.ndarray) -> EventBatch:
    # event_type and context are validated by the decoder but not shipped: the trainer does not read them.
    return EventBatch(user_ids=users, item_ids=items, event_time=event_time, weight=weight,  # type: ignore[arg-type]
                      event_type=np.empty(len(users), dtype=object), context=None)


def _write_ranges(ints: np.ndarray, times: np.ndarray, ranges: Mapping[PartitionKey, PartitionRange]) -> None:
    for i, ((_, partition), rng) in enumerate(ranges.items()):
        ints[i] = (partition, rng.first_offset, rng.next_offset, rng.events)
        times[i] = math.nan if rng.last_event_time is None else rng.last_event_time


def _read_ranges(topic: str, ints: np.ndarray, times: np.ndarray) -> dict[PartitionKey, PartitionRange]:
    out = {}
    for (partition, first, nxt, events), t in zip(ints.tolist(), times.tolist()):
        out[(topic, partition)] = PartitionRange(first, nxt, events, None if math.isnan(t) else t)
    return out


def pack(batch: MicroBatch, users: KeyedIds, items: KeyedIds) -> dict[str, Any]:
    """A batch that did not fit a slot, as arrays to pickle (per batch, never per event)."""
    return {
        "users": (users.keys, users.encoded.data, users.encoded.starts, users.encoded.lengths),
        "items": (items.keys, items.encoded.data, items.encoded.starts, items.encoded.lengths),
        "event_time": np.ascontiguousarray(batch.events.event_time),
        "weight": np.ascontiguousarray(batch.events.weight),
        "ranges": dict(batch.ranges), "messages": batch.messages, "generation": batch.generation,
        "closed_by": batch.closed_by,
    }


def unpack(payload: dict[str, Any]) -> MicroBatch:
    uk, ud, us, ul = payload["users"]
    ik, idata, istarts, il = payload["items"]
    events = _batch(KeyedIds(uk, EncodedIds(ud, us, ul)), KeyedIds(ik, EncodedIds(idata, istarts, il)),
                    payload["event_time"], payload["weight"])
    return MicroBatch(events, payload["ranges"], payload["messages"], payload["generation"], payload["closed_by"])
