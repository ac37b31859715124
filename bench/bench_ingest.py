#!/usr/bin/env python3
"""Ingest throughput: real local broker → kafka-python consumer → decoder → ready micro-batches.

Pre-produces N events once (topic ``bench-ingest-<N>``, reused when it already holds them), then reads
them all back with each variant and prints events/s:

* ``poll only``       consumer.poll, values touched, nothing decoded (the kafka-python ceiling)
* ``decode only``     decode_values + Batcher on values already in memory (the decoder ceiling)
* ``inline``          poll → decode → batch on one thread (what a single-threaded worker would do)
* ``background``      the worker's KafkaSource thread (poll → decode → dead letters → batcher → queue),
                      the main thread taking ready batches off the bounded queue

each for several ``max_poll_records``. The process is pinned to one core (``--cores``) so the
numbers are per core. ``--profile`` prints the top cProfile entries of one inline run.

    python bench/bench_ingest.py --events 500000 --poll-records 500 5000 20000
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import queue
import sys
import time
import uuid

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from streamtrain.events import decode_values, encode_event
from streamtrain.localstack import StackAddresses
from streamtrain.metrics import Metrics
from streamtrain.ingest.batcher import Batcher
from streamtrain.ingest.dead_letter import DeadLetterSink
from streamtrain.ingest.lag import LagTracker
from streamtrain.ingest.source import KafkaSource
from streamtrain.events.records import EARLIEST

BATCH = 1024


def ensure_topic(bootstrap: str, events: int, partitions: int = 1) -> str:
    """A topic holding ``events`` events spread round robin over ``partitions``; produced once, reused after."""
    topic = f"bench-ingest-{events}" + (f"-p{partitions}" if partitions > 1 else "")
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    have = 0
    if topic in consumer.topics():
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        have = sum(consumer.end_offsets(tps).values())
    consumer.close()
    if have >= events:
        return topic
    if partitions > 1 and have == 0:
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.create_topics([NewTopic(topic, partitions, 1)])
        except TopicAlreadyExistsError:
            pass
        admin.close()
    print(f"producing {events - have} events to {topic} ...", file=sys.stderr)
    rng = np.random.default_rng(0)
    users = rng.integers(0, 100_000, size=events)
    items = np.minimum(rng.zipf(1.2, size=events), 1_000_000)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, batch_size=512 * 1024,
                             compression_type=None)
    t0 = time.perf_counter()
    for k in range(have, events):
        producer.send(topic, encode_event(int(users[k]), int(items[k]), 1.7e9 + k, event_type="click"),
                      partition=k % partitions)
    producer.flush()
    producer.close()
    print(f"produced in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return topic


def new_consumer(bootstrap: str, topic: str, max_records: int) -> KafkaConsumer:
    """A group-less consumer assigned every partition of ``topic`` from the beginning."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                             max_poll_records=max_records, fetch_max_bytes=64 << 20,
                             max_partition_fetch_bytes=16 << 20)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or (0,))]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    return consumer


def run_poll_only(bootstrap: str, topic: str, events: int, max_records: int) -> float:
    consumer = new_consumer(bootstrap, topic, max_records)
    n, t0 = 0, None
    while n < events:
        for records in consumer.poll(timeout_ms=500, max_records=max_records).values():
            t0 = t0 or time.perf_counter()
            values = [r.value for r in records]
            n += len(values)
    elapsed = time.perf_counter() - t0
    consumer.close()
    return n / elapsed


def run_inline(bootstrap: str, topic: str, events: int, max_records: int, decode=None) -> float:  # noqa: ANN001
    """poll → ``decode`` (default decode_values) → Batcher on one thread; ready events/s."""
    decode = decode or (lambda values: decode_values(values, max_bytes=65536))
    consumer = new_consumer(bootstrap, topic, max_records)
    batcher = Batcher(BATCH, 1.0)
    n, ready, t0 = 0, 0, None
    while n < events:
        for tp, records in consumer.poll(timeout_ms=500, max_records=max_records).items():
            t0 = t0 or time.perf_counter()
            offsets = np.fromiter((r.offset for r in records), dtype=np.int64, count=len(records))
            result = decode([r.value for r in records])
            ready += sum(len(b.events) for b in batcher.add((tp.topic, tp.partition), offsets, result.batch,
                                                             result.good_index, time.monotonic()))
            n += len(records)
    elapsed = time.perf_counter() - t0
    consumer.close()
    return ready / elapsed


def run_decode_only(values: list[bytes], max_records: int, decode=None) -> float:  # noqa: ANN001
    """``decode`` (default decode_values) + Batcher on values in memory; ready events/s."""
    decode = decode or (lambda chunk: decode_values(chunk, max_bytes=65536))
    batcher = Batcher(BATCH, 1.0)
    t0 = time.perf_counter()
    ready = 0
    for start in range(0, len(values), max_records):
        chunk = values[start:start + max_records]
        offsets = np.arange(start, start + len(chunk), dtype=np.int64)
        result = decode(chunk)
        ready += sum(len(b.events) for b in batcher.add(("t", 0), offsets, result.batch, result.good_index, 0.0))
    return ready / (time.perf_counter() - t0)


class _Hooks:
    def resolve_position(self, key):  # noqa: ANN001 - bench
        return EARLIEST

    def on_revoked(self, keys):  # noqa: ANN001
        pass

    def trained_offsets(self):
        return {}

    def last_event_times(self):
        return {}


def run_background(bootstrap: str, topic: str, events: int, max_records: int) -> float:
    metrics = Metrics(CollectorRegistry())
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=f"bench-{uuid.uuid4().hex[:8]}",
                             enable_auto_commit=False, auto_offset_reset="none", max_poll_records=max_records,
                             fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    source = KafkaSource(
        consumer, topic, batcher=Batcher(BATCH, 1.0), dead_letters=DeadLetterSink(producer, f"{topic}.dlq", metrics),
        metrics=metrics, lag=LagTracker(metrics, 3600.0), hooks=_Hooks(), queue_batches=8,
        max_message_bytes=65536, max_poll_records=max_records,
    )
    source.start()
    n, t0 = 0, None
    while n < events - BATCH:
        try:
            batch = source.batches.get(timeout=30)
        except queue.Empty:
            raise SystemExit("background source stalled") from None
        t0 = t0 or time.perf_counter() - 0.0
        n += len(batch.events)
    elapsed = time.perf_counter() - t0
    source.stop()
    producer.close()
    return n / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--poll-records", type=int, nargs="+", default=[500, 5000, 20000])
    parser.add_argument("--cores", type=int, default=1, help="pin the process to this many cores (0 = no pinning)")
    parser.add_argument("--profile", action="store_true", help="cProfile one inline run (largest max_poll_records)")
    args = parser.parse_args()
    if args.cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))
    bootstrap = StackAddresses.from_env().kafka_bootstrap
    topic = ensure_topic(bootstrap, args.events)
    values = [encode_event(k % 100_000, k % 7919, 1.7e9 + k, event_type="click") for k in range(args.events)]

    rows = []
    for max_records in args.poll_records:
        rows.append(("poll only", max_records, run_poll_only(bootstrap, topic, args.events, max_records)))
        rows.append(("decode only", max_records, run_decode_only(values, max_records)))
        rows.append(("inline", max_records, run_inline(bootstrap, topic, args.events, max_records)))
        rows.append(("background", max_records, run_background(bootstrap, topic, args.events, max_records)))
    print(f"\n{args.events} events, batch {BATCH}, cores {args.cores or 'all'}")
    print(f"{'variant':<12} {'max_poll_records':>16} {'events/s':>12}")
    for name, max_records, rate in rows:
        print(f"{name:<12} {max_records:>16} {rate:>12,.0f}")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run_inline(bootstrap, topic, args.events, max(args.poll_records))
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
