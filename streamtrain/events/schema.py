"""The interaction-event schema, version 1, as Python: limits and the reference validator.

This module mirrors ``schemas/interaction-event.v1.schema.json``; a unit test checks that
the two accept and reject the same documents. :func:`normalize_event` is the specification
the decoder's fast path must agree with: the decoder falls back to it for every event its
inline checks do not accept outright, so a rejection's reason and detail always come from here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from streamtrain.errors import StreamtrainError
from streamtrain.events.reasons import RejectReason

__all__ = [
    "SCHEMA_VERSION",
    "MAX_ID_CHARS",
    "MAX_INT_ID",
    "MAX_EVENT_TIME",
    "MIN_WEIGHT",
    "MAX_WEIGHT",
    "MAX_EVENT_TYPE_CHARS",
    "ContextValue",
    "NormalizedEvent",
    "Invalid",
    "InvalidEventError",
    "normalize_event",
    "describe_json_value",
]

SCHEMA_VERSION = 1
MAX_ID_CHARS = 256
# int64 max: ids beyond it would not survive a round trip through most stores.
MAX_INT_ID = 2**63 - 1
# 9999-12-31T23:59:59Z; a millisecond timestamp of today is above it, so that mistake is caught.
MAX_EVENT_TIME = 253_402_300_799.0
# float32 keeps these as normal numbers; anything outside is a producer bug, not a weight.
MIN_WEIGHT = 1e-6
MAX_WEIGHT = 1e6
MAX_EVENT_TYPE_CHARS = 64

ContextValue = str | int | float

_MISSING = object()


class NormalizedEvent(NamedTuple):
    """One accepted event, with ids as strings and defaults filled in."""

    user_id: str
    item_id: str
    event_time: float
    weight: float
    event_type: str | None
    context: dict[str, ContextValue] | None


class Invalid(NamedTuple):
    """Why a parsed JSON value is not a version-1 event."""

    reason: RejectReason
    detail: str


class InvalidEventError(StreamtrainError, ValueError):
    """Raised by ``encode_event`` for an event that the decoder would reject.

    The message is the rejection detail; no bytes were produced.
    """


def describe_json_value(value: Any) -> str:
    """A short, safe description of a parsed JSON value for a rejection detail.

    Never recurses into containers (orjson parses arbitrarily deep nesting; a repr of it would
    overflow the stack) and cuts long strings.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    kind = type(value)
    if kind is int or kind is float:
        return repr(value)
    if kind is str:
        if len(value) > 40:
            return f"{value[:40]!r}... ({len(value)} chars)"
        return repr(value)
    if kind is dict:
        return "an object"
    if kind is list:
        return "an array"
    return f"a {kind.__name__}"


def _is_number(value: Any) -> bool:
    kind = type(value)
    return kind is int or kind is float


def _id(obj: dict[str, Any], name: str) -> str | Invalid:
    value = obj.get(name, _MISSING)
    if value is _MISSING:
        return Invalid(RejectReason.MISSING_FIELD, f"{name}: required field is missing")
    kind = type(value)
    if kind is str:
        if not value:
            return Invalid(RejectReason.INVALID_VALUE, f"{name}: must not be an empty string")
        if len(value) > MAX_ID_CHARS:
            return Invalid(
                RejectReason.INVALID_VALUE,
                f"{name}: string id of {len(value)} chars exceeds {MAX_ID_CHARS}",
            )
        return value
    # JSON has one number type; 42.0 is the integer 42 for JSON Schema, so it is accepted too.
    if kind is int or (kind is float and value.is_integer()):
        if not 0 <= value <= MAX_INT_ID:
            return Invalid(
                RejectReason.INVALID_VALUE,
                f"{name}: integer id must be in [0, 2**63-1], got {describe_json_value(value)}",
            )
        return str(int(value))
    return Invalid(
        RejectReason.WRONG_TYPE,
        f"{name}: expected a string or an integer, got {describe_json_value(value)}",
    )


def _event_time(obj: dict[str, Any]) -> float | Invalid:
    value = obj.get("event_time", _MISSING)
    if value is _MISSING:
        return Invalid(RejectReason.MISSING_FIELD, "event_time: required field is missing")
    if not _is_number(value):
        return Invalid(
            RejectReason.WRONG_TYPE,
            f"event_time: expected a number (seconds since the Unix epoch), "
            f"got {describe_json_value(value)}",
        )
    if not 0.0 <= value <= MAX_EVENT_TIME:
        hint = " (milliseconds instead of seconds?)" if value > MAX_EVENT_TIME else ""
        return Invalid(
            RejectReason.INVALID_VALUE,
            f"event_time: expected seconds in [0, {MAX_EVENT_TIME:.0f}], got {value!r}{hint}",
        )
    return float(value)


def _event_type(obj: dict[str, Any]) -> str | None | Invalid:
    value = obj.get("event_type")
    if value is None:
        return None
    if type(value) is not str:
        return Invalid(
            RejectReason.WRONG_TYPE,
            f"event_type: expected a string or null, got {describe_json_value(value)}",
        )
    if not 0 < len(value) <= MAX_EVENT_TYPE_CHARS:
        return Invalid(
            RejectReason.INVALID_VALUE,
            f"event_type: expected 1..{MAX_EVENT_TYPE_CHARS} chars, got {len(value)}",
        )
    return value


def _weight(obj: dict[str, Any]) -> float | Invalid:
    value = obj.get("weight")
    if value is None:
        return 1.0
    if not _is_number(value):
        return Invalid(
            RejectReason.WRONG_TYPE,
            f"weight: expected a number or null, got {describe_json_value(value)}",
        )
    if not MIN_WEIGHT <= value <= MAX_WEIGHT:
        return Invalid(
            RejectReason.INVALID_VALUE,
            f"weight: expected a number in [{MIN_WEIGHT:g}, {MAX_WEIGHT:g}], got {value!r}",
        )
    return float(value)


def _context(obj: dict[str, Any]) -> dict[str, ContextValue] | None | Invalid:
    value = obj.get("context")
    if value is None:
        return None
    if type(value) is not dict:
        return Invalid(
            RejectReason.WRONG_TYPE,
            f"context: expected an object or null, got {describe_json_value(value)}",
        )
    for key, feature in value.items():
        kind = type(feature)
        if kind is not str and kind is not int and kind is not float:
            return Invalid(
                RejectReason.WRONG_TYPE,
                f"context[{describe_json_value(key)}]: expected a string or a number, "
                f"got {describe_json_value(feature)}",
            )
    # An empty context carries nothing; treating it as absent keeps EventBatch.context None.
    return value or None


def normalize_event(obj: Any) -> NormalizedEvent | Invalid:
    """Check one parsed JSON value against schema version 1 and normalise it.

    Called by the decoder for each parsed message its fast path does not accept, and by
    ``encode_event`` before it writes bytes. Fields are checked in a fixed order
    (schema_version, user_id, item_id, event_time, event_type, weight, context) and the first
    failure is returned. Unknown fields are ignored. Never raises.

    Returns:
        The normalised event, or :class:`Invalid` with the reason and a detail naming the field.
    """
    if type(obj) is not dict:
        return Invalid(
            RejectReason.NOT_OBJECT, f"expected a JSON object, got {describe_json_value(obj)}"
        )
    version = obj.get("schema_version", _MISSING)
    if version is _MISSING:
        return Invalid(RejectReason.MISSING_FIELD, "schema_version: required field is missing")
    if not _is_number(version):
        return Invalid(
            RejectReason.WRONG_TYPE,
            f"schema_version: expected the integer {SCHEMA_VERSION}, "
            f"got {describe_json_value(version)}",
        )
    if version != SCHEMA_VERSION:
        return Invalid(
            RejectReason.UNKNOWN_SCHEMA_VERSION,
            f"schema_version: {version!r} is not supported, this decoder reads {SCHEMA_VERSION}",
        )
    user_id = _id(obj, "user_id")
    if type(user_id) is Invalid:
        return user_id
    item_id = _id(obj, "item_id")
    if type(item_id) is Invalid:
        return item_id
    event_time = _event_time(obj)
    if type(event_time) is Invalid:
        return event_time
    event_type = _event_type(obj)
    if type(event_type) is Invalid:
        return event_type
    weight = _weight(obj)
    if type(weight) is Invalid:
        return weight
    context = _context(obj)
    if type(context) is Invalid:
        return context
    return NormalizedEvent(user_id, item_id, event_time, weight, event_type, context)  # type: ignore[arg-type]
