"""A full checkpoint disk: every failed attempt is counted and logged as a failure (not a crash), leaves no
temp file, training goes on, and checkpoints succeed again once space returns.

Checkpoints go to a small tmpfs mounted for the test (root only); it is filled with a ballast file,
then the ballast is removed. ``torch.save`` raises RuntimeError (not OSError) when the disk is full,
which the checkpoint used to let through as a "crash", uncounted, with the partial temp file left.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamtrain.state.redis_store import redis_client, state_store
from worker_support import produce_in_background, config_for, run_worker, stop_worker, stream, wait_until, assert_trained_once

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 9000
PRODUCE_S = 24.0


@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path) -> None:
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as handle:
        while True:
            try:
                handle.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    with open(path, "ab", buffering=0) as handle:  # the last few KiB too
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass


def test_full_disk_fails_checkpoints_cleanly_then_recovers(
    kafka_bootstrap: str, redis_url: str, topic_factory, unique_name: str, small_disk: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="streamtrain")
    topic = topic_factory(1, prefix="worker-disk")
    values = stream(EVENTS, seed=17)

    producer_thread = produce_in_background(kafka_bootstrap, topic, values, PRODUCE_S)
    config = config_for(unique_name, topic, small_disk / "ckpt", bootstrap=kafka_bootstrap, redis_url=redis_url,
                        extra=["checkpoint.interval_events=512", "checkpoint.interval_s=1", "checkpoint.keep=2",
                               "trainer.max_batch_latency_s=0.5", "checkpoint.record_trained_ranges=true"])
    registry = CollectorRegistry()

    def count(outcome: str) -> float:
        return registry.get_sample_value("streamtrain_checkpoints_total", {"outcome": outcome}) or 0.0

    def temporaries() -> list[str]:
        run_dir = small_disk / "ckpt" / config.run.name
        return [p.name for p in run_dir.glob(".*.tmp")] if run_dir.is_dir() else []

    parts = run_worker(config, fresh=True, registry=registry)
    worker = parts.worker
    ballast = small_disk / "ballast"
    try:
        wait_until(lambda: count("ok") >= 1, 60, what="a first checkpoint")
        _fill(ballast)
        events_when_full = worker.progress.events
        leftovers: list[str] = []

        def failed_three_times() -> bool:
            leftovers.extend(temporaries())  # sampled all along: a failed attempt must clean up at once
            return count("failed") >= 3

        wait_until(failed_three_times, 60, interval_s=0.05, what="three failed checkpoints on the full disk")
        ok_while_full = count("ok")
        assert worker.loop_thread.is_alive() and worker.fatal is None
        assert worker.progress.events > events_when_full, "training stopped while the disk was full"
        # Attempts still running when sampled may own a temp file; none may outlive its attempt.
        wait_until(lambda: not temporaries(), 10, what="no temp file left by failed attempts")
        stale = [n for n in set(leftovers) if leftovers.count(n) > 40]  # seen for > ~2 s
        assert not stale, f"temp files of failed attempts lingered: {stale}"

        os.unlink(ballast)  # space returns
        wait_until(lambda: count("ok") > ok_while_full, 60, what="a checkpoint after space returned")
        producer_thread.join(120)
        wait_until(lambda: worker.progress.events >= EVENTS, 120, what="every event trained")
        worker.request_stop()
        stop_worker(parts, timeout_s=60)
    finally:
        ballast.unlink(missing_ok=True)
    assert worker.fatal is None and worker.source.fatal is None
    assert not temporaries()

    messages = [r.getMessage() for r in caplog.records if r.name.startswith("streamtrain")]
    failures = [m for m in messages if "failed" in m and "checkpoint" in m and "cannot write" in m]
    assert failures, "no checkpoint failure was logged"
    assert not [m for m in messages if "crashed" in m], "a full disk was logged as a crash"
    assert any("RuntimeError" in m or "No space left" in m for m in failures), failures[:3]

    store = state_store(config, redis_client(config))
    stored = store.load()
    assert stored is not None and stored.events == EVENTS and stored.offsets == {(topic, 0): EVENTS}
    assert_trained_once(store, topic, {0: (0, EVENTS)})
    store.clear()
