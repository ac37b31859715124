"""RowMapper: its fast path and the normalize_event path accept and produce the same events."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streamtrain.events import decode_values, encode_event
from streamtrain.replay.records import FieldMap, Rejected, RowMapper

MAPPER = RowMapper(FieldMap(), scale=1.0)

ids = st.one_of(
    st.text(max_size=260),
    st.integers(min_value=-5, max_value=2**64),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
)
times = st.one_of(
    st.none(),
    st.just(""),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-10, max_value=10**13),
    st.text(max_size=30),
    st.booleans(),
    st.floats(min_value=0, max_value=2e11).map(str),
)
optional = st.one_of(st.none(), st.just(""), st.floats(allow_nan=True), st.text(max_size=5), st.integers(-3, 3))
rows = st.fixed_dictionaries(
    {"user_id": ids, "item_id": ids},
    optional={"event_time": times, "weight": optional, "event_type": optional},
)


@settings(max_examples=400, deadline=None)
@given(rows)
def test_fast_path_agrees_with_the_specification(row: dict[str, Any]) -> None:
    assert MAPPER(row) == MAPPER._slow(row)


@settings(max_examples=200, deadline=None)
@given(rows)
def test_accepted_rows_encode_to_events_the_decoder_accepts(row: dict[str, Any]) -> None:
    result = MAPPER(row)
    if type(result) is Rejected:
        return
    user, item, event_time, extras = result
    kwargs = {} if extras is None else {"event_type": extras.event_type, "weight": extras.weight,
                                        "context": extras.context}
    decoded = decode_values([encode_event(user, item, 1.0 if event_time is None else event_time, **kwargs)])
    assert not decoded.rejects
    assert decoded.batch.user_ids[0] == user and decoded.batch.item_ids[0] == item


def test_absent_optional_fields_leave_no_extras() -> None:
    assert MAPPER({"user_id": "u", "item_id": "i", "event_time": "12.5", "weight": ""}) == ("u", "i", 12.5, None)
    user, _item, t, extras = MAPPER({"user_id": 3, "item_id": "i", "weight": "2"})  # type: ignore[misc]
    assert (user, t) == ("3", None) and extras is not None and extras.weight == 2.0
