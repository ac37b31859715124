"""The worker's endpoints: the real Prometheus scrapes every metric family; /healthz and /readyz answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamtrain.events import encode_event
from streamtrain.localstack import query_prometheus
from streamtrain.metrics import Metrics
from worker_support import config_for, produce, run_worker, stop_worker, stream, wait_until, http_get

pytestmark = pytest.mark.integration




def _expected_series() -> set[str]:
    """Every sample name the worker's families expose (``_created`` aside)."""
    names: set[str] = set()
    registry = CollectorRegistry()
    Metrics(registry)
    for family in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "info": ["_info"]}
        for suffix in suffixes.get(family.type, [""]):
            names.add(family.name + suffix)
    return names


def test_prometheus_scrapes_every_metric_family(
    kafka_bootstrap: str, redis_url: str, prometheus_url: str, scrape_target, topic_factory, unique_name: str,
    tmp_path: Path,
) -> None:
    topic = topic_factory(1, prefix="worker-metrics")
    produce(kafka_bootstrap, topic, [*stream(3000, seed=1), b"not json", encode_event("u", "i", 1.0)])
    config = config_for(unique_name, topic, tmp_path, bootstrap=kafka_bootstrap, redis_url=redis_url,
                        extra=["trainer.probe_interval_steps=2", "trainer.progressive_eval_fraction=1.0",
                               "checkpoint.interval_events=1024"])
    parts = run_worker(config, fresh=True, idle_exit_s=None, registry=CollectorRegistry())
    worker, http = parts.worker, parts.http
    assert http is not None and http.port > 0
    base = f"http://127.0.0.1:{http.port}"
    try:
        assert http_get(base + "/healthz")[0] == 200
        wait_until(lambda: worker.progress.events >= 3001, 60, what="all events trained")
        wait_until(lambda: http_get(base + "/readyz")[0] == 200, 20, what="/readyz 200")

        scrape_target(f"worker-{unique_name}", f"127.0.0.1:{http.port}", {"run": unique_name})
        expected = _expected_series()

        def scraped() -> set[str]:
            result = query_prometheus(prometheus_url, f'count by (__name__) ({{run="{unique_name}"}})')
            return {series["metric"]["__name__"] for series in result}

        wait_until(lambda: expected <= scraped(), 30, interval_s=1.0,
                   what=f"every family scraped; missing {sorted(expected - scraped())}")
        lag = query_prometheus(prometheus_url, f'streamtrain_consumer_lag_messages{{run="{unique_name}"}}')
        assert lag and {s["metric"]["topic"] for s in lag} == {topic}
    finally:
        worker.request_stop()
        stop_worker(parts)
    assert worker.fatal is None
