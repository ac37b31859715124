"""Replay into a real broker and read it all back: count, keys, content, per-user order."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamtrain.cli import main
from streamtrain.events import decode_values

pytestmark = pytest.mark.integration


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=2000,
    )
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000, max_records=5000).values():
                records.extend(batch)
        # nothing beyond what was replayed
        extra = consumer.poll(timeout_ms=1500)
        records.extend(r for batch in extra.values() for r in batch)
    finally:
        consumer.close()
    return records


def test_gowalla_replay_round_trips_through_kafka(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "train.txt"
    lines = {u: [str(1000 + (u * 37 + k * 11) % 500) for k in range(3 + u % 9)] for u in range(60)}
    path.write_text("".join(f"{u} {' '.join(items)}\n" for u, items in lines.items()) + "7\n")
    expected = sorted((str(u), item) for u, items in lines.items() for item in items)
    topic = topic_factory(partitions=3, prefix="replay")
    from kafka.codec import has_lz4

    compression = "lz4" if has_lz4() else "none"  # lz4 is optional; the path under test is the same

    code = main([
        "replay", str(path), "--format", "gowalla", "--topic", topic, "--bootstrap-servers", kafka_bootstrap,
        "--seed", "11", "--time-origin", "1600000000", "--compression", compression, "--linger-ms", "5",
        "--summary-format", "json", "--progress", "none",
    ])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary
    assert summary["produced"] == len(expected) and summary["delivery_failures"] == 0

    records = consume_all(kafka_bootstrap, topic, len(expected))
    assert len(records) == len(expected)
    decoded = decode_values([r.value for r in records])
    assert not decoded.rejects
    assert [r.key.decode() for r in records] == list(decoded.batch.user_ids)  # key = user id
    assert sorted(zip(decoded.batch.user_ids, decoded.batch.item_ids)) == expected
    # synthesised times are origin + position: every position exactly once
    times = sorted(decoded.batch.event_time.tolist())
    assert times == [1_600_000_000.0 + p for p in range(len(expected))]
    # one partition per user, and within it the user's events in replay order
    partitions: dict[str, set[int]] = defaultdict(set)
    per_user: dict[str, list[float]] = defaultdict(list)
    for record, user, t in zip(records, decoded.batch.user_ids, decoded.batch.event_time):
        partitions[user].add(record.partition)
        per_user[user].append(float(t))
    assert all(len(p) == 1 for p in partitions.values())
    assert all(ts == sorted(ts) for ts in per_user.values())
    assert len({p for ps in partitions.values() for p in ps}) > 1  # keys spread over partitions


def test_timed_gzip_jsonl_replay_arrives_complete_keyed_and_in_order_per_user(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    import gzip

    path = tmp_path / "events.jsonl.gz"
    rows = [{"uid": f"user-{k % 97}", "item": f"i{(k * 31) % 1000}", "ts": 1_650_000_000 + (k * 7919) % 20_000,
             **({"kind": "buy", "w": 2.5} if k % 50 == 0 else {})} for k in range(20_000)]
    with gzip.open(path, "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    topic = topic_factory(partitions=4, prefix="replay-jsonl")
    code = main([
        "replay", str(path), "--map", "user_id=uid,item_id=item,event_time=ts,event_type=kind,weight=w",
        "--topic", topic, "--bootstrap-servers", kafka_bootstrap, "--summary-format", "json", "--progress", "none",
    ])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert code == 0 and summary["produced"] == len(rows) and summary["delivery_failures"] == 0
    assert "WARNING" not in captured.err and "blocking the event loop" not in captured.err

    records = consume_all(kafka_bootstrap, topic, len(rows))
    assert len(records) == len(rows)
    decoded = decode_values([r.value for r in records])
    assert not decoded.rejects
    assert [r.key.decode() for r in records] == list(decoded.batch.user_ids)
    assert sorted(zip(decoded.batch.user_ids, decoded.batch.item_ids, decoded.batch.event_time.tolist())) == sorted(
        (r["uid"], r["item"], float(r["ts"])) for r in rows)
    assert int((decoded.batch.event_type == "buy").sum()) == sum(1 for r in rows if "kind" in r)
    per_user: dict[str, list[float]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for record, user, t in zip(records, decoded.batch.user_ids, decoded.batch.event_time):
        per_user[user].append(float(t))
        partitions[user].add(record.partition)
    assert all(ts == sorted(ts) for ts in per_user.values())  # replayed in time order, kept per key
    assert all(len(p) == 1 for p in partitions.values())


def test_a_delivery_the_broker_refuses_is_an_error_naming_the_positions(
    tmp_path: Path, kafka_bootstrap: str, kafka_admin: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import uuid

    from kafka.admin import NewTopic

    # The topic takes messages up to 400 bytes; events with long ids are larger and the broker
    # refuses them (MESSAGE_TOO_LARGE). One message per batch (--batch-bytes 1) makes it exactly those.
    topic = f"replay-small-{uuid.uuid4().hex[:10]}"
    kafka_admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "400"})],
                              wait_for_metadata=True)
    big = {13, 14, 40}
    path = tmp_path / "ratings.dat"
    path.write_text("".join(
        f"{'u' * 200 if k in big else 'u'}{k % 5}::{'i' * 200 if k in big else 'i'}{k}::1::{1_600_000_000 + k}\n"
        for k in range(60)))
    try:
        code = main(["replay", str(path), "--topic", topic, "--bootstrap-servers", kafka_bootstrap,
                     "--batch-bytes", "1", "--linger-ms", "0", "--summary-format", "json", "--progress", "none"])
        captured = capsys.readouterr()
        summary = json.loads(captured.out)
        assert code == 1
        assert summary["delivery_failures"] == 3 and summary["produced"] == 57
        assert summary["failed_positions"] == [13, 40]
        assert "MSG_SIZE_TOO_LARGE" in summary["first_failure"]
        assert "3 event(s) failed delivery at stream positions 13..40" in captured.err
        records = consume_all(kafka_bootstrap, topic, 57)
        assert len(records) == 57 and all(len(r.value) < 400 for r in records)
    finally:
        kafka_admin.delete_topics([topic])
