"""Shared-memory slots, keyed id columns and partition dealing of the ingest processes (no broker)."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from streamtrain.config import default_ingest_processes
from streamtrain.events import EventBatch
from streamtrain.ingest.counters import CounterSink, CounterSnapshot
from streamtrain.ingest.pool import deal
from streamtrain.ingest.slots import SlotLayout, pack, unpack
from streamtrain.metrics import Metrics
from streamtrain.vocab.vocabulary import IdVocabulary
from streamtrain.events.ids import KeyedIds, id_keys
from streamtrain.events.records import MicroBatch, PartitionRange


def _batch(n: int, seed: int = 0) -> MicroBatch:
    rng = np.random.default_rng(seed)
    users = [f"user-{int(u)}-é" for u in rng.integers(0, 50, n)]  # non-ASCII: bytes != characters
    items = [str(int(i)) for i in rng.integers(0, 10**12, n)]
    events = EventBatch.from_ids(users, items, np.arange(n, dtype=np.float64) + 0.5)
    ranges = {("t", 3): PartitionRange(10, 10 + n, n - 2, float(n) - 0.5), ("t", 0): PartitionRange(5, 7, 0, None)}
    return MicroBatch(events, ranges, n + 2, generation=4, closed_by="latency")


def test_a_slot_round_trips_columns_keys_and_ranges() -> None:
    layout = SlotLayout(batch_size=64, arena_bytes=64 * 32, max_ranges=4)
    buf = bytearray(layout.slot_bytes * 3)
    mb = _batch(50)
    users, items = KeyedIds.of(mb.events.user_ids), KeyedIds.of(mb.events.item_ids)
    assert layout.view(buf, 1).write(mb, users, items)
    got = layout.view(buf, 1).read("t")
    assert got.ranges == dict(mb.ranges) and got.messages == mb.messages
    assert (got.generation, got.closed_by) == (4, "latency")
    np.testing.assert_array_equal(got.events.user_ids.keys, id_keys(list(mb.events.user_ids)))
    np.testing.assert_array_equal(got.events.item_ids.keys, id_keys(list(mb.events.item_ids)))
    assert list(got.events.user_ids.to_strings()) == list(mb.events.user_ids)
    assert list(got.events.item_ids.to_strings()) == list(mb.events.item_ids)
    np.testing.assert_array_equal(got.events.event_time, mb.events.event_time)
    # Views, not copies: the slot's memory is what the trainer reads.
    assert np.shares_memory(got.events.event_time, np.frombuffer(buf, dtype=np.uint8))
    # A slice of a keyed batch keeps keys and bytes aligned.
    part = got.events.slice(7, 20)
    assert list(part.user_ids.to_strings()) == list(mb.events.user_ids[7:20])


def test_a_batch_that_does_not_fit_is_refused_and_packed_instead() -> None:
    layout = SlotLayout(batch_size=64, arena_bytes=40, max_ranges=4)  # ids need more than 40 bytes
    mb = _batch(30)
    users, items = KeyedIds.of(mb.events.user_ids), KeyedIds.of(mb.events.item_ids)
    assert not layout.view(bytearray(layout.slot_bytes), 0).write(mb, users, items)
    got = unpack(pack(mb, users, items))
    assert list(got.events.item_ids.to_strings()) == list(mb.events.item_ids)
    assert got.ranges == dict(mb.ranges)


def test_keyed_concat_matches_strings() -> None:
    a, b = KeyedIds.of(["x", "yy", "zzz"]), KeyedIds.of(["ü", "long-id-" * 3])
    both = KeyedIds.concat([a.slice(1, 3), b])
    assert list(both.to_strings()) == ["yy", "zzz", "ü", "long-id-" * 3]
    np.testing.assert_array_equal(both.keys, id_keys(["yy", "zzz", "ü", "long-id-" * 3]))
    batch = EventBatch.concat([EventBatch(a, a, np.zeros(3), np.ones(3, np.float32), np.empty(3, object)),
                               EventBatch(b, b, np.zeros(2), np.ones(2, np.float32), np.empty(2, object))])
    assert len(batch) == 5 and isinstance(batch.user_ids, KeyedIds)


def test_vocabulary_takes_a_keyed_column_like_strings() -> None:
    ids = [f"i{k % 37}" for k in range(300)]
    by_str = IdVocabulary(100, admission_threshold=2)
    by_key = IdVocabulary(100, admission_threshold=2)
    times = np.arange(300, dtype=np.float64)
    for lo in range(0, 300, 64):
        want = by_str.lookup(np.asarray(ids[lo:lo + 64], dtype=object), event_time=times[lo:lo + 64])
        got = by_key.lookup(KeyedIds.of(ids[lo:lo + 64]), event_time=times[lo:lo + 64])
        np.testing.assert_array_equal(got.rows, want.rows)
        np.testing.assert_array_equal(got.assigned, want.assigned)
    assert [by_key.id_of(r) for r in range(1, 38)] == [by_str.id_of(r) for r in range(1, 38)]


def test_partitions_are_dealt_disjointly_and_completely() -> None:
    positions = {("t", p): 100 + p for p in range(7)}
    shares = deal(positions, 3)
    assert [len(s) for s in shares] == [3, 2, 2]
    merged = {k: v for s in shares for k, v in s.items()}
    assert merged == positions
    assert deal({("t", 0): 5}, 2) == [{("t", 0): 5}, {}]


def test_default_process_count_follows_the_cores() -> None:
    assert [default_ingest_processes(c) for c in (1, 2, 8, 32, 128)] == [1, 1, 2, 8, 8]


def test_child_counters_reach_the_trainer_as_increments() -> None:
    child, trainer = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    snap, sink = CounterSnapshot(child.registry), CounterSink(trainer)
    child.events_consumed.inc(5)
    sink.apply(0, snap.changed())
    child.events_consumed.inc(2)
    child.events_dead_lettered.labels(reason="not_json").inc()
    sink.apply(0, snap.changed())
    sink.apply(0, snap.changed())  # nothing new: nothing added
    assert trainer.registry.get_sample_value("streamtrain_events_consumed_total") == 7
    assert trainer.registry.get_sample_value("streamtrain_events_dead_lettered_total", {"reason": "not_json"}) == 1


def test_the_confluent_fetcher_builds_without_a_broker_round_trip() -> None:
    from streamtrain.ingest.child import make_fetcher

    make_fetcher("confluent", {"bootstrap_servers": ["127.0.0.1:1"]}, 10).close()
