"""``ingest`` suite of ``bench/run``: the real local broker → ready micro-batches.

Table 1 (one process pinned to one core, so the numbers are per core): kafka-python's poll alone,
the decoder alone on values in memory, poll → decode → Batcher inline with each decode strategy of
bench_decode.py side by side, and the worker's own background KafkaSource thread.

Table 2: N consumer processes — each its own KafkaConsumer in one consumer group over a
multi-partition topic, decoding and batching — feed one "trainer" process (this one) through a
multiprocessing queue; events/s arriving at the trainer for each N. The group settles (every member
holds a disjoint share of the partitions, all paused) before the clock starts, so no rebalance runs
inside the timed part. On a 2-core host the broker and the trainer share the same cores.
"""

from __future__ import annotations

import os
import queue
import time
import uuid
from multiprocessing import get_context
from typing import Any

import numpy as np

from report import Table, fmt_rate, fmt_ratio
from suite_misc import one_core

__all__ = ["ingest_tables", "multi_process_rate"]

_SETTLE_S = 60.0


def _consumer_process(idx: int, bootstrap: str, topic: str, group: str, max_records: int,
                      ctrl: Any, out: Any, go: Any) -> None:
    """Child: join the group, report the assignment until told to go, then read everything assigned."""
    from kafka import KafkaConsumer

    from bench_ingest import BATCH
    from streamtrain.events import decode_values
    from streamtrain.ingest.batcher import Batcher

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                             auto_offset_reset="earliest", max_poll_records=max_records,
                             fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20)
    consumer.subscribe([topic])
    reported = None
    while not go.is_set():
        consumer.poll(timeout_ms=100)  # records polled before the start are dropped (we seek back)
        assigned = consumer.assignment()
        if assigned:
            consumer.pause(*assigned)
        parts = sorted(tp.partition for tp in assigned)
        if parts != reported:
            ctrl.put((idx, parts))
            reported = parts
    tps = sorted(consumer.assignment())
    end = consumer.end_offsets(tps)
    consumer.seek_to_beginning(*tps)
    consumer.resume(*tps)
    left = {tp for tp in tps if end[tp] > 0}
    batcher = Batcher(BATCH, 1.0)
    while left:
        for tp, records in consumer.poll(timeout_ms=500, max_records=max_records).items():
            offsets = np.fromiter((r.offset for r in records), dtype=np.int64, count=len(records))
            result = decode_values([r.value for r in records], max_bytes=65536)
            for mb in batcher.add((tp.topic, tp.partition), offsets, result.batch, result.good_index,
                                  time.monotonic()):
                out.put(mb.events)
            if records and records[-1].offset + 1 >= end[tp]:
                left.discard(tp)
        if sorted(consumer.assignment()) != tps:
            ctrl.put((idx, "rebalanced during the timed part"))
            break
    last = batcher.flush()
    if last is not None and len(last.events):
        out.put(last.events)
    out.put(None)
    consumer.close()


def multi_process_rate(bootstrap: str, topic: str, partitions: int, procs: int, events: int,
                       max_records: int) -> float:
    """Events/s arriving at this process from ``procs`` consumer processes in one group."""
    ctx = get_context("spawn")
    ctrl, out, go = ctx.Queue(), ctx.Queue(maxsize=64), ctx.Event()
    group = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    children = [ctx.Process(target=_consumer_process, args=(i, bootstrap, topic, group, max_records, ctrl, out, go),
                            daemon=True) for i in range(procs)]
    for child in children:
        child.start()
    try:
        shares: dict[int, list[int]] = {}
        deadline = time.monotonic() + _SETTLE_S
        while not _settled(shares, procs, partitions):
            try:
                idx, parts = ctrl.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"consumer group did not settle in {_SETTLE_S:.0f} s: {shares}") from None
            shares[idx] = parts
        time.sleep(1.0)  # let a late rebalance show up before the start
        while not ctrl.empty():
            idx, parts = ctrl.get()
            shares[idx] = parts
        if not _settled(shares, procs, partitions):
            raise RuntimeError(f"consumer group moved after settling: {shares}")
        go.set()
        n, done, first, t0, t_last = 0, 0, 0, None, None
        while done < procs:
            try:
                batch = out.get(timeout=60)
            except queue.Empty:
                raise RuntimeError("consumer processes stalled") from None
            if batch is None:
                done += 1
                continue
            t_last = time.perf_counter()
            if t0 is None:
                t0, first = t_last, len(batch)
            n += len(batch)
        if not ctrl.empty():
            raise RuntimeError(f"consumer process reported: {ctrl.get()}")
        if n < events:
            raise RuntimeError(f"trainer got {n} of {events} events")
        return (n - first) / max(t_last - t0, 1e-9)
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.terminate()


def _settled(shares: dict[int, list[int]], procs: int, partitions: int) -> bool:
    if len(shares) < procs or any(not isinstance(p, list) or not p for p in shares.values()):
        return False
    every = [p for parts in shares.values() for p in parts]
    return sorted(every) == list(range(partitions))


def ingest_tables(opts: Any) -> list[Table]:
    from bench_decode import STRATEGIES
    from bench_ingest import ensure_topic, run_background, run_decode_only, run_inline, run_poll_only

    from streamtrain.events import encode_event
    from streamtrain.localstack import StackAddresses

    bootstrap = StackAddresses.from_env().kafka_bootstrap
    events, parts = opts.ingest_events, opts.ingest_partitions
    topic = ensure_topic(bootstrap, events, parts)
    values = [encode_event(k % 100_000, k % 7919, 1.7e9 + k, event_type="click") for k in range(events)]
    one = Table(
        f"ingest: broker -> ready batches of 1024, one process pinned to one core ({events:,} events, "
        f"{parts} partitions, best of {opts.ingest_repeat})",
        ["variant", "decoder", "max_poll_records", "events/s", "x inline old"],
    )
    with one_core():
        for max_records in opts.poll_records:
            variants: dict[tuple[str, str], Any] = {
                ("poll only", "-"): lambda m=max_records: run_poll_only(bootstrap, topic, events, m),
            }
            for label in ("orjson/message+fast", "msgspec/batch"):
                variants[("decode only (in memory)", label)] = (
                    lambda m=max_records, s=STRATEGIES[label]: run_decode_only(values, m, decode=s)
                )
            for label, strategy in STRATEGIES.items():
                variants[("inline poll+decode+batch", label)] = (
                    lambda m=max_records, s=strategy: run_inline(bootstrap, topic, events, m, decode=s)
                )
            variants[("background KafkaSource", "msgspec/batch")] = (
                lambda m=max_records: run_background(bootstrap, topic, events, m)
            )
            best: dict[tuple[str, str], float] = {}
            for _ in range(opts.ingest_repeat):  # interleaved repeats: a load spike hits every variant alike
                for key, run in variants.items():
                    best[key] = max(best.get(key, 0.0), run())
            base = best[("inline poll+decode+batch", "orjson/message+fast")]
            for (name, dec), rate in best.items():
                one.add(name, dec, max_records, fmt_rate(rate), fmt_ratio(rate / base))
    one.notes.append("poll only = kafka-python's ceiling; decode only = the decoder's ceiling without a broker; "
                     "x inline old = against inline with orjson/message+fast (decode_values, the decoder before "
                     "decode_batch); the worker now decodes with msgspec/batch (decode_batch)")

    max_records = max(opts.poll_records)
    many = Table(
        f"ingest: N consumer processes (one group, {parts} partitions) -> one trainer process "
        f"({events:,} events, max_poll_records {max_records}, best of {opts.ingest_repeat})",
        ["consumer processes", "events/s at the trainer", "x 1 process"],
    )
    rates: dict[int, float] = {}
    try:
        for _ in range(opts.ingest_repeat):
            for n in opts.ingest_procs:
                rates[n] = max(rates.get(n, 0.0), multi_process_rate(bootstrap, topic, parts, n, events, max_records))
    except RuntimeError as exc:  # a group rebalance under load: report it, keep the worker-path tables
        many.notes.append(f"not measured: {exc}")
    for n, rate in rates.items():
        many.add(n, fmt_rate(rate), fmt_ratio(rate / rates[min(rates)]))
    many.notes.append("each process polls, decodes and batches; batches are pickled to the trainer over a "
                      "multiprocessing queue; not pinned (broker, consumers and trainer share the host's cores)")
    return [one, many, *pool_tables(opts, bootstrap, topic, events, max_records, best)]


def pool_tables(opts: Any, bootstrap: str, topic: str, events: int, max_records: int,
                inline: dict[tuple[str, str], float]) -> list[Table]:
    """The worker's path (ingest processes → shared-memory slots), both clients side by side."""
    from bench_ingest_pool import fetch_only_rate, pool_rate

    clients = ("kafka-python", "confluent")
    today = inline[("inline poll+decode+batch", "orjson/message+fast")]
    per_core = Table(
        f"ingest processes: broker -> ready batches of 1024 in shared memory, one core ({events:,} events, "
        f"max records {max_records}, best of {opts.ingest_repeat})",
        ["variant", "client", "events/s", "x today (inline kafka-python)"],
    )
    best: dict[tuple[str, str], float] = {}
    for _ in range(opts.ingest_repeat):
        for client in clients:
            with one_core():
                rate = fetch_only_rate(client, bootstrap, topic, events, max_records)
            best[("fetch only", client)] = max(best.get(("fetch only", client), 0.0), rate)
            rate = pool_rate(client, 1, bootstrap, topic, events, max_records, pin=True)
            best[("1 ingest process", client)] = max(best.get(("1 ingest process", client), 0.0), rate)
    per_core.add("inline poll+decode+batch (today)", "kafka-python", fmt_rate(today), fmt_ratio(1.0))
    for (variant, client), rate in best.items():
        per_core.add(variant, client, fmt_rate(rate), fmt_ratio(rate / today))
    for variant in ("fetch only", "1 ingest process"):
        per_core.notes.append(f"{variant}: confluent / kafka-python = "
                              f"{best[(variant, 'confluent')] / best[(variant, 'kafka-python')]:.2f}x")
    per_core.notes.append("1 ingest process = fetch, decode (decode_batch), dead letters, batcher, stable keys, slot "
                          "write, pinned to "
                          "one core; the trainer side (this process) reads slot views on the other cores")
    curve = Table(
        f"ingest processes: N processes -> one trainer process ({events:,} events, {opts.ingest_partitions} "
        f"partitions, not pinned, best of {opts.ingest_repeat})",
        ["client", "processes", "events/s at the trainer", "x 1 process"],
    )
    rates: dict[tuple[str, int], float] = {}
    for _ in range(opts.ingest_repeat):
        for client in clients:
            for n in opts.ingest_procs:
                rate = pool_rate(client, n, bootstrap, topic, events, max_records)
                rates[(client, n)] = max(rates.get((client, n), 0.0), rate)
    for (client, n), rate in rates.items():
        curve.add(client, n, fmt_rate(rate), fmt_ratio(rate / rates[(client, min(opts.ingest_procs))]))
    curve.notes.append(f"{os.cpu_count()} cores shared by the broker, the ingest processes and the trainer process")
    return [per_core, curve]
