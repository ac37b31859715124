"""The decoders' conformance tests: one test per reason code, totality on hostile input, columns, encode_event.

Every test runs against both decoders, ``decode_values`` (per message) and ``decode_batch``
(one typed parse per batch): the fixture below binds this module's ``decode_values`` name to
each in turn, so the assertions are written once and hold for both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from streamtrain.events import (
    DEFAULT_MAX_BYTES,
    EventBatch,
    InvalidEventError,
    RejectReason,
    decode_batch,
    decode_values,
    encode_event,
)

VALID: dict[str, Any] = {
    "schema_version": 1,
    "user_id": "u1",
    "item_id": 42,
    "event_time": 1_700_000_000.25,
}


@pytest.fixture(autouse=True, params=["decode_values", "decode_batch"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the module's tests with ``decode_values`` meaning each decoder in turn."""
    chosen = {"decode_values": decode_values, "decode_batch": decode_batch}[request.param]
    monkeypatch.setitem(globals(), "decode_values", chosen)


def doc(**changes: Any) -> bytes:
    """VALID with fields replaced; a value of ... removes the field."""
    out = {**VALID, **changes}
    return orjson.dumps({k: v for k, v in out.items() if v is not ...})


def only_reject(value: Any, **kwargs: Any):
    result = decode_values([value], **kwargs)
    assert len(result.batch) == 0 and result.good_index.size == 0
    assert len(result.rejects) == 1 and result.rejects[0].index == 0
    return result.rejects[0]


def test_reason_values_are_the_documented_codes() -> None:
    assert {r.value for r in RejectReason} == {
        "not_json",
        "not_object",
        "missing_field",
        "wrong_type",
        "invalid_value",
        "oversized",
        "unknown_schema_version",
        "null_value",
    }
    assert str(RejectReason.NOT_JSON) == "not_json"  # usable directly as a metric label


@pytest.mark.parametrize(
    "value",
    [b"", b"{", b"nope", b"\xff\xfe\x00", b'{"a":NaN}', b"\xef\xbb\xbf{}", b'"\\ud800"', b"{} {}"],
)
def test_not_json(value: bytes) -> None:
    assert only_reject(value).reason is RejectReason.NOT_JSON


@pytest.mark.parametrize("value", ["a str", 17, 1.5, object(), [b"{}"]])
def test_non_bytes_input_is_not_json(value: Any) -> None:
    rejection = only_reject(value)
    assert rejection.reason is RejectReason.NOT_JSON
    assert type(value).__name__ in rejection.detail


def test_bytes_like_values_are_accepted() -> None:
    class Payload(bytes):
        pass

    raw = doc()
    released = memoryview(raw)
    released.release()
    result = decode_values([bytearray(raw), memoryview(raw), Payload(raw), released])
    assert list(result.good_index) == [0, 1, 2]
    assert [(r.index, r.reason) for r in result.rejects] == [(3, RejectReason.NOT_JSON)]


@pytest.mark.parametrize("value", [b"[]", b"[1,2]", b'"x"', b"42", b"null", b"true", b"1.5"])
def test_not_object(value: bytes) -> None:
    assert only_reject(value).reason is RejectReason.NOT_OBJECT


@pytest.mark.parametrize("field", ["schema_version", "user_id", "item_id", "event_time"])
def test_missing_field(field: str) -> None:
    rejection = only_reject(doc(**{field: ...}))
    assert rejection.reason is RejectReason.MISSING_FIELD
    assert field in rejection.detail


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("schema_version", "1"),
        ("schema_version", True),
        ("schema_version", None),
        ("user_id", True),  # bool is not an integer id
        ("user_id", False),
        ("user_id", 4.5),
        ("user_id", None),
        ("user_id", ["u1"]),
        ("item_id", {"id": 1}),
        ("event_time", "1700000000"),
        ("event_time", True),
        ("event_time", None),
        ("event_type", 3),
        ("event_type", ["click"]),
        ("weight", "2"),
        ("weight", True),
        ("context", ["device", "ios"]),
        ("context", "ios"),
        ("context", {"device": True}),
        ("context", {"device": None}),
        ("context", {"tags": ["a", "b"]}),
    ],
)
def test_wrong_type(field: str, bad: Any) -> None:
    rejection = only_reject(doc(**{field: bad}))
    assert rejection.reason is RejectReason.WRONG_TYPE
    assert field in rejection.detail


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("user_id", ""),
        ("user_id", "x" * 257),
        ("user_id", -1),
        ("item_id", 2**63),
        ("item_id", 1e19),  # integral float beyond int64
        ("event_time", -0.5),
        ("event_time", 1_700_000_000_000),  # milliseconds
        ("event_type", ""),
        ("event_type", "t" * 65),
        ("weight", -1.0),
        ("weight", 0),
        ("weight", 1e7),
    ],
)
def test_invalid_value(field: str, bad: Any) -> None:
    rejection = only_reject(doc(**{field: bad}))
    assert rejection.reason is RejectReason.INVALID_VALUE
    assert field in rejection.detail


def test_milliseconds_get_a_hint() -> None:
    assert "milliseconds" in only_reject(doc(event_time=1_700_000_000_000)).detail


@pytest.mark.parametrize("version", [b"0", b"2", b"-1", b"1.5", b"1e30", b"18446744073709551615"])
def test_unknown_schema_version(version: bytes) -> None:
    rejection = only_reject(doc(schema_version=None).replace(b"null", version))
    assert rejection.reason is RejectReason.UNKNOWN_SCHEMA_VERSION
    assert "schema_version" in rejection.detail


def test_oversized_is_checked_before_parsing() -> None:
    big = doc(event_type=None, padding="x" * 200)
    assert only_reject(big, max_bytes=len(big) - 1).reason is RejectReason.OVERSIZED
    assert len(decode_values([big], max_bytes=len(big)).batch) == 1
    # Not parsed: invalid JSON that is too big is oversized, not not_json.
    assert only_reject(b"{" * (DEFAULT_MAX_BYTES + 1)).reason is RejectReason.OVERSIZED


def test_null_value() -> None:
    assert only_reject(None).reason is RejectReason.NULL_VALUE


def test_reasons_follow_field_order() -> None:
    # Version is checked first: a v2 event with a v1-invalid id is an unknown version.
    assert only_reject(doc(schema_version=2, user_id=True)).reason is (
        RejectReason.UNKNOWN_SCHEMA_VERSION
    )
    assert only_reject(doc(user_id=None, event_time=...)).reason is RejectReason.WRONG_TYPE


@pytest.mark.parametrize(
    "value",
    [
        b"[" * 100_000 + b"]" * 100_000,
        doc(context={"deep": None}).replace(b"null", b"[" * 50_000 + b"]" * 50_000),
        doc(user_id=None).replace(b"null", b"1" * 5000),  # huge integer literal
        doc(event_time=None).replace(b"null", b"1e400"),
        doc(user_id=None).replace(b"null", b"123456789012345678901234567890"),
        b'{"schema_version":1,' * 10_000,
        doc(user_id="\u0000\ud7ff\U0010ffff"),
    ],
)
def test_hostile_inputs_never_raise(value: bytes) -> None:
    result = decode_values([value], max_bytes=10**7)
    assert len(result.batch) + len(result.rejects) == 1


def test_huge_integer_id_is_not_silently_rounded() -> None:
    # orjson turns integers beyond 64 bits into floats; the id must not become another id.
    rejection = only_reject(doc(user_id=None).replace(b"null", b"123456789012345678901234567890"))
    assert rejection.reason is RejectReason.INVALID_VALUE


def test_mixed_chunk_columns_and_indices() -> None:
    values = [
        doc(),
        None,
        doc(user_id=7, item_id="i9", weight=2.5, event_type="purchase"),
        b"garbage",
        doc(context={"device": "ios", "hour": 13}),
        doc(schema_version=1.0, user_id=8.0, weight=None, event_type=None, context=None),
    ]
    result = decode_values(values)
    assert list(result.good_index) == [0, 2, 4, 5]
    assert result.good_index.dtype == np.int64
    assert [(r.index, r.reason) for r in result.rejects] == [
        (1, RejectReason.NULL_VALUE),
        (3, RejectReason.NOT_JSON),
    ]
    batch = result.batch
    assert list(batch.user_ids) == ["u1", "7", "u1", "8"]
    assert list(batch.item_ids) == ["42", "i9", "42", "42"]
    assert batch.event_time.dtype == np.float64 and batch.event_time[0] == 1_700_000_000.25
    assert batch.weight.dtype == np.float32 and list(batch.weight) == [1.0, 2.5, 1.0, 1.0]
    assert list(batch.event_type) == [None, "purchase", None, None]
    assert batch.context == [{}, {}, {"device": "ios", "hour": 13}, {}]
    assert result.reason_counts() == {RejectReason.NULL_VALUE: 1, RejectReason.NOT_JSON: 1}


def test_integer_and_string_ids_are_the_same_id() -> None:
    result = decode_values([doc(user_id=42, item_id="42"), doc(user_id="42", item_id=42)])
    assert list(result.batch.user_ids) == ["42", "42"]
    assert list(result.batch.item_ids) == ["42", "42"]


def test_empty_context_counts_as_none_and_unknown_fields_are_ignored() -> None:
    result = decode_values([doc(context={}, producer="svc-a", extra={"nested": [1]})])
    assert len(result.batch) == 1 and result.batch.context is None


def test_all_rejected_and_empty_input_give_an_empty_batch() -> None:
    for values in ([], [None, b"x"]):
        result = decode_values(values)
        assert len(result.batch) == 0 and result.good_index.shape == (0,)
        assert result.batch.weight.dtype == np.float32
    assert isinstance(decode_values([]).batch, EventBatch)


def test_a_malformed_message_cannot_merge_with_its_neighbours() -> None:
    # These three parse as a 3-element array when joined with commas ({"a":[{},{}]} swallows
    # the boundary, the third splits in two); each one alone is not an event.
    values = [b'{"a":[{}', b"{}]}", doc() + b"," + doc()]
    result = decode_values(values)
    assert len(result.batch) == 0
    assert [r.reason for r in result.rejects] == [RejectReason.NOT_JSON] * 3


def test_encode_event_round_trip_and_omits_none() -> None:
    raw = encode_event(np.int64(3), "i", np.float64(12.5), weight=np.float32(2.0), context={"k": 1})
    assert orjson.loads(raw) == {
        "schema_version": 1,
        "user_id": 3,
        "item_id": "i",
        "event_time": 12.5,
        "weight": 2.0,
        "context": {"k": 1},
    }
    batch = decode_values([raw]).batch
    assert list(batch.user_ids) == ["3"] and batch.event_time[0] == 12.5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"user_id": "", "item_id": 1, "event_time": 0.0},
        {"user_id": True, "item_id": 1, "event_time": 0.0},
        {"user_id": 1, "item_id": 1, "event_time": -1.0},
        {"user_id": 1, "item_id": 1, "event_time": 0.0, "weight": 0.0},
        {"user_id": 1, "item_id": 1, "event_time": 0.0, "context": {"k": [1]}},
    ],
)
def test_encode_event_refuses_what_the_decoder_would_reject(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidEventError):
        encode_event(**kwargs)
