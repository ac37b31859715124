"""Retention overtook the stored offset while the worker was down (records deleted with the admin API):
the restarted worker resumes at the log start at once, logs and counts the skipped offsets per
partition, records them in the checkpoint (Redis and file), and trains everything after them.

Before: ``OffsetOutOfRangeError`` was retried with backoff forever, nothing was trained, and
``--idle-exit`` even exited 0 after "0 events".
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from kafka import TopicPartition
from prometheus_client import CollectorRegistry

from streamtrain.state.redis_store import redis_client, state_store
from streamtrain.state.files import CheckpointFiles
from streamtrain.state.restore_point import unpack
from worker_support import config_for, produce, run_worker, stop_worker, stream

pytestmark = pytest.mark.integration

FIRST, SECOND, DELETE_BEFORE = 2000, 2000, 2600


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_records_deleted_past_the_stored_offset_are_skipped_at_once_and_counted(
    client: str, kafka_bootstrap: str, kafka_admin, redis_url: str, topic_factory, unique_name: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="streamtrain")
    topic = topic_factory(1, prefix="worker-retention")
    values = stream(FIRST + SECOND, seed=23)
    produce(kafka_bootstrap, topic, values[:FIRST])
    config = config_for(unique_name, topic, tmp_path, bootstrap=kafka_bootstrap, redis_url=redis_url,
                        extra=[f"kafka.client={client}", "checkpoint.interval_events=512", "checkpoint.record_trained_ranges=true"])
    stop_worker(run_worker(config, fresh=True, idle_exit_s=3))
    store = state_store(config, redis_client(config))
    assert store.load().offsets == {(topic, 0): FIRST}

    # While the worker is down: more events arrive, then retention takes everything below 2600.
    produce(kafka_bootstrap, topic, values[FIRST:])
    kafka_admin.delete_records({TopicPartition(topic, 0): DELETE_BEFORE}, timeout_ms=10_000)

    registry = CollectorRegistry()
    started = time.monotonic()
    parts = run_worker(config, idle_exit_s=3, registry=registry)
    stop_worker(parts, timeout_s=60)
    elapsed = time.monotonic() - started
    assert parts.worker.fatal is None and parts.worker.exit_error is None and parts.worker.source.fatal is None
    assert elapsed < 30, f"took {elapsed:.0f} s: the out-of-range offset was not resolved at once"

    lost = DELETE_BEFORE - FIRST
    stored = store.load()
    assert stored is not None
    assert stored.offsets == {(topic, 0): FIRST + SECOND}
    assert stored.events == FIRST + SECOND - lost
    assert stored.skipped == {(topic, 0): lost}
    assert registry.get_sample_value("streamtrain_offsets_skipped_total", {"topic": topic, "partition": "0"}) == lost
    assert registry.get_sample_value("streamtrain_kafka_errors_total", {"operation": "offset_out_of_range"}) >= 1

    # The committed file records it too.
    files = CheckpointFiles(config.checkpoint.dir, config.run.name, config.checkpoint.keep)
    _, point = unpack(files.read(files.dir / stored.file_name))
    assert point is not None and point.skipped == {(topic, 0): lost} and point.offsets == stored.offsets

    # Loudly: one ERROR line naming the partition and the count.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"{topic}[0]" in m and f"{lost} offsets" in m for m in errors), errors

    # What was trained: [0, FIRST) then [DELETE_BEFORE, end), each once.
    expected = [(0, FIRST), (DELETE_BEFORE, FIRST + SECOND)]
    spans: list[tuple[int, int]] = []
    for _t, _p, first, nxt, _events in store.trained_ranges():
        if spans and spans[-1][1] == first:
            spans[-1] = (spans[-1][0], nxt)
        else:
            spans.append((first, nxt))
    assert spans == expected
    store.clear()
