"""Send the ordered stream to a topic: encode a chunk, key by user, pace, count, report progress.

The producer is a collaborator: :class:`BatchSink` queues a chunk of keyed values and reports
failed deliveries with their stream positions; :mod:`streamtrain.replay.confluent_sink` builds the
real one on librdkafka, unit tests pass an in-memory fake. A sink with only kafka-python's
``send``/``flush`` (:class:`EventSink`) is adapted, one ``send`` per message. Keys are the user
id, so all of a user's events land on one partition in stream order.

Delivery is asynchronous: a failure is reported after the send, by the sink, with the stream
position of the event; :func:`produce_chunks` collects them and flushes at the end (and when
stopped), so the returned stats are final and name the positions that did not arrive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, NamedTuple, Protocol, runtime_checkable

from streamtrain.replay.encoding import ChunkEncoder, Encoded, EventChunk
from streamtrain.replay.errors import ReplayError
from streamtrain.replay.pacing import Pacer, Unpaced
from streamtrain.replay.records import ReplayEvent

__all__ = [
    "MAX_FAILED_POSITIONS",
    "BatchSink",
    "DeliveryFailure",
    "EventSink",
    "ProduceError",
    "ProduceStats",
    "Progress",
    "SendError",
    "chunk_events",
    "produce_chunks",
    "produce_events",
]

log = logging.getLogger(__name__)

_FAILURE_FLUSH_TIMEOUT_S = 10.0
MAX_FAILED_POSITIONS = 1000


class DeliveryFailure(NamedTuple):
    """One message the broker did not take (after the producer's retries).

    Attributes:
        position: its stream position, or None when the sink could no longer tell.
        error: what the producer reported.
    """

    position: int | None
    error: str


class SendError(Exception):
    """Raised by :meth:`BatchSink.send_batch` when it could queue only ``queued`` of the values."""

    def __init__(self, queued: int, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.queued = queued
        self.cause = cause


@runtime_checkable
class BatchSink(Protocol):
    """What replay needs from a Kafka producer."""

    def send_batch(self, topic: str, encoded: Encoded) -> None:
        """Queue every value of ``encoded`` with its key, in order; waits while the local queue is full.

        Raises:
            SendError: a value could not be queued (``queued`` were).
        """
        ...

    def failures(self) -> list[DeliveryFailure]:
        """Delivery failures reported since the last call (serving the producer's reports first)."""
        ...

    def flush(self, timeout: float | None = None) -> None:
        """Block until every queued message is delivered or failed."""
        ...


class EventSink(Protocol):
    """A per-message producer (kafka-python's ``send``/``flush``); adapted to :class:`BatchSink`."""

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> Any:
        """Queue one message; may return a future with ``add_errback``. Raises if it cannot queue."""
        ...

    def flush(self, timeout: float | None = None) -> None:
        ...


class _PerMessage:
    """:class:`BatchSink` over a per-message producer; errbacks run on its I/O thread."""

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._failed: list[DeliveryFailure] = []

    def send_batch(self, topic: str, encoded: Encoded) -> None:
        send = self._sink.send
        for j, (value, key) in enumerate(zip(encoded.values, encoded.keys)):
            try:
                future = send(topic, value=value, key=key)
            except Exception as exc:
                raise SendError(j, exc) from exc
            if future is not None and hasattr(future, "add_errback"):
                future.add_errback(self._errback(encoded.position(j)))

    def _errback(self, position: int) -> Callable[[BaseException], None]:
        def failed(exc: BaseException) -> None:
            with self._lock:
                self._failed.append(DeliveryFailure(position, f"{type(exc).__name__}: {exc}"))
        return failed

    def failures(self) -> list[DeliveryFailure]:
        with self._lock:
            out, self._failed = self._failed, []
        return out

    def flush(self, timeout: float | None = None) -> None:
        self._sink.flush(timeout)


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
    failed_positions: list[int] = field(default_factory=list)  # sorted; at most MAX_FAILED_POSITIONS kept
    failed_unplaced: int = 0  # failures whose position the sink could no longer tell

    @property
    def failed_range(self) -> tuple[int, int] | None:
        """The lowest and highest stream position whose delivery failed (None: none, or none placed)."""
        return (self.failed_positions[0], self.failed_positions[-1]) if self.failed_positions else None

    def failure_message(self) -> str | None:
        """One line naming the failed deliveries and their positions, or None when every event arrived."""
        if not self.delivery_failures:
            return None
        where = ""
        if self.failed_range is not None:
            low, high = self.failed_range
            where = f" at stream positions {low}..{high}" if low != high else f" at stream position {low}"
        if self.failed_unplaced:
            where += f" ({self.failed_unplaced} at positions no longer known)"
        return (f"{self.delivery_failures} event(s) failed delivery{where}; first error: {self.first_failure}; "
                "they are not on the topic")

    def _add_failures(self, failures: list[DeliveryFailure]) -> None:
        for failure in failures:
            self.delivery_failures += 1
            if self.first_failure is None:
                self.first_failure = failure.error
                log.warning("delivery failed at stream position %s: %s", failure.position, failure.error)
            if failure.position is None:
                self.failed_unplaced += 1
            elif len(self.failed_positions) < MAX_FAILED_POSITIONS:
                self.failed_positions.append(failure.position)
            else:  # beyond the cap only the extremes move, so the range stays exact
                kept = self.failed_positions
                kept.sort()
                if failure.position < kept[0]:
                    kept[0] = failure.position
                elif failure.position > kept[-1]:
                    kept[-1] = failure.position
        if failures:
            self.failed_positions.sort()

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


class ProduceError(ReplayError):
    """Producing stopped part-way (broker unreachable, send refused).

    Attributes:
        stats: what was produced before the failure; ``stats.resume_at`` is the ``--start-at``
            value that continues after the last event handed to the producer; the message says
            whether those events were all settled (delivered or counted as failed).
    """

    def __init__(self, message: str, stats: ProduceStats) -> None:
        super().__init__(message)
        self.stats = stats


def chunk_events(events: Iterable[ReplayEvent], start_at: int = 0, size: int = 2048) -> Iterator[EventChunk]:
    """Group a stream of :class:`ReplayEvent` into chunks (for callers that hold events, not an EventLog)."""
    it = iter(events)
    first = start_at
    while batch := list(islice(it, size)):
        extras = [e.extras for e in batch]
        yield EventChunk(first, [e.user_id for e in batch], [e.item_id for e in batch],
                         [e.event_time for e in batch], extras if any(x is not None for x in extras) else None)
        first += len(batch)


def produce_events(events: Iterable[ReplayEvent], sink: BatchSink | EventSink, topic: str, *,
                   start_at: int = 0, **options: Any) -> ProduceStats:
    """:func:`produce_chunks` for a stream of :class:`ReplayEvent` (same options and result)."""
    return produce_chunks(chunk_events(events, start_at), sink, topic, start_at=start_at, **options)


def produce_chunks(
    chunks: Iterable[EventChunk],
    sink: BatchSink | EventSink,
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
    """Encode and send every event, keyed by user id, a chunk at a time; called once per replay run.

    Args:
        chunks: the ordered stream, already cut to ``start_at``/``limit`` (``EventLog.chunks``).
        sink: the producer.
        topic: destination topic.
        start_at: stream position of the first event, for ``ProduceStats.resume_at``.
        total: number of events expected, passed through to progress reports.
        pacer: when each event is due; None = as fast as possible (then whole chunks are sent).
        max_message_bytes: skip (and count) events whose encoding is larger.
        stop: when set, the run flushes what it sent and returns with ``stopped=True``.
        on_progress: called about every ``progress_interval_s`` seconds and once at the end.
        clock: monotonic seconds.

    Returns:
        Final counts, after a flush; ``failed_positions`` names the events that did not arrive.

    Raises:
        ProduceError: the producer refused to queue or flush (broker gone, buffer full for too
            long); ``exc.stats`` tells how far the run got.
    """
    batch_sink: BatchSink = sink if isinstance(sink, BatchSink) else _PerMessage(sink)  # type: ignore[arg-type]
    run = _Run(batch_sink, topic, ChunkEncoder(max_message_bytes), ProduceStats(start_at=start_at), clock)
    paced = pacer is not None and not isinstance(pacer, Unpaced)
    next_report = run.started + progress_interval_s
    try:
        for chunk in chunks:
            if stop is not None and stop.is_set():
                run.stats.stopped = True
                break
            if paced:
                if not run.send_paced(chunk, pacer, stop):  # type: ignore[arg-type]
                    break
            else:
                run.send(run.encoder.encode(chunk))
            if on_progress is not None:
                now = clock()
                if now >= next_report:
                    next_report = now + progress_interval_s
                    on_progress(Progress(run.stats.sent, total, now - run.started))
        batch_sink.flush(flush_timeout_s)
    except Exception as exc:  # whatever the producer raised: report how far the run got
        raise run.failed(exc) from exc
    run.finish()
    if on_progress is not None:
        on_progress(Progress(run.stats.sent, total, run.stats.elapsed_s))
    return run.stats


class _Run:
    """The state of one produce_chunks call: counts, the sink, the encoder."""

    def __init__(self, sink: BatchSink, topic: str, encoder: ChunkEncoder, stats: ProduceStats,
                 clock: Callable[[], float]) -> None:
        self.sink, self.topic, self.encoder, self.stats, self.clock = sink, topic, encoder, stats, clock
        self.started = clock()
        self._paced_sent = 0

    def send(self, encoded: Encoded, *, collect: bool = True) -> None:
        stats = self.stats
        try:
            self.sink.send_batch(self.topic, encoded)
        except SendError as exc:
            # Count only what went out before the refusal, and the skips before it: the resume point stays exact.
            cut = encoded.position(exc.queued) if exc.queued < len(encoded.values) else None
            stats.sent += exc.queued
            stats.skipped_invalid += sum(1 for p in encoded.invalid if cut is None or p < cut)
            stats.skipped_oversized += sum(1 for p in encoded.oversized if cut is None or p < cut)
            raise exc.cause from exc
        stats.sent += len(encoded.values)
        stats.skipped_invalid += len(encoded.invalid)
        stats.skipped_oversized += len(encoded.oversized)
        if collect:
            stats._add_failures(self.sink.failures())

    def send_paced(self, chunk: EventChunk, pacer: Pacer, stop: threading.Event | None) -> bool:
        """The chunk encoded at once, each message sent when the pacer says its event is due (the pacer
        is asked for every event, skipped ones included, as before); False when stopped."""
        encoded = self.encoder.encode(chunk)
        invalid, oversized = set(encoded.invalid), set(encoded.oversized)
        k = 0
        for j, event_time in enumerate(chunk.times):
            pacer.wait(event_time)
            if stop is not None and stop.is_set():  # woken from a pacing sleep by Ctrl-C
                self.stats.stopped = True
                return False
            position = chunk.first + j
            if position in invalid:
                self.stats.skipped_invalid += 1
            elif position in oversized:
                self.stats.skipped_oversized += 1
            else:
                self.send(Encoded(position, [encoded.values[k]], [encoded.keys[k]]), collect=False)
                k += 1
        self.stats._add_failures(self.sink.failures())
        return True

    def failed(self, exc: BaseException) -> ProduceError:
        # Try to settle what is queued, so the resume point is exact; if that fails too, the
        # last queued events may or may not be on the topic and the message says so.
        stats = self.stats
        try:
            self.sink.flush(_FAILURE_FLUSH_TIMEOUT_S)
            settled = "every event before it is settled"
        except Exception:  # noqa: BLE001 - the producer is already failing; the first error is the one raised
            settled = "the events queued just before may be missing: check the topic's end first"
        stats._add_failures(self.sink.failures())
        stats.elapsed_s = self.clock() - self.started
        failures = stats.failure_message()
        return ProduceError(
            f"producing to {self.topic!r} failed after {stats.sent} events ({type(exc).__name__}: {exc}); "
            f"{settled}; resume with --start-at {stats.resume_at}" + (f"; also {failures}" if failures else ""),
            stats,
        )

    def finish(self) -> None:
        self.stats._add_failures(self.sink.failures())
        self.stats.elapsed_s = self.clock() - self.started
