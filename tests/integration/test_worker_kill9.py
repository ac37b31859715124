"""kill -9 at random points, 20 times, during one replay: every event is trained exactly once, and the
final frequency-estimator state equals that of one uninterrupted run over the same events.

The events are produced at a steady pace (~60 s for the stream) while the worker is killed and
restarted: one kill in four hits start-up or resume, the others a random time after the worker is up,
so kills land during consumption, training and checkpoints alike. The worker runs as
``python -m streamtrain consume`` subprocesses. Exactly-once is audited with
``checkpoint.record_trained_ranges``: each checkpoint's Redis transaction appends the offset ranges
it covers, so work lost with a killed process never shows up, and the committed ranges must tile
the partition once. Timings (start, resume) are parsed from the workers' logs and printed (-s).
"""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer

from streamtrain.config import load_config
from streamtrain.state.redis_store import redis_client, state_store

from worker_support import overrides, spawn_worker, stream, assert_trained_once

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 20_000
KILLS = 20
PRODUCE_S = 60.0
EXTRA = [
    "checkpoint.interval_events=1024",
    "checkpoint.interval_s=1000",
    "checkpoint.record_trained_ranges=true",
    # Longer than any producer hiccup, so only the last (partial) batch is cut by time; see batcher.py.
    "trainer.max_batch_latency_s=5",
]


def _complete(sets: list[str], log: Path, *flags: str) -> None:
    proc = spawn_worker(sets, log, "--idle-exit", "4", *flags)
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]


def _started(log: Path) -> int:
    return log.read_text().count("worker started in") if log.exists() else 0


def _timings(log: Path, pattern: str) -> list[float]:
    return [float(m) for m in re.findall(pattern, log.read_text())]


@pytest.mark.parametrize(
    "processes", [None, 2], ids=["ingest-default", "ingest-2-processes"],
)
def test_kill9_twenty_times_trains_every_event_exactly_once(
    processes: int | None, kafka_bootstrap: str, redis_url: str, topic_factory, unique_name: str, tmp_path: Path
) -> None:
    # With two ingest processes the topic has two partitions, one per process; the processes' batches
    # then interleave in arrival order, so only the per-partition tiling and totals must match the
    # reference (the frequency arrays depend on that order and are compared with one partition).
    partitions = 1 if processes is None else processes
    extra = [*EXTRA, *([] if processes is None else [f"ingest.processes={processes}"])]
    topic = topic_factory(partitions, prefix="worker-kill9")
    values = stream(EVENTS, seed=3)

    def replay() -> None:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=10)
        chunk = 100
        for start in range(0, EVENTS, chunk):
            for value in values[start:start + chunk]:
                producer.send(topic, value=value, partition=(start // chunk) % partitions)
            producer.flush()
            time.sleep(PRODUCE_S * chunk / EVENTS)
        producer.close()

    producer_thread = threading.Thread(target=replay, daemon=True)
    producer_thread.start()
    rng = np.random.default_rng(int(unique_name, 16) % 2**32)

    # The run under test: SIGKILL after a random delay, 20 times, then run to the end.
    victim = f"kill-{unique_name}"
    victim_sets = overrides(victim, topic, tmp_path / "ckpt", bootstrap=kafka_bootstrap, redis_url=redis_url,
                            extra=[*extra, f"kafka.group_instance_id=w-{victim}"])
    log = tmp_path / "victim.log"
    started = time.monotonic()
    for attempt in range(KILLS):
        started_before = _started(log)
        proc = spawn_worker(victim_sets, log, *(["--fresh"] if attempt == 0 else []))
        if attempt % 4 == 3:
            time.sleep(float(rng.uniform(0.5, 3.0)))  # during start-up or resume
        else:
            # During consumption, training or a checkpoint: a random time after the worker is up
            # (start-up alone takes seconds, so delays from spawn would mostly hit imports).
            deadline = time.monotonic() + 30
            while _started(log) == started_before and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(float(rng.uniform(0.2, 4.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    producer_thread.join(120)
    _complete(victim_sets, log)
    victim_s = time.monotonic() - started

    # The reference: one uninterrupted run over the same topic.
    reference = f"ref-{unique_name}"
    ref_sets = overrides(reference, topic, tmp_path / "ckpt", bootstrap=kafka_bootstrap, redis_url=redis_url,
                         extra=extra)
    _complete(ref_sets, tmp_path / "reference.log", "--fresh")

    victim_cfg = load_config(overrides=victim_sets, environ={})
    ref_cfg = load_config(overrides=ref_sets, environ={})
    victim_store = state_store(victim_cfg, redis_client(victim_cfg))
    ref_store = state_store(ref_cfg, redis_client(ref_cfg))

    # Exactly once: per partition, the committed ranges tile [0, end) without gap or overlap.
    ends = {p: sum(1 for start in range(0, EVENTS, 100) if (start // 100) % partitions == p) * 100
            for p in range(partitions)}
    assert_trained_once(victim_store, topic, {p: (0, end) for p, end in ends.items()}, every_message_an_event=True)
    ranges = victim_store.trained_ranges()
    got, want = victim_store.load(), ref_store.load()
    assert got is not None and want is not None
    assert got.events == want.events == EVENTS
    assert got.offsets == want.offsets == {(topic, p): ends[p] for p in range(partitions)}
    if partitions > 1:
        assert sum(1 for r in ranges) >= EVENTS // 256
    else:
        assert got.step == want.step
        # Same batches in the same order → identical streaming frequency estimates.
        freq = sorted(k for k in want.shared if k.startswith("frequency."))
        assert freq, f"no frequency arrays in shared state: {sorted(want.shared)}"
        assert sorted(k for k in got.shared if k.startswith("frequency.")) == freq
        for key in freq:
            np.testing.assert_array_equal(got.shared[key], want.shared[key], err_msg=key)

    # The kills really interrupted the stream: many different resume points.
    resumed_at = set(re.findall(r"resumed from checkpoint \d+ \(\S+\): step \d+, (\d+) events", log.read_text()))
    assert len(resumed_at) >= 5, f"kills did not spread over the stream: resumed at {sorted(resumed_at)}"

    starts = _timings(log, r"worker started in ([0-9.]+) s")
    resumes = _timings(log, r"resumed from checkpoint \d+ .* in ([0-9.]+) s")
    print(
        f"\nkill -9 x{KILLS}: {victim_s:.0f} s in all; worker start median {np.median(starts):.2f} s "
        f"(n={len(starts)}), resume median {np.median(resumes) if resumes else float('nan'):.2f} s, "
        f"{len(ranges)} committed batches, {len(resumed_at)} distinct resume points"
    )
