"""A broker outage of ~30 s is visible: ``/readyz`` fails within ``kafka.broker_unreachable_s`` (+ one probe),
``streamtrain_broker_connected`` drops to 0, the last-success timestamp stops, the error counters move;
everything returns when the broker does. ``/metrics`` and ``/readyz`` are scraped over HTTP during the
outage. Runs a private broker (like test_worker_broker_restart.py) so the shared one is never stopped.

Before: with the broker down for ~45 s ``/readyz`` stayed ``ok``, the lag gauges froze and no poll or
connection metric moved.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker_support import local_stack_kafka, private_broker_env, config_for, produce, run_worker, stop_worker, stream, wait_until, http_get, create_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = 30.0
UNREACHABLE_S = 5.0




def _scrape(base: str) -> dict[str, float]:
    """``name{labels}`` → value; label order as exposed."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(http_get(base + "/metrics")[1]):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_broker_outage_fails_readyz_and_moves_the_health_metrics(
    redis_url: str, unique_name: str, tmp_path: Path
) -> None:
    env, bootstrap = private_broker_env(tmp_path / "stack")
    local_stack_kafka(env, "start")
    try:
        topic = f"worker-outage-{unique_name}"
        create_topic(bootstrap, topic)
        values = stream(4000, seed=29)
        produce(bootstrap, topic, values[:3000])
        config = config_for(unique_name, topic, tmp_path / "ckpt", bootstrap=bootstrap, redis_url=redis_url,
                            extra=["kafka.lag_interval_s=0.5", f"kafka.broker_unreachable_s={UNREACHABLE_S}",
                                   "trainer.max_batch_latency_s=0.5", "checkpoint.interval_events=1024"])
        parts = run_worker(config, fresh=True)
        worker = parts.worker
        base = f"http://127.0.0.1:{parts.http.port}"
        wait_until(lambda: worker.progress.events >= 3000, 60, what="the first 3000 events trained")
        wait_until(lambda: http_get(base + "/readyz")[0] == 200, 20, what="ready before the outage")
        before = _scrape(base)
        assert before["streamtrain_broker_connected"] == 1

        local_stack_kafka(env, "stop")
        stopped_wall = time.time()
        stopped = time.monotonic()
        not_ready_after = None
        reasons, scrapes = [], []
        while time.monotonic() - stopped < OUTAGE_S:
            status, body = http_get(base + "/readyz")
            if status != 200 and not_ready_after is None:
                not_ready_after = time.monotonic() - stopped
            if status != 200:
                reasons.append(body.strip())
            scrapes.append(_scrape(base))
            time.sleep(0.5)
        during = scrapes[-1]
        assert not_ready_after is not None, "/readyz stayed 200 for the whole outage"
        # Bound + one end-offsets probe (0.5 s interval, 2 s timeout) + scheduling slack on a loaded machine.
        assert not_ready_after <= UNREACHABLE_S + 8, f"/readyz failed only after {not_ready_after:.1f} s"
        assert any("unreachable" in r for r in reasons), reasons[:3]
        assert during["streamtrain_broker_connected"] == 0
        assert during["streamtrain_broker_last_success_timestamp_seconds"] <= stopped_wall + 3
        errors = sum(v for k, v in during.items() if k.startswith("streamtrain_kafka_errors_total"))
        assert errors > sum(v for k, v in before.items() if k.startswith("streamtrain_kafka_errors_total"))
        assert during["streamtrain_kafka_errors_total{operation=end_offsets}"] >= 3  # one per probe
        assert worker.loop_thread.is_alive() and worker.source.alive()  # an outage is not a crash

        local_stack_kafka(env, "start")
        restarted_wall = time.time()
        wait_until(lambda: http_get(base + "/readyz")[0] == 200, 90, what="/readyz ok after the broker is back")
        after = _scrape(base)
        assert after["streamtrain_broker_connected"] == 1
        assert after["streamtrain_broker_last_success_timestamp_seconds"] >= restarted_wall - 1
        produce(bootstrap, topic, values[3000:])
        wait_until(lambda: worker.progress.events >= 4000, 90, what="events after the outage trained")
        worker.request_stop()
        stop_worker(parts, timeout_s=60)
        assert worker.fatal is None and worker.source.fatal is None
        print(f"\nbroker outage {OUTAGE_S:.0f} s: /readyz 503 after {not_ready_after:.1f} s "
              f"(bound {UNREACHABLE_S:g} s); {len(reasons)} failing probes")
    finally:
        local_stack_kafka(env, "stop")
