"""One job per run: the Redis lease refuses a second consumer at start, names the holder and the expiry,
expires after a kill -9 so a restart works, and is released on a clean stop (real Redis and Kafka)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis

from streamtrain.distributed.lease import LeaseHeldError, RunLease, lease_key
from worker_support import overrides, produce, spawn_worker, stream, wait_until

pytestmark = pytest.mark.integration


def test_second_holder_refused_until_release_or_expiry(redis_client: redis.Redis, unique_name: str) -> None:
    ns = f"test-lease-{unique_name}:run"
    first = RunLease(redis_client, ns, ttl_s=1.0, world_size=2)
    first.acquire()
    try:
        second = RunLease(redis_client, ns, ttl_s=1.0)
        with pytest.raises(LeaseHeldError) as refused:
            second.acquire()
        message = str(refused.value)
        assert first.holder in message and "world size 2" in message and "expires in" in message
        # The heartbeat keeps it past several TTLs.
        first.start_heartbeat()
        time.sleep(2.5)
        with pytest.raises(LeaseHeldError):
            second.acquire()
        first.release()
        assert redis_client.get(lease_key(ns)) is None
        second.acquire()  # released on a clean stop: taken at once
        second.release()

        # A holder that stops renewing (kill -9) blocks others only until the TTL runs out.
        dead = RunLease(redis_client, ns, ttl_s=1.0)
        dead.acquire()
        started = time.monotonic()
        late = RunLease(redis_client, ns, ttl_s=1.0)
        late.acquire(wait_s=5.0)
        assert 0.5 < time.monotonic() - started < 3.0
        # The dead holder's release must not delete the new holder's lease.
        dead.release()
        assert redis_client.get(lease_key(ns)) is not None
        assert late.renew() and not dead.renew()
        late.release()
    finally:
        redis_client.delete(lease_key(ns))


def test_second_consume_on_a_run_is_refused_at_start(
    kafka_bootstrap: str, redis_url: str, topic_factory, unique_name: str, tmp_path: Path, redis_client: redis.Redis
) -> None:
    topic = topic_factory(1, prefix="lease")
    produce(kafka_bootstrap, topic, stream(600, seed=3))
    sets = overrides(f"lease-{unique_name}", topic, tmp_path / "ckpt", bootstrap=kafka_bootstrap,
                     redis_url=redis_url, extra=["distributed.lease_ttl_s=3"])
    key = lease_key(f"test-worker-lease-{unique_name}:lease-{unique_name}")
    first = spawn_worker(sets, tmp_path / "first.log", "--fresh")
    try:
        wait_until(lambda: redis_client.get(key) is not None or first.poll() is not None, 60, what="the lease")
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        started = time.monotonic()
        second = spawn_worker([*sets, "distributed.lease_wait_s=0"], tmp_path / "second.log")
        assert second.wait(timeout=60) == 1
        text = (tmp_path / "second.log").read_text()
        assert "already being trained by" in text and "expires in" in text, text[-3000:]
        assert f":{first.pid}:" in text  # names the holder (host:pid:token)
        assert time.monotonic() - started < 30  # refused at start, not at a checkpoint
        assert first.poll() is None  # the holder is untouched

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert redis_client.get(key) is not None  # nobody released it
        third = spawn_worker(sets, tmp_path / "third.log", "--idle-exit", "3")  # waits up to 10 s
        assert third.wait(timeout=120) == 0, (tmp_path / "third.log").read_text()[-3000:]
        assert redis_client.get(key) is None  # released on the clean stop
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        redis_client.delete(key)
