"""Addresses of the local stack (Kafka, Redis, Prometheus on 127.0.0.1) and helpers to use it from Python.

The stack itself is run by ``scripts/local-stack start|stop|status`` (no Docker). This module only reads the
same environment variables, with the same defaults, so tests, the demo and the bench find the servers:

* ``STREAMTRAIN_STACK_DIR`` (``<repo>/.stack``): all state: jars, data, logs, pid files, scrape targets;
* ``STREAMTRAIN_STACK_KAFKA_PORT`` (9092): the Kafka broker's PLAINTEXT listener;
* ``STREAMTRAIN_STACK_KAFKA_CONTROLLER_PORT`` (9093): the KRaft controller listener (clients never use it);
* ``STREAMTRAIN_STACK_REDIS_PORT`` (6379): Redis, database 0;
* ``STREAMTRAIN_STACK_PROMETHEUS_PORT`` (9090): the Prometheus HTTP API.

Talking to the broker with kafka-python (3.0.x, checked against the stack's Kafka 4.4.0):

* Pass only ``bootstrap_servers=addresses.kafka_bootstrap``; leave ``api_version`` unset. Auto-detection
  works against Kafka 4.x (kafka-python reports ``(4, 3)``). Pinning an old one such as ``(0, 10)`` makes
  every produce time out, because Kafka 4 removed the old protocol versions (the broker log shows
  ``UnsupportedVersionException``).
* The producer defaults to ``acks=-1`` with idempotence on; both work on the single node
  (``min.insync.replicas=1``).
* The broker runs with ``group.initial.rebalance.delay.ms=0``, so a new consumer group gets its assignment
  within a poll or two; use a fresh ``group_id`` per test (``unique_name``) and
  ``auto_offset_reset="earliest"`` to read what the test produced before subscribing.
* ``auto.create.topics.enable=true`` and ``num.partitions=1``: create topics that need more partitions
  explicitly, with ``KafkaAdminClient.create_topics([...], wait_for_metadata=True)`` (kafka-python 3.x) so
  it returns once every partition has a leader (the ``topic_factory`` fixture does).

Redis is shared by every test session on the machine: never ``FLUSHDB``; prefix keys with a unique name.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamtrain.errors import StreamtrainError

__all__ = [
    "HOST",
    "REPO_ROOT",
    "StackAddresses",
    "StackError",
    "ensure_started",
    "free_port",
    "port_open",
    "query_prometheus",
    "register_scrape_target",
    "wait_for_port",
    "wait_for_sample",
]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# The checkout this module lives in; the stack script and the default stack dir are found from here.
REPO_ROOT = Path(__file__).resolve().parents[1]
_TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$")


class StackError(StreamtrainError):
    """The local stack is not usable: it failed to start, a port does not answer, or a query failed."""


@dataclass(frozen=True)
class StackAddresses:
    """Where the local stack's servers listen; build it with :meth:`from_env`."""

    stack_dir: Path
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    redis_port: int = 6379
    prometheus_port: int = 9090

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StackAddresses:
        """Reads the ``STREAMTRAIN_STACK_*`` variables (see the module docstring); raises StackError on a bad port."""
        env = os.environ if environ is None else environ

        def port(name: str, default: int) -> int:
            raw = env.get(name, "")
            try:
                return int(raw) if raw else default
            except ValueError:
                raise StackError(f"{name}={raw!r} is not a port number") from None

        return cls(
            stack_dir=Path(env.get("STREAMTRAIN_STACK_DIR") or REPO_ROOT / ".stack").resolve(),
            kafka_port=port("STREAMTRAIN_STACK_KAFKA_PORT", 9092),
            kafka_controller_port=port("STREAMTRAIN_STACK_KAFKA_CONTROLLER_PORT", 9093),
            redis_port=port("STREAMTRAIN_STACK_REDIS_PORT", 6379),
            prometheus_port=port("STREAMTRAIN_STACK_PROMETHEUS_PORT", 9090),
        )

    @property
    def kafka_bootstrap(self) -> str:
        return f"{HOST}:{self.kafka_port}"

    @property
    def kafka_controller(self) -> str:
        return f"{HOST}:{self.kafka_controller_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/0"

    @property
    def prometheus_url(self) -> str:
        return f"http://{HOST}:{self.prometheus_port}"

    @property
    def targets_dir(self) -> Path:
        """Prometheus reads every ``*.json`` file here as a file_sd target group (refreshed each second)."""
        return self.stack_dir / "prometheus" / "targets"

    @property
    def rules_dir(self) -> Path:
        """Prometheus also loads every ``*.yml`` rule file here, on start and on ``POST /-/reload``."""
        return self.stack_dir / "prometheus" / "rules"

    def as_dict(self) -> dict[str, str]:
        """The same keys and values as ``scripts/local-stack env`` prints."""
        return {
            "stack_dir": str(self.stack_dir),
            "kafka_bootstrap": self.kafka_bootstrap,
            "kafka_controller": self.kafka_controller,
            "redis_url": self.redis_url,
            "prometheus_url": self.prometheus_url,
            "targets_dir": str(self.targets_dir),
        }


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when a TCP connection to host:port succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now (for a private server in tests/benchmarks)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float = 30.0, *, interval_s: float = 0.1) -> None:
    """Blocks until host:port accepts TCP connections; raises StackError after ``timeout_s``.

    Called after spawning a server (the worker's metrics endpoint, a test HTTP server). An open port only
    says the listener is bound, not that the service is ready for its protocol.
    """
    deadline = time.monotonic() + timeout_s
    while not port_open(host, port, timeout_s=min(1.0, timeout_s)):
        if time.monotonic() >= deadline:
            raise StackError(f"nothing answers on {host}:{port} after {timeout_s:.0f} s")
        time.sleep(interval_s)


def ensure_started(
    services: Sequence[str] = (),
    *,
    script: Path | None = None,
    timeout_s: float = 600.0,
    environ: Mapping[str, str] | None = None,
) -> StackAddresses:
    """Runs ``scripts/local-stack start [services]`` (idempotent) and returns the addresses it serves.

    Called once per test session by tests/conftest.py, and by the demo. Blocks until every requested
    service answers (seconds when already up; ~10 s from a fresh stack dir with Kafka's jars in the Maven
    cache). Raises StackError carrying the script's output (which names the missing binary or ends with
    the failing server's log tail) when it exits nonzero or runs past ``timeout_s``.
    """
    script = script or REPO_ROOT / "scripts" / "local-stack"
    if not script.is_file():
        raise StackError(f"{script} does not exist; ensure_started needs a source checkout of streamtrain")
    env = dict(os.environ if environ is None else environ)
    argv = [str(script), "start", *services]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise StackError(f"`{' '.join(argv)}` did not finish within {timeout_s:.0f} s") from None
    except OSError as err:
        raise StackError(f"cannot run {script}: {err}") from None
    if done.returncode != 0:
        raise StackError(f"`{' '.join(argv)}` failed (exit {done.returncode}):\n{done.stderr}{done.stdout}".rstrip())
    log.debug("local stack: %s", done.stdout.strip())
    return StackAddresses.from_env(env)


def register_scrape_target(
    name: str,
    host_port: str,
    labels: Mapping[str, str] | None = None,
    *,
    targets_dir: Path | None = None,
) -> Callable[[], None]:
    """Makes the local Prometheus scrape ``http://host_port/metrics`` as job ``streamtrain``; returns the undo.

    Writes ``<targets_dir>/<name>.json`` (a file_sd target group) atomically, so Prometheus never reads half
    a file; it picks the target up within ~1-2 s and attaches ``labels`` (e.g. ``{"run": run_id}``) to every
    series scraped from it. Calling the returned function deletes the file (idempotent); Prometheus then
    drops the target within ~1-2 s. Raises StackError for a name that is not a plain file name.
    """
    if not _TARGET_NAME.match(name):
        raise StackError(f"scrape target name {name!r} must match {_TARGET_NAME.pattern}")
    directory = targets_dir or StackAddresses.from_env().targets_dir
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    staging = directory / f".{name}.json.tmp"  # not *.json: Prometheus ignores it until the rename
    staging.write_text(json.dumps([{"targets": [host_port], "labels": dict(labels or {})}]) + "\n")
    staging.replace(path)

    def remove() -> None:
        path.unlink(missing_ok=True)

    return remove


def query_prometheus(prometheus_url: str, promql: str, *, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Runs an instant query and returns ``data.result`` (one dict per series: ``metric`` and ``value``).

    Raises StackError when Prometheus is unreachable or rejects the query (the message carries its error).
    """
    url = f"{prometheus_url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = json.load(response)
    except urllib.error.HTTPError as err:
        raise StackError(f"Prometheus rejected {promql!r}: HTTP {err.code} {err.read(500)!r}") from None
    except (OSError, ValueError) as err:
        raise StackError(f"cannot query Prometheus at {prometheus_url}: {err}") from None
    if body.get("status") != "success":
        raise StackError(f"Prometheus query {promql!r} failed: {body.get('error')}")
    result = body["data"]["result"]
    return result if isinstance(result, list) else [{"metric": {}, "value": result}]


def wait_for_sample(
    prometheus_url: str,
    promql: str,
    *,
    timeout_s: float = 30.0,
    interval_s: float = 0.5,
    predicate: Callable[[float], bool] | None = None,
) -> float:
    """Polls an instant query until it returns a sample (whose value satisfies ``predicate``); returns it.

    Used by tests that check a scrape end to end. Raises StackError with the last result after ``timeout_s``
    (e.g. the target never got scraped: check ``/api/v1/targets`` for its ``lastError``).
    """
    deadline = time.monotonic() + timeout_s
    last: list[dict[str, Any]] = []
    while True:
        last = query_prometheus(prometheus_url, promql)
        values = [float(series["value"][1]) for series in last]
        good = [v for v in values if predicate is None or predicate(v)]
        if good:
            return good[0]
        if time.monotonic() >= deadline:
            raise StackError(f"no matching sample for {promql!r} within {timeout_s:.0f} s; last result: {last}")
        time.sleep(interval_s)
