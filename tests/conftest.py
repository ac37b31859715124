"""Shared fixtures: the real stack (Kafka, Redis, Prometheus) for integration tests, started lazily.

Nothing here runs for unit tests: the stack is provisioned the first time a test asks for one of
``kafka_bootstrap``, ``redis_url``, ``redis_client``, ``prometheus_url``, ``kafka_admin``, ``topic_factory``,
``scrape_target`` or ``stack_addresses``; such tests are marked ``integration`` automatically.

Provisioning, chosen by ``STREAMTRAIN_TEST_STACK`` (``auto`` by default):

* ``docker`` (``auto`` when ``docker info`` answers within 10 s): testcontainers runs Kafka (KRaft) and
  Redis containers for this session; Prometheus still comes from ``scripts/local-stack start prometheus``
  because it must scrape processes on this host.
* ``local`` (``auto`` otherwise): ``scripts/local-stack start`` once per session. It is idempotent and is
  left running at the end, because other test sessions on the machine share it.

When a server cannot be provisioned, the tests that need it fail with the reason if ``CI`` is set, and are
skipped with the reason otherwise. The shared Redis is never flushed: prefix keys with ``unique_name``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from streamtrain.localstack import StackAddresses, StackError, ensure_started, register_scrape_target

STACK_FIXTURES = frozenset({
    "kafka_bootstrap", "kafka_admin", "topic_factory", "redis_url", "redis_client", "prometheus_url",
    "scrape_target", "stack_addresses", "_stack",
})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs the real local stack (Kafka, Redis, Prometheus)")
    config.addinivalue_line("markers", "slow: longer statistical or end-to-end tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A test that uses a real server is an integration test, marked or not, so `-m "not integration"`
    # never starts the stack.
    for item in items:
        if STACK_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@dataclass
class _Stack:
    """What this session got: an address per service, or the reason it has none."""

    mode: str
    addresses: StackAddresses
    kafka_bootstrap: str | None = None
    redis_url: str | None = None
    prometheus_url: str | None = None
    problems: dict[str, str] = field(default_factory=dict)

    def require(self, service: str, value: str | None) -> str:
        if value is None:
            _unavailable(f"{service} is not available ({self.mode} stack): {self.problems.get(service, '?')}")
        return value


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _start_local(stack: _Stack) -> None:
    services = ("kafka", "redis", "prometheus")
    try:
        ensure_started(services)
        results: dict[str, str | None] = {s: None for s in services}
    except StackError:
        # Find out which ones work, so one broken server does not take the others' tests down.
        results = {}
        for service in services:
            try:
                ensure_started([service])
                results[service] = None
            except StackError as err:
                results[service] = str(err)
    addr = stack.addresses
    for service, error in results.items():
        if error is not None:
            stack.problems[service] = error
    stack.kafka_bootstrap = None if results["kafka"] else addr.kafka_bootstrap
    stack.redis_url = None if results["redis"] else addr.redis_url
    stack.prometheus_url = None if results["prometheus"] else addr.prometheus_url


def _start_docker(stack: _Stack, request: pytest.FixtureRequest) -> None:
    try:  # imported here: without Docker, collecting the tests must not depend on testcontainers
        try:
            from testcontainers.community.kafka import KafkaContainer
            from testcontainers.community.redis import RedisContainer
        except ImportError:
            from testcontainers.kafka import KafkaContainer  # type: ignore[no-redef]
            from testcontainers.redis import RedisContainer  # type: ignore[no-redef]
    except ImportError as err:
        stack.problems["kafka"] = stack.problems["redis"] = f"testcontainers is not importable: {err}"
        return
    kafka_image = os.environ.get("STREAMTRAIN_TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:7.9.0")
    try:
        kafka: Any = KafkaContainer(kafka_image).with_kraft()
        request.addfinalizer(lambda: _stop_quietly(kafka))  # before start: a half-started one is removed too
        kafka.start()
        stack.kafka_bootstrap = kafka.get_bootstrap_server()
    except Exception as err:  # any Docker/image failure becomes a skip reason, not an error at setup
        stack.problems["kafka"] = f"Kafka container failed: {err!r}"
    try:
        redis_container: Any = RedisContainer(os.environ.get("STREAMTRAIN_TEST_REDIS_IMAGE", "redis:7"))
        request.addfinalizer(lambda: _stop_quietly(redis_container))
        redis_container.start()
        host = redis_container.get_container_host_ip()
        stack.redis_url = f"redis://{host}:{redis_container.get_exposed_port(redis_container.port)}/0"
    except Exception as err:
        stack.problems["redis"] = f"Redis container failed: {err!r}"
    try:
        ensure_started(["prometheus"])
        stack.prometheus_url = stack.addresses.prometheus_url
    except StackError as err:
        stack.problems["prometheus"] = str(err)


def _stop_quietly(container: Any) -> None:
    try:
        container.stop()
    except Exception:  # never started, or already gone
        pass


@pytest.fixture(scope="session")
def _stack(request: pytest.FixtureRequest) -> _Stack:
    mode = os.environ.get("STREAMTRAIN_TEST_STACK", "auto")
    if mode not in ("auto", "local", "docker"):
        pytest.fail(f"STREAMTRAIN_TEST_STACK={mode!r}: use auto, local or docker", pytrace=False)
    if mode == "auto":
        mode = "docker" if _docker_available() else "local"
    stack = _Stack(mode=mode, addresses=StackAddresses.from_env())
    if mode == "docker":
        _start_docker(stack, request)
    else:
        _start_local(stack)
    return stack


@pytest.fixture(scope="session")
def stack_addresses(_stack: _Stack) -> StackAddresses:
    """Addresses and directories of the local stack (targets dir, stack dir)."""
    return _stack.addresses


@pytest.fixture(scope="session")
def kafka_bootstrap(_stack: _Stack) -> str:
    """``host:port`` of a Kafka broker (KRaft, single node) for kafka-python's ``bootstrap_servers``."""
    return _stack.require("kafka", _stack.kafka_bootstrap)


@pytest.fixture(scope="session")
def redis_url(_stack: _Stack) -> str:
    """``redis://host:port/0`` of a Redis shared with other sessions: never flush it."""
    return _stack.require("redis", _stack.redis_url)


@pytest.fixture(scope="session")
def prometheus_url(_stack: _Stack) -> str:
    """``http://host:port`` of the local Prometheus (job ``streamtrain``, file_sd targets, 1 s scrapes)."""
    return _stack.require("prometheus", _stack.prometheus_url)


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[Any]:
    """A ``redis.Redis`` on :func:`redis_url` (bytes responses), closed at the end of the session."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    client.ping()
    yield client
    client.close()


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Iterator[Any]:
    """A kafka-python ``KafkaAdminClient`` on the session's broker."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="streamtrain-tests")
    yield admin
    admin.close()


@pytest.fixture
def unique_name() -> str:
    """A fresh random suffix (10 hex chars) for topic, group, key and run names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def topic_factory(kafka_admin: Any) -> Iterator[Callable[..., str]]:
    """``make(partitions=1, prefix="test") -> name``: creates a fresh topic, ready to produce to.

    Returns once every partition has a leader. The topics are deleted at teardown, best effort.
    """
    from kafka.admin import NewTopic

    created: list[str] = []

    def make(partitions: int = 1, *, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        kafka_admin.create_topics([NewTopic(name, partitions, 1)], wait_for_metadata=True)
        created.append(name)
        return name

    yield make
    if created:
        try:
            kafka_admin.delete_topics(created)
        except Exception:  # best effort: a leftover test topic costs nothing
            pass


@pytest.fixture
def scrape_target(prometheus_url: str, stack_addresses: StackAddresses) -> Iterator[Callable[..., None]]:
    """``add(name, host_port, labels=None)``: has Prometheus scrape host_port as job ``streamtrain``.

    Uses :func:`streamtrain.localstack.register_scrape_target`; every target added is removed at teardown.
    """
    undo: list[Callable[[], None]] = []

    def add(name: str, host_port: str, labels: dict[str, str] | None = None) -> None:
        undo.append(register_scrape_target(name, host_port, labels, targets_dir=stack_addresses.targets_dir))

    yield add
    for remove in undo:
        remove()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout's root directory."""
    return Path(__file__).resolve().parents[1]
