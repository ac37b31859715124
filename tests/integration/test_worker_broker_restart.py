"""Kafka broker restart mid-stream: the worker survives (errors counted), reconnects and trains every event
exactly once. Runs a private broker (``scripts/local-stack`` with its own stack dir and ports) so the shared
one, used by other test sessions, is never restarted."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamtrain.state.redis_store import redis_client, state_store
from worker_support import local_stack_kafka, private_broker_env, produce_in_background, config_for, run_worker, stop_worker, stream, wait_until, assert_trained_once, create_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 8000
PRODUCE_S = 16.0


def _kafka_errors(registry: CollectorRegistry) -> float:
    return sum(s.value for f in registry.collect() if f.name == "streamtrain_kafka_errors"
               for s in f.samples if s.name.endswith("_total"))


def test_worker_survives_a_broker_restart(redis_url: str, unique_name: str, tmp_path: Path) -> None:
    env, bootstrap = private_broker_env(tmp_path / "stack")
    local_stack_kafka(env, "start")
    try:
        topic = f"worker-restart-{unique_name}"
        create_topic(bootstrap, topic)
        values = stream(EVENTS, seed=13)

        producer_thread = produce_in_background(bootstrap, topic, values, PRODUCE_S)
        config = config_for(unique_name, topic, tmp_path / "ckpt", bootstrap=bootstrap, redis_url=redis_url,
                            extra=["checkpoint.interval_events=512", "checkpoint.record_trained_ranges=true",
                                   "trainer.max_batch_latency_s=0.5", "kafka.lag_interval_s=0.5"])
        registry = CollectorRegistry()
        parts = run_worker(config, fresh=True, registry=registry)
        worker = parts.worker
        wait_until(lambda: worker.progress.events > 1000, 30, what="training before the restart")
        local_stack_kafka(env, "stop")
        # The broker stays down until the worker has noticed: with end offsets asked every 0.5 s
        # (2 s timeout) an error must show up within seconds, whatever a poll or commit happens to do.
        wait_until(lambda: _kafka_errors(registry) >= 1, 30, what="the outage counted as a Kafka error")
        assert worker.loop_thread.is_alive() and worker.source.alive()
        local_stack_kafka(env, "start")
        producer_thread.join(120)
        wait_until(lambda: worker.progress.events >= EVENTS, 120, what="every event trained after the restart")
        worker.request_stop()
        stop_worker(parts, timeout_s=60)
        assert worker.fatal is None and worker.source.fatal is None

        store = state_store(config, redis_client(config))
        stored = store.load()
        assert stored is not None and stored.events == EVENTS and stored.offsets == {(topic, 0): EVENTS}
        assert_trained_once(store, topic, {0: (0, EVENTS)})
        store.clear()
    finally:
        local_stack_kafka(env, "stop")
