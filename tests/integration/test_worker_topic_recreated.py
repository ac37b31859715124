"""The input topic deleted and recreated under the same name (offsets restart at 0).

Each checkpoint records the topic's id (Kafka's UUID); a resume that finds another id fails by default,
naming the fix, or with ``kafka.on_topic_recreated=restart`` trains the new log from its start, counted.
A state without an id (older checkpoints) still jumps to the end of a shorter log, but now counts what it
jumped over as skipped, once. Partition 0's new log is shorter than the stored offset, partition 1's longer.

Before: 2,000 of 6,000 new events trained, exit 0; the shorter log's reset was not counted as skipped and
counted twice as an error, the longer one resumed silently mid-log.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from prometheus_client import CollectorRegistry

from streamtrain.state.redis_store import redis_client, state_store
from streamtrain.state.files import CheckpointFiles
from streamtrain.errors import ResumeError
from streamtrain.state.restore_point import unpack
from streamtrain.worker.topic_identity import describe_topic_id
from worker_support import assert_trained_once, config_for, produce, run_worker, stop_worker, stream

pytestmark = pytest.mark.integration

OLD, SHORT, LONG = 800, 300, 1200
EXTRA = ["checkpoint.interval_events=256", "checkpoint.record_trained_ranges=true", "trainer.max_batch_latency_s=1"]


def _recreate(kafka_admin, topic: str) -> None:
    kafka_admin.delete_topics([topic])
    deadline = time.monotonic() + 60
    while True:
        try:
            kafka_admin.create_topics([NewTopic(topic, 2, 1)], wait_for_metadata=True)
            return
        except TopicAlreadyExistsError:  # deletion still in progress
            assert time.monotonic() < deadline, f"{topic} was not deleted within 60 s"
            time.sleep(0.5)


@pytest.mark.parametrize("policy", ["fail", "restart", "unknown-id"])
def test_recreated_topic_is_a_counted_decision(
    policy: str, kafka_bootstrap: str, kafka_admin, redis_url: str, topic_factory, unique_name: str, tmp_path: Path,
) -> None:
    topic = topic_factory(2, prefix="worker-recreated")
    old, new = stream(2 * OLD, seed=51), stream(SHORT + LONG, seed=52)
    for p in range(2):
        produce(kafka_bootstrap, topic, old[p * OLD:(p + 1) * OLD], partition=p)
    extra = [*EXTRA, *(["kafka.on_topic_recreated=restart"] if policy == "restart" else [])]
    config = config_for(unique_name, topic, tmp_path, bootstrap=kafka_bootstrap, redis_url=redis_url, extra=extra)
    stop_worker(run_worker(config, fresh=True, idle_exit_s=2))
    client = redis_client(config)
    store = state_store(config, client)
    before = store.load()
    old_id = describe_topic_id(kafka_admin, topic)
    assert before.offsets == {(topic, 0): OLD, (topic, 1): OLD}
    assert old_id and before.topic_ids == {topic: old_id}
    if policy == "unknown-id":
        client.hdel(store.meta_key, "topic_ids")  # as a checkpoint written before topic ids were recorded

    _recreate(kafka_admin, topic)
    produce(kafka_bootstrap, topic, new[:SHORT], partition=0)
    produce(kafka_bootstrap, topic, new[SHORT:], partition=1)
    new_id = describe_topic_id(kafka_admin, topic)
    assert new_id and new_id != old_id

    registry = CollectorRegistry()
    if policy == "fail":
        with pytest.raises(ResumeError) as caught:
            run_worker(config, idle_exit_s=3, registry=registry)
        message = str(caught.value)
        assert new_id in message and old_id in message
        assert "kafka.on_topic_recreated=restart" in message and "--fresh" in message
        assert registry.get_sample_value("streamtrain_topic_recreated_total",
                                         {"topic": topic, "decision": "fail"}) == 1
        after = store.load()  # nothing written
        assert (after.checkpoint_id, after.offsets, after.events) == (before.checkpoint_id, before.offsets, before.events)
        store.clear()
        return

    parts = run_worker(config, idle_exit_s=3, registry=registry)
    stop_worker(parts, timeout_s=90)
    assert parts.worker.fatal is None and parts.worker.source.fatal is None
    stored = store.load()
    files = CheckpointFiles(config.checkpoint.dir, config.run.name, config.checkpoint.keep)
    _, point = unpack(files.read(files.dir / stored.file_name))
    assert stored.topic_ids == point.topic_ids == {topic: new_id}
    errors = registry.get_sample_value("streamtrain_kafka_errors_total", {"operation": "offset_out_of_range"})
    if policy == "restart":
        assert registry.get_sample_value("streamtrain_topic_recreated_total",
                                         {"topic": topic, "decision": "restart"}) == 1
        assert stored.offsets == {(topic, 0): SHORT, (topic, 1): LONG}
        assert stored.events == 2 * OLD + SHORT + LONG
        assert errors == 0
        assert_trained_once(store, topic, {0: [(0, OLD), (0, SHORT)], 1: [(0, OLD), (0, LONG)]})
    else:
        # No id to compare: partition 0's stored offset is past the new log's end, so the worker jumps to
        # the end and counts the SHORT offsets it never trained; partition 1 cannot be told from a grown log.
        assert stored.offsets == {(topic, 0): SHORT, (topic, 1): LONG}
        assert stored.skipped == point.skipped == {(topic, 0): SHORT}
        assert registry.get_sample_value("streamtrain_offsets_skipped_total",
                                         {"topic": topic, "partition": "0"}) == SHORT
        assert errors == 1  # one reset, counted once
        assert_trained_once(store, topic, {0: (0, OLD), 1: (0, LONG)})
    store.clear()
