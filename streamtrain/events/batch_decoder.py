"""Decode a whole fetched batch of message values in one typed parse; same results as decode_values.

:func:`decode_batch` is what the consumers call per fetched batch. It joins the values into one
JSON array and parses it with a ``msgspec`` decoder typed as the version-1 event, so parsing,
type checks and range checks run in C for the whole batch; Python only transposes the parsed
events into columns. ``decode_values`` (orjson and Python checks per message) stays the
reference: every message the typed parse does not accept outright is handed to it, so
rejection reasons and details, and the odd accepted forms (``schema_version`` 1.0, integral
float ids, unknown properties), come from exactly the same code as before.

Why the batch parse cannot mix messages up: the values are joined as
``[m0,N,m1,N,...,m(n-1),N]`` with ``N`` a random 18-digit number drawn per call. The result must
have 2n elements with ``N`` at every odd position. Nobody who wrote a message knows ``N``, so
every parsed ``N`` is one of ours, all n of them sit at the top level, and between two of them
there is exactly one element: message i alone, parsed as one JSON value. A malformed message
that opens a string or a bracket swallows an ``N`` and the check fails (see
``test_a_malformed_message_cannot_merge_with_its_neighbours``).

Where the typed parse and ``decode_values`` could disagree, the typed event is stricter, so
those messages take the reference path: unknown properties are refused (msgspec skips them
without orjson's float-range check), integers are bounded to int64 (orjson reads larger ones as
floats), and ``schema_version`` must be the integer 1.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from streamtrain.events.batch import EventBatch, object_array
from streamtrain.events.decoder import DEFAULT_MAX_BYTES, DecodeResult, decode_values
from streamtrain.events.reasons import Rejection
from streamtrain.events.schema import (
    MAX_EVENT_TIME,
    MAX_EVENT_TYPE_CHARS,
    MAX_ID_CHARS,
    MAX_INT_ID,
    MAX_WEIGHT,
    MIN_WEIGHT,
    SCHEMA_VERSION,
)

__all__ = ["decode_batch"]

_StrId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
_IntId = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT_ID)]
_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class _Event(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """A version-1 event as the typed parse accepts it (a subset of what normalize_event accepts)."""

    schema_version: Literal[SCHEMA_VERSION]  # type: ignore[valid-type]
    user_id: _StrId | _IntId
    item_id: _StrId | _IntId
    event_time: Annotated[float, msgspec.Meta(ge=0.0, le=MAX_EVENT_TIME)]
    event_type: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EVENT_TYPE_CHARS)] | None = None
    weight: Annotated[float, msgspec.Meta(ge=MIN_WEIGHT, le=MAX_WEIGHT)] | None = None
    context: dict[str, str | _Int64 | float] | None = None


_BATCH = msgspec.json.Decoder(list[_Event | int])
_ONE = msgspec.json.Decoder(_Event)
_GIVE_UP = 32  # typed failures before the per-message path stops trying the typed parse (see _per_message)
_FAILED = (msgspec.DecodeError, TypeError, ValueError, AttributeError, OverflowError)
_user, _item, _time, _weight, _type, _context = (
    attrgetter(name) for name in ("user_id", "item_id", "event_time", "weight", "event_type", "context")
)


def decode_batch(values: Sequence[Any], *, max_bytes: int = DEFAULT_MAX_BYTES) -> DecodeResult:
    """Decode Kafka message values into an EventBatch; called by the consumers once per fetched batch.

    Same contract and same result as :func:`~streamtrain.events.decoder.decode_values` (a unit
    property test holds them equal): good events in input order, one Rejection per bad message,
    never raises.
    """
    n = len(values)
    if n == 0:
        return decode_values(values, max_bytes=max_bytes)
    try:
        events = _parse_whole(values, max_bytes)
    except _FAILED:
        events = None
    if events is not None:
        try:
            return DecodeResult(_columns(events), np.arange(n, dtype=np.int64), [])
        except _FAILED:  # a bare number at an event's place: not an object, let the reference say so
            pass
    return _per_message(values, max_bytes)


def _parse_whole(values: Sequence[Any], max_bytes: int) -> list[Any] | None:
    """The n parsed events, or None when the batch needs the per-message path."""
    n = len(values)
    if max(map(len, values)) > max_bytes or set(map(type, values)) != {bytes}:
        return None
    nonce = 10**17 + secrets.randbelow(9 * 10**17)  # 18 digits, unknown to every producer
    mark = str(nonce).encode()
    # One copy of the bytes: the brackets ride on the first and last pieces.
    pieces = list(values)
    pieces[0] = b"[" + pieces[0]
    pieces[-1] = pieces[-1] + b"," + mark + b"]"
    parsed = _BATCH.decode((b"," + mark + b",").join(pieces))
    if len(parsed) != 2 * n or parsed[1::2].count(nonce) != n:
        return None
    return parsed[::2]


def _columns(events: list[Any]) -> EventBatch:
    """Transpose parsed events into an EventBatch (ids as strings; defaults as decode_values fills them)."""
    n = len(events)
    weights = list(map(_weight, events))
    if weights.count(None) == n:
        weight = np.ones(n, dtype=np.float32)
    else:
        weight = np.array([1.0 if w is None else w for w in weights], dtype=np.float32)
    contexts = list(map(_context, events))
    context = None
    if contexts.count(None) != n:
        context = [c or {} for c in contexts]
        if not any(context):  # only empty contexts: decode_values treats {} as absent
            context = None
    return EventBatch(
        user_ids=object_array(list(map(str, map(_user, events)))),  # str(str) is the same object
        item_ids=object_array(list(map(str, map(_item, events)))),
        event_time=np.fromiter(map(_time, events), dtype=np.float64, count=n),
        weight=weight,
        event_type=object_array(list(map(_type, events))),
        context=context,
    )


def _per_message(values: Sequence[Any], max_bytes: int) -> DecodeResult:
    """Typed parse per message; the messages it refuses go, together, through decode_values."""
    n = len(values)
    typed: list[Any] = []
    typed_at: list[int] = []
    rest: list[Any] = []
    rest_at: list[int] = []
    decode = _ONE.decode
    for i, value in enumerate(values):
        # A producer that adds its own properties makes every message fail the typed parse: after
        # a run of failures with few successes, stop paying for both parses.
        if type(value) is bytes and len(value) <= max_bytes and (len(rest) < _GIVE_UP or len(typed) > len(rest)):
            try:
                typed.append(decode(value))
                typed_at.append(i)
                continue
            except msgspec.DecodeError:
                pass
        rest.append(value)
        rest_at.append(i)
    if not rest:
        return DecodeResult(_columns(typed), np.arange(n, dtype=np.int64), [])
    reference = decode_values(rest, max_bytes=max_bytes)
    rest_index = np.asarray(rest_at, dtype=np.int64)
    rejects = [Rejection(rest_at[r.index], r.reason, r.detail) for r in reference.rejects]
    if not typed:
        return DecodeResult(reference.batch, rest_index[reference.good_index], rejects)
    good = np.concatenate([np.asarray(typed_at, dtype=np.int64), rest_index[reference.good_index]])
    order = np.argsort(good, kind="stable")
    batch = EventBatch.concat([_columns(typed), reference.batch])
    return DecodeResult(_take(batch, order), good[order], rejects)


def _take(batch: EventBatch, order: np.ndarray) -> EventBatch:
    """Rows of ``batch`` in ``order`` (the two decoders' good events back in input order)."""
    context = None
    if batch.context is not None:
        context = [batch.context[i] for i in order.tolist()]
    return EventBatch(
        user_ids=batch.user_ids[order],
        item_ids=batch.item_ids[order],
        event_time=batch.event_time[order],
        weight=batch.weight[order],
        event_type=batch.event_type[order],
        context=context,
    )
