"""Pure rules behind the cluster-change cases of issue 18 (the integration tests run them against Kafka)."""

from __future__ import annotations

from streamtrain.worker.progress import Progress
from streamtrain.events.records import EARLIEST


def test_a_partition_above_every_owned_one_is_new() -> None:
    progress = Progress({("t", 0): 500, ("t", 1): EARLIEST}, events=500)
    assert progress.is_new_partition(("t", 2))
    assert progress.is_new_partition(("t", 7))


def test_new_partitions_are_new_in_any_order() -> None:
    progress = Progress({("t", 0): 500}, events=500)
    assert progress.is_new_partition(("t", 2))
    progress.add_discovered(("t", 2))
    assert progress.offset(("t", 2)) == EARLIEST
    assert progress.is_new_partition(("t", 1))  # 2 was found new here, so it does not make 1 "owned"


def test_a_missing_partition_below_an_owned_one_is_not_new() -> None:
    # Partition 1 was owned (partition 2 has an offset) but its offset is gone: an error, not a guess.
    progress = Progress({("t", 0): 500, ("t", 2): 10}, events=510)
    assert not progress.is_new_partition(("t", 1))


def test_a_known_partition_and_another_topic_are_not_new() -> None:
    progress = Progress({("t", 0): 500}, events=500)
    assert not progress.is_new_partition(("t", 0))
    # No partition of this topic at all: another topic than the run's, not a grown one.
    assert not progress.is_new_partition(("other", 3))
    assert not Progress({}, events=0).is_new_partition(("t", 0))


# --------------------------------------------------------------------------- topic identity
import pytest  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from streamtrain.metrics import Metrics  # noqa: E402
from streamtrain.errors import ResumeError  # noqa: E402
from streamtrain.state.resume import ResumePoint  # noqa: E402
from streamtrain.worker.topic_identity import describe_topic_id, reconcile_topic  # noqa: E402


def _point(ids: dict[str, str], fresh: bool = False) -> ResumePoint:
    return ResumePoint(fresh=fresh, checkpoint_id=None if fresh else 4, next_checkpoint_id=5, events=900,
                       offsets={} if fresh else {("t", 0): 500, ("t", 1): 400}, topic_ids=ids)


def _count(metrics: Metrics, decision: str) -> float | None:
    return metrics.registry.get_sample_value("streamtrain_topic_recreated_total", {"topic": "t", "decision": decision})


def test_same_or_unknown_topic_id_resumes_unchanged_and_records_the_current_one() -> None:
    metrics = Metrics(CollectorRegistry())
    assert reconcile_topic(_point({"t": "A"}), "t", "A", "fail", metrics).offsets == {("t", 0): 500, ("t", 1): 400}
    older = reconcile_topic(_point({}), "t", "A", "fail", metrics)  # a state written before topic ids
    assert older.topic_ids == {"t": "A"} and older.offsets == {("t", 0): 500, ("t", 1): 400}
    unknown = reconcile_topic(_point({"t": "A"}), "t", None, "fail", metrics)  # the broker could not say
    assert unknown.topic_ids == {"t": "A"}
    assert reconcile_topic(_point({}, fresh=True), "t", "B", "fail", metrics).topic_ids == {"t": "B"}
    assert _count(metrics, "fail") is None


def test_another_topic_id_fails_by_default_naming_the_fix() -> None:
    metrics = Metrics(CollectorRegistry())
    with pytest.raises(ResumeError, match="kafka.on_topic_recreated=restart.*--fresh"):
        reconcile_topic(_point({"t": "A"}), "t", "B", "fail", metrics)
    assert _count(metrics, "fail") == 1


def test_another_topic_id_with_restart_reads_every_partition_from_its_start() -> None:
    metrics = Metrics(CollectorRegistry())
    start = reconcile_topic(_point({"t": "A", "u": "C"}), "t", "B", "restart", metrics)
    assert start.offsets == {("t", 0): EARLIEST, ("t", 1): EARLIEST}
    assert start.topic_ids == {"t": "B", "u": "C"}
    assert _count(metrics, "restart") == 1


def test_describe_topic_id_reads_the_admin_answer_and_treats_zero_and_errors_as_unknown() -> None:
    class Admin:
        def __init__(self, answer: object) -> None:
            self.answer = answer

        def describe_topics(self, topics: list[str]) -> object:
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer

    uuid = "805678ad-e583-461e-b485-48c8bd9593c4"
    assert describe_topic_id(Admin([{"name": "t", "error_code": 0, "topic_id": uuid}]), "t") == uuid
    assert describe_topic_id(Admin([{"name": "t", "error_code": 0, "topic_id": "0" * 8 + "-0000-0000-0000-" + "0" * 12}]), "t") is None
    assert describe_topic_id(Admin([{"name": "t", "error_code": 3, "topic_id": uuid}]), "t") is None
    assert describe_topic_id(Admin(OSError("down")), "t") is None


def test_a_stored_offset_past_the_log_end_counts_the_log_it_jumps_over() -> None:
    progress = Progress({("t", 0): 1000}, events=1000)
    assert progress.reset_offset(("t", 0), 300, log_start=0) == 300
    assert progress.skipped() == {("t", 0): 300} and progress.offset(("t", 0)) == 300


# --------------------------------------------------------------------------- vocabulary flood
import numpy as np  # noqa: E402

from streamtrain.config import ModelConfig  # noqa: E402
from streamtrain.vocab.vocabulary import IdVocabulary  # noqa: E402
from streamtrain.worker.vocabulary_metrics import VocabularyCounters  # noqa: E402


def _flood_then_normal(eviction_after_s: float | None) -> tuple[IdVocabulary, float]:
    """100 rows; a flood of 5,000 one-off ids, then 50 new regular ids seen 10 times each: the share of
    the regulars' later sightings (after their first) that land on the fallback row."""
    vocab = IdVocabulary(101, eviction_after_s=eviction_after_s)
    t = 0.0
    for start in range(0, 5000, 500):
        ids = [f"bot{i}" for i in range(start, start + 500)]
        vocab.lookup(ids, event_time=np.full(500, t))
        t += 1.0
    fallback = 0
    for rep in range(10):
        rows = vocab.lookup([f"user{i}" for i in range(50)], event_time=np.full(50, t)).rows
        t += 1.0
        if rep:
            fallback += int(np.count_nonzero(rows == 0))
    return vocab, fallback / (9 * 50)


def test_the_default_evicts_the_least_recently_seen_instead_of_freezing() -> None:
    assert ModelConfig().eviction_after_s == 0.0  # LRU at capacity unless set to None
    lru, share = _flood_then_normal(ModelConfig().eviction_after_s)
    assert share == 0.0 and lru.evictions_total >= 50 and all(f"user{i}" in lru for i in range(50))
    frozen, frozen_share = _flood_then_normal(None)
    assert frozen_share == 1.0 and frozen.evictions_total == 0
    assert frozen.table_full_total > 0 and frozen.fallback_total == frozen.held_back_total + frozen.table_full_total


def test_rejections_are_split_by_cause_and_survive_a_restart() -> None:
    vocab = IdVocabulary(4, admission_threshold=2, eviction_after_s=None)
    vocab.lookup(["a", "b", "a", "c", "c", "d", "d", "e", "e"])  # a, c, d admitted on their 2nd sighting
    s = vocab.stats()
    assert s["admissions_total"] == 3 and s["lookups_total"] == 9
    # First sightings of a, b, c, d, e are held back; e's second finds the table full (3 rows).
    assert s["held_back_total"] == 5 and s["table_full_total"] == 1 and s["fallback_total"] == 6
    restored = IdVocabulary(4, admission_threshold=2, eviction_after_s=None)
    restored.load_state_dict(vocab.state_dict())
    assert restored.stats() == s


def test_vocabulary_counters_export_increases_since_start() -> None:
    from types import SimpleNamespace

    metrics = Metrics(CollectorRegistry())
    user, item = IdVocabulary(3, eviction_after_s=0.0), IdVocabulary(10)
    user.lookup(["x", "y"], event_time=np.array([0.0, 0.0]))  # before the worker started: not re-exported
    counters = VocabularyCounters(metrics, SimpleNamespace(vocabulary_stats=lambda: {"user": user.stats(), "item": item.stats()}))
    user.lookup(["z", "w"], event_time=np.array([1.0, 1.0]))  # 2 rows full: evicts x and y
    item.lookup(["i"])
    counters.update()

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(f"streamtrain_vocabulary_{name}_total", labels)

    assert value("lookups", tower="user") == 2 and value("evictions", tower="user") == 2
    assert value("admissions", tower="user") == 2 and value("admissions", tower="item") == 1
    assert value("fallback_lookups", tower="user") == 0
    assert value("rejections", tower="user", reason="table_full") == 0
    counters.update()  # nothing new: nothing added
    assert value("lookups", tower="user") == 2


# --------------------------------------------------------------------------- client log lines
import io  # noqa: E402
import logging  # noqa: E402

from streamtrain.log_limit import limit_client_logs  # noqa: E402


def test_client_log_lines_pass_once_per_cause_per_interval_with_a_count() -> None:
    now = [0.0]
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    held: list[str] = []
    repeat = limit_client_logs(10.0, on_suppressed=held.append, handlers=[handler])
    assert repeat is not None
    repeat._clock = lambda: now[0]  # noqa: SLF001 - a fake clock for the interval
    kafka, own = logging.getLogger("kafka.conn.test"), logging.getLogger("streamtrain.worker.worker")
    for logger in (kafka, own):
        logger.addHandler(handler)
        logger.propagate = False
    try:
        for i in range(200):  # 20 s of a line every 100 ms, the port changing: one cause
            now[0] = i * 0.1
            kafka.warning("Connect to 127.0.0.1:%d failed: Connection refused", 9092 + i % 3)
            if i % 50 == 0:
                kafka.error("another cause %d", i)
        own.warning("the worker's own line")
        own.warning("the worker's own line")
    finally:
        for logger in (kafka, own):
            logger.removeHandler(handler)
            logger.propagate = True
    lines = sink.getvalue().splitlines()
    connects = [line for line in lines if "Connect to" in line]
    assert len(connects) == 2  # at 0 s and at 10 s
    assert "[99 more like this in the last 10 s]" in connects[1]
    assert sum("another cause" in line for line in lines) == 2  # at 0 and 10 s (5 s and 15 s held back)
    assert lines.count("the worker's own line") == 2  # other loggers untouched
    assert len(held) == 200 - 2 + 4 - 2 and set(held) == {"kafka"}  # counted by prefix: bounded labels
    assert limit_client_logs(0.0, handlers=[handler]) is None  # 0 keeps every line


# --------------------------------------------------------------------------- admission sketch
from streamtrain.vocab.admission_sketch import SketchSightings  # noqa: E402


def test_sketch_never_undercounts_and_rarely_overcounts_an_unseen_id() -> None:
    rng = np.random.default_rng(5)
    sketch = SketchSightings(4096)
    keys = rng.integers(-(2**63), 2**63 - 1, size=sketch.halve_every - 1, dtype=np.int64)  # one period, no halving
    truth = rng.integers(1, 4, size=len(keys))
    sketch.set(keys, truth)
    assert (sketch.counts_of(keys) >= truth).all()
    unseen = rng.integers(-(2**63), 2**63 - 1, size=20_000, dtype=np.int64)
    false_share = float(np.mean(sketch.counts_of(unseen) > 0))
    assert false_share < 0.05, false_share  # (1 - e^-0.5)^4 ≈ 0.024 expected


def test_sketch_halves_every_half_width_sightings() -> None:
    sketch = SketchSightings(1024)
    key = np.array([42], dtype=np.int64)
    sketch.set(key, np.array([8]))
    sketch.note_sightings(sketch.halve_every - 1)
    assert sketch.counts_of(key)[0] == 8
    sketch.note_sightings(1)
    assert sketch.counts_of(key)[0] == 4


def test_vocabulary_with_the_sketch_admits_on_the_threshold_and_restores() -> None:
    kw = dict(admission_threshold=2, eviction_after_s=0.0, admission_sketch_width=8192)
    vocab = IdVocabulary(1000, **kw)
    flood = [f"bot{i}" for i in range(3000)]
    for start in range(0, 3000, 500):
        vocab.lookup(flood[start:start + 500])
    admitted_bots = len(vocab)
    assert admitted_bots < 0.05 * 3000  # one-off ids mostly kept out
    vocab.lookup(["alice"])
    assert "alice" not in vocab
    restored = IdVocabulary(1000, **kw)
    restored.load_state_dict(vocab.state_dict())  # the sketch's counts survive a restart
    restored.lookup(["alice"])
    assert "alice" in restored and restored.memory_bytes() < IdVocabulary(1000, admission_threshold=2).memory_bytes() + 8 * 8192

    exact = IdVocabulary(1000, admission_threshold=2)
    exact.lookup(["bob"])
    folded = IdVocabulary(1000, **kw)
    folded.load_state_dict(exact.state_dict())  # counted exactly before: the counts move into the sketch
    folded.lookup(["bob"])
    assert "bob" in folded
