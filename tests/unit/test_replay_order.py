"""Replay order: by event time (stable), seeded shuffle, --start-at/--limit, synthesised times."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamtrain.replay import EventLog, ReplayError, read_log


def timed_log(times: list[float]) -> EventLog:
    log = EventLog()
    for n, t in enumerate(times):
        assert log.append(f"u{n % 3}", f"i{n}", t, None) is None
    return log


def untimed_log(n: int) -> EventLog:
    log = EventLog()
    for k in range(n):
        log.append(f"u{k % 7}", f"i{k}", None, None)
    return log


def test_time_order_is_sorted_and_stable() -> None:
    times = [5.0, 1.0, 3.0, 1.0, 5.0, 0.5]
    log = timed_log(times)
    events = list(log.events(log.order("auto", seed=0)))
    assert [e.event_time for e in events] == sorted(times)
    # ties keep input order: the two 1.0s are inputs 1 then 3, the two 5.0s inputs 0 then 4
    assert [e.item_id for e in events] == ["i5", "i1", "i3", "i2", "i0", "i4"]


def test_shuffle_is_a_permutation_fixed_by_the_seed() -> None:
    log = untimed_log(1000)
    a = log.order("auto", seed=7)
    assert np.array_equal(a, log.order("shuffle", seed=7))
    assert sorted(a.tolist()) == list(range(1000))
    b = log.order("shuffle", seed=8)
    assert not np.array_equal(a, b)
    # A shuffle, not a near-identity: few elements keep their place (expected 1 for a random permutation).
    assert int((a == np.arange(1000)).sum()) < 10


def test_shuffle_repeats_across_reads_of_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("\n".join(f"{u} " + " ".join(str(i) for i in range(u, u + 20)) for u in range(50)) + "\n")
    runs = []
    for _ in range(2):
        log, _ = read_log([path], fmt="gowalla")
        runs.append([(e.user_id, e.item_id) for e in log.events(log.order("auto", seed=3))])
    assert runs[0] == runs[1]
    log, _ = read_log([path], fmt="gowalla")
    other = [(e.user_id, e.item_id) for e in log.events(log.order("auto", seed=4))]
    assert other != runs[0] and sorted(other) == sorted(runs[0])


def test_synthesised_times_increase_along_the_ordered_stream() -> None:
    log = untimed_log(50)
    events = list(log.events(log.order("shuffle", seed=1), time_origin=1000.0, time_step=0.5))
    assert [e.event_time for e in events] == [1000.0 + 0.5 * p for p in range(50)]


def test_start_at_and_limit_cut_the_ordered_stream() -> None:
    log = untimed_log(100)
    order = log.order("shuffle", seed=2)
    full = list(log.events(order, time_origin=10.0))
    # Resuming: run 1 sends 30, run 2 continues from 30 and sends the rest; together = the full run.
    first = list(log.events(order, limit=30, time_origin=10.0))
    rest = list(log.events(order, start_at=30, time_origin=10.0))
    assert first + rest == full
    assert list(log.events(order, start_at=95, limit=10, time_origin=10.0)) == full[95:]
    assert list(log.events(order, start_at=200, time_origin=10.0)) == []
    assert list(log.events(order, limit=0)) == []
    with pytest.raises(ReplayError):
        log.events(order, start_at=-1)  # refused at the call, before any event is produced


def test_file_order_keeps_input_order() -> None:
    log = timed_log([3.0, 1.0, 2.0])
    assert [e.item_id for e in log.events(log.order("file", seed=0))] == ["i0", "i1", "i2"]


def test_time_order_needs_times() -> None:
    with pytest.raises(ReplayError, match="no event times"):
        untimed_log(3).order("time", seed=0)


def test_first_event_decides_timed_or_untimed() -> None:
    log = EventLog()
    assert log.append("u", "i", None, None) is None
    refused = log.append("u", "j", 5.0, None)
    assert refused is not None and refused.reason == "mixed_event_time"
    assert len(log) == 1


def test_ids_are_stored_once() -> None:
    log = EventLog()
    for k in range(10):
        log.append("".join(["us", "er"]), str(k % 2), None, None)  # noqa: FLY002 - a fresh str object each time
    assert len({id(u) for u in log.users}) == 1 and len({id(i) for i in log.items}) == 2
