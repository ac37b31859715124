"""Ingest processes (``ingest.processes`` = 2) with each Kafka client: every good event of a 3-partition topic
is trained once, each partition's offset ends past its last message, poison is dead-lettered, and the
trainer's counters include what the processes counted."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamtrain.events import encode_event
from streamtrain.ingest.pooled_source import PooledSource
from streamtrain.state.redis_store import redis_client, state_store
from worker_support import config_for, produce, run_worker, stop_worker

pytestmark = pytest.mark.integration

PARTITIONS = 3
PER_PARTITION = 700


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_two_ingest_processes_train_every_partition_once(
    client: str, kafka_bootstrap: str, redis_url: str, topic_factory, unique_name: str, tmp_path: Path
) -> None:
    topic = topic_factory(PARTITIONS, prefix="worker-ingest")
    sizes = {}
    for p in range(PARTITIONS):
        values: list[bytes | None] = [
            encode_event(f"u{k % 37}-{p}", f"item-{(k * 13) % 101}", 1_700_000_000.0 + k) for k in range(PER_PARTITION)
        ]
        values.insert(100 + p, b"{poison")  # one reject per partition, mid-stream
        sizes[p] = produce(kafka_bootstrap, topic, values, partition=p)
    config = config_for(unique_name, topic, tmp_path, bootstrap=kafka_bootstrap, redis_url=redis_url,
                        extra=["ingest.processes=2", f"kafka.client={client}", "checkpoint.interval_events=512"])
    registry = CollectorRegistry()
    parts = run_worker(config, fresh=True, idle_exit_s=4, registry=registry)
    assert isinstance(parts.worker.source, PooledSource)
    stop_worker(parts)
    assert parts.worker.fatal is None and parts.worker.source.fatal is None

    stored = state_store(config, redis_client(config)).load()
    assert stored is not None
    assert stored.offsets == {(topic, p): sizes[p] for p in range(PARTITIONS)}
    assert stored.events == PARTITIONS * PER_PARTITION
    assert registry.get_sample_value("streamtrain_events_trained_total") == PARTITIONS * PER_PARTITION
    assert registry.get_sample_value("streamtrain_events_consumed_total") == sum(sizes.values())
    assert registry.get_sample_value("streamtrain_events_dead_lettered_total", {"reason": "not_json"}) == PARTITIONS
