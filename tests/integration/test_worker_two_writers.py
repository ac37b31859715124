"""Two workers on one run (a second deployment by mistake), started at once and at a stagger, with kill -9
in the window: one of each pair is fenced and exits 1 without touching a committed file, the other is
killed; a restart verifies the committed file against Redis and finishes. Every offset is trained
exactly once and the final state equals one uninterrupted run's.

Each worker of a pair reads the partition in its own consumer group, so both train the same offsets
from the same checkpoint and both plan the same next checkpoint id (the dangerous case).

Before: both resumed from checkpoint n and wrote ``ckpt-<n+1>.pt``; the fenced one replaced the
committed file (``os.replace``) before Redis refused it, and a restart loaded the loser's model under
the winner's offsets.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer

from streamtrain.config import load_config
from streamtrain.state.redis_store import redis_client, state_store
from streamtrain.state.files import CheckpointFiles, file_digest
from streamtrain.state.restore_point import unpack
from worker_support import overrides, produce, spawn_worker, stream, wait_until, assert_trained_once

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 30_000  # at most: the replay stops once both pairs are done
HEAD = 1536  # produced before anything starts: 6 full batches, so the seed run cuts no partial one
RATE = 300  # events/s while the pairs run, so both workers of a pair reach a checkpoint
EXTRA = [
    "checkpoint.interval_events=768",
    "checkpoint.interval_s=1000",
    "checkpoint.keep=8",
    "checkpoint.record_trained_ranges=true",
    "trainer.max_batch_latency_s=5",
    "distributed.lease=false",  # the lease refuses the second worker at start; this test is about the fence behind it
]


def _pair(sets, tmp_path: Path, tag: str, stagger_s: float | None, store, rng) -> tuple[int, str]:
    """Start two workers (the second after ``stagger_s``, or once the first committed), SIGKILL the one left
    running after a random delay; returns exit code and log of the one that stopped by itself."""
    a_sets = [*sets, f"kafka.group_id=g-{tag}-a"]
    b_sets = [*sets, f"kafka.group_id=g-{tag}-b"]
    logs = (tmp_path / f"{tag}-a.log", tmp_path / f"{tag}-b.log")
    first = spawn_worker(a_sets, logs[0])
    if stagger_s is None:
        before = store.load().checkpoint_id
        wait_until(lambda: store.load().checkpoint_id != before or first.poll() is not None, 90,
                   what="the first worker's commit")
    else:
        time.sleep(stagger_s)
    second = spawn_worker(b_sets, logs[1])
    procs = [first, second]
    try:
        wait_until(lambda: any(p.poll() is not None for p in procs), 120, what="one of the pair fenced off")
        loser = next(i for i, p in enumerate(procs) if p.poll() is not None)
        time.sleep(float(rng.uniform(0.2, 3.0)))  # kill -9 the other one somewhere in its window
        return procs[loser].returncode, logs[loser].read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)


def test_two_writers_never_collide(
    kafka_bootstrap: str, redis_url: str, topic_factory, unique_name: str, tmp_path: Path
) -> None:
    topic = topic_factory(1, prefix="worker-writers")
    values = stream(EVENTS, seed=37)
    produce(kafka_bootstrap, topic, values[:HEAD])

    produced = [HEAD]
    done = threading.Event()

    def replay() -> None:
        # Continuous until told to stop (a pause would cut a micro-batch by time in one run and not in the
        # reference); the count produced is the stream both runs read.
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=10)
        while not done.is_set() and produced[0] < EVENTS:
            for value in values[produced[0]:produced[0] + 100]:
                producer.send(topic, value=value, partition=0)
            producer.flush()
            produced[0] += 100
            time.sleep(100 / RATE)
        producer.close()

    run = f"writers-{unique_name}"
    sets = overrides(run, topic, tmp_path / "ckpt", bootstrap=kafka_bootstrap, redis_url=redis_url, extra=EXTRA)
    config = load_config(overrides=sets, environ={})
    store = state_store(config, redis_client(config))
    files = CheckpointFiles(config.checkpoint.dir, config.run.name, config.checkpoint.keep)
    rng = np.random.default_rng(int(unique_name, 16) % 2**32)

    # A committed state to start from: both workers of a pair resume from the same checkpoint.
    first = spawn_worker(sets, tmp_path / "seed.log", "--fresh", "--idle-exit", "3")
    assert first.wait(timeout=120) == 0, (tmp_path / "seed.log").read_text()[-3000:]
    producer_thread = threading.Thread(target=replay, daemon=True)
    producer_thread.start()

    for tag, stagger in (("once", 0.0), ("stagger", None)):
        rc, text = _pair(sets, tmp_path, tag, stagger, store, rng)
        assert rc == 1 and "another worker is writing this run" in text, text[-3000:]
        # No file names another checkpoint or writer than its own, and Redis' file is intact.
        for entry in files.entries():
            _, point = unpack(files.read(entry.path))
            assert point is not None and (point.checkpoint_id, point.writer) == (entry.checkpoint_id, entry.writer)
        state = store.load()
        assert state is not None and file_digest(files.dir / state.file_name) == state.digest

    done.set()
    producer_thread.join(120)
    total = produced[0]
    log = tmp_path / "final.log"
    final = spawn_worker(sets, log, "--idle-exit", "4")
    assert final.wait(timeout=180) == 0, log.read_text()[-3000:]
    assert "resumed from checkpoint" in log.read_text()

    assert_trained_once(store, topic, {0: (0, total)})
    got = store.load()
    assert got is not None and got.events == total and got.offsets == {(topic, 0): total}

    ref_sets = overrides(f"ref-{unique_name}", topic, tmp_path / "ckpt", bootstrap=kafka_bootstrap,
                         redis_url=redis_url, extra=EXTRA)
    ref = spawn_worker(ref_sets, tmp_path / "reference.log", "--fresh", "--idle-exit", "4")
    assert ref.wait(timeout=180) == 0
    ref_config = load_config(overrides=ref_sets, environ={})
    ref_store = state_store(ref_config, redis_client(ref_config))
    want = ref_store.load()
    assert want is not None and got.step == want.step
    for key in sorted(k for k in want.shared if k.startswith("frequency.")):
        np.testing.assert_array_equal(got.shared[key], want.shared[key], err_msg=key)
    store.clear()
    ref_store.clear()
