"""Send the ordered stream to a topic: encode, key by user, pace, count, report progress.

The producer is a collaborator (:class:`EventSink`, the two methods of kafka-python's
``KafkaProducer`` that replay uses), so unit tests pass an in-memory fake and
:mod:`streamtrain.replay.kafka_sink` builds the real one. Keys are the user id, so all of a
user's events land on one partition in stream order.

Delivery is asynchronous: ``send`` returns at once and a failure arrives later through the
future's errback. :func:`produce_events` counts those failures and flushes at the end (and when
stopped), so the returned stats are final.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from streamtrain.events import InvalidEventError, encode_event
from streamtrain.replay.errors import ProduceError
from streamtrain.replay.pacing import Pacer, Unpaced
from streamtrain.replay.records import ReplayEvent

__all__ = ["EventSink", "ProduceStats", "Progress", "produce_events"]

log = logging.getLogger(__name__)

_PROGRESS_CHECK_EVERY = 512  # events between clock reads for the progress callback
_FAILURE_FLUSH_TIMEOUT_S = 10.0


class EventSink(Protocol):
    """What replay needs from a Kafka producer."""

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> Any:
        """Queue one message; may return a future with ``add_errback``. Raises if it cannot queue."""
        ...

    def flush(self, timeout: float | None = None) -> None:
        """Block until every queued message is delivered or failed."""
        ...


@dataclass(frozen=True)
class Progress:
    """Handed to the progress callback about once per ``progress_interval_s``."""

    sent: int
    total: int | None
    elapsed_s: float

    @property
    def events_per_s(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class ProduceStats:
    """The outcome of :func:`produce_events`.

    Attributes:
        start_at: position of the first event of this run in the ordered stream.
        sent: events handed to the producer (including the ones that failed delivery).
        delivery_failures: sends whose delivery failed after retries; first_failure says why.
        skipped_invalid: events encode_event refused (e.g. a synthesised time out of range).
        skipped_oversized: encoded events above ``max_message_bytes``.
        elapsed_s: wall time from the first send to the end of the final flush.
        stopped: the stop event ended the run early.
    """

    start_at: int = 0
    sent: int = 0
    delivery_failures: int = 0
    skipped_invalid: int = 0
    skipped_oversized: int = 0
    elapsed_s: float = 0.0
    stopped: bool = False
    first_failure: str | None = None

    @property
    def produced(self) -> int:
        """Events delivered to the topic."""
        return self.sent - self.delivery_failures

    @property
    def resume_at(self) -> int:
        """``--start-at`` for the next run: the position after the last event this run handled."""
        return self.start_at + self.sent + self.skipped_invalid + self.skipped_oversized

    @property
    def events_per_s(self) -> float:
        return self.produced / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _Failures:
    """Counts delivery failures; errbacks run on the producer's I/O thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.first: str | None = None

    def __call__(self, exc: BaseException) -> None:
        with self._lock:
            self.count += 1
            if self.first is None:
                self.first = f"{type(exc).__name__}: {exc}"
                log.warning("delivery failed: %s", self.first)


def produce_events(
    events: Iterable[ReplayEvent],
    sink: EventSink,
    topic: str,
    *,
    start_at: int = 0,
    total: int | None = None,
    pacer: Pacer | None = None,
    max_message_bytes: int | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_interval_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    flush_timeout_s: float | None = 120.0,
) -> ProduceStats:
    """Encode and send every event, keyed by user id; called once per replay run.

    Args:
        events: the ordered stream, already cut to ``start_at``/``limit``.
        sink: the producer.
        topic: destination topic.
        start_at: stream position of the first event, for ``ProduceStats.resume_at``.
        total: number of events expected, passed through to progress reports.
        pacer: when each event is due; None = as fast as possible.
        max_message_bytes: skip (and count) events whose encoding is larger.
        stop: when set, the run flushes what it sent and returns with ``stopped=True``.
        on_progress: called about every ``progress_interval_s`` seconds and once at the end.
        clock: monotonic seconds.

    Returns:
        Final counts, after a flush.

    Raises:
        ProduceError: ``send`` or ``flush`` raised (broker gone, buffer full past
            ``max_block_ms``); ``exc.stats`` tells how far the run got.
    """
    pacer = pacer or Unpaced()
    stats = ProduceStats(start_at=start_at)
    failures = _Failures()
    started = clock()
    next_report = started + progress_interval_s
    send = sink.send
    sent = 0
    try:
        for event in events:
            if stop is not None and stop.is_set():
                stats.stopped = True
                break
            pacer.wait(event.event_time)
            if stop is not None and stop.is_set():  # woken from a pacing sleep by Ctrl-C
                stats.stopped = True
                break
            extras = event.extras
            try:
                if extras is None:
                    value = encode_event(event.user_id, event.item_id, event.event_time)
                else:
                    value = encode_event(event.user_id, event.item_id, event.event_time,
                                         event_type=extras.event_type, weight=extras.weight, context=extras.context)
            except InvalidEventError as exc:
                stats.skipped_invalid += 1
                log.debug("skipped invalid event at position %d: %s", start_at + sent, exc)
                continue
            if max_message_bytes is not None and len(value) > max_message_bytes:
                stats.skipped_oversized += 1
                continue
            future = send(topic, value=value, key=event.user_id.encode("utf-8"))
            sent += 1
            if future is not None and hasattr(future, "add_errback"):
                future.add_errback(failures)
            if on_progress is not None and sent % _PROGRESS_CHECK_EVERY == 0:
                now = clock()
                if now >= next_report:
                    next_report = now + progress_interval_s
                    on_progress(Progress(sent, total, now - started))
        sink.flush(flush_timeout_s)
    except Exception as exc:  # whatever the producer raised: report how far the run got
        # Try to settle what is queued, so the resume point is exact; if that fails too, the
        # last queued events may or may not be on the topic and the message says so.
        try:
            sink.flush(_FAILURE_FLUSH_TIMEOUT_S)
            settled = "every event before it is settled"
        except Exception:  # noqa: BLE001 - the producer is already failing; the first error is the one raised
            settled = "the events queued just before may be missing: check the topic's end first"
        stats.sent = sent
        stats.delivery_failures, stats.first_failure = failures.count, failures.first
        stats.elapsed_s = clock() - started
        raise ProduceError(
            f"producing to {topic!r} failed after {sent} events ({type(exc).__name__}: {exc}); "
            f"{settled}; resume with --start-at {stats.resume_at}",
            stats,
        ) from exc
    stats.sent = sent
    stats.delivery_failures, stats.first_failure = failures.count, failures.first
    stats.elapsed_s = clock() - started
    if on_progress is not None:
        on_progress(Progress(sent, total, stats.elapsed_s))
    return stats
