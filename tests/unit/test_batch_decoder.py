"""decode_batch == decode_values on any mix of messages; the batch parse cannot mix messages up.

The reason-by-reason conformance tests run against both decoders in test_decoder.py; these add
batches where good and bad messages share one batch, so the whole-batch parse fails and the
per-message path has to put every event and rejection back in its place.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamtrain.events import DecodeResult, RejectReason, decode_batch, decode_values
from tests.unit.test_decoder_properties import PROPS, message_values, valid_events

GOOD = {"schema_version": 1, "user_id": "u1", "item_id": 42, "event_time": 1_700_000_000.25}


def assert_same(batch: DecodeResult, reference: DecodeResult) -> None:
    assert batch.good_index.dtype == np.int64
    assert batch.good_index.tolist() == reference.good_index.tolist()
    assert [(r.index, r.reason, r.detail) for r in batch.rejects] == [
        (r.index, r.reason, r.detail) for r in reference.rejects
    ]
    x, y = batch.batch, reference.batch
    assert list(x.user_ids) == list(y.user_ids)
    assert list(x.item_ids) == list(y.item_ids)
    assert x.event_time.dtype == y.event_time.dtype and x.event_time.tobytes() == y.event_time.tobytes()
    assert x.weight.dtype == y.weight.dtype and x.weight.tobytes() == y.weight.tobytes()
    assert list(x.event_type) == list(y.event_type)
    assert x.context == y.context


@PROPS
@given(st.lists(message_values, max_size=40), st.integers(0, 400))
def test_batch_decode_equals_per_message_decode(values: list[bytes | None], max_bytes: int) -> None:
    assert_same(decode_batch(values, max_bytes=max_bytes), decode_values(values, max_bytes=max_bytes))


@PROPS
@given(st.lists(valid_events(), min_size=1, max_size=40), st.lists(message_values, max_size=3), st.data())
def test_mostly_good_batches_equal_per_message_decode(
    events: list[dict[str, Any]], bad: list[bytes | None], data: st.DataObject
) -> None:
    values: list[bytes | None] = [orjson.dumps(e) for e in events]
    for value in bad:
        values.insert(data.draw(st.integers(0, len(values))), value)
    assert_same(decode_batch(values), decode_values(values))


def test_well_formed_batch_takes_the_typed_parse() -> None:
    values = [orjson.dumps({**GOOD, "user_id": i, "weight": 2.0 if i % 3 == 0 else None}) for i in range(50)]
    values.append(orjson.dumps({**GOOD, "context": {"device": "ios", "hour": 13}, "event_type": "click"}))
    result = decode_batch(values)
    assert_same(result, decode_values(values))
    assert len(result.batch) == 51 and result.batch.context[-1] == {"device": "ios", "hour": 13}


def test_messages_that_join_into_valid_events_are_still_rejected() -> None:
    # Joined with commas these make three valid-looking elements: the first swallows the second
    # (its unknown property's array spans the boundary) and the third splits in two.
    head = orjson.dumps(GOOD)[:-1]
    values = [head + b',"x":[{}', b"{}]}", orjson.dumps(GOOD) + b"," + orjson.dumps(GOOD)]
    result = decode_batch(values)
    assert len(result.batch) == 0
    assert [r.reason for r in result.rejects] == [RejectReason.NOT_JSON] * 3


@pytest.mark.parametrize(
    "odd",
    [
        {"schema_version": 1.0},  # accepted by the reference as the integer 1
        {"user_id": 7.0},  # integral float id
        {"producer": "svc-a"},  # unknown property: ignored
        {"context": {"big": 2**64 - 1}},  # beyond int64, still an orjson integer
        {"context": {}},
    ],
)
def test_forms_the_typed_parse_refuses_are_decoded_as_the_reference_does(odd: dict[str, Any]) -> None:
    values = [orjson.dumps(GOOD), orjson.dumps({**GOOD, **odd}), None, orjson.dumps(GOOD)]
    result = decode_batch(values)
    assert_same(result, decode_values(values))
    assert result.good_index.tolist() == [0, 1, 3]
