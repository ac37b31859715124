"""A 30 s broker outage under ``streamtrain consume`` (a subprocess, the real logging set-up): the Kafka
clients' repeated lines are held back to one per cause per ``run.log_repeat_interval_s`` with a count, while
``/readyz`` and the broker gauge still show the outage within ``kafka.broker_unreachable_s``.

Before: ~830 identical librdkafka ``Connect … failed`` lines (one every 50 ms) among ~975 warnings in 45 s.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from worker_support import local_stack_kafka, overrides, private_broker_env, produce, spawn_worker, stream, wait_until, http_get, create_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = 30.0
UNREACHABLE_S = 8.0
INTERVAL_S = 10.0




def test_broker_outage_logs_one_line_per_cause_per_interval(redis_url: str, unique_name: str, tmp_path: Path) -> None:
    env, bootstrap = private_broker_env(tmp_path / "stack")
    local_stack_kafka(env, "start")
    log = tmp_path / "worker.log"
    proc = None
    try:
        topic = f"worker-outage-logs-{unique_name}"
        create_topic(bootstrap, topic)
        values = stream(2000, seed=31)
        produce(bootstrap, topic, values[:1000])
        sets = overrides(unique_name, topic, tmp_path / "ckpt", bootstrap=bootstrap, redis_url=redis_url, extra=[
            "kafka.lag_interval_s=1", f"kafka.broker_unreachable_s={UNREACHABLE_S}", f"run.log_repeat_interval_s={INTERVAL_S}",
            "trainer.max_batch_latency_s=0.5", "checkpoint.interval_events=512"])
        proc = spawn_worker(sets, log, "--fresh")
        wait_until(lambda: "metrics on http://" in (log.read_text() if log.exists() else "") or proc.poll() is not None,
                   90, what="the metrics server")
        base = re.search(r"metrics on (http://[0-9.:]+)/metrics", log.read_text()).group(1)
        wait_until(lambda: http_get(base + "/readyz")[0] == 200, 90, what="ready before the outage")

        mark = len(log.read_text().splitlines())
        local_stack_kafka(env, "stop")
        stopped = time.monotonic()
        not_ready_after = disconnected_after = None
        while time.monotonic() - stopped < OUTAGE_S:
            status, _ = http_get(base + "/readyz")
            if status == 503 and not_ready_after is None:
                not_ready_after = time.monotonic() - stopped
            if disconnected_after is None and re.search(r"^streamtrain_broker_connected 0", http_get(base + "/metrics")[1], re.M):
                disconnected_after = time.monotonic() - stopped
            time.sleep(0.5)
        outage_lines = log.read_text().splitlines()[mark:]
        local_stack_kafka(env, "start")
        wait_until(lambda: http_get(base + "/readyz")[0] == 200, 120, what="/readyz ok after the broker is back")
        produce(bootstrap, topic, values[1000:])
        metrics = http_get(base + "/metrics")[1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]

        assert not_ready_after is not None and not_ready_after <= UNREACHABLE_S + 8, not_ready_after
        assert disconnected_after is not None and disconnected_after <= UNREACHABLE_S + 8, disconnected_after
        client = [line for line in outage_lines if re.search(r" (WARNING|ERROR) (kafka|streamtrain\.ingest|streamtrain\.worker\.source)", line)]
        # At most one line per cause per 10 s interval over 30 s (a few causes), instead of hundreds.
        assert len(client) <= 40, "\n".join(client[:60])
        causes: dict[str, int] = {}
        for line in client:
            cause = re.sub(r"\d+", "#", line.split(" ", 3)[-1])
            cause = re.sub(r" \[# more like this.*\]$", "", cause)
            causes[cause] = causes.get(cause, 0) + 1
        assert max(causes.values()) <= OUTAGE_S / INTERVAL_S + 2, causes
        assert any("more like this in the last" in line for line in log.read_text().splitlines()[mark:]), client
        held = sum(float(v) for v in re.findall(r"^streamtrain_log_lines_suppressed_total\{[^}]*\} ([0-9.e+]+)", metrics, re.M))
        assert held > 0
        print(f"\noutage {OUTAGE_S:.0f} s: {len(client)} client warning lines, {held:.0f} held back; /readyz 503 after "
              f"{not_ready_after:.1f} s, broker gauge 0 after {disconnected_after:.1f} s (bound {UNREACHABLE_S:g} s)")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        local_stack_kafka(env, "stop")
