"""SIGTERM: the worker finishes its step, checkpoints, commits to Kafka and exits 0 within the bound;
a restart without ``--fresh`` then resumes exactly there; Redis without state but with files is refused."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from streamtrain.config import load_config
from streamtrain.state.redis_store import redis_client, state_store
from worker_support import overrides, produce, spawn_worker, stream, wait_until

pytestmark = pytest.mark.integration

STOP_BOUND_S = 30.0


def test_sigterm_checkpoints_commits_and_exits_zero(
    kafka_bootstrap: str, redis_url: str, topic_factory, unique_name: str, tmp_path: Path
) -> None:
    topic = topic_factory(1, prefix="worker-sigterm")
    produce(kafka_bootstrap, topic, stream(60_000, seed=9))
    # A checkpoint interval longer than the test: only the shutdown checkpoint can store state.
    sets = overrides(unique_name, topic, tmp_path / "ckpt", bootstrap=kafka_bootstrap, redis_url=redis_url,
                     extra=["checkpoint.interval_events=10000000", "checkpoint.interval_s=100000"])
    config = load_config(overrides=sets, environ={})
    store = state_store(config, redis_client(config))
    log = tmp_path / "worker.log"

    proc = spawn_worker(sets, log, "--fresh")
    wait_until(lambda: "step " in log.read_text() or proc.poll() is not None, 60, what="training to start")
    time.sleep(1.0)
    assert proc.poll() is None, log.read_text()[-2000:]
    before = store.load()  # None, unless a rebalance checkpointed (only revocations and shutdown do here)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=STOP_BOUND_S) == 0, log.read_text()[-3000:]
    assert time.monotonic() - sent < STOP_BOUND_S

    stored = store.load()
    assert stored is not None and 0 < stored.events < 60_000
    if before is not None:
        assert stored.checkpoint_id > before.checkpoint_id and stored.events > before.events
    offset = stored.offsets[(topic, 0)]
    assert offset == stored.events and offset % config.trainer.batch_size == 0  # whole batches only
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    committed = admin.list_group_offsets(config.kafka.group_id).get(config.kafka.group_id, {})
    admin.close()
    assert {tp.partition: o.offset for tp, o in committed.items() if tp.topic == topic} == {0: offset}

    # Restart without --fresh: resumes from that checkpoint and finishes the topic.
    proc = spawn_worker(sets, log, "--idle-exit", "3")
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    assert f"resumed from checkpoint {stored.checkpoint_id} " in log.read_text()
    final = store.load()
    assert final is not None and final.events == 60_000 and final.offsets == {(topic, 0): 60_000}

    # Redis loses the run's keys while checkpoint files remain: refuse to guess, exit 1, name --fresh.
    store.clear()
    proc = spawn_worker(sets, log, "--idle-exit", "3")
    assert proc.wait(timeout=60) == 1
    assert "--fresh" in log.read_text().splitlines()[-1]
