"""Why a message was rejected: a closed set of reason codes, used as a metric label.

The values are part of the operator interface (dashboards, dead-letter headers), so they
never change meaning; a new failure kind gets a new value.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["RejectReason", "Rejection"]


class RejectReason(StrEnum):
    """The reason a Kafka message value did not become an event."""

    NOT_JSON = "not_json"
    """The bytes are not one UTF-8 JSON document (or not bytes at all)."""
    NOT_OBJECT = "not_object"
    """Valid JSON, but the top level is not an object."""
    MISSING_FIELD = "missing_field"
    """A required field is absent."""
    WRONG_TYPE = "wrong_type"
    """A field has the wrong JSON type (e.g. ``true`` or ``4.5`` as an id)."""
    INVALID_VALUE = "invalid_value"
    """Right type, value out of range (empty id, negative weight, time in milliseconds)."""
    OVERSIZED = "oversized"
    """The message is larger than the decoder's ``max_bytes``; it was not parsed."""
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
    """``schema_version`` is a number this decoder does not read."""
    NULL_VALUE = "null_value"
    """The message value is None (a Kafka tombstone)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """One rejected message.

    Attributes:
        index: position of the message in the decoder's input sequence.
        reason: the machine-readable reason code.
        detail: human-readable; names the field, what was expected and what was found.
    """

    index: int
    reason: RejectReason
    detail: str
