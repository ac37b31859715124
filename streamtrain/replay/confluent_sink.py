"""The real :class:`~streamtrain.replay.producer.BatchSink`: librdkafka's producer (confluent-kafka).

Why librdkafka: kafka-python's producer tops out at 20-28k events/s whatever its settings (its
pure-Python record batching and I/O loop; under that load it also logs "blocking the event loop"
warnings), while librdkafka batches, compresses and sends on its own C threads; Python's cost is
one ``produce`` call per message (bench/run --suite replay compares the two). Safety settings are
fixed: ``acks=all`` with idempotence, so retries neither lose nor reorder a user's events, and the
``murmur2_random`` partitioner puts a key on the partition the Java client (and kafka-python,
and the previous replay) would.

Delivery reports: only failures are reported (``delivery.report.only.error``), so a delivered
message costs no Python call. A failed message is placed in the stream by finding its value among
the chunks still held (the most recent ``retained_messages``); one older than that is reported
without a position.
"""

from __future__ import annotations

import logging
from collections import deque
from itertools import repeat
from operator import length_hint
from typing import Any

from streamtrain.config import KafkaConfig
from streamtrain.replay.encoding import Encoded
from streamtrain.replay.errors import ReplayError
from streamtrain.replay.kafka_sink import ProducerSettings
from streamtrain.replay.producer import DeliveryFailure, SendError

__all__ = ["ConfluentSink", "confluent_producer"]

log = logging.getLogger(__name__)

_QUEUE_MESSAGES = 500_000  # librdkafka's local queue: ~10 chunks' worth; produce() waits when full
_FULL_WAIT_S = 0.05


class ConfluentSink:
    """Queues chunks on a librdkafka producer; built by :func:`confluent_producer`."""

    def __init__(self, producer: Any, retained_messages: int = 2 * _QUEUE_MESSAGES) -> None:
        self._producer = producer
        self._retained_messages = retained_messages
        self._recent: deque[Encoded] = deque()
        self._recent_count = 0
        self._failed: list[tuple[bytes | None, str]] = []

    def on_delivery(self, err: Any, msg: Any) -> None:
        """librdkafka's delivery report (failures only); runs inside poll/flush on the caller's thread."""
        if err is not None:
            self._failed.append((msg.value(), f"{err.name()}: {err.str()}"))

    def send_batch(self, topic: str, encoded: Encoded) -> None:
        producer = self._producer
        produce = producer.produce
        values, keys = encoded.values, encoded.keys
        self._retain(encoded)
        rest_values, rest_keys = iter(values), iter(keys)
        while True:
            try:
                # map over the columns: one produce() per message with no Python bytecode in between.
                deque(map(produce, repeat(topic), rest_values, rest_keys), maxlen=0)
                break
            except BufferError:  # the local queue is full: let librdkafka send, then queue that message again
                i = len(values) - length_hint(rest_values) - 1
                self._produce_when_room(topic, values[i], keys[i], i)
            except Exception as exc:  # KafkaException: refused before queueing (e.g. unknown topic)
                raise SendError(len(values) - length_hint(rest_values) - 1, exc) from exc
        # No poll here: failures() serves the reports once per chunk (a paced replay sends one message at a time).

    def _produce_when_room(self, topic: str, value: bytes, key: bytes, index: int) -> None:
        while True:
            self._producer.poll(_FULL_WAIT_S)
            try:
                self._producer.produce(topic, value, key)
                return
            except BufferError:
                continue
            except Exception as exc:
                raise SendError(index, exc) from exc

    def failures(self) -> list[DeliveryFailure]:
        self._producer.poll(0)
        if not self._failed:
            return []
        failed, self._failed = self._failed, []
        return [DeliveryFailure(self._position(value), error) for value, error in failed]

    def flush(self, timeout: float | None = None) -> None:
        left = self._producer.flush(-1 if timeout is None else timeout)
        if left:
            raise TimeoutError(f"{left} message(s) still undelivered after {timeout} s")

    def close(self) -> None:
        """Give queued messages a last chance; the producer has no other resources to free."""
        self._producer.flush(5.0)

    def _retain(self, encoded: Encoded) -> None:
        self._recent.append(encoded)
        self._recent_count += len(encoded.values)
        while self._recent_count - len(self._recent[0].values) >= self._retained_messages:
            self._recent_count -= len(self._recent.popleft().values)

    def _position(self, value: bytes | None) -> int | None:
        if value is None:
            return None
        for encoded in reversed(self._recent):
            try:
                return encoded.position(encoded.values.index(value))
            except ValueError:
                continue
        return None


def _options(kafka: KafkaConfig, settings: ProducerSettings, client_id: str | None) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": ",".join(kafka.bootstrap_servers),
        "client.id": client_id or f"{kafka.client_id}-replay",
        "security.protocol": kafka.security_protocol,
        "acks": "all",
        "enable.idempotence": True,
        "partitioner": "murmur2_random",
        "linger.ms": settings.linger_ms,
        "batch.size": settings.batch_bytes,
        "compression.type": settings.compression,
        "queue.buffering.max.messages": _QUEUE_MESSAGES,
        "queue.buffering.max.kbytes": 256 * 1024,
        "delivery.report.only.error": True,
        # A broker that stays away fails the messages within a minute instead of librdkafka's five.
        "message.timeout.ms": 60_000,
        # A topic that does not exist (auto-create off) fails its messages after this, not 30 s.
        "topic.metadata.propagation.max.ms": 10_000,
    }
    if kafka.sasl_mechanism:
        conf["sasl.mechanisms"] = kafka.sasl_mechanism
        conf["sasl.username"] = kafka.sasl_username or ""
        conf["sasl.password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
    return conf


def confluent_producer(kafka: KafkaConfig, settings: ProducerSettings, *, client_id: str | None = None,
                       connect_timeout_s: float = 10.0) -> ConfluentSink:
    """A librdkafka producer for ``kafka``'s brokers and security settings, as a sink.

    Called once by the replay command, the demo and the benchmark; the caller closes it. Checks
    that a broker answers, so a wrong address fails here with the fix, not as a minute of timeouts.

    Raises:
        ReplayError: the settings are refused or no broker answered within ``connect_timeout_s``.
    """
    from confluent_kafka import KafkaException, Producer

    sink = ConfluentSink(None)
    conf = _options(kafka, settings, client_id)
    conf["on_delivery"] = sink.on_delivery
    conf["logger"] = logging.getLogger("streamtrain.replay.librdkafka")
    try:
        producer = Producer(conf)
        producer.list_topics(timeout=connect_timeout_s)
    except KafkaException as exc:
        raise ReplayError(
            f"cannot connect a producer to {','.join(kafka.bootstrap_servers)}: {exc.args[0].str()}; "
            "is the broker up (scripts/local-stack start)?"
        ) from exc
    sink._producer = producer
    return sink
