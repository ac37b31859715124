"""confluent-kafka (librdkafka) implementation of the fetch interface (:mod:`streamtrain.ingest.fetch`).

librdkafka fetches on its own threads and hands out messages in batches (``consume``), so the Python
cost is one call per message for value and offset. ``auto.offset.reset=error`` turns a position the
log no longer holds into an ``_AUTO_OFFSET_RESET`` error that becomes :class:`OutOfRange`, as
kafka-python's ``auto_offset_reset="none"`` does. The ``group.id`` librdkafka requires is never used
for membership or commits (``assign`` only, auto-commit and offset store off).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streamtrain.ingest.fetch import Fetched, FetchError, OutOfRange
from streamtrain.events.records import PartitionKey
from streamtrain.events.records import EARLIEST

__all__ = ["ConfluentFetcher", "librdkafka_options"]

log = logging.getLogger(__name__)



class _LazyKeys:
    """Message keys, read only for the few messages that are dead-lettered."""

    def __init__(self, messages: list[Any]) -> None:
        self._messages = messages

    def __getitem__(self, i: int) -> bytes | None:
        return self._messages[i].key()


def librdkafka_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """kafka-python style options (``kafka_client_options``) as librdkafka properties."""
    conf: dict[str, Any] = {
        "bootstrap.servers": ",".join(options["bootstrap_servers"]),
        "client.id": options.get("client_id", "streamtrain"),
        "security.protocol": options.get("security_protocol", "PLAINTEXT"),
    }
    if options.get("sasl_mechanism"):
        conf["sasl.mechanisms"] = options["sasl_mechanism"]
        conf["sasl.username"] = options.get("sasl_plain_username") or ""
        conf["sasl.password"] = options.get("sasl_plain_password") or ""
    return conf


class ConfluentFetcher:
    def __init__(self, options: Mapping[str, Any], max_records: int) -> None:
        conf = librdkafka_options(options)
        conf.update({
            "group.id": f"{conf['client.id']}-fetch-unused",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
            "enable.partition.eof": False,
            "fetch.max.bytes": 64 << 20,
            "max.partition.fetch.bytes": 16 << 20,
            "queued.max.messages.kbytes": 256 << 10,
        })
        self._consumer = Consumer(conf, logger=log)
        self._max_records = max_records
        self._next: dict[PartitionKey, int] = {}  # next offset to read, for out-of-range reports
        self._topic = ""

    def assign(self, positions: Mapping[PartitionKey, int]) -> None:
        if not positions:
            self._consumer.unassign()
            self._next = {}
            return
        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING if pos == EARLIEST else pos)
                               for (t, p), pos in positions.items()])
        self._next = {key: pos for key, pos in positions.items()}
        self._topic = next(iter(positions))[0]

    def fetch(self, timeout_s: float) -> list[Fetched]:
        if not self._next:
            time.sleep(timeout_s)
            return []
        messages = self._consumer.consume(num_messages=self._max_records, timeout=timeout_s)
        # Per message only error/partition here and value/offset below: the costs that remain per event.
        parts: dict[int, list[Any]] = {}
        failure: str | None = None
        topic = self._topic
        for m in messages:
            err = m.error()
            if err is not None:
                key = (m.topic(), m.partition())
                if err.code() == KafkaError._AUTO_OFFSET_RESET and key in self._next:
                    raise OutOfRange({key: self._next[key]})
                failure = f"{err.name()}: {err.str()}"
                continue
            p = m.partition()
            part = parts.get(p)
            if part is None:
                part = parts[p] = []
            part.append(m)
        out = []
        for p, msgs in parts.items():
            offsets = np.fromiter((m.offset() for m in msgs), dtype=np.int64, count=len(msgs))
            self._next[(topic, p)] = int(offsets[-1]) + 1
            out.append(Fetched((topic, p), offsets, [m.value() for m in msgs], _LazyKeys(msgs)))
        if failure is not None and not out:
            raise FetchError(failure)
        return out

    def seek(self, key: PartitionKey, offset: int) -> None:
        positions = dict(self._next)
        positions[key] = offset
        self.assign(positions)  # seek() needs a fetched-at-least-once partition; re-assign always works

    def watermarks(self, keys: Sequence[PartitionKey]) -> dict[PartitionKey, tuple[int, int]]:
        out = {}
        for key in keys:
            try:
                low, high = self._consumer.get_watermark_offsets(TopicPartition(*key), timeout=10.0)
            except Exception as exc:
                raise FetchError(f"{type(exc).__name__}: {exc}") from exc
            out[key] = (int(low), int(high))
        return out

    def close(self) -> None:
        self._consumer.close()
