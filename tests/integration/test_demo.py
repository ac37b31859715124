"""``streamtrain demo`` end to end on a small sample against the real stack (Kafka, Redis, Prometheus)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from streamtrain.localstack import StackAddresses


def test_demo_trains_every_replayed_event_and_reports(
    tmp_path: Path, unique_name: str, kafka_bootstrap: str, redis_url: str, redis_client: Any,
    prometheus_url: str, stack_addresses: StackAddresses, repo_root: Path,
) -> None:
    run = f"test-demo-{unique_name}"
    report_path = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTRAIN_")}
    env["STREAMTRAIN_STACK_DIR"] = str(stack_addresses.stack_dir)  # the scrape target goes where Prometheus looks
    argv = [
        sys.executable, "-m", "streamtrain",
        "--set", f'kafka.bootstrap_servers=["{kafka_bootstrap}"]', "--set", f"redis.url={redis_url}",
        "--set", f"redis.key_prefix=test-demo-{unique_name}",
        "--set", "metrics.port=0",  # a demo or another test may hold 9464
        "--set", "run.device=cpu",
        "demo", "--users", "800", "--epochs", "1", "--run", run, "--out", str(tmp_path / "runs"),
        "--idle-exit", "3", "--max-seconds", "60", "--json-out", str(report_path),
    ]
    try:
        done = subprocess.run(argv, cwd=repo_root, env=env, capture_output=True, text=True, timeout=150)
    finally:  # the shared Redis is never flushed: drop only this run's namespace
        for key in redis_client.scan_iter(match=f"test-demo-{unique_name}:*"):
            redis_client.delete(key)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["run"] == run and report["users_sampled"] == 800
    assert report["events_replayed"] > 15_000  # 800 users x ~27 events
    assert report["events_trained"] == report["events_replayed"] and report["drained"]
    assert report["steps"] >= report["events_trained"] // 1024
    assert report["offline"]["test_users"] == 800 and report["offline"]["unknown_users"] == 0
    assert report["offline"]["metrics"]["recall@20"] > 0
    # Prometheus scraped the worker under the run's label, up to the final count.
    assert report["prometheus"]["events_trained_scraped"] == report["events_trained"]
    assert Path(report["chart"]).is_file() and Path(report["chart"]).stat().st_size > 10_000
    assert Path(report["checkpoint"]).is_file()
    assert json.loads((Path(report["export"]) / "manifest.json").read_text())["source"]["run"] == run
    assert "offline on" in done.stdout and "Recall" in done.stdout
    # The scrape target was removed again.
    assert not list(stack_addresses.targets_dir.glob(f"*{run}*.json"))
