"""Redis down for 30 s mid-run: the worker keeps training, checkpoints fail (counted), Kafka offsets are
never committed past persisted state, and everything is caught up once Redis is back.

Uses a private ``redis-server`` on a free port (same Debian binary as the local stack), so stopping it
does not disturb other test sessions that share the stack's Redis.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from prometheus_client import CollectorRegistry

from streamtrain.localstack import free_port, wait_for_port
from streamtrain.state.redis_store import redis_client, state_store
from worker_support import config_for, run_worker, stop_worker, stream, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = 30.0
RATE = 400  # events/s produced while the test runs
PRODUCE_S = 44.0


def _start_redis(port: int, workdir: Path) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (scripts/local-stack needs it too)")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port("127.0.0.1", port, timeout_s=10)
    return proc


def _kafka_committed(admin: KafkaAdminClient, group: str, topic: str) -> int:
    offsets = admin.list_group_offsets(group).get(group, {})
    return next((o.offset for tp, o in offsets.items() if tp.topic == topic and tp.partition == 0), -1)


def test_redis_outage_does_not_lose_or_overcommit(
    kafka_bootstrap: str, topic_factory, unique_name: str, tmp_path: Path
) -> None:
    port = free_port()
    redis_proc = _start_redis(port, tmp_path)
    topic = topic_factory(1, prefix="worker-redis")
    values = stream(int(RATE * PRODUCE_S), seed=5)
    config = config_for(unique_name, topic, tmp_path / "ckpt", bootstrap=kafka_bootstrap,
                        redis_url=f"redis://127.0.0.1:{port}/0",
                        extra=["checkpoint.interval_events=1024", "checkpoint.interval_s=2",
                               "trainer.max_batch_latency_s=0.5"])

    def produce_steadily() -> None:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=20)
        for start in range(0, len(values), RATE // 10):
            for value in values[start:start + RATE // 10]:
                producer.send(topic, value=value, partition=0)
            producer.flush()
            time.sleep(0.1)
        producer.close()

    producer_thread = threading.Thread(target=produce_steadily, daemon=True)
    producer_thread.start()
    registry = CollectorRegistry()
    parts = run_worker(config, fresh=True, idle_exit_s=5, registry=registry)
    worker = parts.worker
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        wait_until(lambda: (registry.get_sample_value("streamtrain_checkpoints_total", {"outcome": "ok"}) or 0) >= 2,
                   30, what="two checkpoints before the outage")
        redis_proc.terminate()
        redis_proc.wait(10)
        down_at = time.monotonic()
        persisted = dict(worker.checkpointer.committed_offsets)
        events_at_stop = worker.progress.events
        max_kafka = -1
        while time.monotonic() - down_at < OUTAGE_S:
            assert worker.loop_thread.is_alive(), "worker died while Redis was down"
            max_kafka = max(max_kafka, _kafka_committed(admin, config.kafka.group_id, topic))
            time.sleep(1.0)
        # Kafka never got an offset past what Redis had persisted before it went away.
        assert worker.checkpointer.committed_offsets == persisted
        assert max_kafka <= persisted[(topic, 0)]
        assert worker.progress.events > events_at_stop, "training stopped during the outage"
        assert (registry.get_sample_value("streamtrain_checkpoints_total", {"outcome": "failed"}) or 0) >= 1
        assert (registry.get_sample_value("streamtrain_redis_errors_total", {"operation": "commit"}) or 0) >= 1
        assert registry.get_sample_value("streamtrain_redis_connected") == 0

        redis_proc = _start_redis(port, tmp_path)  # back, and empty: the worker writes its state again
        producer_thread.join(60)
        stop_worker(parts, timeout_s=120)
        assert worker.fatal is None and worker.source.fatal is None
        assert registry.get_sample_value("streamtrain_redis_connected") == 1
        stored = state_store(config, redis_client(config)).load()
        assert stored is not None
        assert stored.offsets == {(topic, 0): len(values)} and stored.events == len(values)
        assert _kafka_committed(admin, config.kafka.group_id, topic) == len(values)
    finally:
        admin.close()
        redis_proc.terminate()
        redis_proc.wait(10)
        if worker.loop_thread.is_alive():
            worker.request_stop()
