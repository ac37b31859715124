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
