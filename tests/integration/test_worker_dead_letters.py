"""Every kind of bad message lands in the dead-letter topic with its reason; every good event is trained."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from streamtrain.events import RejectReason, encode_event
from streamtrain.state.redis_store import redis_client, state_store
from worker_support import config_for, produce, run_worker, stop_worker

pytestmark = pytest.mark.integration

MAX_BYTES = 2048

BAD: dict[RejectReason, bytes | None] = {
    RejectReason.NOT_JSON: b"{this is not json",
    RejectReason.NOT_OBJECT: b"[1, 2, 3]",
    RejectReason.MISSING_FIELD: orjson.dumps({"schema_version": 1, "user_id": "u", "event_time": 1.0}),
    RejectReason.WRONG_TYPE: orjson.dumps({"schema_version": 1, "user_id": True, "item_id": "i", "event_time": 1.0}),
    RejectReason.INVALID_VALUE: orjson.dumps({"schema_version": 1, "user_id": "", "item_id": "i", "event_time": 1.0}),
    RejectReason.OVERSIZED: encode_event("u", "i", 1.0, context={"pad": "x" * (2 * MAX_BYTES)}),
    RejectReason.UNKNOWN_SCHEMA_VERSION: orjson.dumps({"schema_version": 9, "user_id": "u", "item_id": "i",
                                                       "event_time": 1.0}),
    RejectReason.NULL_VALUE: None,
}


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_bad_events_are_dead_lettered_and_good_ones_trained(
    client: str, kafka_bootstrap: str, redis_url: str, topic_factory, unique_name: str, tmp_path: Path
) -> None:
    assert set(BAD) == set(RejectReason), "a reject reason has no test message"
    topic = topic_factory(1, prefix="worker-dlq")
    values: list[bytes | None] = []
    expected: dict[int, RejectReason] = {}
    good = 0
    for round_ in range(3):  # bad ones between good ones, and a poison tail at the very end
        for k in range(200):
            values.append(encode_event(f"u{k % 17}", f"i{(k * 7 + round_) % 41}", 1_700_000_000.0 + len(values)))
            good += 1
        for reason, value in BAD.items():
            expected[len(values)] = reason
            values.append(value)
    produce(kafka_bootstrap, topic, values)

    config = config_for(unique_name, topic, tmp_path, bootstrap=kafka_bootstrap, redis_url=redis_url,
                        extra=[f"kafka.client={client}", f"kafka.max_message_bytes={MAX_BYTES}", "checkpoint.interval_events=256"])
    registry = CollectorRegistry()
    parts = run_worker(config, fresh=True, idle_exit_s=4, registry=registry)
    stop_worker(parts)
    assert parts.worker.fatal is None and parts.worker.source.fatal is None

    # Good events trained, poison tail not stalling: the stored offset is past the last message.
    stored = state_store(config, redis_client(config)).load()
    assert stored is not None
    assert stored.events == good
    assert stored.offsets == {(topic, 0): len(values)}
    assert registry.get_sample_value("streamtrain_events_trained_total") == good
    for reason in RejectReason:
        assert registry.get_sample_value("streamtrain_events_dead_lettered_total", {"reason": str(reason)}) == 3

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    dlq = TopicPartition(config.kafka.dead_letter_topic, 0)
    consumer.assign([dlq])
    consumer.seek_to_beginning(dlq)
    letters = {}
    for record in consumer:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["source_topic"] == topic and headers["source_partition"] == "0"
        letters[int(headers["source_offset"])] = (headers["reason"], headers["detail"], record.value)
        if len(letters) == len(expected):
            break
    consumer.close()
    assert set(letters) == set(expected)
    for offset, reason in expected.items():
        got_reason, detail, value = letters[offset]
        assert got_reason == str(reason) and detail
        assert value == values[offset]  # the original bytes (None for a tombstone)
