"""Oversized events never block checkpoints: a 4 MB and a 60 MB event (the input topic's limit raised to
64 MB) are dead-lettered as bounded records, a 1.5 MB one in full, and every checkpoint goes through.

Before: the dead-letter producer refused the big letters (``MessageSizeTooLargeError``), they were re-sent
at every flush, step 1 of every checkpoint failed and Redis stayed at the last good checkpoint for good.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from prometheus_client import CollectorRegistry

from streamtrain.events import encode_event
from streamtrain.state.redis_store import redis_client, state_store
from worker_support import config_for, run_worker, stop_worker

pytestmark = pytest.mark.integration

TOPIC_LIMIT = 64 << 20
DLQ_LIMIT = 2 << 20  # kafka.dead_letter_max_bytes: the producer's limit and the dead-letter topic's


def _event(size: int, k: int) -> bytes:
    return encode_event(f"u{k}", f"i{k}", 1_700_000_000.0 + k, context={"pad": "x" * size})


def test_4mb_and_60mb_events_are_dead_lettered_bounded_and_checkpoints_go_on(
    kafka_bootstrap: str, kafka_admin, redis_url: str, unique_name: str, tmp_path: Path
) -> None:
    topic = f"worker-big-{unique_name}"
    kafka_admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": str(TOPIC_LIMIT)})],
                              wait_for_metadata=True)
    try:
        big = {300: _event(1_500_000, 1), 700: _event(4_000_000, 2), 1100: _event(60_000_000, 3)}
        values = [big.get(k) or encode_event(f"u{k % 23}", f"i{k % 31}", 1_700_000_000.0 + k) for k in range(1400)]
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=TOPIC_LIMIT,
                                 linger_ms=20)
        for value in values:
            producer.send(topic, value=value, partition=0)
        producer.flush()
        producer.close()

        config = config_for(unique_name, topic, tmp_path, bootstrap=kafka_bootstrap, redis_url=redis_url,
                            extra=[f"kafka.dead_letter_max_bytes={DLQ_LIMIT}", "checkpoint.interval_events=256",
                                   "kafka.max_poll_records=200"])
        registry = CollectorRegistry()
        parts = run_worker(config, fresh=True, idle_exit_s=4, registry=registry)
        stop_worker(parts, timeout_s=120)
        assert parts.worker.fatal is None and parts.worker.source.fatal is None

        def sample(name: str, **labels: str) -> float:
            return registry.get_sample_value(name, labels) or 0.0

        stored = state_store(config, redis_client(config)).load()
        assert stored is not None
        assert stored.offsets == {(topic, 0): len(values)}  # committed past all three
        assert stored.events == len(values) - len(big)
        assert sample("streamtrain_checkpoints_total", outcome="failed") == 0
        assert sample("streamtrain_checkpoints_total", outcome="ok") >= 4
        assert sample("streamtrain_events_dead_lettered_total", reason="oversized") == 3
        assert sample("streamtrain_dead_letters_bounded_total", reason="oversized", cause="too_large") == 2

        # The worker created the dead-letter topic with the producer's limit (above the broker's 1 MB default).
        configs = kafka_admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, config.kafka.dead_letter_topic, configs=["max.message.bytes"])]
        )
        assert configs["topic"][config.kafka.dead_letter_topic]["max.message.bytes"]["value"] == str(DLQ_LIMIT)

        consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False,
                                 auto_offset_reset="earliest", consumer_timeout_ms=5000)
        dlq = TopicPartition(config.kafka.dead_letter_topic, 0)
        consumer.assign([dlq])
        consumer.seek_to_beginning(dlq)
        letters = {}
        for record in consumer:
            headers = {k: v.decode() for k, v in record.headers}
            letters[int(headers["source_offset"])] = (headers, record.value)
            if len(letters) == len(big):
                break
        consumer.close()
        assert set(letters) == set(big)
        full_headers, full_value = letters[300]
        assert full_value == big[300] and "truncated" not in full_headers  # fits: sent whole
        for offset in (700, 1100):
            headers, value = letters[offset]
            original = big[offset]
            assert headers["truncated"] == "1" and headers["reason"] == "oversized"
            assert headers["source_topic"] == topic and headers["source_partition"] == "0"
            assert headers["original_bytes"] == str(len(original))
            assert headers["sha256"] == hashlib.sha256(original).hexdigest()
            assert "MessageSizeTooLarge" in headers["refused"]
            assert value == original[:1024]
    finally:
        kafka_admin.delete_topics([topic])
