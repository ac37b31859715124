"""``e2e`` suite of ``bench/run``: replay → Kafka → ``streamtrain consume`` against the trainer alone.

Per sampler, on a fresh topic:

* ``live``: ``streamtrain replay`` (Gowalla, shuffled) and ``streamtrain consume --fresh --idle-exit``
  start together, as separate processes: the whole pipeline;
* ``backlog``: a second worker (fresh run, fresh group) trains the same, now full, topic: the worker's
  own ceiling when data is waiting;
* ``standalone``: this process's Trainer, same config, on the same decoded events in batches of B
  (probe every ``probe_interval_steps`` as the worker does); no Kafka, no Redis, no metrics.

Worker rates come from scraping its /metrics every 0.25 s: events trained per second between the first
scrape that shows a trained event and the first that shows the final count (start-up and the idle
exit are outside the window), and over the same window the share of time the training loop waited for
a ready batch (``streamtrain_trainer_wait_seconds_total``) and spent in steps
(``streamtrain_step_duration_seconds_sum``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from report import Table, fmt_rate, fmt_ratio
from suite_misc import GOWALLA

from streamtrain.localstack import free_port

__all__ = ["e2e_tables"]

_SCRAPE_S = 0.25
_METRICS = {
    "streamtrain_events_trained_total": "trained",
    "streamtrain_trainer_wait_seconds_total": "wait",
    "streamtrain_step_duration_seconds_sum": "busy",
}


@dataclass
class WorkerRun:
    events: int
    rate: float
    wait: float  # share of the window the loop waited for data
    busy: float  # share of the window inside train steps
    window_s: float


def _scrape(port: int) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1.0) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in _METRICS:
            values[_METRICS[name]] = float(value)
    return values if len(values) == len(_METRICS) else None


def run_worker(overrides: list[str], idle_exit_s: float, log_path: Path, threads: int = 0) -> WorkerRun:
    """Run ``streamtrain consume`` to its idle exit while scraping its metrics; raises on failure.
    ``threads`` > 0 sets the worker's torch threads (OMP_NUM_THREADS), as --threads does for this process."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamtrain", *(a for o in overrides + [f"metrics.port={port}"] for a in ("--set", o)),
           "consume", "--fresh", "--idle-exit", str(idle_exit_s)]
    samples: list[tuple[float, dict[str, float]]] = []
    with open(log_path, "w") as log:
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            values = _scrape(port)
            if values is not None:
                samples.append((time.perf_counter(), values))
            time.sleep(_SCRAPE_S)
    if proc.returncode != 0:
        tail = log_path.read_text()[-2000:]
        raise RuntimeError(f"streamtrain consume exited {proc.returncode}:\n{tail}")
    trained = [s for s in samples if s[1]["trained"] > 0]
    if len(trained) < 2:
        raise RuntimeError(f"too few metric scrapes with trained events ({len(trained)}); see {log_path}")
    final = trained[-1][1]["trained"]
    t_a, a = trained[0]
    t_b, b = next(s for s in trained if s[1]["trained"] == final)
    window = max(t_b - t_a, 1e-9)
    return WorkerRun(
        events=int(final), rate=(b["trained"] - a["trained"]) / window, wait=(b["wait"] - a["wait"]) / window,
        busy=(b["busy"] - a["busy"]) / window, window_s=window,
    )


def _read_topic(bootstrap: str, topic: str) -> Any:
    """Every event of ``topic``, decoded as the worker decodes them, in one EventBatch."""
    from kafka import KafkaConsumer, TopicPartition

    from streamtrain.events import EventBatch, decode_values

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                             max_poll_records=5000)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    left = {tp for tp in tps if end[tp] > 0}
    chunks = []
    while left:
        for tp, records in consumer.poll(timeout_ms=500).items():
            chunks.append(decode_values([r.value for r in records]).batch)
            if records[-1].offset + 1 >= end[tp]:
                left.discard(tp)
    consumer.close()
    return EventBatch.concat(chunks)


def standalone_rate(config: Any, events: Any) -> float:
    """Events/s of a Trainer alone on ``events`` cut in batches of ``trainer.batch_size``, timed from
    the end of the first step (as the worker's window starts at its first trained scrape)."""
    from streamtrain.training.trainer import Trainer

    trainer = Trainer(config)
    size, interval = config.trainer.batch_size, config.trainer.probe_interval_steps
    started, counted = 0.0, 0
    for lo in range(0, len(events), size):
        batch = events.slice(lo, min(lo + size, len(events)))
        stats = trainer.train_step(batch)
        if interval and stats.step % interval == 0:
            trainer.probe(batch.slice(0, config.trainer.probe_batch_size))
        if lo == 0:
            started = time.perf_counter()
        else:
            counted += len(batch)
    return counted / max(time.perf_counter() - started, 1e-9)


def _replay(bootstrap: str, topic: str, events: int, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streamtrain", "replay", str(GOWALLA), "--format", "gowalla", "--limit", str(events),
           "--topic", topic, "--bootstrap-servers", bootstrap, "--progress", "none", "--summary-format", "json"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log_path, "w"), text=True)


def e2e_tables(opts: Any) -> list[Table]:
    from kafka.admin import KafkaAdminClient, NewTopic

    from streamtrain.config import load_config
    from streamtrain.localstack import StackAddresses
    from streamtrain.state.redis_store import redis_client, state_store

    stack = StackAddresses.from_env()
    bootstrap, n, size, cap = stack.kafka_bootstrap, opts.e2e_events, opts.e2e_batch_size, opts.e2e_capacity
    table = Table(
        f"e2e: replay -> Kafka -> streamtrain consume vs the trainer alone ({n:,} Gowalla events, B={size}, "
        f"{cap:,} users/items capacity, {opts.device})",
        ["sampler", "mode", "events trained", "events/s", "x standalone", "trainer waits", "in steps",
         "replay events/s"],
    )
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-e2e")
    topics: list[str] = []
    configs = []
    try:
        with tempfile.TemporaryDirectory(prefix="streamtrain-bench-e2e-") as tmp:
            for sampler in opts.e2e_samplers:
                topic = f"bench-e2e-{uuid.uuid4().hex[:8]}"
                admin.create_topics([NewTopic(topic, 2, 1)])
                topics += [topic, f"{topic}.dlq"]

                def overrides(run: str) -> list[str]:
                    return [
                        f"run.name={run}", f"run.device={opts.device}", "run.log_level=WARNING",
                        f"kafka.topic={topic}", f'kafka.bootstrap_servers=["{bootstrap}"]', f"kafka.group_id={run}",
                        f"kafka.dead_letter_topic={topic}.dlq", f"redis.url={stack.redis_url}",
                        "redis.key_prefix=bench", f"checkpoint.dir={tmp}/{run}", f"sampler.name={sampler}",
                        f"trainer.batch_size={size}", f"model.user_capacity={cap}", f"model.item_capacity={cap}",
                    ]

                run_live, run_backlog = (f"bench-e2e-{uuid.uuid4().hex[:8]}" for _ in range(2))
                replay = _replay(bootstrap, topic, n, Path(tmp, "replay.log"))
                live = run_worker(overrides(run_live), 8.0, Path(tmp, "live.log"), opts.threads)
                out, _ = replay.communicate(timeout=600)
                if replay.returncode != 0:
                    raise RuntimeError(f"streamtrain replay exited {replay.returncode}")
                replay_rate = json.loads(out)["events_per_s"]
                backlog = run_worker(overrides(run_backlog), 3.0, Path(tmp, "backlog.log"), opts.threads)
                run_old = f"bench-e2e-{uuid.uuid4().hex[:8]}"
                # The path before issue 12, side by side: decoding on a thread of the trainer process.
                old = run_worker([*overrides(run_old), "ingest.processes=0", "kafka.client=kafka-python"], 3.0,
                                 Path(tmp, "backlog-thread.log"), opts.threads)
                config = load_config(overrides=overrides(f"bench-e2e-{uuid.uuid4().hex[:8]}"), environ={})
                configs += [load_config(overrides=overrides(r), environ={}) for r in (run_live, run_backlog, run_old)]
                alone = standalone_rate(config, _read_topic(bootstrap, topic))
                for mode, w in (("live (replay running)", live), ("backlog (topic full)", backlog),
                                ("backlog, decode thread (old path)", old)):
                    table.add(sampler, mode, f"{w.events:,}", fmt_rate(w.rate), fmt_ratio(w.rate / alone),
                              f"{w.wait:.0%}", f"{w.busy:.0%}", fmt_rate(replay_rate) if mode.startswith("live") else "-")
                table.add(sampler, "standalone trainer", f"{n:,}", fmt_rate(alone), fmt_ratio(1.0), "-", "100%", "-")
    finally:
        client = None
        for config in configs:
            client = client or redis_client(config)
            state_store(config, client).clear()
        if client is not None:
            client.close()
        existing = set(admin.list_topics())
        try:
            admin.delete_topics([t for t in topics if t in existing])
        except Exception as exc:  # noqa: BLE001 - leftover bench topics are harmless
            print(f"(could not delete e2e topics: {exc})", file=sys.stderr)
        admin.close()
    table.notes += [
        "worker rates: between the first and the last metric scrape that moved events_trained (start-up and idle "
        "exit excluded); trainer waits / in steps: share of that window from streamtrain_trainer_wait_seconds_total "
        "and streamtrain_step_duration_seconds_sum",
        "live/backlog: the default worker (ingest processes, kafka.client=confluent); decode thread: "
        "ingest.processes=0 and kafka-python, the path before issue 12",
        f"worker and replay are separate processes on the same {os.cpu_count()} cores as the broker; checkpoints, "
        "the bias probe and progressive evaluation run with their defaults in the worker and the standalone loop",
    ]
    return [table]
