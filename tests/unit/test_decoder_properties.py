"""Property tests for decode_values: totality, round trip, near-valid rejections, schema."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamtrain.events import RejectReason, decode_values, encode_event
from streamtrain.events.schema import (
    MAX_EVENT_TIME,
    MAX_EVENT_TYPE_CHARS,
    MAX_ID_CHARS,
    MAX_INT_ID,
    MAX_WEIGHT,
    MIN_WEIGHT,
    Invalid,
    normalize_event,
)

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "interaction-event.v1.schema.json"
PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def schema_validator() -> Any | None:
    """The JSON Schema file as a validator, or None where jsonschema is not installed."""
    try:
        import jsonschema
    except ImportError:
        return None
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


ids = st.one_of(st.text(min_size=1, max_size=MAX_ID_CHARS), st.integers(0, MAX_INT_ID))
times = st.one_of(
    st.floats(0.0, MAX_EVENT_TIME, allow_nan=False), st.integers(0, int(MAX_EVENT_TIME))
)
weights = st.one_of(st.none(), st.floats(MIN_WEIGHT, MAX_WEIGHT), st.integers(1, int(MAX_WEIGHT)))
event_types = st.one_of(st.none(), st.text(min_size=1, max_size=MAX_EVENT_TYPE_CHARS))
context_values = st.one_of(
    st.text(max_size=20),
    st.integers(-(2**63), 2**64 - 1),  # orjson's integer range
    st.floats(allow_nan=False, allow_infinity=False),
)
contexts = st.one_of(st.none(), st.dictionaries(st.text(max_size=10), context_values, max_size=4))


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event as a dict (optional fields left out when None)."""
    event: dict[str, Any] = {
        "schema_version": 1,
        "user_id": draw(ids),
        "item_id": draw(ids),
        "event_time": draw(times),
    }
    for name, strategy in (("event_type", event_types), ("weight", weights), ("context", contexts)):
        value = draw(strategy)
        if value is not None:
            event[name] = value
    return event


# (field, replacement strategy, expected reason); applying one to a valid event must give it.
_WRONG_ID = st.sampled_from([True, False, None, 4.5, -0.5, [], {}, [1]])
_MUTATIONS: list[tuple[str, st.SearchStrategy[Any], RejectReason]] = [
    ("schema_version", st.sampled_from(["1", True, None, [], {}]), RejectReason.WRONG_TYPE),
    (
        "schema_version",
        st.one_of(
            st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False, allow_infinity=False)
        ).filter(lambda v: v != 1),
        RejectReason.UNKNOWN_SCHEMA_VERSION,
    ),
    ("user_id", _WRONG_ID, RejectReason.WRONG_TYPE),
    ("item_id", _WRONG_ID, RejectReason.WRONG_TYPE),
    (
        "user_id",
        st.one_of(
            st.just(""),
            st.text(min_size=MAX_ID_CHARS + 1, max_size=MAX_ID_CHARS + 20),
            st.integers(-(2**63), -1),
            st.integers(MAX_INT_ID + 1, 2**64 - 1),
        ),
        RejectReason.INVALID_VALUE,
    ),
    ("event_time", st.sampled_from(["0", True, False, None, [], {}]), RejectReason.WRONG_TYPE),
    (
        "event_time",
        st.one_of(
            st.floats(max_value=-1e-9, allow_infinity=False),
            st.floats(min_value=MAX_EVENT_TIME, exclude_min=True, allow_infinity=False),
        ),
        RejectReason.INVALID_VALUE,
    ),
    ("event_type", st.sampled_from([0, 1.5, True, [], {}]), RejectReason.WRONG_TYPE),
    (
        "event_type",
        st.sampled_from(["", "x" * (MAX_EVENT_TYPE_CHARS + 1)]),
        RejectReason.INVALID_VALUE,
    ),
    ("weight", st.sampled_from(["1", True, [], {}]), RejectReason.WRONG_TYPE),
    (
        "weight",
        st.one_of(
            st.floats(max_value=MIN_WEIGHT, exclude_max=True, allow_infinity=False),
            st.floats(min_value=MAX_WEIGHT, exclude_min=True, allow_infinity=False),
        ),
        RejectReason.INVALID_VALUE,
    ),
    (
        "context",
        st.sampled_from([[], "ios", 3, True, {"k": None}, {"k": [1]}, {"k": {}}]),
        RejectReason.WRONG_TYPE,
    ),
]


@st.composite
def near_valid_events(draw: st.DrawFn) -> tuple[dict[str, Any], str, RejectReason]:
    """A valid event with one field removed or broken, and the reason that must follow."""
    event = draw(valid_events())
    if draw(st.booleans()):
        field = draw(st.sampled_from(["schema_version", "user_id", "item_id", "event_time"]))
        del event[field]
        return event, field, RejectReason.MISSING_FIELD
    field, strategy, reason = draw(st.sampled_from(_MUTATIONS))
    event[field] = draw(strategy)
    return event, field, reason


def expected_columns(events: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """What the decoder must produce for valid events, written independently of it."""
    return {
        "user_ids": [str(e["user_id"]) for e in events],
        "item_ids": [str(e["item_id"]) for e in events],
        "event_time": [float(e["event_time"]) for e in events],
        "weight": [float(np.float32(e.get("weight", 1.0))) for e in events],
        "event_type": [e.get("event_type") for e in events],
        "context": [e.get("context") or {} for e in events],
    }


# (a) totality ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["schema_version", "user_id", "item_id", "event_time", "weight", "context", "x"]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@st.composite
def mutated_valid_bytes(draw: st.DrawFn) -> bytes:
    raw = bytearray(orjson.dumps(draw(valid_events())))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(raw) - 1))
        raw[pos] = draw(st.integers(0, 255))
    return bytes(raw)


message_values = st.one_of(
    st.binary(max_size=300),
    st.none(),
    json_values.map(orjson.dumps),
    mutated_valid_bytes(),
    valid_events().map(orjson.dumps),
)


@PROPS
@given(st.lists(message_values, max_size=30), st.integers(0, 400))
def test_every_input_is_accounted_for_exactly_once(
    values: list[bytes | None], max_bytes: int
) -> None:
    result = decode_values(values, max_bytes=max_bytes)
    good = result.good_index.tolist()
    rejected = [r.index for r in result.rejects]
    assert sorted(good + rejected) == list(range(len(values)))
    assert good == sorted(good) and rejected == sorted(rejected)
    assert len(result.batch) == len(good)
    assert all(isinstance(r.reason, RejectReason) and r.detail for r in result.rejects)
    assert all(type(u) is str and u for u in result.batch.user_ids)


# (b) round trip --------------------------------------------------------------------------


@PROPS
@given(st.lists(valid_events(), min_size=1, max_size=20))
def test_valid_events_round_trip(events: list[dict[str, Any]]) -> None:
    values = [
        encode_event(
            e["user_id"],
            e["item_id"],
            e["event_time"],
            event_type=e.get("event_type"),
            weight=e.get("weight"),
            context=e.get("context"),
        )
        for e in events
    ]
    result = decode_values(values)
    assert not result.rejects
    assert result.good_index.tolist() == list(range(len(events)))
    validator = schema_validator()
    if validator is not None:
        assert all(validator.is_valid(orjson.loads(v)) for v in values)
    batch, expected = result.batch, expected_columns(events)
    assert batch.user_ids.tolist() == expected["user_ids"]
    assert batch.item_ids.tolist() == expected["item_ids"]
    assert batch.event_time.tolist() == expected["event_time"]
    assert batch.weight.tolist() == expected["weight"]
    assert batch.event_type.tolist() == expected["event_type"]
    if any(expected["context"]):
        assert batch.context == expected["context"]
    else:
        assert batch.context is None


# (c) near-valid events -------------------------------------------------------------------


@PROPS
@given(near_valid_events())
def test_near_valid_events_are_rejected_with_the_expected_reason(
    case: tuple[dict[str, Any], str, RejectReason],
) -> None:
    event, field, reason = case
    result = decode_values([orjson.dumps(event)])
    assert len(result.batch) == 0 and len(result.rejects) == 1
    assert result.rejects[0].reason is reason
    assert field in result.rejects[0].detail
    validator = schema_validator()
    if validator is not None:
        assert not validator.is_valid(orjson.loads(orjson.dumps(event)))


# decoder and JSON Schema agree -----------------------------------------------------------


@PROPS
@given(st.one_of(valid_events(), near_valid_events().map(lambda case: case[0]), json_values))
def test_decoder_and_schema_accept_the_same_documents(document: Any) -> None:
    validator = schema_validator()
    if validator is None:
        pytest.skip("jsonschema is not installed")
    raw = orjson.dumps(document)
    accepted = len(decode_values([raw], max_bytes=len(raw)).batch) == 1
    # Validate what the decoder saw (after parsing), as any JSON Schema consumer would.
    assert validator.is_valid(orjson.loads(raw)) is accepted


@PROPS
@given(st.one_of(valid_events(), near_valid_events().map(lambda case: case[0]), json_values))
def test_fast_path_matches_the_reference_validator(document: Any) -> None:
    # decode_values accepts common events inline; it must agree with normalize_event on all.
    parsed = orjson.loads(orjson.dumps(document))
    reference = normalize_event(parsed)
    result = decode_values([orjson.dumps(document)], max_bytes=10**6)
    if isinstance(reference, Invalid):
        assert [(r.reason, r.detail) for r in result.rejects] == [tuple(reference)]
        return
    batch = result.batch
    assert not result.rejects
    assert batch.user_ids.tolist() == [reference.user_id]
    assert batch.item_ids.tolist() == [reference.item_id]
    assert batch.event_time.tolist() == [reference.event_time]
    assert batch.weight.tolist() == [float(np.float32(reference.weight))]
    assert batch.event_type.tolist() == [reference.event_type]
    assert batch.context == (None if reference.context is None else [reference.context])
