"""The local stack answers like the real thing: Kafka keyed round trip, Redis transactions, Prometheus scrapes."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from streamtrain.localstack import (
    StackAddresses,
    StackError,
    query_prometheus,
    register_scrape_target,
    wait_for_sample,
)


def test_script_and_module_agree_on_addresses(repo_root: Path, tmp_path: Path) -> None:
    """scripts/local-stack and streamtrain.localstack read the same variables with the same defaults."""
    base = {"PATH": "/usr/bin:/bin"}
    custom = {**base, "STREAMTRAIN_STACK_DIR": str(tmp_path), "STREAMTRAIN_STACK_KAFKA_PORT": "19192",
              "STREAMTRAIN_STACK_KAFKA_CONTROLLER_PORT": "19193", "STREAMTRAIN_STACK_REDIS_PORT": "16479",
              "STREAMTRAIN_STACK_PROMETHEUS_PORT": "19190"}
    for env in (base, custom):
        printed = subprocess.run([sys.executable, str(repo_root / "scripts" / "local-stack"), "env"], env=env,
                                 capture_output=True, text=True, check=True, timeout=30).stdout
        assert json.loads(printed) == StackAddresses.from_env(env).as_dict()


def test_register_scrape_target_writes_file_sd_and_undoes(tmp_path: Path) -> None:
    remove = register_scrape_target("w-1", "127.0.0.1:1234", {"run": "r1"}, targets_dir=tmp_path)
    assert json.loads((tmp_path / "w-1.json").read_text()) == [{"targets": ["127.0.0.1:1234"],
                                                                  "labels": {"run": "r1"}}]
    assert [p.name for p in tmp_path.iterdir()] == ["w-1.json"]  # no staging file left behind
    remove()
    remove()  # idempotent
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StackError):
        register_scrape_target("../escape", "127.0.0.1:1", targets_dir=tmp_path)


@pytest.mark.integration
def test_kafka_keyed_round_trip_keeps_each_key_on_one_partition(
    kafka_bootstrap: str, topic_factory: Any, unique_name: str
) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    topic = topic_factory(3)
    sent = {(f"user-{i % 23}", f"event-{i}") for i in range(400)}
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    for key, value in sorted(sent, key=lambda kv: int(kv[1].split("-")[1])):
        producer.send(topic, key=key.encode(), value=value.encode())
    producer.flush(timeout=30)
    producer.close()

    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=f"g-{unique_name}",
                             auto_offset_reset="earliest", enable_auto_commit=False)
    received: list[tuple[str, str, int, int]] = []
    deadline = time.monotonic() + 60
    while len(received) < len(sent) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            received += [(r.key.decode(), r.value.decode(), r.partition, r.offset) for r in records]
    assert consumer.assignment() and {tp.partition for tp in consumer.assignment()} == {0, 1, 2}
    consumer.close()

    assert len(received) == len(sent)  # no duplicates
    assert {(k, v) for k, v, _, _ in received} == sent
    partitions_of: dict[str, set[int]] = defaultdict(set)
    for key, _, partition, _ in received:
        partitions_of[key].add(partition)
    assert all(len(p) == 1 for p in partitions_of.values()), partitions_of
    assert len({p for ps in partitions_of.values() for p in ps}) > 1  # keys really spread over partitions
    # Within a partition, a key's events come back in the order they were produced.
    last_seen: dict[str, int] = {}
    for key, value, _, _ in sorted(received, key=lambda r: (r[2], r[3])):
        number = int(value.split("-")[1])
        assert number > last_seen.get(key, -1)
        last_seen[key] = number


@pytest.mark.integration
def test_redis_set_get_and_multi_exec_is_atomic(redis_client: Any, redis_url: str, unique_name: str) -> None:
    import redis

    a, b = f"test:{unique_name}:a", f"test:{unique_name}:b"
    try:
        redis_client.set(a, b"hello")
        assert redis_client.get(a) == b"hello"
        redis_client.set(a, 0)
        redis_client.set(b, 0)

        # Writers bump a and b inside MULTI/EXEC, one round trip per command so other clients run in
        # between; a reader's MGET must never see them differ. (Without MULTI it sees hundreds of torn pairs.)
        torn: list[tuple[int, int]] = []
        stop = threading.Event()

        def write() -> None:
            client = redis.Redis.from_url(redis_url, single_connection_client=True)
            for _ in range(300):
                client.execute_command("MULTI")
                assert client.execute_command("INCR", a) == b"QUEUED"
                assert client.execute_command("INCR", b) == b"QUEUED"
                assert len(client.execute_command("EXEC")) == 2
            client.close()

        def read() -> None:
            client = redis.Redis.from_url(redis_url)
            while not stop.is_set():
                x, y = (int(v) for v in client.mget(a, b))
                if x != y:
                    torn.append((x, y))
            client.close()

        reader = threading.Thread(target=read)
        reader.start()
        writers = [threading.Thread(target=write) for _ in range(3)]
        for t in writers:
            t.start()
        for t in writers:
            t.join(timeout=60)
        stop.set()
        reader.join(timeout=60)
        assert torn == []
        assert int(redis_client.get(a)) == int(redis_client.get(b)) == 900

        # WATCH: a transaction whose watched key changed underneath it is refused.
        with redis_client.pipeline(transaction=True) as pipe:
            pipe.watch(a)
            redis.Redis.from_url(redis_url).incr(a)  # another client
            pipe.multi()
            pipe.set(a, -1)
            with pytest.raises(redis.WatchError):
                pipe.execute()
        assert int(redis_client.get(a)) == 901
    finally:
        redis_client.delete(a, b)


@pytest.mark.integration
def test_prometheus_is_ready_and_has_the_streamtrain_job(prometheus_url: str) -> None:
    with urllib.request.urlopen(f"{prometheus_url}/-/ready", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/status/config", timeout=5) as response:
        config = json.load(response)["data"]["yaml"]
    assert "job_name: streamtrain" in config
    assert "file_sd_configs" in config and "scrape_interval: 1s" in config


@pytest.mark.integration
def test_prometheus_scrapes_a_registered_target(prometheus_url: str, scrape_target: Any, unique_name: str) -> None:
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    registry = CollectorRegistry()
    gauge = Gauge("streamtrain_stack_probe", "value set by the stack test", registry=registry)
    value = int(unique_name[:6], 16) % 100_000 + 0.5  # differs per run: a stale series cannot match
    gauge.set(value)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        port = server.server_port
        scrape_target(f"stack-test-{unique_name}", f"127.0.0.1:{port}", {"run": unique_name})
        promql = f'streamtrain_stack_probe{{job="streamtrain",run="{unique_name}"}}'
        assert wait_for_sample(prometheus_url, promql, timeout_s=30) == value

        gauge.set(value + 1)  # the next scrapes see the new value
        assert wait_for_sample(prometheus_url, promql, timeout_s=15, predicate=lambda v: v == value + 1) == value + 1
        assert query_prometheus(prometheus_url, f'up{{run="{unique_name}"}}')[0]["value"][1] == "1"
    finally:
        server.shutdown()
        thread.join(timeout=10)
