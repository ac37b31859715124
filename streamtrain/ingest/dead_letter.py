"""Dead letters: every rejected message goes to ``kafka.dead_letter_topic`` with its original bytes.

Headers say why and where it came from: ``reason`` (a :class:`RejectReason` value), ``detail``,
``source_topic``, ``source_partition``, ``source_offset`` (all UTF-8). The checkpoint flushes this
sink before it stores offsets past a rejected message (step 1 in :mod:`streamtrain.state.checkpoint`),
so a crash can duplicate a dead letter but never lose one.

A letter the producer refuses (larger than ``kafka.dead_letter_max_bytes``) or the broker refuses
(larger than the topic's ``max.message.bytes``, or any other refusal) is replaced at once by a
*bounded* letter that always fits: the same headers plus ``truncated=1``, ``original_bytes``,
``sha256`` of the whole value, ``refused`` (the error), and only the first 1 KiB of the value.
It is counted in ``streamtrain_dead_letters_bounded_total{reason,cause}``. Only a bounded letter
that fails too (the broker is down) is retried, so a refused letter never blocks checkpoints.
:func:`ensure_dead_letter_topic` creates the topic with ``max.message.bytes`` equal to the producer's
limit, so whatever the producer accepts the topic takes.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from kafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, TopicAlreadyExistsError

from streamtrain.events import Rejection
from streamtrain.metrics import Metrics

__all__ = ["DeadLetterSink", "DeadLetter", "Producer", "ensure_dead_letter_topic", "BOUNDED_PREFIX_BYTES"]

log = logging.getLogger(__name__)

_MAX_DETAIL_CHARS = 1000
BOUNDED_PREFIX_BYTES = 1024
_MAX_ERROR_CHARS = 300


class Producer(Protocol):
    """The part of ``kafka.KafkaProducer`` the sink uses (thread-safe in kafka-python)."""

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None) -> Any: ...

    def flush(self, timeout: float | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message to dead-letter: the original bytes and where they were read."""

    value: bytes | None
    key: bytes | None
    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    extra: tuple[tuple[str, bytes], ...] = ()  # set on a bounded letter
    bounded: bool = False

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("reason", self.reason.encode()),
            ("detail", self.detail[:_MAX_DETAIL_CHARS].encode("utf-8", "replace")),
            ("source_topic", self.topic.encode()),
            ("source_partition", str(self.partition).encode()),
            ("source_offset", str(self.offset).encode()),
            *self.extra,
        ]

    def to_bounded(self, error: BaseException) -> DeadLetter:
        """The letter reduced to what always fits: headers, a digest and a prefix of the value."""
        value = self.value or b""
        extra = (
            ("truncated", b"1"),
            ("original_bytes", str(len(value)).encode()),
            ("sha256", hashlib.sha256(value).hexdigest().encode()),
            ("refused", f"{type(error).__name__}: {error}"[:_MAX_ERROR_CHARS].encode("utf-8", "replace")),
        )
        prefix = None if self.value is None else self.value[:BOUNDED_PREFIX_BYTES]
        key = None if self.key is None else self.key[:BOUNDED_PREFIX_BYTES]
        return replace(self, value=prefix, key=key, extra=extra, bounded=True)


def _cause(error: BaseException | None) -> str:
    return "too_large" if isinstance(error, (MessageSizeTooLargeError, RecordListTooLargeError)) else "refused"


def ensure_dead_letter_topic(admin: Any, topic: str, max_bytes: int) -> bool:
    """Create ``topic`` with ``max.message.bytes = max_bytes`` unless it exists; True when created.

    An existing topic is left alone (its limit is the operator's call; a letter above it is sent
    bounded). Any other failure is logged and ignored: broker auto-creation still works.
    """
    from kafka.admin import NewTopic

    try:
        admin.create_topics(
            [NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": str(max_bytes)})], wait_for_metadata=True
        )
    except TopicAlreadyExistsError:
        return False
    except Exception as exc:
        log.warning("could not create the dead-letter topic %s with max.message.bytes=%d: %s", topic, max_bytes, exc)
        return False
    log.info("created the dead-letter topic %s with max.message.bytes=%d", topic, max_bytes)
    return True


class DeadLetterSink:
    """Sends rejects without blocking the source thread; ``flush`` makes them durable.

    ``send`` is called by the source thread for each poll's rejects, ``flush`` by the checkpoint
    (another thread); the producer is thread-safe and the in-flight list is guarded by a lock.
    A letter refused in full is sent again in bounded form; a bounded letter that fails (broker down) is
    sent again at the next flush, which then reports failure, so the checkpoint waits instead of
    committing past a lost dead letter.
    """

    def __init__(self, producer: Producer, topic: str, metrics: Metrics) -> None:
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._lock = threading.Lock()
        self._inflight: list[tuple[Any, DeadLetter]] = []

    def send_rejects(
        self,
        topic: str,
        partition: int,
        rejects: Sequence[Rejection],
        records: Sequence[Any],
    ) -> None:
        """Dead-letter each rejection; ``records`` are the polled ConsumerRecords the indexes point into."""
        for r in rejects:
            record = records[r.index]
            value = record.value
            if value is not None and not isinstance(value, bytes):
                value = bytes(value)
            self.send(
                DeadLetter(value, record.key, str(r.reason), r.detail, topic, partition, int(record.offset))
            )

    def send(self, letter: DeadLetter) -> None:
        """Queue one dead letter and count it; produce errors surface at ``flush``."""
        self._metrics.events_dead_lettered.labels(reason=letter.reason).inc()
        self._send(letter)

    def _send(self, letter: DeadLetter) -> None:
        # kafka-python refuses a record with neither key nor value; the headers carry all there is to say.
        key = b"" if letter.key is None and letter.value is None else letter.key
        try:
            future = self._producer.send(self._topic, value=letter.value, key=key, headers=letter.headers())
        except Exception as exc:  # kafka-python raises synchronously for size and buffer errors
            self._metrics.kafka_errors.labels(operation="dead_letter").inc()
            if not letter.bounded:
                self._send(self._bounded(letter, exc))
                return
            log.warning("dead letter for %s[%d]@%d not queued: %s", letter.topic, letter.partition, letter.offset, exc)
            future = None
        with self._lock:
            self._inflight.append((future, letter))

    def _bounded(self, letter: DeadLetter, error: BaseException) -> DeadLetter:
        cause = _cause(error)
        self._metrics.dead_letters_bounded.labels(reason=letter.reason, cause=cause).inc()
        log.warning("dead letter for %s[%d]@%d (%d bytes) refused (%s: %s); sending a bounded record instead",
                    letter.topic, letter.partition, letter.offset, len(letter.value or b""), type(error).__name__,
                    error)
        return letter.to_bounded(error)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every dead letter sent so far is acknowledged; True on success.

        Called by the checkpoint before it persists offsets. On False the caller must not commit:
        refused letters were sent again and the next flush waits for them.
        """
        try:
            self._producer.flush(timeout=timeout_s)
        except Exception as exc:
            self._metrics.kafka_errors.labels(operation="dead_letter_flush").inc()
            log.warning("dead-letter flush did not complete in %.1f s: %s", timeout_s, exc)
        with self._lock:
            inflight, self._inflight = self._inflight, []
        retry: list[DeadLetter] = []
        waiting = 0
        for future, letter in inflight:
            if future is not None and future.failed() and not letter.bounded:
                # Refused in full (too large for the topic, or otherwise): the bounded form always fits.
                retry.append(self._bounded(letter, future.exception))
            elif future is None or future.failed():
                retry.append(letter)
            elif not future.is_done:
                waiting += 1
                with self._lock:
                    self._inflight.append((future, letter))
        for letter in retry:
            self._metrics.kafka_errors.labels(operation="dead_letter").inc()
            self._send(letter)
        if retry:
            log.warning("%d dead letters failed and were sent again", len(retry))
        return not retry and waiting == 0
