"""produce_events with an in-memory producer: keys, payloads, failures, stop, progress."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from streamtrain.events import decode_values
from streamtrain.replay import ProduceError, Progress, ReplayEvent, produce_events
from streamtrain.replay.records import Extras


class FakeFuture:
    """Delivery settles at flush, like kafka-python's futures settle on the I/O thread."""

    def __init__(self) -> None:
        self.errbacks: list[Callable[[BaseException], None]] = []

    def add_errback(self, fn: Callable[[BaseException], None]) -> FakeFuture:
        self.errbacks.append(fn)
        return self


class FakeSink:
    def __init__(self, fail_keys: set[bytes] = frozenset(), raise_at: int | None = None) -> None:
        self.messages: list[tuple[str, bytes, bytes]] = []
        self.pending: list[tuple[bytes, FakeFuture]] = []
        self.fail_keys = fail_keys
        self.raise_at = raise_at
        self.flushes = 0

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> FakeFuture:
        if self.raise_at is not None and len(self.messages) == self.raise_at:
            raise TimeoutError("metadata not available after 60000 ms")
        assert value is not None and key is not None
        self.messages.append((topic, key, value))
        future = FakeFuture()
        self.pending.append((key, future))
        return future

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1
        for key, future in self.pending:
            if key in self.fail_keys:
                for fn in future.errbacks:
                    fn(RuntimeError(f"delivery of {key!r} timed out"))
        self.pending.clear()


def stream(n: int) -> list[ReplayEvent]:
    return [ReplayEvent(f"user{k % 4}", f"item{k}", 1_700_000_000.0 + k) for k in range(n)]


def test_messages_are_keyed_by_user_and_decode_to_the_events() -> None:
    events = stream(20) + [ReplayEvent("u", "i", 5.0, Extras("click", 2.0, {"country": "fr"}))]
    sink = FakeSink()
    stats = produce_events(iter(events), sink, "topic-a")
    assert stats.sent == stats.produced == 21 and stats.delivery_failures == 0
    assert {t for t, _, _ in sink.messages} == {"topic-a"}
    assert [k.decode() for _, k, _ in sink.messages] == [e.user_id for e in events]
    decoded = decode_values([v for _, _, v in sink.messages])
    assert not decoded.rejects
    assert list(decoded.batch.user_ids) == [e.user_id for e in events]
    assert list(decoded.batch.item_ids) == [e.item_id for e in events]
    assert list(decoded.batch.event_time) == [e.event_time for e in events]
    assert decoded.batch.event_type[-1] == "click" and decoded.batch.weight[-1] == 2.0
    assert decoded.batch.context is not None and decoded.batch.context[-1] == {"country": "fr"}
    assert sink.flushes == 1


def test_delivery_failures_are_counted_not_raised() -> None:
    sink = FakeSink(fail_keys={b"user1"})
    stats = produce_events(stream(40), sink, "t")
    assert stats.sent == 40 and stats.delivery_failures == 10 and stats.produced == 30
    assert stats.first_failure is not None and "user1" in stats.first_failure


def test_send_error_raises_with_the_resume_point() -> None:
    sink = FakeSink(raise_at=25)
    with pytest.raises(ProduceError) as caught:
        produce_events(stream(100), sink, "t", start_at=1000)
    assert caught.value.stats.sent == 25
    assert caught.value.stats.resume_at == 1025
    assert "--start-at 1025" in str(caught.value)
    assert sink.flushes == 1  # what was queued got settled before reporting


def test_stop_flushes_and_reports_where_to_resume() -> None:
    stop = threading.Event()
    sink = FakeSink()

    class StopAfter:
        def __init__(self) -> None:
            self.calls = 0

        def wait(self, event_time: float) -> None:
            self.calls += 1
            if self.calls == 13:
                stop.set()  # e.g. Ctrl-C while pacing before event 13

    stats = produce_events(stream(100), sink, "t", start_at=5, pacer=StopAfter(), stop=stop)
    assert stats.stopped and stats.sent == 12 and stats.resume_at == 17
    assert sink.flushes == 1


def test_invalid_and_oversized_events_are_skipped_and_counted() -> None:
    events = [
        ReplayEvent("u", "i", 1.0),
        ReplayEvent("u", "i", -5.0),  # a negative synthesised time: the schema refuses it
        ReplayEvent("u", "x" * 200, 1.0, Extras(None, None, {f"k{n}": "v" * 50 for n in range(20)})),
        ReplayEvent("u", "j", 2.0),
    ]
    sink = FakeSink()
    stats = produce_events(events, sink, "t", max_message_bytes=600)
    assert [decode_values([v]).batch.item_ids[0] for _, _, v in sink.messages] == ["i", "j"]
    assert (stats.skipped_invalid, stats.skipped_oversized, stats.resume_at) == (1, 1, 4)


def test_progress_reports_use_the_clock() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 0.001  # each read is 1 ms later
        return now[0]

    reports: list[Progress] = []
    stats = produce_events(stream(5000), FakeSink(), "t", total=5000, on_progress=reports.append,
                           progress_interval_s=0.0025, clock=clock)
    assert reports, "no progress reported"
    assert [r.sent for r in reports] == sorted(r.sent for r in reports)
    assert reports[-1].sent == 5000 and reports[-1].total == 5000
    assert all(r.events_per_s > 0 for r in reports)
    assert stats.elapsed_s == pytest.approx(reports[-1].elapsed_s)


def test_sink_without_futures_is_fine() -> None:
    class Bare:
        def __init__(self) -> None:
            self.n = 0

        def send(self, topic: str, value: Any = None, key: Any = None) -> None:
            self.n += 1

        def flush(self, timeout: float | None = None) -> None:
            return None

    sink = Bare()
    assert produce_events(stream(7), sink, "t").produced == 7 and sink.n == 7
