"""A torchrun job of two gloo ranks on real Kafka and Redis: four partitions dealt p mod 2, one of them
empty, no stall; rank 0's global checkpoint holds every partition's offset (the empty one at its
beginning); every offset is trained exactly once (trained-ranges audit across ranks); a second
independent consume is refused while the job runs; a restart with another world size (W = 1)
resumes every partition from the global checkpoint and trains the rest exactly once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from streamtrain.config import load_config
from streamtrain.distributed.lease import lease_key
from streamtrain.state.redis_store import redis_client as make_redis
from streamtrain.state.redis_store import state_store
from streamtrain.events.records import EARLIEST
from worker_support import consume_command, overrides, produce, spawn_worker, stream, wait_until, assert_trained_once

pytestmark = pytest.mark.integration

PER_PARTITION = {0: 700, 1: 500, 2: 300}  # partition 3 stays empty
EXTRA = ["checkpoint.record_trained_ranges=true", "checkpoint.interval_events=400", "trainer.max_batch_latency_s=1",
         "trainer.batch_size=128", "distributed.collective_timeout_s=60"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(sets: list[str], log: Path, *flags: str) -> subprocess.Popen:
    argv = consume_command(sets, *flags)  # [python, -m, streamtrain, ...]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "streamtrain", *argv[3:]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTRAIN_")}
    env["OMP_NUM_THREADS"] = "1"
    with open(log, "ab") as sink:
        return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)


def _audit(store, topic: str, want: dict[int, int]) -> None:
    assert_trained_once(store, topic, {p: (0, end) for p, end in want.items()})


def test_two_ranks_four_partitions_one_empty(
    kafka_bootstrap: str, redis_url: str, topic_factory, unique_name: str, tmp_path: Path, redis_client: redis.Redis
) -> None:
    topic = topic_factory(4, prefix="dist")
    values = stream(sum(PER_PARTITION.values()) + 400, seed=21)
    cut = 0
    for p, n in PER_PARTITION.items():
        produce(kafka_bootstrap, topic, values[cut:cut + n], partition=p)
        cut += n
    run = f"dist-{unique_name}"
    sets = overrides(run, topic, tmp_path / "ckpt", bootstrap=kafka_bootstrap, redis_url=redis_url, extra=EXTRA)
    config = load_config(overrides=sets, environ={})
    store = state_store(config, make_redis(config))
    try:
        log = tmp_path / "job.log"
        # A long idle exit keeps the job (and its lease) alive while the second worker starts, which
        # takes ~10 s of imports on a loaded 2-core machine.
        job = _torchrun(sets, log, "--fresh", "--idle-exit", "30")
        key = lease_key(store.namespace)
        wait_until(lambda: redis_client.get(key) is not None or job.poll() is not None, 90, what="the job's lease")
        second = spawn_worker([*sets, "distributed.lease_wait_s=0"], tmp_path / "second.log")
        assert second.wait(timeout=60) == 1
        assert "already being trained by" in (tmp_path / "second.log").read_text()
        assert job.wait(timeout=180) == 0, log.read_text()[-4000:]
        text = log.read_text()
        assert "rank 0 of 2 reads partitions [0, 2]" in text and "rank 1 of 2 reads partitions [1, 3]" in text, text[-4000:]

        state = store.load()
        assert state is not None and state.events == sum(PER_PARTITION.values())
        assert state.offsets == {**{(topic, p): n for p, n in PER_PARTITION.items()}, (topic, 3): EARLIEST}
        _audit(store, topic, {**PER_PARTITION, 3: 0})
        assert store.load_layout() == {"world_size": "2", "partition_map": '{"0": [0, 2], "1": [1, 3]}'}
        assert redis_client.get(key) is None  # released on the clean stop

        # Another world size: a plain process (W = 1) resumes every partition from the global checkpoint.
        produce(kafka_bootstrap, topic, values[cut:cut + 250], partition=3)
        produce(kafka_bootstrap, topic, values[cut + 250:], partition=0)
        single = spawn_worker(sets, tmp_path / "single.log", "--idle-exit", "4")
        assert single.wait(timeout=120) == 0, (tmp_path / "single.log").read_text()[-3000:]
        state = store.load()
        assert state is not None and state.events == len(values)
        assert store.load_layout()["world_size"] == "1"
        _audit(store, topic, {0: PER_PARTITION[0] + 150, 1: PER_PARTITION[1], 2: PER_PARTITION[2], 3: 250})
    finally:
        store.clear()
        redis_client.delete(lease_key(store.namespace))
