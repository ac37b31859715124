"""kill -9 of one rank of a two-rank torchrun job at random points, 5 times: torchrun
(``--max-restarts``) restarts the job from the last global checkpoint each time and, at the end,
every offset of every partition is trained exactly once (the trained-ranges audit across ranks:
each global checkpoint's Redis transaction appends the ranges it covers, so work lost with a killed
rank never shows up). Kills land at random times after both ranks exist: start-up, lease wait,
resume and training alike. The job trains with the split step (the default)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from streamtrain.config import load_config
from streamtrain.distributed.lease import lease_key
from streamtrain.state.redis_store import redis_client as make_redis
from streamtrain.state.redis_store import state_store
from test_distributed_job import _audit, _free_port
from worker_support import consume_command, overrides, produce, stream, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = 5
PER_PARTITION = {0: 14000, 1: 11000, 2: 9000, 3: 6000}  # outlasts the 5 kills at ~3-4k events/s
EXTRA = ["checkpoint.record_trained_ranges=true", "checkpoint.interval_events=1500", "checkpoint.interval_s=1000",
         "trainer.max_batch_latency_s=1", "trainer.batch_size=128", "distributed.collective_timeout_s=30",
         # A killed rank 0 leaves its lease behind: short expiry, and restarts wait for it.
         "distributed.lease_ttl_s=2", "distributed.lease_wait_s=30"]


def _torchrun(sets: list[str], log: Path, *flags: str) -> subprocess.Popen:
    """torchrun with ``--max-restarts KILLS``: a dead rank restarts the whole job (same argv, so no
    ``--fresh``: a restart must resume from the global checkpoint)."""
    argv = consume_command(sets, *flags)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts", str(KILLS),
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "streamtrain", *argv[3:]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTRAIN_")}
    env["OMP_NUM_THREADS"] = "1"
    with open(log, "ab") as sink:
        return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the ranks under torchrun's agent), from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def test_kill9_one_rank_five_times_trains_every_offset_once(
    kafka_bootstrap: str, redis_url: str, topic_factory, unique_name: str, tmp_path: Path, redis_client: redis.Redis
) -> None:
    rng = random.Random(13)
    topic = topic_factory(4, prefix="distkill")
    values = stream(sum(PER_PARTITION.values()), seed=23)
    cut = 0
    for p, n in PER_PARTITION.items():
        produce(kafka_bootstrap, topic, values[cut:cut + n], partition=p)
        cut += n
    run = f"distkill-{unique_name}"
    sets = overrides(run, topic, tmp_path / "ckpt", bootstrap=kafka_bootstrap, redis_url=redis_url, extra=EXTRA)
    store = state_store(load_config(overrides=sets, environ={}), make_redis(load_config(overrides=sets, environ={})))
    log = tmp_path / "job.log"
    try:
        job = _torchrun(sets, log, "--idle-exit", "4")  # a new run name: nothing to resume at first
        killed: list[tuple[int, float]] = []
        seen: set[int] = set()
        for _ in range(KILLS):
            # Both ranks of the current generation exist (not ones already killed), then a random wait.
            wait_until(lambda: len(set(_children(job.pid)) - seen) >= 2 or job.poll() is not None, 120,
                       what="two fresh ranks")
            assert job.poll() is None, "job ended before all kills: " + log.read_text()[-3000:]
            ranks = sorted(set(_children(job.pid)) - seen)
            seen.update(ranks)
            time.sleep(rng.uniform(1.0, 8.0))
            victim = rng.choice(ranks)
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed.append((victim, time.monotonic()))
        assert job.wait(timeout=400) == 0, log.read_text()[-4000:]
        state = store.load()
        assert state is not None and state.events == sum(PER_PARTITION.values()), log.read_text()[-3000:]
        _audit(store, topic, dict(PER_PARTITION))
        assert len(killed) == KILLS
    finally:
        store.clear()
        redis_client.delete(lease_key(store.namespace))
