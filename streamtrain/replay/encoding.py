"""Chunks of the ordered stream -> Kafka values and keys, a whole chunk per call.

The events come from the :class:`~streamtrain.replay.eventlog.EventLog`, whose rows the replay
already validated with the decoder's own specification; so the common event (two string ids,
a time, nothing optional) is written from a byte template with each distinct id's JSON form
computed once, instead of building and re-validating a dict per event (``encode_event``, 4-5x
the cost). Anything else (optional fields, a non-string id, a time out of range) goes through
:func:`~streamtrain.events.encode_event`, which validates and may refuse it. The bytes differ
from ``encode_event``'s only in how a float is spelled (Python's shortest repr); they decode to
the same event (a unit test holds the two equal through the decoder).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import filterfalse
from typing import Any, NamedTuple

import orjson

from streamtrain.events import InvalidEventError, encode_event
from streamtrain.events.schema import MAX_EVENT_TIME, MAX_ID_CHARS
from streamtrain.replay.records import Extras

__all__ = ["ChunkEncoder", "Encoded", "EventChunk"]

log = logging.getLogger(__name__)

_TEMPLATE = b'{"schema_version":1,"user_id":%b,"item_id":%b,"event_time":%r}'


class EventChunk(NamedTuple):
    """Consecutive events of the ordered stream, as columns.

    Attributes:
        first: stream position of the first event.
        users, items: id strings (validated by the reader's row mapper).
        times: event times in seconds (Python floats).
        extras: one entry per event (None for most), or None when no event has any.
    """

    first: int
    users: Sequence[str]
    items: Sequence[str]
    times: Sequence[float]
    extras: Sequence[Extras | None] | None = None

    def __len__(self) -> int:
        return len(self.users)

    def slice(self, start: int, stop: int) -> EventChunk:
        extras = None if self.extras is None else self.extras[start:stop]
        return EventChunk(self.first + start, self.users[start:stop], self.items[start:stop],
                          self.times[start:stop], extras)


@dataclass
class Encoded:
    """One chunk's messages.

    Attributes:
        values, keys: the message values and keys (the user id), in stream order.
        positions: the stream position of each value, or None when they are ``first, first+1, ...``
            (nothing in the chunk was skipped).
        invalid, oversized: stream positions of the events skipped, and why.
    """

    first: int
    values: list[bytes]
    keys: list[bytes]
    positions: list[int] | None = None
    invalid: list[int] = field(default_factory=list)
    oversized: list[int] = field(default_factory=list)

    def position(self, index: int) -> int:
        return self.first + index if self.positions is None else self.positions[index]


class ChunkEncoder:
    """Encodes chunks for one replay run; holds each distinct id's JSON bytes (memory: one entry per id)."""

    def __init__(self, max_message_bytes: int | None = None) -> None:
        self.max_message_bytes = max_message_bytes
        self._json: dict[str, bytes] = {}
        self._keys: dict[str, bytes] = {}

    def encode(self, chunk: EventChunk) -> Encoded:
        """The chunk's values and keys; events the schema refuses or that are too large are skipped.

        Called once per chunk by :func:`~streamtrain.replay.producer.produce_chunks`. Never raises
        for a bad event.
        """
        if chunk.extras is None:
            plain = self._plain(chunk)
            if plain is not None:
                return plain
        out = Encoded(chunk.first, [], [])
        values, keys = out.values, out.keys
        json_of, key_of = self._json.get, self._keys.get
        limit = self.max_message_bytes
        extras = chunk.extras if chunk.extras is not None else _Nones()
        first = chunk.first
        skipped = False
        for j, (user, item, t, extra) in enumerate(zip(chunk.users, chunk.items, chunk.times, extras)):
            u = json_of(user)  # type: ignore[arg-type]
            i = json_of(item)  # type: ignore[arg-type]
            if u is not None and i is not None and extra is None and type(t) is float and 0.0 <= t <= MAX_EVENT_TIME:
                value = _TEMPLATE % (u, i, t)
            else:
                value = self._other(user, item, t, extra)
                if value is None:
                    out.invalid.append(first + j)
                    skipped = True
                    continue
            if limit is not None and len(value) > limit:
                out.oversized.append(first + j)
                skipped = True
                continue
            key = key_of(user)  # type: ignore[arg-type]
            if key is None:
                key = self._keys[user] = str(user).encode("utf-8")
            if skipped and out.positions is None:
                out.positions = [first + k for k in range(len(values))]
            if out.positions is not None:
                out.positions.append(first + j)
            values.append(value)
            keys.append(key)
        return out

    def _plain(self, chunk: EventChunk) -> Encoded | None:
        """The whole chunk from the template with C-level maps (no Python per event), or None when
        some event needs the general loop (a new id that is not a plain string, a time out of range
        or not a float, a message over the size limit)."""
        json_of, key_of = self._json, self._keys
        users, items, times = chunk.users, chunk.items, chunk.times
        seen = set(users)
        seen.update(items)
        # filterfalse over the chunk's ids, not set difference with the dict's keys: that walks every
        # id ever seen, per chunk.
        for name in list(filterfalse(json_of.__contains__, seen)):
            if type(name) is not str or not 0 < len(name) <= MAX_ID_CHARS:
                return None
            json_of[name] = orjson.dumps(name)
        if not times or set(map(type, times)) != {float} or not (0.0 <= min(times) and max(times) <= MAX_EVENT_TIME) \
                or any(map(math.isnan, times)):
            return None if times else Encoded(chunk.first, [], [])
        values = list(map(_TEMPLATE.__mod__, zip(map(json_of.__getitem__, users), map(json_of.__getitem__, items),
                                                 times)))
        if self.max_message_bytes is not None and max(map(len, values)) > self.max_message_bytes:
            return None
        for user in list(filterfalse(key_of.__contains__, set(users))):
            key_of[user] = user.encode("utf-8")
        return Encoded(chunk.first, values, list(map(key_of.__getitem__, users)))

    def _other(self, user: Any, item: Any, t: Any, extra: Extras | None) -> bytes | None:
        """An event the template did not take: learn its ids' JSON, then template or encode_event."""
        for name in (user, item):
            if type(name) is str and 0 < len(name) <= MAX_ID_CHARS and name not in self._json:
                self._json[name] = orjson.dumps(name)
        plain = extra is None and type(t) is float and 0.0 <= t <= MAX_EVENT_TIME
        if plain and type(user) is str and type(item) is str and user in self._json and item in self._json:
            return _TEMPLATE % (self._json[user], self._json[item], t)
        try:
            if extra is None:
                return encode_event(user, item, t)
            return encode_event(user, item, t, event_type=extra.event_type, weight=extra.weight,
                                context=extra.context)
        except InvalidEventError as exc:
            log.debug("skipped invalid event %r/%r at %r: %s", user, item, t, exc)
            return None


class _Nones:
    """An endless run of None (the extras column of a chunk without any)."""

    def __iter__(self) -> _Nones:
        return self

    def __next__(self) -> None:
        return None
