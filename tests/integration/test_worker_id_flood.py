"""A flood of new ids (a bot: 20k events, 16k new users and 16k new items) into tables of 2,000 rows, then
normal traffic with ids never seen before: with the defaults the least recently seen rows are evicted and the
new ids get rows of their own; with an admission threshold of 2 the flood's one-off ids never get a row at all.
The counters on /metrics move, the vocabulary stays bounded by capacity (bench/bench_vocab_flood.py measures RSS over
a 1M-id flood), and every event is trained once.

Before: with the default settings nothing was ever evicted; the flood's ids held the rows for good and every id
first seen afterwards trained and scored on the shared fallback row, with nothing on /metrics saying so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamtrain.events import encode_event
from streamtrain.state.redis_store import redis_client, state_store
from worker_support import assert_trained_once, config_for, produce, run_worker, stop_worker

pytestmark = pytest.mark.integration

FLOOD, NORMAL, CAPACITY = 20_000, 3_000, 2_000
T0 = 1_700_000_000.0


def _events(n: int, users: int, items: int, base: int, t0: float, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, users, size=n) + base, rng.integers(0, items, size=n) + base
    return [encode_event(int(a), int(b), t0 + k * 0.01) for k, (a, b) in enumerate(zip(u, i, strict=True))]


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(f"streamtrain_vocabulary_{name}_total", labels) or 0.0


@pytest.mark.parametrize("threshold, counter", [(1, "sketch"), (2, "exact"), (2, "sketch")],
                         ids=["default", "admission-2-exact", "admission-2-sketch"])
def test_id_flood_then_normal_traffic_new_ids_get_rows(
    threshold: int, counter: str, kafka_bootstrap: str, redis_url: str, topic_factory, unique_name: str, tmp_path: Path,
) -> None:
    topic = topic_factory(1, prefix="worker-flood")
    flood = _events(FLOOD, 16_000, 16_000, base=1_000_000, t0=T0, seed=71)
    normal = _events(NORMAL, 300, 500, base=5_000_000, t0=T0 + FLOOD * 0.01 + 60, seed=72)
    produce(kafka_bootstrap, topic, flood)
    config = config_for(unique_name, topic, tmp_path, bootstrap=kafka_bootstrap, redis_url=redis_url, extra=[
        f"model.user_capacity={CAPACITY}", f"model.item_capacity={CAPACITY}", f"model.admission_threshold={threshold}",
        f"model.admission_counter={counter}",
        "checkpoint.interval_events=4096", "checkpoint.record_trained_ranges=true", "trainer.max_batch_latency_s=1",
    ])
    flood_metrics = CollectorRegistry()
    parts = run_worker(config, fresh=True, idle_exit_s=3, registry=flood_metrics)
    stop_worker(parts, timeout_s=180)
    for tower in ("user", "item"):
        assert _value(flood_metrics, "lookups", tower=tower) == FLOOD
        if threshold == 1:
            assert _value(flood_metrics, "evictions", tower=tower) > 10_000  # the flood churns the table
        else:  # most flood ids are seen once: held back, the table never fills up with them
            assert _value(flood_metrics, "rejections", tower=tower, reason="below_threshold") > 10_000
            assert _value(flood_metrics, "admissions", tower=tower) < CAPACITY

    produce(kafka_bootstrap, topic, normal)
    registry = CollectorRegistry()
    parts = run_worker(config, idle_exit_s=3, registry=registry)  # resumes the flooded tables
    stop_worker(parts, timeout_s=120)
    engine = parts.worker.engine
    for tower, vocab, count in (("user", engine.state.user_vocab, 300), ("item", engine.state.item_vocab, 500)):
        lookups = _value(registry, "lookups", tower=tower)
        fallback = _value(registry, "fallback_lookups", tower=tower)
        assert lookups == NORMAL
        # Only first sightings can miss (each new id's first one, with threshold 2): the rest have rows. The
        # sketch halves its counts every ~capacity sightings, so a second sighting after a halving misses too.
        assert fallback <= (threshold - 1) * count * (2 if counter == "sketch" else 1), (tower, fallback)
        assert _value(registry, "rejections", tower=tower, reason="table_full") == 0
        owned = sum(str(5_000_000 + i) in vocab for i in range(count))
        assert owned >= 0.95 * count, (tower, owned)
        # Bounded by capacity, not by the 16k+ ids seen: rows, and ids counted towards admission.
        assert len(vocab) <= CAPACITY - 1 and vocab.stats()["pending"] <= vocab.max_pending <= CAPACITY

    store = state_store(config, redis_client(config))
    assert_trained_once(store, topic, {0: (0, FLOOD + NORMAL)})
    store.clear()
