"""Every PromQL expression shipped in deploy/ runs against a live worker, and the alerts fire for real.

A worker subprocess (real Kafka, Redis) trains from a topic seeded with good and bad events while a
paced replay keeps producing; the local Prometheus scrapes it each second. Then:

* every Grafana dashboard target (``$run`` = this run, ``$__rate_interval``/``$__interval`` = 15 s,
  15 scrapes) returns at least one series with a finite value, and every alert expression parses and
  evaluates, its un-thresholded probe returning data for this run;
* the worker is stopped (SIGTERM) while the replay goes on: its series go stale at the first failed
  scrape, so the lag alert *cannot* see it; ``StreamtrainWorkerDown`` fires instead;
* a worker of the same run comes back that consumes but cannot train (its micro-batch never fills: the
  stand-in for a trainer slower than the input); its lag passes 10k messages and grows, and
  ``StreamtrainConsumerLagGrowing`` fires, with the shipped expression and threshold. Its /readyz says
  503 meanwhile.

Alerts need ``for:`` of minutes; the test loads a copy of the rule file with ``for: 5s``, every
selector narrowed to this run and a ``test_copy`` label, into the stack's rules dir
(``StackAddresses.rules_dir``) and reloads Prometheus (``--web.enable-lifecycle``); the copy is removed
at the end. Expressions and thresholds are the shipped ones.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer

from deploy_queries import RULES, deploy_queries, strip_thresholds
from streamtrain.localstack import StackAddresses, query_prometheus
from worker_support import overrides, produce, spawn_worker, stream, wait_until

pytestmark = pytest.mark.integration  # ~30 s: not `slow`

RATE = 1500  # events/s the replay produces: well below what one CPU worker trains (~6k/s), so lag stays small
WINDOW = "15s"  # Grafana's $__rate_interval / $__interval: 15 scrapes at the stack's 1 s interval
FOR = "5s"  # `for:` of the rule copy
BAD = [b"not json", b"[1, 2]", b"{}", b'{"schema_version": 99, "user_id": 1, "item_id": 2, "event_time": 1}']
# A worker that consumes but never trains: no micro-batch fills or times out during the test. The XIR
# sizes are pinned to what batch_size=256 gives, so the resumed sampler state matches.
STALLED = ["trainer.batch_size=10000000", "trainer.max_batch_latency_s=3600",
           "sampler.xir.cache_size=256", "sampler.xir.batch_draws=128"]
_SELECTOR = re.compile(r"\b(streamtrain_[a-z_]+[a-z]|up)\b(\{[^}]*\})?")


# --------------------------------------------------------------------------- helpers
def scoped(expr: str, run: str) -> str:
    """Adds ``run="<run>"`` to every streamtrain_* and ``up`` selector of ``expr``."""

    def add(match: re.Match[str]) -> str:
        inner = (match.group(2) or "{}")[1:-1].strip()
        return f'{match.group(1)}{{{inner + "," if inner else ""}run="{run}"}}'

    return _SELECTOR.sub(add, " ".join(expr.split()))


def _http(url: str, method: str = "GET") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:  # a stopped worker
        return 0, str(err)


def _api(prometheus_url: str, path: str) -> Any:
    status, body = _http(prometheus_url + path)
    assert status == 200, f"{path}: HTTP {status} {body[:300]}"
    return json.loads(body)["data"]


def _alert_state(prometheus_url: str, alertname: str, tag: str, run: str) -> dict[str, str]:
    """``{topic or "": "pending"|"firing"}`` for the copy's alerts of this run."""
    return {
        a["labels"].get("topic", ""): a["state"]
        for a in _api(prometheus_url, "/api/v1/alerts")["alerts"]
        if a["labels"].get("alertname") == alertname and a["labels"].get("test_copy") == tag
        and a["labels"].get("run") == run
    }


def _finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


class Replay:
    """Produces ``RATE`` good events per second (and one bad one) on a thread until ``stop``."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
        self._topic = topic
        self._stop = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="replay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            second = 0
            while not self._stop.is_set():
                started = time.monotonic()
                for value in [*stream(RATE, seed=100 + second), BAD[second % len(BAD)]]:
                    self._producer.send(self._topic, value=value, partition=0)
                self.sent += RATE + 1
                second += 1
                self._stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))
        except BaseException as exc:  # reported by stop(), not lost on the thread
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._producer.flush(10)
        self._producer.close(5)
        assert self.error is None, f"the replay failed: {self.error!r}"


class Worker:
    """``streamtrain consume`` as a subprocess; its metrics port is read from its log."""

    def __init__(self, sets: list[str], log: Path, *flags: str) -> None:
        self.log = log
        offset = log.stat().st_size if log.exists() else 0
        self.proc: subprocess.Popen[bytes] = spawn_worker(sets, log, *flags)
        found: list[int] = []

        def port_logged() -> bool:
            assert self.proc.poll() is None, f"worker exited {self.proc.returncode}:\n{self.tail()}"
            with open(log, "rb") as f:
                f.seek(offset)
                match = re.search(rb"metrics on http://127\.0\.0\.1:(\d+)/metrics", f.read())
            if match:
                found.append(int(match.group(1)))
            return bool(found)

        wait_until(port_logged, 60, what="the worker's metrics port in its log")
        self.port = found[0]
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_healthy(self) -> None:
        # /metrics is served a moment before the training loop starts; /healthz is 503 until then.
        wait_until(lambda: _http(self.base + "/healthz")[0] == 200, 30, what="/healthz 200")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def sample(self, name: str) -> float:
        """A sample of the worker's own /metrics (0 when absent)."""
        status, body = _http(self.base + "/metrics")
        match = re.search(rf"^{name} (\S+)$", body, re.MULTILINE) if status == 200 else None
        return float(match.group(1)) if match else 0.0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"worker ignored SIGTERM for 40 s:\n{self.tail()}") from None


@pytest.fixture
def rule_copy(prometheus_url: str, stack_addresses: StackAddresses, unique_name: str) -> Iterator[Callable[[str], str]]:
    """``load(run) -> tag``: the shipped alert rules with ``for: 5s``, narrowed to ``run``, loaded into Prometheus."""
    path = stack_addresses.rules_dir / f"test-{unique_name}.yml"
    tag = f"test-{unique_name}"

    def reload() -> None:
        status, body = _http(prometheus_url + "/-/reload", method="POST")
        assert status == 200, f"Prometheus reload failed (HTTP {status}): {body}"

    def load(run: str) -> str:
        shipped = yaml.safe_load(RULES.read_text())
        rules = []
        for group in shipped["groups"]:
            for rule in group["rules"]:
                rules.append({**rule, "expr": scoped(str(rule["expr"]), run), "for": FOR,
                              "labels": {**rule.get("labels", {}), "test_copy": tag}})
        stack_addresses.rules_dir.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".tmp")  # not *.yml: never read half written
        staging.write_text(yaml.safe_dump({"groups": [{"name": tag, "rules": rules}]}, sort_keys=False))
        staging.replace(path)
        reload()

        def loaded() -> bool:
            groups = _api(prometheus_url, "/api/v1/rules")["groups"]
            return any(g["name"] == tag and len(g["rules"]) == len(rules) for g in groups)

        wait_until(loaded, 20, interval_s=0.5, what=f"rule group {tag} loaded (is {path.parent} in rule_files? "
                   "scripts/local-stack start prometheus re-renders the config)")
        return tag

    yield load
    if path.exists():
        path.unlink()
        reload()


# --------------------------------------------------------------------------- the test
def test_dashboard_queries_return_data_and_alerts_fire(
    kafka_bootstrap: str, redis_url: str, prometheus_url: str, scrape_target, topic_factory, rule_copy,
    unique_name: str, tmp_path: Path,
) -> None:
    run = f"dash-{unique_name}"
    topic = topic_factory(1, prefix="dashboard")
    produce(kafka_bootstrap, topic, [*stream(3000, seed=3), *BAD])
    sets = overrides(run, topic, tmp_path / "ckpt", bootstrap=kafka_bootstrap, redis_url=redis_url,
                     extra=["trainer.probe_interval_steps=5", "trainer.progressive_eval_fraction=0.5",
                            "checkpoint.interval_s=2"])
    tag = rule_copy(run)
    log = tmp_path / "worker.log"
    replay: Replay | None = None
    worker = Worker(sets, log, "--fresh")
    workers = [worker]
    try:
        scrape_target(f"{run}-1", f"127.0.0.1:{worker.port}", {"run": run})
        worker.wait_healthy()
        wait_until(lambda: worker.sample("streamtrain_train_steps_total") > 0, 60, what="the first step")
        replay = Replay(kafka_bootstrap, topic)
        wait_until(lambda: _http(worker.base + "/readyz")[0] == 200, 30, what="/readyz 200 while training")

        # 1. Every dashboard query: a series with a finite value, once 15 s windows hold enough scrapes.
        dashboard = [q for q in deploy_queries(run=run, rate_interval=WINDOW, range_="5m")
                     if q.source == "dashboard"]
        missing: dict[str, str] = {}

        def all_have_data() -> bool:
            missing.clear()
            for q in dashboard:
                result = query_prometheus(prometheus_url, q.expr)  # raises on a query Prometheus rejects
                if not _finite(result):
                    missing[q.name] = f"{q.expr} -> {result}"
            return not missing

        try:
            wait_until(all_have_data, 60, interval_s=1.0, what="data for every dashboard query")
        except AssertionError:
            pytest.fail("dashboard queries without data:\n" + "\n".join(f"{k}: {v}" for k, v in missing.items()))
        assert len(dashboard) > 30

        # 2. Every alert expression evaluates; its probe (no threshold, this run only) returns data.
        alerts = [q for q in deploy_queries() if q.source == "alert"]
        for q in alerts:
            query_prometheus(prometheus_url, q.expr)
            probe = scoped(strip_thresholds(q.expr), run)
            assert query_prometheus(prometheus_url, probe), f"{q.name}: no data for {probe}"
        groups = {g["name"]: g for g in _api(prometheus_url, "/api/v1/rules")["groups"]}
        for name in ("streamtrain", tag):
            unhealthy = {r["name"]: r.get("lastError") for r in groups[name]["rules"] if r["health"] != "ok"}
            assert not unhealthy, f"rule group {name}: {unhealthy}"
        assert {r["name"] for r in groups[tag]["rules"]} == {q.name for q in alerts}
        dead = query_prometheus(prometheus_url, f'sum(streamtrain_events_dead_lettered_total{{run="{run}"}})')
        assert float(dead[0]["value"][1]) >= len(BAD)
        # A worker that keeps up does not trip the lag alert (else its firing below would prove nothing).
        assert _alert_state(prometheus_url, "StreamtrainConsumerLagGrowing", tag, run) == {}

        # 3. Stopped while the replay goes on: its series go stale, so only the worker-down alert can fire.
        assert worker.stop() == 0, worker.tail()
        wait_until(lambda: _alert_state(prometheus_url, "StreamtrainWorkerDown", tag, run) == {"": "firing"},
                   30, interval_s=0.5, what="StreamtrainWorkerDown firing")
        assert query_prometheus(prometheus_url, f'streamtrain_consumer_lag_messages{{run="{run}"}}') == []
        assert _alert_state(prometheus_url, "StreamtrainConsumerLagGrowing", tag, run) == {}

        # 4. Back, but unable to keep up: lag > 10k and growing fires the lag alert; /readyz says 503.
        worker = Worker([*sets, *STALLED], log)
        workers.append(worker)
        scrape_target(f"{run}-2", f"127.0.0.1:{worker.port}", {"run": run})
        worker.wait_healthy()
        wait_until(lambda: _alert_state(prometheus_url, "StreamtrainConsumerLagGrowing", tag, run)
                   == {topic: "firing"}, 60, interval_s=0.5, what="StreamtrainConsumerLagGrowing firing")
        lag = query_prometheus(prometheus_url, f'sum(streamtrain_consumer_lag_messages{{run="{run}"}})')
        assert float(lag[0]["value"][1]) > 10_000
        assert worker.sample("streamtrain_train_steps_total") == 0
        status, reason = _http(worker.base + "/readyz")
        assert status == 503 and "pending" in reason, (status, reason)
        wait_until(lambda: _alert_state(prometheus_url, "StreamtrainWorkerDown", tag, run) == {}, 15,
                   interval_s=0.5, what="StreamtrainWorkerDown resolved once a worker answers")
    finally:
        if replay is not None:
            replay.stop()
        for w in workers:
            w.stop()
