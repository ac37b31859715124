"""Kafka message values -> EventBatch, in one pass that never raises; and the matching encoder.

The decoder is total: every input position ends up either in ``good_index`` or in
``rejects``, exactly once, whatever the bytes are. A poison message is a Rejection with a
reason code, never an exception that would stall the consumer.

Speed: each message is parsed with ``orjson.loads`` and checked by an inline fast path that
accepts the common shape (ids, time, optional event_type and weight, no context) with a
handful of type tests; anything else goes to :func:`~streamtrain.events.schema.normalize_event`,
which is the specification and produces the rejection detail. Columns are collected in lists
and converted with one numpy call each. bench/bench_decode.py compares this with parsing a
whole chunk as one JSON array; that is not used because it cannot tell which message a parsed
element came from when one message is malformed (e.g. ``{"a":[{}`` followed by ``{}]}``
parses as a single element), so a bad message could hide or impersonate its neighbours.
:mod:`streamtrain.events.batch_decoder` parses whole batches safely (a random marker between
messages) and uses this function as its reference for every message it does not accept outright.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from streamtrain.events.batch import EventBatch, object_array
from streamtrain.events.reasons import Rejection, RejectReason
from streamtrain.events.schema import (
    MAX_EVENT_TIME,
    MAX_EVENT_TYPE_CHARS,
    MAX_ID_CHARS,
    MAX_INT_ID,
    MAX_WEIGHT,
    MIN_WEIGHT,
    SCHEMA_VERSION,
    ContextValue,
    Invalid,
    InvalidEventError,
    normalize_event,
)

__all__ = ["DEFAULT_MAX_BYTES", "DecodeResult", "decode_values", "encode_event"]

DEFAULT_MAX_BYTES = 64 * 1024

# Everything a per-message parser may raise on bad input: orjson raises JSONDecodeError (a
# ValueError) for all of it; the stdlib parser, kept for the benchmark, also raises
# RecursionError on deep nesting and UnicodeDecodeError (a ValueError) on bad UTF-8.
_PARSE_ERRORS = (ValueError, TypeError, RecursionError)


@dataclass(frozen=True, slots=True)
class DecodeResult:
    """What :func:`decode_values` made of a sequence of message values.

    Attributes:
        batch: the good events, in input order.
        good_index: (len(batch),) int64, the input position of each good event.
        rejects: one Rejection per bad input, in input order.
    """

    batch: EventBatch
    good_index: np.ndarray
    rejects: list[Rejection] = field(default_factory=list)

    def reason_counts(self) -> dict[RejectReason, int]:
        """Rejections per reason, for the ``events_rejected_total{reason=...}`` counter."""
        return dict(Counter(r.reason for r in self.rejects))


def decode_values(
    values: Sequence[bytes | None], *, max_bytes: int = DEFAULT_MAX_BYTES
) -> DecodeResult:
    """Decode Kafka message values into an EventBatch; called by the worker once per poll.

    Args:
        values: raw message values; ``None`` is a tombstone. bytearray and memoryview are
            accepted as bytes; anything else is rejected as ``not_json``.
        max_bytes: larger messages are rejected as ``oversized`` without being parsed.

    Returns:
        The good events and one Rejection per bad message. Never raises.
    """
    return _decode(values, max_bytes, orjson.loads, None)


def _decode(
    values: Sequence[Any],
    max_bytes: int,
    loads: Callable[[Any], Any],
    parsed: Sequence[Any] | None,
) -> DecodeResult:
    """The decoding loop; ``parsed``, when given, holds the already-parsed value per position.

    Only the benchmark passes another ``loads`` or ``parsed``; decode_values uses orjson per
    message.
    """
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    weights: list[float] = []
    types: list[str | None] = []
    contexts: list[dict[str, ContextValue] | None] = []
    good: list[int] = []
    rejects: list[Rejection] = []
    has_context = False
    # Locals: attribute and global lookups dominate a loop this tight.
    r_append = rejects.append
    NOT_JSON = RejectReason.NOT_JSON
    str_, int_, float_, dict_ = str, int, float, dict

    for i, value in enumerate(values):
        if type(value) is not bytes:
            if value is None:
                r_append(Rejection(i, RejectReason.NULL_VALUE, "message value is null (tombstone)"))
                continue
            try:
                if not isinstance(value, (bytes, bytearray, memoryview)):
                    raise TypeError
                value = bytes(value)  # a released memoryview raises ValueError here
            except (TypeError, ValueError):
                r_append(Rejection(i, NOT_JSON, f"expected bytes, got {type(value).__name__}"))
                continue
        if len(value) > max_bytes:
            r_append(
                Rejection(
                    i,
                    RejectReason.OVERSIZED,
                    f"message of {len(value)} bytes exceeds max_bytes={max_bytes}",
                )
            )
            continue
        if parsed is None:
            try:
                obj = loads(value)
            except _PARSE_ERRORS as exc:
                r_append(Rejection(i, NOT_JSON, f"not valid UTF-8 JSON: {str(exc)[:120]}"))
                continue
        else:
            obj = parsed[i]

        # Fast path: the common event shape, checked with type() identity so bool never
        # passes as int. Anything it does not accept goes to normalize_event.
        if type(obj) is dict_:
            get: Callable[[str], Any] = obj.get
            v = get("schema_version")
            u = get("user_id")
            it = get("item_id")
            t = get("event_time")
            et = get("event_type")
            w = get("weight")
            tu = type(u)
            ti = type(it)
            tt = type(t)
            tw = type(w)
            if (
                type(v) is int_
                and v == SCHEMA_VERSION
                and (
                    (tu is str_ and 0 < len(u) <= MAX_ID_CHARS)
                    or (tu is int_ and 0 <= u <= MAX_INT_ID)
                )
                and (
                    (ti is str_ and 0 < len(it) <= MAX_ID_CHARS)
                    or (ti is int_ and 0 <= it <= MAX_INT_ID)
                )
                and (tt is float_ or tt is int_)
                and 0.0 <= t <= MAX_EVENT_TIME
                and (et is None or (type(et) is str_ and 0 < len(et) <= MAX_EVENT_TYPE_CHARS))
                and (w is None or ((tw is float_ or tw is int_) and MIN_WEIGHT <= w <= MAX_WEIGHT))
                and get("context") is None
            ):
                users.append(u if tu is str_ else str_(u))
                items.append(it if ti is str_ else str_(it))
                times.append(float_(t))
                weights.append(1.0 if w is None else w)
                types.append(et)
                contexts.append(None)
                good.append(i)
                continue

        event = normalize_event(obj)
        if isinstance(event, Invalid):
            r_append(Rejection(i, event.reason, event.detail))
            continue
        users.append(event.user_id)
        items.append(event.item_id)
        times.append(event.event_time)
        weights.append(event.weight)
        types.append(event.event_type)
        if event.context is not None:
            has_context = True
        contexts.append(event.context)
        good.append(i)

    if not good:
        return DecodeResult(EventBatch.empty(), np.empty(0, dtype=np.int64), rejects)
    batch = EventBatch(
        user_ids=object_array(users),
        item_ids=object_array(items),
        event_time=np.array(times, dtype=np.float64),
        weight=np.array(weights, dtype=np.float32),
        event_type=object_array(types),
        context=[c if c is not None else {} for c in contexts] if has_context else None,
    )
    return DecodeResult(batch, np.array(good, dtype=np.int64), rejects)


def encode_event(
    user_id: str | int,
    item_id: str | int,
    event_time: float,
    *,
    event_type: str | None = None,
    weight: float | None = None,
    context: Mapping[str, ContextValue] | None = None,
) -> bytes:
    """Serialise one version-1 event; used by the replay producer and by tests.

    Integer ids stay JSON integers (numpy integers are converted); optional fields that are
    None are left out.

    Raises:
        InvalidEventError: the event would be rejected by :func:`decode_values`; the message
            is the rejection detail.
    """
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "user_id": _plain(user_id),
        "item_id": _plain(item_id),
        "event_time": _plain(event_time),
    }
    if event_type is not None:
        doc["event_type"] = event_type
    if weight is not None:
        doc["weight"] = _plain(weight)
    if context is not None:
        doc["context"] = {k: _plain(v) for k, v in context.items()}
    checked = normalize_event(doc)
    if type(checked) is Invalid:
        raise InvalidEventError(checked.detail)
    return orjson.dumps(doc)


def _plain(value: Any) -> Any:
    """numpy scalars -> the Python scalar orjson serialises; everything else unchanged."""
    if isinstance(value, np.generic):
        return value.item()
    return value
