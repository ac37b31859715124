"""Rebalance: another member joins the group and leaves again while events stream in. On revoke the
worker checkpoints what it trained; on assign it seeks to its trained offsets; in the end every event
of both partitions is trained exactly once (audited with the committed trained ranges) and every bad
message was dead-lettered once, although the rebalance made the worker read some of them twice."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client import CollectorRegistry

from streamtrain.state.redis_store import redis_client, state_store
from worker_support import config_for, run_worker, stop_worker, stream, wait_until, assert_trained_once

pytestmark = pytest.mark.integration

PER_PARTITION = 3000
PRODUCE_S = 12.0


def test_revoke_checkpoints_and_assign_seeks_to_trained_offsets(
    kafka_bootstrap: str, redis_url: str, topic_factory, unique_name: str, tmp_path: Path
) -> None:
    topic = topic_factory(2, prefix="worker-rebalance")
    values = stream(2 * PER_PARTITION, seed=11)
    bad = set(range(7, len(values), 97))  # poison among good events: dead-lettered once, even when re-read
    for k in bad:
        values[k] = b"not json"

    def replay() -> None:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=10)
        for start in range(0, len(values), 100):
            for k, value in enumerate(values[start:start + 100]):
                producer.send(topic, value=value, partition=(start + k) % 2)
            producer.flush()
            time.sleep(PRODUCE_S * 100 / len(values))
        producer.close()

    producer_thread = threading.Thread(target=replay, daemon=True)
    producer_thread.start()
    config = config_for(unique_name, topic, tmp_path, bootstrap=kafka_bootstrap, redis_url=redis_url,
                        extra=["checkpoint.interval_events=100000000", "checkpoint.interval_s=100000",
                               "checkpoint.record_trained_ranges=true", "trainer.max_batch_latency_s=0.5"])
    registry = CollectorRegistry()
    parts = run_worker(config, fresh=True, idle_exit_s=4, registry=registry)
    worker = parts.worker
    wait_until(lambda: len(worker.source.assigned) == 2 and worker.progress.events > 500, 30,
               what="worker owns both partitions and trains")

    intruder = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=config.kafka.group_id,
                             enable_auto_commit=False, session_timeout_ms=6000)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        intruder.poll(timeout_ms=200)
    assert len(intruder.assignment()) == 1 and len(worker.source.assigned) == 1
    ok_after_revoke = registry.get_sample_value("streamtrain_checkpoints_total", {"outcome": "ok"})
    assert ok_after_revoke >= 1  # only revocations checkpoint with these intervals
    intruder.close()  # leaves the group: the worker gets both partitions back
    wait_until(lambda: len(worker.source.assigned) == 2, 30, what="partitions back")

    producer_thread.join(60)
    stop_worker(parts, timeout_s=90)
    assert worker.fatal is None and worker.source.fatal is None

    store = state_store(config, redis_client(config))
    stored = store.load()
    assert stored is not None and stored.events == 2 * PER_PARTITION - len(bad)
    assert registry.get_sample_value("streamtrain_events_dead_lettered_total", {"reason": "not_json"}) == len(bad)
    assert stored.offsets == {(topic, 0): PER_PARTITION, (topic, 1): PER_PARTITION}
    assert_trained_once(store, topic, {0: (0, PER_PARTITION), 1: (0, PER_PARTITION)})
