"""Replay throughput: events/s produced to the real local broker, producer settings side by side.

Run:  scripts/local-stack start kafka
      python3 bench/bench_replay.py [--events 200000] [--repeat 2] [--partitions 3]
                                    [--data streamtrain/data/gowalla/train.txt.gz] [--bootstrap 127.0.0.1:9092]

The input is the Gowalla training file (``user item item ...``), read and shuffled once the way
``streamtrain replay --format gowalla`` does, cut to --events. Each setting produces the same
events to a fresh topic (acks=all, idempotent, keyed by user) and is timed from the first send to
the end of the final flush; the best of --repeat interleaved runs is shown, with this process's CPU
time per event (both the sending thread and kafka-python's I/O thread; steadier than events/s on a
shared machine, and the broker's CPU is not in it). The first row is the
ceiling without a broker: reading the ordered stream and encoding each event, nothing sent.
Topics are deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import uuid
from pathlib import Path

import kafka
from report import cpu_model

from streamtrain.config import KafkaConfig
from streamtrain.data.gowalla import gowalla_file
from streamtrain.replay import (
    ProducerSettings,
    kafka_producer,
    produce_events,
    read_log,
)

SETTINGS: list[tuple[str, ProducerSettings | None]] = [
    ("encode only (no broker)", None),
    ("linger 0 ms, 16 KiB, none", ProducerSettings(linger_ms=0, batch_bytes=16 * 1024, compression="none")),
    ("linger 5 ms, 64 KiB, none", ProducerSettings(linger_ms=5, batch_bytes=64 * 1024, compression="none")),
    ("linger 20 ms, 256 KiB, none (default)", ProducerSettings()),
    ("linger 20 ms, 256 KiB, lz4", ProducerSettings(compression="lz4")),
]


class _NullSink:
    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> None:
        return None

    def flush(self, timeout: float | None = None) -> None:
        return None


def measure(events: int, repeat: int, partitions: int, data: Path, bootstrap: str, seed: int = 0) -> dict:
    """Best events/s and CPU µs/event per producer setting (``rows``: name → (events/s, µs)), plus the
    input's size and read time. Produces to fresh topics on ``bootstrap`` and deletes them."""
    from kafka.admin import KafkaAdminClient, NewTopic

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
            for name, settings in SETTINGS:
                stream = log.events(order, limit=n, time_origin=1_600_000_000.0)
                cpu_before = time.process_time()
                if settings is None:
                    stats = produce_events(stream, _NullSink(), "none")
                else:
                    topic = f"bench-replay-{uuid.uuid4().hex[:10]}"
                    admin.create_topics([NewTopic(topic, partitions, 1)], wait_for_metadata=True)
                    topics.append(topic)
                    producer = kafka_producer(cfg, settings, client_id="bench-replay")
                    try:
                        stats = produce_events(stream, producer, topic)
                    finally:
                        producer.close()
                    if stats.delivery_failures:
                        raise RuntimeError(f"{name}: {stats.delivery_failures} delivery failures: {stats.first_failure}")
                cpu = (time.process_time() - cpu_before) / max(stats.produced, 1) * 1e6
                cpu_us[name] = min(cpu_us.get(name, float("inf")), cpu)
                best[name] = max(best.get(name, 0.0), stats.events_per_s)
    finally:
        if topics:
            try:
                admin.delete_topics(topics)
            except Exception as exc:  # noqa: BLE001 - leftover bench topics are harmless
                print(f"(could not delete bench topics: {exc})")
        admin.close()
    rows = {name: (best[name], cpu_us[name]) for name, _ in SETTINGS}
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
          f"kafka-python {kafka.__version__}")
    result = measure(args.events, args.repeat, args.partitions, args.data, args.bootstrap, args.seed)
    print(f"input:   {args.data} ({result['input_events']:,} events, read+shuffled in {result['read_s']:.1f}s); "
          f"replayed the first {result['events']:,}, {args.partitions} partitions, best of {args.repeat}")

    width = max(len(name) for name, _ in SETTINGS)
    print()
    print(f"{'producer setting':<{width}}  {'events/s':>10}  {'CPU us/event':>12}  {'s per 1M':>9}")
    print(f"{'-' * width}  {'-' * 10}  {'-' * 12}  {'-' * 9}")
    for name, (rate, cpu) in result["rows"].items():
        print(f"{name:<{width}}  {rate:>10,.0f}  {cpu:>12.1f}  {1e6 / rate:>9.1f}")


if __name__ == "__main__":
    main()
