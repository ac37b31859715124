"""One input row -> one validated replay event: field mapping, value coercion, bad-line records.

Readers turn a file into *rows* (a mapping of source field name -> value). :class:`RowMapper`
maps the source names to the event fields (``--map user_id=uid,...``), coerces text values
(CSV cells are strings) and validates the result with the decoder's own specification,
:func:`~streamtrain.events.schema.normalize_event`, so a replayed event is never one the worker
would dead-letter. A row that does not make an event becomes a :class:`BadLine` with a reason.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, NamedTuple

import orjson

from streamtrain.events.schema import (
    MAX_EVENT_TIME,
    MAX_ID_CHARS,
    SCHEMA_VERSION,
    ContextValue,
    Invalid,
    normalize_event,
)
from streamtrain.replay.errors import ReplayError

__all__ = [
    "EVENT_FIELDS",
    "TIME_UNITS",
    "BadLine",
    "BadLineReason",
    "Extras",
    "FieldMap",
    "Rejected",
    "ReplayEvent",
    "RowMapper",
    "TimeUnit",
    "parse_field_map",
]

EVENT_FIELDS = ("user_id", "item_id", "event_time", "event_type", "weight", "context")
TimeUnit = Literal["s", "ms", "us", "ns"]
TIME_UNITS: dict[str, float] = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_MISSING = object()
# Values that mean "field not given": an empty CSV cell, a JSON or Parquet null.
_ABSENT = (None, "")


class BadLineReason(StrEnum):
    """Why an input line (or row) produced no event; a closed set, shown in the summary."""

    NOT_UTF8 = "not_utf8"
    """The line's bytes are not UTF-8."""
    NOT_JSON = "not_json"
    """A JSONL line that is not one JSON document."""
    NOT_OBJECT = "not_object"
    """A JSONL line whose JSON is not an object."""
    BAD_ROW = "bad_row"
    """Wrong number of columns (CSV, MovieLens)."""
    MISSING_FIELD = "missing_field"
    """user_id or item_id is absent."""
    WRONG_TYPE = "wrong_type"
    """A field has a type the event schema does not take (e.g. a bool id)."""
    INVALID_VALUE = "invalid_value"
    """Right type, bad value: empty id, unreadable or out-of-range time, weight out of range."""
    MIXED_EVENT_TIME = "mixed_event_time"
    """The stream's first event decided timed/untimed and this one disagrees."""
    OVERSIZED = "oversized"
    """The encoded event is larger than kafka.max_message_bytes; the worker would dead-letter it."""


class BadLine(NamedTuple):
    """One input line or row that produced no event.

    Attributes:
        where: ``file:line`` (text formats) or ``file:row N`` (Parquet).
        reason: the reason code.
        detail: what was wrong, naming the field.
    """

    where: str
    reason: BadLineReason
    detail: str


class Extras(NamedTuple):
    """The optional event fields; kept apart because most replayed events have none."""

    event_type: str | None
    weight: float | None
    context: dict[str, ContextValue] | None


class ReplayEvent(NamedTuple):
    """One event of the ordered stream, ready for :func:`~streamtrain.events.encode_event`.

    ``event_time`` is in seconds since the epoch; for untimed input it is synthesised.
    """

    user_id: str
    item_id: str
    event_time: float
    extras: Extras | None = None


@dataclass(frozen=True)
class FieldMap:
    """Event field -> source field name; unmapped fields read the field of the same name."""

    sources: Mapping[str, str] = field(default_factory=dict)

    def source(self, event_field: str) -> str:
        return self.sources.get(event_field, event_field)


def parse_field_map(specs: Iterable[str]) -> FieldMap:
    """Parse ``--map`` values such as ``user_id=uid,item_id=movie``; called once by the CLI.

    Raises:
        ReplayError: a part is not ``field=source`` or names an unknown event field.
    """
    sources: dict[str, str] = {}
    for spec in specs:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, source = (s.strip() for s in part.partition("="))
            if not sep or not name or not source:
                raise ReplayError(f"--map expects event_field=source_field, got {part!r}")
            if name not in EVENT_FIELDS:
                raise ReplayError(f"--map: {name!r} is not an event field; use one of {', '.join(EVENT_FIELDS)}")
            sources[name] = source
    return FieldMap(sources)


class Rejected(NamedTuple):
    """Why one row makes no event; the builder turns it into a :class:`BadLine`."""

    reason: BadLineReason
    detail: str


def _coerce_time(value: Any, scale: float) -> float | None | Rejected:
    """Seconds since the epoch from a number, a numeric string, an ISO-8601 string or a datetime."""
    if value is _MISSING or value is None or value == "":
        return None
    if isinstance(value, bool):
        return Rejected(BadLineReason.WRONG_TYPE, f"event_time: expected a number or ISO-8601 time, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value) * scale
    elif isinstance(value, dt.datetime):
        # Naive datetimes (Parquet timestamps without a zone) are taken as UTC.
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        seconds = aware.timestamp()
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text) * scale
        except ValueError:
            try:
                parsed = dt.datetime.fromisoformat(text)
            except ValueError:
                return Rejected(
                    BadLineReason.INVALID_VALUE,
                    f"event_time: cannot read {text[:40]!r} as a number or an ISO-8601 time",
                )
            return _coerce_time(parsed, scale)
    else:
        return Rejected(BadLineReason.WRONG_TYPE, f"event_time: expected a number or time, got {type(value).__name__}")
    if not math.isfinite(seconds):
        return Rejected(BadLineReason.INVALID_VALUE, f"event_time: {value!r} is not a finite time")
    return seconds


def _coerce_number(name: str, value: Any) -> float | None | Rejected:
    if value is _MISSING or value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return Rejected(BadLineReason.WRONG_TYPE, f"{name}: expected a number, got {value[:40]!r}")
    return value  # numbers pass; other types are judged by normalize_event


def _coerce_context(value: Any) -> Any:
    if value is _MISSING or value == "":
        return None
    if isinstance(value, str):
        # CSV cells carry a context as JSON text.
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value  # normalize_event reports the wrong type
    return value


class RowMapper:
    """Map, coerce and validate rows with one field mapping; built once per replay.

    The common row (two string ids of valid length, a plain time, no optional fields) is
    accepted by a few type tests; everything else goes through ``normalize_event``, which
    also writes the rejection detail. Both accept exactly the same rows.
    """

    def __init__(self, fields: FieldMap, *, scale: float = 1.0) -> None:
        self.fields = fields
        self.scale = scale
        self._user, self._item, self._time, self._type, self._weight, self._context = (
            fields.source(name) for name in EVENT_FIELDS
        )

    def __call__(self, row: Mapping[str, Any]) -> tuple[str, str, float | None, Extras | None] | Rejected:
        """Called by the log builder once per row.

        Returns:
            ``(user_id, item_id, event_time or None, extras or None)`` with ids as strings, or
            a ``Rejected`` with the reason and detail. Never raises.
        """
        get = row.get
        user = get(self._user)
        item = get(self._item)
        if (
            type(user) is str
            and type(item) is str
            and 0 < len(user) <= MAX_ID_CHARS
            and 0 < len(item) <= MAX_ID_CHARS
            and get(self._type) in _ABSENT
            and get(self._weight) in _ABSENT
            and get(self._context) in _ABSENT
        ):
            raw = get(self._time)
            if raw in _ABSENT:
                return user, item, None, None
            if type(raw) is not bool:
                event_time = _coerce_time(raw, self.scale)
                if type(event_time) is float and 0.0 <= event_time <= MAX_EVENT_TIME:
                    return user, item, event_time, None
        return self._slow(row)

    def _slow(self, row: Mapping[str, Any]) -> tuple[str, str, float | None, Extras | None] | Rejected:
        get = row.get
        user = get(self._user, _MISSING)
        item = get(self._item, _MISSING)
        for name, source, value in (("user_id", self._user, user), ("item_id", self._item, item)):
            if value is _MISSING or value is None:
                return Rejected(BadLineReason.MISSING_FIELD, f"{name}: no value in source field {source!r}")
        event_time = _coerce_time(get(self._time, _MISSING), self.scale)
        if isinstance(event_time, Rejected):
            return event_time
        weight = _coerce_number("weight", get(self._weight, _MISSING))
        if isinstance(weight, Rejected):
            return weight
        event_type = get(self._type, None)
        if event_type == "":
            event_type = None
        context = _coerce_context(get(self._context, _MISSING))
        doc = {
            "schema_version": SCHEMA_VERSION,
            "user_id": user,
            "item_id": item,
            "event_time": 0.0 if event_time is None else event_time,
            "event_type": event_type,
            "weight": weight,
            "context": context,
        }
        checked = normalize_event(doc)
        if isinstance(checked, Invalid):
            known = checked.reason.value in BadLineReason._value2member_map_
            return Rejected(BadLineReason(checked.reason.value) if known else BadLineReason.INVALID_VALUE, checked.detail)
        extras = None
        if event_type is not None or weight is not None or checked.context is not None:
            extras = Extras(checked.event_type, None if weight is None else checked.weight, checked.context)
        return checked.user_id, checked.item_id, event_time, extras
