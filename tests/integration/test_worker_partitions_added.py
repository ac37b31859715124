"""Partitions added to the topic (``kafka-topics --alter --partitions``): a resumed worker reads them
from their earliest offset, while running (found within ``kafka.metadata_max_age_s``) and after a plain
restart, and trains every event once.

Before: a worker resumed from any checkpoint died on the new partitions ("has no stored offset in this
run's state; refusing to guess"), on every restart, and even a fresh one noticed them ~300 s late.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from kafka.admin import NewPartitions
from prometheus_client import CollectorRegistry

from streamtrain.state.redis_store import redis_client, state_store
from worker_support import assert_trained_once, config_for, produce, run_worker, stop_worker, stream, wait_until

pytestmark = pytest.mark.integration

FIRST, MORE = 600, 300
EXTRA = ["checkpoint.interval_events=256", "checkpoint.record_trained_ranges=true", "kafka.metadata_max_age_s=2",
         "trainer.max_batch_latency_s=1"]


def _grow(kafka_admin, topic: str, total: int) -> None:
    kafka_admin.create_partitions({topic: NewPartitions(total_count=total)})


def _discovered(registry: CollectorRegistry, topic: str) -> float | None:
    return registry.get_sample_value("streamtrain_partitions_discovered_total", {"topic": topic})


@pytest.mark.parametrize("while_running", [True, False], ids=["while-running", "while-stopped"])
def test_added_partitions_start_at_their_earliest_offset_and_every_event_trains_once(
    while_running: bool, kafka_bootstrap: str, kafka_admin, redis_url: str, topic_factory, unique_name: str,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="streamtrain")
    topic = topic_factory(1, prefix="worker-grow")
    values = stream(FIRST + 3 * MORE, seed=41)
    produce(kafka_bootstrap, topic, values[:FIRST])
    config = config_for(unique_name, topic, tmp_path, bootstrap=kafka_bootstrap, redis_url=redis_url, extra=EXTRA)
    stop_worker(run_worker(config, fresh=True, idle_exit_s=2))
    store = state_store(config, redis_client(config))
    assert store.load().offsets == {(topic, 0): FIRST}

    registry = CollectorRegistry()
    if while_running:
        parts = run_worker(config, idle_exit_s=10, registry=registry)
        wait_until(lambda: parts.worker.source.assigned == {(topic, 0)}, 30, what="first assignment")
        started = time.monotonic()
    _grow(kafka_admin, topic, 3)
    for p in range(3):
        produce(kafka_bootstrap, topic, values[FIRST + p * MORE:FIRST + (p + 1) * MORE], partition=p)
    if while_running:
        wait_until(lambda: len(parts.worker.source.assigned) == 3, 30, what="the new partitions' assignment")
        found_s = time.monotonic() - started
        assert found_s < 15, f"new partitions assigned after {found_s:.0f} s"
    else:
        parts = run_worker(config, idle_exit_s=3, registry=registry)  # a plain restart, no --fresh
    stop_worker(parts, timeout_s=90)
    assert parts.worker.fatal is None and parts.worker.source.fatal is None and parts.worker.exit_error is None

    stored = store.load()
    assert stored.offsets == {(topic, 0): FIRST + MORE, (topic, 1): MORE, (topic, 2): MORE}
    assert stored.events == FIRST + 3 * MORE
    assert _discovered(registry, topic) == 2
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    for p in (1, 2):
        assert any(f"{topic}[{p}] is a partition this run never owned" in m for m in infos), infos
    assert_trained_once(store, topic, {0: (0, FIRST + MORE), 1: (0, MORE), 2: (0, MORE)})
    store.clear()
