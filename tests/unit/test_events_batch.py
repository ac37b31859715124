"""EventBatch: construction checks, from_ids, concat, slice, empty."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from streamtrain.events import EventBatch, decode_values, encode_event, normalize_id


def decoded(*contexts: dict | None) -> EventBatch:
    values = [encode_event(k, f"i{k}", float(k), context=c) for k, c in enumerate(contexts)]
    return decode_values(values).batch


def test_empty_has_typed_zero_length_columns() -> None:
    batch = EventBatch.empty()
    assert len(batch) == 0 and batch.context is None
    assert batch.event_time.dtype == np.float64 and batch.weight.dtype == np.float32
    assert batch.user_ids.dtype == object


def test_from_ids_normalises_ids_and_fills_defaults() -> None:
    batch = EventBatch.from_ids([1, "u2", np.int64(3)], ["a", 7, "c"])
    assert batch.user_ids.tolist() == ["1", "u2", "3"]
    assert batch.item_ids.tolist() == ["a", "7", "c"]
    assert batch.event_time.tolist() == [0.0, 1.0, 2.0]
    assert batch.weight.tolist() == [1.0, 1.0, 1.0]
    assert batch.event_type.tolist() == [None, None, None]
    given = EventBatch.from_ids([1], [2], event_time=[5.5])
    assert given.event_time.tolist() == [5.5]


@pytest.mark.parametrize("bad", [True, "", 1.5, None])
def test_from_ids_rejects_non_ids(bad: object) -> None:
    with pytest.raises(ValueError):
        EventBatch.from_ids([bad], ["a"])
    with pytest.raises(ValueError):
        normalize_id(bad)


def test_constructor_checks_lengths_and_dtypes() -> None:
    good = EventBatch.from_ids([1, 2], [3, 4])
    with pytest.raises(ValueError, match="rows"):
        EventBatch.from_ids([1, 2], [3])
    with pytest.raises(ValueError, match="dtype"):
        dataclasses.replace(good, weight=good.weight.astype(np.float64))
    with pytest.raises(ValueError, match="context"):
        dataclasses.replace(good, context=[{}])
    with pytest.raises(dataclasses.FrozenInstanceError):
        good.weight = good.weight  # type: ignore[misc]


def test_concat_keeps_order_and_merges_context() -> None:
    a = EventBatch.from_ids([1, 2], [10, 20])
    b = decoded({"d": "ios"}, None)
    joined = EventBatch.concat([a, EventBatch.empty(), b])
    assert len(joined) == 4
    assert joined.user_ids.tolist() == ["1", "2", "0", "1"]
    assert joined.item_ids.tolist() == ["10", "20", "i0", "i1"]
    assert joined.context == [{}, {}, {"d": "ios"}, {}]
    assert EventBatch.concat([a, a]).context is None
    assert len(EventBatch.concat([])) == 0


def test_slice_is_a_view_with_consistent_context() -> None:
    batch = decoded(None, {"d": "ios"}, None, None)
    tail = batch.slice(2, 4)
    assert tail.item_ids.tolist() == ["i2", "i3"]
    assert tail.context is None  # no event in the window had context
    middle = batch.slice(1, 3)
    assert middle.context == [{"d": "ios"}, {}]
    assert np.shares_memory(middle.event_time, batch.event_time)
    assert len(batch.slice(3, 100)) == 1 and len(batch.slice(5, 9)) == 0
    round_trip = EventBatch.concat([batch.slice(0, 2), batch.slice(2, 4)])
    assert round_trip.item_ids.tolist() == batch.item_ids.tolist()
    assert round_trip.context == batch.context
