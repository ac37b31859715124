"""The worker's ingest path: ingest processes (fetch → decode → keys → shared-memory slots) per client.

* :func:`fetch_only_rate`: a client's records/s reading a topic from the beginning, nothing decoded
  (same settings for both clients: max records per call, fetch sizes);
* :func:`pool_rate`: events/s arriving at this ("trainer") process as ready batches from an
  :class:`~streamtrain.ingest.pool.IngestPool` of N processes, each batch released at once (no
  training): the ingest ceiling the worker sees. ``pin`` pins the processes to one core (per-core rate).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from bench_ingest import BATCH
from prometheus_client import CollectorRegistry

from streamtrain.ingest.child import make_fetcher
from streamtrain.ingest.pool import IngestPool
from streamtrain.ingest.slots import SlotLayout
from streamtrain.metrics import Metrics
from streamtrain.events.records import EARLIEST

__all__ = ["fetch_only_rate", "pool_rate", "partitions_of"]


def partitions_of(bootstrap: str, topic: str) -> list[tuple[str, int]]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    parts = sorted(consumer.partitions_for_topic(topic) or ())
    consumer.close()
    return [(topic, p) for p in parts]


def fetch_only_rate(client: str, bootstrap: str, topic: str, events: int, max_records: int) -> float:
    fetcher = make_fetcher(client, {"bootstrap_servers": [bootstrap]}, max_records)
    fetcher.assign({key: EARLIEST for key in partitions_of(bootstrap, topic)})
    n, t0, first = 0, None, 0
    deadline = time.monotonic() + 120
    while n < events and time.monotonic() < deadline:
        for part in fetcher.fetch(0.5):
            if t0 is None:
                t0, first = time.perf_counter(), len(part.values)
            n += sum(1 for v in part.values if v is not None)  # touch every value, as a decoder would
    elapsed = time.perf_counter() - (t0 or time.perf_counter())
    fetcher.close()
    if n < events:
        raise RuntimeError(f"{client}: read {n} of {events} events")
    return (n - first) / max(elapsed, 1e-9)


def pool_rate(client: str, processes: int, bootstrap: str, topic: str, events: int, max_records: int,
              pin: bool = False) -> float:
    got = {"n": 0, "t0": 0.0, "first": 0, "t_last": 0.0}
    done = threading.Event()

    def on_batch(batch: Any) -> None:
        now = time.perf_counter()
        if got["n"] == 0:
            got["t0"], got["first"] = now, len(batch.events)
        got["n"] += len(batch.events)
        got["t_last"] = now
        if batch.release is not None:
            batch.release()
        if got["n"] >= events:
            done.set()

    settings = {"client": client, "options": {"bootstrap_servers": [bootstrap]}, "max_records": max_records,
                "max_message_bytes": 65536, "batch_size": BATCH, "max_latency_s": 1.0,
                "dead_letter_topic": f"{topic}.dead-letter", "dead_letter_max_bytes": 1 << 20, "log_level": "WARNING"}
    pool = IngestPool(processes, topic=topic, settings=settings, layout=SlotLayout(BATCH, BATCH * 64),
                      slots_per_process=5, metrics=Metrics(CollectorRegistry()), on_batch=on_batch,
                      on_reset=lambda *a: None, on_health=lambda *a: None)
    saved = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
    if pin and saved:
        os.sched_setaffinity(0, {min(saved)})  # the spawned processes inherit the mask
    try:
        pool.start()
    finally:
        if pin and saved:
            os.sched_setaffinity(0, saved - {min(saved)} or saved)  # the collector stays off that core
    try:
        pool.assign(1, {key: EARLIEST for key in partitions_of(bootstrap, topic)})
        if not done.wait(180):
            raise RuntimeError(f"{client} x{processes}: {got['n']} of {events} events arrived")
        if pool.fatal is not None:
            raise RuntimeError(str(pool.fatal))
    finally:
        pool.stop()
        if saved:
            os.sched_setaffinity(0, saved)
    return (got["n"] - got["first"]) / max(got["t_last"] - got["t0"], 1e-9)
