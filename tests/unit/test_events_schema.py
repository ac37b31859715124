"""schemas/interaction-event.v1.schema.json and the decoder agree on a fixed corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamtrain.events import RejectReason, decode_values
from streamtrain.events import schema as py_schema

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "interaction-event.v1.schema.json"
BASE: dict[str, Any] = {"schema_version": 1, "user_id": "u", "item_id": 1, "event_time": 1.0}
R = RejectReason

VALID_DOCS: list[dict[str, Any]] = [
    BASE,
    {**BASE, "user_id": 0, "item_id": "0"},
    {**BASE, "user_id": 2**63 - 1, "item_id": "x" * 256},
    {**BASE, "user_id": 12.0},  # JSON Schema: 12.0 is an integer
    {**BASE, "schema_version": 1.0},
    {**BASE, "event_time": 0},
    {**BASE, "event_time": 253_402_300_799},
    {**BASE, "event_type": "click", "weight": 2.5},
    {**BASE, "event_type": "e" * 64, "weight": 1e-6},
    {**BASE, "weight": 1_000_000},
    {**BASE, "event_type": None, "weight": None, "context": None},
    {**BASE, "context": {}},
    {**BASE, "context": {"device": "ios", "hour": 13, "score": -0.5, "": ""}},
    {**BASE, "unknown_field": [1, {"a": None}], "another": True},
]

INVALID_DOCS: list[tuple[Any, RejectReason]] = [
    ([BASE], R.NOT_OBJECT),
    ("event", R.NOT_OBJECT),
    (None, R.NOT_OBJECT),
    ({k: v for k, v in BASE.items() if k != "schema_version"}, R.MISSING_FIELD),
    ({k: v for k, v in BASE.items() if k != "user_id"}, R.MISSING_FIELD),
    ({k: v for k, v in BASE.items() if k != "item_id"}, R.MISSING_FIELD),
    ({k: v for k, v in BASE.items() if k != "event_time"}, R.MISSING_FIELD),
    ({**BASE, "schema_version": 2}, R.UNKNOWN_SCHEMA_VERSION),
    ({**BASE, "schema_version": 0}, R.UNKNOWN_SCHEMA_VERSION),
    ({**BASE, "schema_version": 1.5}, R.UNKNOWN_SCHEMA_VERSION),
    ({**BASE, "schema_version": "1"}, R.WRONG_TYPE),
    ({**BASE, "schema_version": True}, R.WRONG_TYPE),
    ({**BASE, "user_id": True}, R.WRONG_TYPE),
    ({**BASE, "user_id": 1.5}, R.WRONG_TYPE),
    ({**BASE, "user_id": None}, R.WRONG_TYPE),
    ({**BASE, "item_id": {"id": 1}}, R.WRONG_TYPE),
    ({**BASE, "user_id": ""}, R.INVALID_VALUE),
    ({**BASE, "user_id": "x" * 257}, R.INVALID_VALUE),
    ({**BASE, "user_id": -1}, R.INVALID_VALUE),
    ({**BASE, "item_id": 2**63}, R.INVALID_VALUE),
    ({**BASE, "event_time": "1"}, R.WRONG_TYPE),
    ({**BASE, "event_time": False}, R.WRONG_TYPE),
    ({**BASE, "event_time": -1e-9}, R.INVALID_VALUE),
    ({**BASE, "event_time": 253_402_300_799.001}, R.INVALID_VALUE),
    ({**BASE, "event_type": 1}, R.WRONG_TYPE),
    ({**BASE, "event_type": ""}, R.INVALID_VALUE),
    ({**BASE, "event_type": "e" * 65}, R.INVALID_VALUE),
    ({**BASE, "weight": "1"}, R.WRONG_TYPE),
    ({**BASE, "weight": 0}, R.INVALID_VALUE),
    ({**BASE, "weight": -2.0}, R.INVALID_VALUE),
    ({**BASE, "weight": 9.99e-7}, R.INVALID_VALUE),
    ({**BASE, "weight": 1_000_000.1}, R.INVALID_VALUE),
    ({**BASE, "context": []}, R.WRONG_TYPE),
    ({**BASE, "context": {"k": True}}, R.WRONG_TYPE),
    ({**BASE, "context": {"k": None}}, R.WRONG_TYPE),
    ({**BASE, "context": {"k": [1]}}, R.WRONG_TYPE),
]


def schema_document() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def decode_one(document: Any) -> Any:
    return decode_values([orjson.dumps(document)])


@pytest.mark.parametrize("document", VALID_DOCS)
def test_decoder_accepts_valid_corpus(document: dict[str, Any]) -> None:
    result = decode_one(document)
    assert not result.rejects and len(result.batch) == 1


@pytest.mark.parametrize(("document", "reason"), INVALID_DOCS)
def test_decoder_rejects_invalid_corpus_with_reason(document: Any, reason: RejectReason) -> None:
    result = decode_one(document)
    assert len(result.batch) == 0
    assert [r.reason for r in result.rejects] == [reason]


def test_schema_agrees_with_decoder_on_corpus() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = schema_document()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for document in VALID_DOCS:
        assert validator.is_valid(document), document
    for document, _ in INVALID_DOCS:
        assert not validator.is_valid(document), document


def test_schema_file_limits_match_the_python_mirror() -> None:
    doc = schema_document()
    props = doc["properties"]
    assert props["schema_version"]["const"] == py_schema.SCHEMA_VERSION
    assert set(doc["required"]) == {"schema_version", "user_id", "item_id", "event_time"}
    assert doc["additionalProperties"] is True
    string_id, int_id = doc["$defs"]["id"]["anyOf"]
    assert (string_id["minLength"], string_id["maxLength"]) == (1, py_schema.MAX_ID_CHARS)
    assert (int_id["minimum"], int_id["maximum"]) == (0, py_schema.MAX_INT_ID)
    assert props["event_time"]["maximum"] == py_schema.MAX_EVENT_TIME
    assert props["event_type"]["maxLength"] == py_schema.MAX_EVENT_TYPE_CHARS
    assert props["weight"]["minimum"] == py_schema.MIN_WEIGHT
    assert props["weight"]["maximum"] == py_schema.MAX_WEIGHT
