"""Helpers shared by the worker's integration tests (tests/integration/test_worker_*.py)."""

from __future__ import annotations

import os
import subprocess
import threading
import urllib.error
import urllib.request
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaProducer

from streamtrain.config import Config, load_config
from streamtrain.events import encode_event
from streamtrain.localstack import REPO_ROOT, free_port

__all__ = ["overrides", "config_for", "produce", "stream", "real_engine", "run_worker", "wait_until"]


def overrides(
    name: str, topic: str, ckpt_dir: Path, *, bootstrap: str, redis_url: str, extra: Sequence[str] = ()
) -> list[str]:
    """``--set`` values for a small, fast, CPU worker on its own run, group and Redis namespace."""
    return [
        f"run.name={name}",
        "run.device=cpu",
        "run.seed=7",
        f"kafka.bootstrap_servers=[\"{bootstrap}\"]",
        f"kafka.topic={topic}",
        f"kafka.group_id=g-{name}",
        f"kafka.dead_letter_topic={topic}.dead-letter",
        "kafka.session_timeout_s=6",
        "kafka.lag_interval_s=1",
        f"redis.url={redis_url}",
        f"redis.key_prefix=test-worker-{name}",
        f"checkpoint.dir={ckpt_dir}",
        "checkpoint.retry_backoff_s=0.5",
        "checkpoint.max_retry_backoff_s=4",
        "model.embedding_dim=16",
        "model.user_capacity=4096",
        "model.item_capacity=4096",
        "model.learning_rate=0.05",
        "sampler.name=xir",
        "frequency.hash_size=4096",
        "trainer.batch_size=256",
        "trainer.max_batch_latency_s=3",
        "trainer.probe_interval_steps=20",
        "trainer.probe_batch_size=64",
        "metrics.port=0",
        # A kill -9'd worker's lease expires in 2 s; its restart waits that long instead of being refused.
        "distributed.lease_ttl_s=2",
        "distributed.lease_wait_s=10",
        *extra,
    ]


def config_for(*args: Any, **kwargs: Any) -> Config:
    return load_config(overrides=overrides(*args, **kwargs), environ={})


def stream(n: int, seed: int = 0, *, users: int = 300, items: int = 500) -> list[bytes]:
    """``n`` valid events with Zipf-ish items and increasing event times (deterministic)."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, size=n)
    i = np.minimum(rng.zipf(1.3, size=n) - 1, items - 1)
    return [encode_event(int(a), int(b), 1_700_000_000.0 + k) for k, (a, b) in enumerate(zip(u, i, strict=True))]


def produce(bootstrap: str, topic: str, values: Iterable[bytes | None], *, partition: int | None = 0) -> int:
    """Produce values in order to one partition; returns how many."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_request_size=4 << 20)
    count = 0
    for value in values:
        # A tombstone (None) needs a key, as in real compacted topics.
        producer.send(topic, value=value, key=b"tombstone" if value is None else None, partition=partition)
        count += 1
    producer.flush()
    producer.close()
    return count


def produce_in_background(bootstrap: str, topic: str, values: Sequence[bytes], seconds: float) -> threading.Thread:
    """Send ``values`` to partition 0 of ``topic`` over about ``seconds`` (100 at a time, flushed), from a
    daemon thread already started: a stream still arriving while the worker trains, restarts or fails."""

    def replay() -> None:
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=10)
        for start in range(0, len(values), 100):
            for value in values[start:start + 100]:
                producer.send(topic, value=value, partition=0)
            producer.flush()
            time.sleep(seconds * 100 / max(len(values), 1))
        producer.close()

    thread = threading.Thread(target=replay, daemon=True)
    thread.start()
    return thread


def private_broker_env(stack_dir: Path) -> tuple[dict[str, str], str]:
    """Environment for ``scripts/local-stack`` running a broker of this test's own (own dir, free
    ports), and its bootstrap address: tests that stop and start a broker leave the shared one alone."""
    port = free_port()
    env = {**os.environ, "STREAMTRAIN_STACK_DIR": str(stack_dir),
           "STREAMTRAIN_STACK_KAFKA_PORT": str(port), "STREAMTRAIN_STACK_KAFKA_CONTROLLER_PORT": str(free_port())}
    return env, f"127.0.0.1:{port}"


def local_stack_kafka(env: dict[str, str], action: str, attempts: int = 3) -> None:
    """``scripts/local-stack <action> kafka`` under ``env`` (see :func:`private_broker_env`)."""
    # A restart right after a stop occasionally reports "exited during startup" on a loaded machine;
    # the broker under test is ours alone, so trying again is harmless.
    for _attempt in range(attempts):
        done = subprocess.run([str(REPO_ROOT / "scripts" / "local-stack"), action, "kafka"], env=env,
                              capture_output=True, text=True, timeout=180, check=False)
        if done.returncode == 0:
            return
        time.sleep(2.0)
    raise AssertionError(f"local-stack {action} kafka failed {attempts} times:\n{done.stderr}{done.stdout}")


def real_engine(config: Config) -> Any:
    from streamtrain.training.trainer import Trainer

    return Trainer(config)


def run_worker(config: Config, *, fresh: bool = False, idle_exit_s: float | None = None, registry: Any = None):
    """Build and start an in-process worker on the real Trainer; the caller joins and closes it."""
    from streamtrain.worker.build import build_worker

    parts = build_worker(
        config, engine_factory=real_engine, fresh=fresh, idle_exit_s=idle_exit_s, registry=registry
    )
    parts.worker.start()
    return parts


def stop_worker(parts: Any, timeout_s: float = 60.0) -> None:
    """Join (after an idle exit or request_stop), then stop the source and close clients."""
    assert parts.worker.join(timeout_s), "worker did not stop in time"
    parts.worker.source.stop()
    parts.close()


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.2, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def consume_command(sets: Sequence[str], *flags: str) -> list[str]:
    """argv of ``python -m streamtrain --set ... consume FLAGS`` for a subprocess worker."""
    import sys

    argv = [sys.executable, "-m", "streamtrain"]
    for item in sets:
        argv += ["--set", item]
    return [*argv, "consume", *flags]


def spawn_worker(sets: Sequence[str], log: Path, *flags: str) -> Any:
    """Start a worker subprocess with stderr appended to ``log`` and no STREAMTRAIN_* env leaking in."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTRAIN_")}
    with open(log, "ab") as sink:
        return subprocess.Popen(consume_command(sets, *flags), stdout=subprocess.DEVNULL, stderr=sink, env=env)


def assert_trained_once(store: Any, topic: str, expected: dict[int, tuple[int, int] | list[tuple[int, int]]],
                        *, every_message_an_event: bool = False) -> None:
    """The exactly-once audit (``checkpoint.record_trained_ranges``): per partition, the committed ranges
    tile the ``expected`` spans ``(first, next)`` (one or a list, in order) with no gap or overlap; a list
    of several spans is for a log that restarted (a recreated topic) or was skipped over (retention).
    ``every_message_an_event``: each range also trained one event per offset (a stream without rejects)."""
    spans: dict[int, list[tuple[int, int]]] = {}
    for t, p, first, nxt, events in store.trained_ranges():
        assert t == topic, f"range of another topic {t}"
        if every_message_an_event:
            assert events == nxt - first, f"{topic}[{p}] [{first}, {nxt}) trained {events} events"
        mine = spans.setdefault(p, [])
        if mine and mine[-1][1] == first:
            mine[-1] = (mine[-1][0], nxt)
        else:  # a gap, an overlap or a restart of the log: a new span, which the comparison below judges
            mine.append((first, nxt))
    want = {p: [v] if isinstance(v, tuple) else list(v) for p, v in expected.items()}
    want = {p: v for p, v in want.items() if v and v[0][0] < v[0][1]}
    assert spans == want, f"trained spans {spans} != expected {want}"


def http_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET; (0, the error) when nothing answered (a worker's /readyz mid-outage)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:
        return 0, str(err)


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    """Create ``topic`` on the broker at ``bootstrap`` (a private one: ``topic_factory`` serves the shared stack)."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)], wait_for_metadata=True)
    finally:
        admin.close()
