"""Replay throughput: events/s produced to the real local broker, old and new path side by side.

Run:  scripts/local-stack start kafka
      python3 bench/bench_replay.py [--events 200000] [--repeat 2] [--partitions 3]
                                    [--data streamtrain/data/gowalla/train.txt.gz] [--bootstrap 127.0.0.1:9092]

The input is the Gowalla training file (``user item item ...``, gzip), read and shuffled once the
way ``streamtrain replay --format gowalla`` does, cut to --events. Each row produces the same
events to a fresh topic (acks=all, idempotent, keyed by user) and is timed from the first send to
the end of the final flush; the best of --repeat interleaved runs is shown, with this process's
CPU time per event (the sending thread and the client's I/O threads; steadier than events/s on a
shared machine, and the broker's CPU is not in it).

Rows: the old path (kafka-python ``KafkaProducer``, a ``ReplayEvent`` and ``encode_event`` per
event: the loop as it was before issue 19, kept here as ``_produce_old``) and the new one (``EventLog.chunks`` -> ``ChunkEncoder`` -> librdkafka);
"encode only" rows are the ceilings without a broker; "gz file -> topic" adds reading and
ordering the file (the whole ``streamtrain replay`` run) to the new path. Topics are deleted at
the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import confluent_kafka
import kafka
from kafka.admin import KafkaAdminClient, NewTopic
from report import cpu_model

from streamtrain.config import KafkaConfig
from streamtrain.data.gowalla import gowalla_file
from streamtrain.events import InvalidEventError, encode_event
from streamtrain.replay import (
    ProducerSettings,
    kafka_producer,
    kafka_python_producer,
    produce_chunks,
    read_log,
)
from streamtrain.replay.encoding import Encoded

OLD_DEFAULT = "old: kafka-python, linger 20 ms, 256 KiB"
NEW_DEFAULT = "new: librdkafka, linger 20 ms, 256 KiB"
# name -> (producer factory or None for no broker, path: "old" per event, "new" chunks)
ROWS: dict[str, tuple[Callable[[KafkaConfig], Any] | None, str]] = {
    "old: encode only (no broker)": (None, "old"),
    "new: encode only (no broker)": (None, "new"),
    OLD_DEFAULT: (lambda cfg: kafka_python_producer(cfg, ProducerSettings(), client_id="bench-replay"), "old"),
    NEW_DEFAULT: (lambda cfg: kafka_producer(cfg, ProducerSettings(), client_id="bench-replay"), "new"),
    "new: librdkafka, linger 5 ms, 1 MiB": (
        lambda cfg: kafka_producer(cfg, ProducerSettings(linger_ms=5, batch_bytes=1 << 20), client_id="bench-replay"),
        "new"),
    "new: librdkafka, linger 20 ms, lz4": (
        lambda cfg: kafka_producer(cfg, ProducerSettings(compression="lz4"), client_id="bench-replay"), "new"),
}
END_TO_END = "new: gz file -> topic (read + order + produce)"


class _NullSink:
    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> None:
        return None

    def send_batch(self, topic: str, encoded: Encoded) -> None:
        return None

    def failures(self) -> list:
        return []

    def flush(self, timeout: float | None = None) -> None:
        return None


class _PerMessageNull:
    """No broker, old path: one send per event (what kafka-python's producer is called with)."""

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> None:
        return None

    def flush(self, timeout: float | None = None) -> None:
        return None


class _OldStats:
    def __init__(self, produced: int, failures: list[str], elapsed_s: float) -> None:
        self.produced, self.delivery_failures, self.elapsed_s = produced - len(failures), len(failures), elapsed_s
        self._failures = failures

    @property
    def events_per_s(self) -> float:
        return self.produced / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def failure_message(self) -> str:
        return f"{len(self._failures)} failed, first: {self._failures[0]}"


def _produce_old(log: Any, order: Any, n: int, sink: Any, topic: str) -> _OldStats:
    """The replay loop before issue 19 (commit de7d091's produce_events, unpaced): a ReplayEvent per
    event, encode_event (dict + validation + orjson) per event, one send with an errback per event."""
    failures: list[str] = []
    started = time.monotonic()
    sent = 0
    for event in log.events(order, limit=n, time_origin=1_600_000_000.0):
        extras = event.extras
        try:
            if extras is None:
                value = encode_event(event.user_id, event.item_id, event.event_time)
            else:
                value = encode_event(event.user_id, event.item_id, event.event_time, event_type=extras.event_type,
                                     weight=extras.weight, context=extras.context)
        except InvalidEventError:
            continue
        future = sink.send(topic, value=value, key=event.user_id.encode("utf-8"))
        sent += 1
        if future is not None and hasattr(future, "add_errback"):
            future.add_errback(lambda exc: failures.append(repr(exc)))
    sink.flush(120.0)
    return _OldStats(sent, failures, time.monotonic() - started)


def _run_row(name: str, log: Any, order: Any, n: int, cfg: KafkaConfig, admin: Any, partitions: int,
             topics: list[str]) -> tuple[Any, float]:
    factory, path = ROWS[name]
    topic = "none"
    sink: Any = _PerMessageNull() if path == "old" else _NullSink()
    if factory is not None:
        topic = f"bench-replay-{uuid.uuid4().hex[:10]}"
        admin.create_topics([NewTopic(topic, partitions, 1)], wait_for_metadata=True)
        topics.append(topic)
        sink = factory(cfg)
    cpu_before = time.process_time()
    try:
        if path == "old":
            stats = _produce_old(log, order, n, sink, topic)
        else:
            stats = produce_chunks(log.chunks(order, limit=n, time_origin=1_600_000_000.0), sink, topic)
    finally:
        if factory is not None:
            sink.close()
    if stats.delivery_failures:
        raise RuntimeError(f"{name}: {stats.failure_message()}")
    return stats, (time.process_time() - cpu_before) / max(stats.produced, 1) * 1e6


def _end_to_end(data: Path, n: int, cfg: KafkaConfig, admin: Any, partitions: int, topics: list[str],
                seed: int) -> tuple[float, float]:
    """The whole replay run of the new path: read the gz file, shuffle, produce (events/s, CPU µs/event)."""
    topic = f"bench-replay-{uuid.uuid4().hex[:10]}"
    admin.create_topics([NewTopic(topic, partitions, 1)], wait_for_metadata=True)
    topics.append(topic)
    sink = kafka_producer(cfg, ProducerSettings(), client_id="bench-replay")
    began, cpu_before = time.perf_counter(), time.process_time()
    try:
        log, _ = read_log([data], fmt="gowalla")
        order = log.order("shuffle", seed)
        stats = produce_chunks(log.chunks(order, limit=n, time_origin=1_600_000_000.0), sink, topic)
    finally:
        sink.close()
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu_before
    return stats.produced / wall, cpu / max(stats.produced, 1) * 1e6


def measure(events: int, repeat: int, partitions: int, data: Path, bootstrap: str, seed: int = 0) -> dict:
    """Best events/s and CPU µs/event per row (``rows``: name -> (events/s, µs)), plus the input's size
    and read time. Produces to fresh topics on ``bootstrap`` and deletes them."""
    began = time.perf_counter()
    log, _ = read_log([data], fmt="gowalla")
    order = log.order("shuffle", seed)
    read_s = time.perf_counter() - began
    n = min(events, len(log))
    cfg = KafkaConfig(bootstrap_servers=[bootstrap])
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-replay")
    topics: list[str] = []
    best: dict[str, float] = {}
    cpu_us: dict[str, float] = {}
    try:
        for _ in range(repeat):
            for name in ROWS:
                stats, cpu = _run_row(name, log, order, n, cfg, admin, partitions, topics)
                cpu_us[name] = min(cpu_us.get(name, float("inf")), cpu)
                best[name] = max(best.get(name, 0.0), stats.events_per_s)
            rate, cpu = _end_to_end(data, len(log), cfg, admin, partitions, topics, seed)
            cpu_us[END_TO_END] = min(cpu_us.get(END_TO_END, float("inf")), cpu)
            best[END_TO_END] = max(best.get(END_TO_END, 0.0), rate)
    finally:
        if topics:
            try:
                admin.delete_topics(topics)
            except Exception as exc:  # noqa: BLE001 - leftover bench topics are harmless
                print(f"(could not delete bench topics: {exc})")
        admin.close()
    rows = {name: (best[name], cpu_us[name]) for name in [*ROWS, END_TO_END]}
    return {"rows": rows, "input_events": len(log), "events": n, "read_s": read_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--data", type=Path, default=gowalla_file(None, "train"))
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"machine: {platform.node()}, {cpu_model()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, "
          f"kafka-python {kafka.__version__}, confluent-kafka {confluent_kafka.version()[0]} "
          f"(librdkafka {confluent_kafka.libversion()[0]})")
    result = measure(args.events, args.repeat, args.partitions, args.data, args.bootstrap, args.seed)
    print(f"input:   {args.data} ({result['input_events']:,} events, read+shuffled in {result['read_s']:.1f}s); "
          f"replayed the first {result['events']:,}, {args.partitions} partitions, best of {args.repeat}")

    width = max(len(name) for name in result["rows"])
    print()
    print(f"{'path':<{width}}  {'events/s':>10}  {'CPU us/event':>12}  {'s per 1M':>9}")
    print(f"{'-' * width}  {'-' * 10}  {'-' * 12}  {'-' * 9}")
    for name, (rate, cpu) in result["rows"].items():
        print(f"{name:<{width}}  {rate:>10,.0f}  {cpu:>12.1f}  {1e6 / rate:>9.1f}")


if __name__ == "__main__":
    main()
