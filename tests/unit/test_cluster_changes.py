"""Pure rules behind the cluster-change cases of issue 18 (the integration tests run them against Kafka)."""

from __future__ import annotations

from streamtrain.worker.progress import Progress
from streamtrain.worker.state_store import EARLIEST


def test_a_partition_above_every_owned_one_is_new() -> None:
    progress = Progress({("t", 0): 500, ("t", 1): EARLIEST}, events=500)
    assert progress.is_new_partition(("t", 2))
    assert progress.is_new_partition(("t", 7))


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
from streamtrain.worker.errors import ResumeError  # noqa: E402
from streamtrain.worker.resume import ResumePoint  # noqa: E402
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
