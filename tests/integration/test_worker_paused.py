"""A paused worker (SIGSTOP past the consumer session timeout and the lease TTL, as a VM freeze, a GC stall or
a debugger does), then SIGCONT: alone, it takes its expired lease back (logged) and trains on; when another job
took the run meanwhile, checkpointed or not, it writes nothing and exits non-zero with one line, and the other
job finishes the run. Every event is trained exactly once (the committed ranges are audited).

Before: a continued worker whose lease was taken logged "finishing the current step, then checkpointing",
committed a checkpoint and exited 0; the rightful holder was then fenced at its next checkpoint and exited 1.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from streamtrain.config import load_config
from streamtrain.distributed.lease import lease_key
from streamtrain.state.redis_store import redis_client, state_store
from worker_support import assert_trained_once, overrides, produce, spawn_worker, stream, wait_until

pytestmark = pytest.mark.integration

CHUNK = 1000
PAUSE_S = 9.0  # > kafka.session_timeout_s (6) and distributed.lease_ttl_s (2) of worker_support.overrides
LOST_LINE = "stopping without writing anything"
EXTRA = ["checkpoint.interval_events=256", "checkpoint.interval_s=2", "checkpoint.record_trained_ranges=true",
         "trainer.max_batch_latency_s=1"]


def _committed_events(store) -> int:
    state = store.load()
    return 0 if state is None else state.events


@pytest.mark.parametrize("other", [None, "checkpointed", "not-checkpointed"], ids=["alone", "other-checkpointed",
                                                                              "other-not-checkpointed"])
def test_paused_worker_continued_after_its_lease_expired(
    other: str | None, kafka_bootstrap: str, redis_url: str, topic_factory, unique_name: str, tmp_path: Path,
) -> None:
    topic = topic_factory(1, prefix="worker-paused")
    values = stream(2 * CHUNK, seed=61)
    produce(kafka_bootstrap, topic, values[:CHUNK])
    sets = overrides(unique_name, topic, tmp_path / "ckpt", bootstrap=kafka_bootstrap, redis_url=redis_url,
                     extra=EXTRA)
    config = load_config(overrides=sets, environ={})
    store = state_store(config, redis_client(config))
    key = lease_key(store.namespace)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = spawn_worker(sets, log_a, "--fresh", "--idle-exit", "120")
    b = None
    try:
        wait_until(lambda: _committed_events(store) == CHUNK or a.poll() is not None, 90, what="A's checkpoint")
        assert a.poll() is None, log_a.read_text()[-3000:]
        a.send_signal(signal.SIGSTOP)
        produce(kafka_bootstrap, topic, values[CHUNK:])
        if other is None:
            time.sleep(PAUSE_S)
        else:
            # B takes the expired lease and resumes from A's last checkpoint; it commits as it goes, or only
            # at its final checkpoint.
            b_extra = [] if other == "checkpointed" else ["checkpoint.interval_events=1000000",
                                                          "checkpoint.interval_s=1000", "trainer.log_every_steps=1"]
            b = spawn_worker([*sets, *b_extra], log_b, "--idle-exit", "10")
            if other == "checkpointed":
                wait_until(lambda: _committed_events(store) == 2 * CHUNK, 90, what="B's checkpoint")
            else:
                wait_until(lambda: log_b.exists() and "partitions assigned" in log_b.read_text(), 90,
                           what="B's assignment")
                time.sleep(4.0)  # B trains the 1000 events (4 steps) without committing them
                assert _committed_events(store) == CHUNK
            assert f":{b.pid}:".encode() in (store._client.get(key) or b"")  # noqa: SLF001 - B holds the lease
        a.send_signal(signal.SIGCONT)

        if other is None:
            # A takes its lease back (nobody else did), rejoins the group and trains on.
            wait_until(lambda: _committed_events(store) == 2 * CHUNK, 90, what="A's training after SIGCONT")
            a.send_signal(signal.SIGTERM)
            assert a.wait(timeout=60) == 0, log_a.read_text()[-3000:]
            assert "nobody had taken it: took it back" in log_a.read_text()
        else:
            assert a.wait(timeout=60) != 0, log_a.read_text()[-3000:]
            text = log_a.read_text()
            logged = [line for line in text.splitlines() if LOST_LINE in line and not line.startswith("streamtrain: error")]
            assert len(logged) == 1, text[-3000:]  # one log line, and the command's own error line
            after = text[text.index(LOST_LINE):]
            assert "committed" not in after and "finishing the current step" not in text, text[-3000:]
            assert b.wait(timeout=90) == 0, log_b.read_text()[-3000:]
            assert "fenced" not in log_b.read_text()
        stored = store.load()
        assert stored.offsets == {(topic, 0): 2 * CHUNK} and stored.events == 2 * CHUNK
        assert_trained_once(store, topic, {0: (0, 2 * CHUNK)})
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
        store.clear()
        store._client.delete(key)  # noqa: SLF001


def test_commits_apply_only_while_the_lease_is_ours_and_a_retaken_lease_is_counted(redis_client, unique_name: str) -> None:
    from streamtrain.distributed.lease import RunLease
    from streamtrain.errors import LeaseExpiredError, LeaseLostError
    from streamtrain.state.redis_store import RedisStateStore

    ns = f"test-paused-{unique_name}:run"
    retaken: list[int] = []
    lease = RunLease(redis_client, ns, ttl_s=60.0, on_retaken=lambda: retaken.append(1))
    lease.acquire()
    store = RedisStateStore(redis_client, ns)
    store.lease = (lease.key, lease.value)
    commit = dict(file_name="f", offsets={("t", 0): 5}, shared={}, events=5, step=1)
    try:
        store.commit(checkpoint_id=1, previous_ids=[None], **commit)
        redis_client.set(lease.key, '{"holder": "other:1:ab"}')
        with pytest.raises(LeaseLostError, match="other:1:ab"):
            store.commit(checkpoint_id=2, previous_ids=[1], **commit)
        with pytest.raises(LeaseLostError):
            store.check_lease()
        redis_client.delete(lease.key)
        with pytest.raises(LeaseExpiredError):
            store.commit(checkpoint_id=2, previous_ids=[1], **commit)
        assert store.checkpoint_id() == 1  # nothing was written
        assert lease.renew() and retaken == [1]  # expired, nobody held it: taken back, counted
        assert lease.renew() and retaken == [1]  # a plain renewal is not counted
        store.commit(checkpoint_id=2, previous_ids=[1], **commit)
        assert store.checkpoint_id() == 2
    finally:
        store.clear()
        redis_client.delete(lease.key)
