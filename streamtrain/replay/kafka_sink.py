"""Producer settings of replay, and the previous producer: a kafka-python ``KafkaProducer``.

:class:`ProducerSettings` (linger, batch size, compression) is what ``streamtrain replay`` exposes;
:func:`~streamtrain.replay.confluent_sink.confluent_producer` (librdkafka) applies it. The
kafka-python producer (:func:`kafka_python_producer`) is kept only as the old path the replay
benchmark measures side by side (bench/run --suite replay): 10x slower, it is no longer used by
the command or the demo. Both fix the safety settings: ``acks="all"`` with idempotence, so
retries neither lose nor reorder a user's events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from streamtrain.config import KafkaConfig
from streamtrain.replay.errors import ReplayError

__all__ = ["COMPRESSIONS", "Compression", "ProducerSettings", "kafka_python_producer"]

Compression = Literal["none", "lz4", "gzip", "zstd", "snappy"]
COMPRESSIONS: tuple[str, ...] = ("none", "lz4", "gzip", "zstd", "snappy")
# The package kafka-python needs for each codec (gzip is in the standard library).
_CODEC_PACKAGES = {"lz4": "lz4", "zstd": "zstandard", "snappy": "python-snappy"}


@dataclass(frozen=True)
class ProducerSettings:
    """Batching knobs of the replay producer.

    Attributes:
        linger_ms: how long a partition's batch may wait for more events.
        batch_bytes: the largest batch per partition (kafka-python ``batch_size``).
        compression: codec per batch; ``lz4`` halves the bytes sent for a remote broker (librdkafka
            has every codec built in; the kafka-python path needs the codec's package).
    """

    linger_ms: int = 20
    batch_bytes: int = 256 * 1024
    compression: Compression = "none"

    def __post_init__(self) -> None:
        if self.linger_ms < 0 or self.batch_bytes < 1:
            raise ReplayError("producer settings: need linger_ms >= 0 and batch_bytes >= 1")
        if self.compression not in COMPRESSIONS:
            raise ReplayError(f"unknown compression {self.compression!r}; use one of {', '.join(COMPRESSIONS)}")


def _check_codec(compression: str) -> None:
    if compression in ("none", "gzip"):
        return
    from kafka import codec

    available = {"lz4": codec.has_lz4, "zstd": codec.has_zstd, "snappy": codec.has_snappy}[compression]()
    if not available:
        raise ReplayError(
            f"--compression {compression} needs the package {_CODEC_PACKAGES[compression]}: "
            f"pip install {_CODEC_PACKAGES[compression]} (or use --compression none)"
        )


def _key_partitioner() -> Any:
    """kafka-python's default partitioner with the key's murmur2 hash computed once per key.

    Same partition for the same key as the default (and the Java client): ``murmur2(key) &
    0x7fffffff % partitions``. The default recomputes the pure-Python hash and re-sorts the
    partition list for every message, a sixth of the send cost; replay keys repeat a lot (one per
    user), so a dict of hashes pays. Memory: one entry per distinct user.
    """
    from kafka.partitioner.default import DefaultPartitioner, murmur2

    class KeyHashCachingPartitioner(DefaultPartitioner):
        def __init__(self) -> None:
            self._hashes: dict[bytes, int] = {}

        def partition(self, topic, key, serialized_key, value, serialized_value, cluster):  # type: ignore[no-untyped-def]
            if serialized_key is None:
                return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
            partitions = cluster.partitions_for_topic(topic)
            if not partitions:
                raise ValueError(f"Topic {topic} not found in ClusterMetadata")
            h = self._hashes.get(serialized_key)
            if h is None:
                h = self._hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF
            # Kafka numbers partitions 0..n-1, so sorted(partitions)[i] == i.
            return h % len(partitions)

    return KeyHashCachingPartitioner()


def kafka_python_producer(kafka: KafkaConfig, settings: ProducerSettings, *, client_id: str | None = None) -> Any:
    """A connected kafka-python ``KafkaProducer`` for ``kafka``'s brokers and security settings.

    The old replay producer, called only by the replay benchmark as the baseline. The caller closes it.

    Raises:
        ReplayError: the codec's package is missing or no broker answered.
    """
    _check_codec(settings.compression)
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    options: dict[str, Any] = {
        "bootstrap_servers": list(kafka.bootstrap_servers),
        "client_id": client_id or f"{kafka.client_id}-replay",
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": settings.linger_ms,
        "batch_size": settings.batch_bytes,
        "compression_type": None if settings.compression == "none" else settings.compression,
        "security_protocol": kafka.security_protocol,
        "partitioner": _key_partitioner(),
    }
    if kafka.sasl_mechanism:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        if kafka.sasl_password is not None:
            options["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    try:
        return KafkaProducer(**options)
    except KafkaError as exc:
        raise ReplayError(
            f"cannot connect a producer to {','.join(kafka.bootstrap_servers)}: {exc}; "
            "is the broker up (scripts/local-stack start)?"
        ) from exc
