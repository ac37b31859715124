"""Replay readers: one small file per format, field mapping, bad lines counted, format detection."""

from __future__ import annotations

import datetime as dt
import gzip
import sys
from pathlib import Path

import orjson
import pytest

from streamtrain.replay import (
    BadLineReason,
    FieldMap,
    ReadOptions,
    ReplayError,
    detect_format,
    parse_field_map,
    read_log,
)


def events_of(log):
    """Input-order (user, item, time or None) triples of an EventLog."""
    return [
        (u, i, t if log.timed else None)
        for u, i, t in zip(log.users, log.items, log.times)
    ]


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_jsonl_with_field_map_and_bad_lines(tmp_path: Path) -> None:
    lines = [
        orjson.dumps({"uid": 7, "movie": "m1", "ts": 100.5, "action": "click"}),
        b"",  # blank: skipped, not bad
        b"{not json",
        b"[1, 2]",
        orjson.dumps({"uid": 8, "ts": 101}),  # no item
        orjson.dumps({"uid": True, "movie": "m2", "ts": 102}),  # bool id
        orjson.dumps({"uid": "u9", "movie": "m3", "ts": 99, "w": 2.5}),
    ]
    path = write(tmp_path / "log.jsonl", b"\n".join(lines) + b"\n")
    fields = parse_field_map(["user_id=uid,item_id=movie", "event_time=ts,event_type=action,weight=w"])
    log, report = read_log([path], fields=fields)
    assert events_of(log) == [("7", "m1", 100.5), ("u9", "m3", 99.0)]
    assert log.extras[0] is not None and log.extras[0].event_type == "click" and log.extras[0].weight is None
    assert log.extras[1] is not None and log.extras[1].weight == 2.5
    assert report.bad == {
        BadLineReason.NOT_JSON: 1,
        BadLineReason.NOT_OBJECT: 1,
        BadLineReason.MISSING_FIELD: 1,
        BadLineReason.WRONG_TYPE: 1,
    }
    assert [b.where for b in report.examples] == [f"{path}:{n}" for n in (3, 4, 5, 6)]
    assert "item_id" in report.examples[2].detail and "movie" in report.examples[2].detail


def test_csv_mapping_iso_times_and_bad_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path / "log.csv",
        "user,item,when,rating\n"
        "a,x,2024-01-01T00:00:10+00:00,4\n"
        "b,y,2024-01-01T00:00:05,\n"  # naive ISO time = UTC; empty rating = no weight
        "c,z\n"  # too few columns
        "d,w,yesterday,1\n"  # unreadable time
        "e,v,20,0\n",  # weight 0 is out of range
    )
    fields = parse_field_map(["user_id=user,item_id=item,event_time=when,weight=rating"])
    log, report = read_log([path], fields=fields)
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp()
    assert events_of(log) == [("a", "x", base + 10), ("b", "y", base + 5)]
    assert log.extras[0] is not None and log.extras[0].weight == 4.0
    assert log.extras[1] is None
    assert report.bad == {BadLineReason.BAD_ROW: 1, BadLineReason.INVALID_VALUE: 2}
    assert [b.where for b in report.examples] == [f"{path}:{n}" for n in (4, 5, 6)]


def test_tsv_uses_tabs_and_time_unit_scales(tmp_path: Path) -> None:
    path = write(tmp_path / "log.tsv", "user_id\titem_id\tevent_time\n1\t2\t1500\n")
    log, report = read_log([path], time_scale=1e-3)
    assert events_of(log) == [("1", "2", 1.5)] and report.bad_total == 0


def test_movielens_double_colon_and_whitespace(tmp_path: Path) -> None:
    dat = write(tmp_path / "ratings.dat", "1::31::2.5::1260759144\n1::1029::3.0::1260759179\n2::10::4::x\n1::2\n")
    log, report = read_log([dat])
    assert events_of(log) == [("1", "31", 1260759144.0), ("1", "1029", 1260759179.0)]
    assert report.bad == {BadLineReason.INVALID_VALUE: 1, BadLineReason.BAD_ROW: 1}
    assert log.extras == [None, None]  # the rating is not a weight unless mapped

    udata = write(tmp_path / "u.data", "196\t242\t3\t881250949\n")
    log, _ = read_log([udata], fmt="movielens", fields=parse_field_map(["weight=rating"]))
    assert events_of(log) == [("196", "242", 881250949.0)]
    assert log.extras[0] is not None and log.extras[0].weight == 3.0


def test_gowalla_expands_each_line(tmp_path: Path) -> None:
    path = write(tmp_path / "train.txt", "0 10 11 12\n1 13\n\n2\n3 10 14\n")
    log, report = read_log([path], fmt="gowalla")
    assert [(u, i) for u, i, _ in events_of(log)] == [
        ("0", "10"), ("0", "11"), ("0", "12"), ("1", "13"), ("3", "10"), ("3", "14"),
    ]
    assert log.timed is False and report.bad_total == 0
    assert report.rows == 6


def test_not_utf8_lines_are_bad_not_fatal(tmp_path: Path) -> None:
    path = write(tmp_path / "train.txt", b"0 1 2\n\xff\xfe 3\n4 5\n")
    log, report = read_log([path], fmt="gowalla")
    assert len(log) == 3
    assert report.bad == {BadLineReason.NOT_UTF8: 1} and report.examples[0].where == f"{path}:2"

    csv_path = write(tmp_path / "x.csv", b"user_id,item_id\n1,2\n\xff,3\n4,5\n")
    log, report = read_log([csv_path])
    assert [(u, i) for u, i, _ in events_of(log)] == [("1", "2"), ("4", "5")]
    assert report.bad == {BadLineReason.NOT_UTF8: 1} and report.examples[0].where == f"{csv_path}:3"


def test_gzip_text_files_are_read(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b'{"user_id": "u", "item_id": "i", "event_time": 5}\n')
    assert detect_format(path) == "jsonl"
    log, _ = read_log([path])
    assert events_of(log) == [("u", "i", 5.0)]


def test_mixed_timed_and_untimed_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user_id,item_id,event_time\n1,2,10\n3,4,\n5,6,11\n")
    log, report = read_log([path])
    assert events_of(log) == [("1", "2", 10.0), ("5", "6", 11.0)]
    assert report.bad == {BadLineReason.MIXED_EVENT_TIME: 1}


def test_parquet_rows_and_timestamp_columns(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({
        "uid": pa.array([1, 2, 3], pa.int64()),
        "iid": pa.array(["a", "b", ""]),
        "ts": pa.array([dt.datetime(2024, 1, 1, 0, 0, s) for s in (3, 1, 2)], pa.timestamp("ms")),
        "unused": pa.array([0.0, 0.0, 0.0]),
    })
    path = tmp_path / "log.parquet"
    pq.write_table(table, path)
    log, report = read_log([path], fields=parse_field_map(["user_id=uid,item_id=iid,event_time=ts"]))
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp()
    assert events_of(log) == [("1", "a", base + 3), ("2", "b", base + 1)]
    assert report.bad == {BadLineReason.INVALID_VALUE: 1}  # empty item id
    assert report.examples[0].where == f"{path}:row 3"


def test_parquet_without_pyarrow_names_the_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "log.parquet", b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import now raises ImportError
    with pytest.raises(ReplayError, match="pip install pyarrow"):
        read_log([path])


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("a.jsonl", "", "jsonl"),
        ("a.ndjson", "", "jsonl"),
        ("a.csv", "", "csv"),
        ("a.TSV", "", "csv"),
        ("a.parquet", "", "parquet"),
        ("ratings.dat", "", "movielens"),
        ("train.txt", "\n0 1 2 3\n", "gowalla"),
        ("ratings.txt", "1::2::3::4\n", "movielens"),
        ("events.log", '{"user_id": 1}\n', "jsonl"),
        ("export.txt", "user_id,item_id\n", "csv"),
    ],
)
def test_detect_format(tmp_path: Path, name: str, content: str, expected: str) -> None:
    assert detect_format(write(tmp_path / name, content)) == expected


def test_detect_format_refuses_empty_unknown_file(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="--format"):
        detect_format(write(tmp_path / "empty.txt", "\n\n"))


def test_missing_file_is_a_replay_error(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="cannot open"):
        read_log([tmp_path / "nope.jsonl"])


def test_field_map_errors() -> None:
    with pytest.raises(ReplayError, match="not an event field"):
        parse_field_map(["user=uid"])
    with pytest.raises(ReplayError, match="event_field=source_field"):
        parse_field_map(["user_id"])
    assert parse_field_map(["user_id=a", "user_id=b"]).source("user_id") == "b"
    assert FieldMap().source("item_id") == "item_id"


def test_parquet_loads_only_mapped_columns(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["i"], "event_time": [1.0], "blob": ["x" * 10]}), path)
    from streamtrain.replay.readers import open_rows

    rows = list(open_rows(path, "parquet", ReadOptions(columns=frozenset({"user_id", "item_id", "event_time"}))))
    assert rows == [(1, {"user_id": "u", "item_id": "i", "event_time": 1.0})]
