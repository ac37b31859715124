"""The one small source interface: read records of assigned partitions from given offsets.

Two clients implement it, chosen by ``kafka.client``: ``confluent`` (librdkafka through
confluent-kafka; the default, ~2x kafka-python's records/s on one core, see BENCHMARKS.md) and
``kafka-python``. A fetcher never joins a consumer group and never commits: partitions and start
offsets come from the trainer process, which owns the group (:mod:`streamtrain.ingest.pooled_source`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from streamtrain.events.records import PartitionKey
from streamtrain.events.records import EARLIEST

__all__ = ["Fetched", "Fetcher", "FetchError", "OutOfRange", "Record"]


@dataclass(frozen=True, slots=True)
class Record:
    """What a dead letter needs of a message (built only for rejected ones)."""

    value: bytes | None
    key: bytes | None
    offset: int


@dataclass(slots=True)
class Fetched:
    """One partition's messages of one fetch, in offset order."""

    key: PartitionKey
    offsets: np.ndarray  # (n,) int64
    values: list[bytes | None]
    keys: Any  # indexable: message keys (read only for dead letters)

    def records(self) -> Sequence[Record]:
        return _Records(self)


class _Records:
    def __init__(self, fetched: Fetched) -> None:
        self._f = fetched

    def __len__(self) -> int:
        return len(self._f.values)

    def __getitem__(self, i: int) -> Record:
        f = self._f
        return Record(f.values[i], f.keys[i], int(f.offsets[i]))


class OutOfRange(Exception):
    """The log no longer holds (or not yet holds) these positions: ``{partition: stored offset}``."""

    def __init__(self, positions: Mapping[PartitionKey, int]) -> None:
        super().__init__(dict(positions))
        self.positions = dict(positions)


class FetchError(Exception):
    """A fetch failed (broker down, ...); the caller counts it and retries with backoff."""


class Fetcher(Protocol):
    def assign(self, positions: Mapping[PartitionKey, int]) -> None:
        """Read exactly these partitions from these offsets (EARLIEST allowed); {} reads nothing."""
        ...

    def fetch(self, timeout_s: float) -> list[Fetched]:
        """Records that arrived within ``timeout_s``; raises OutOfRange or FetchError."""
        ...

    def seek(self, key: PartitionKey, offset: int) -> None: ...

    def watermarks(self, keys: Sequence[PartitionKey]) -> dict[PartitionKey, tuple[int, int]]:
        """(log start, log end) per partition."""
        ...

    def close(self) -> None: ...


class KafkaPythonFetcher:
    """kafka-python ``KafkaConsumer`` without a group (``assign``/``seek``)."""

    def __init__(self, options: Mapping[str, Any], max_records: int) -> None:
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(
            **options, group_id=None, enable_auto_commit=False, auto_offset_reset="none",
            max_poll_records=max_records, fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20,
        )
        self._max_records = max_records
        self._assigned: list[Any] = []

    def assign(self, positions: Mapping[PartitionKey, int]) -> None:
        from kafka import TopicPartition

        tps = {key: TopicPartition(*key) for key in positions}
        self._consumer.assign(list(tps.values()))
        self._assigned = list(tps.values())
        for key, position in positions.items():
            if position == EARLIEST:
                self._consumer.seek_to_beginning(tps[key])
            else:
                self._consumer.seek(tps[key], position)

    def fetch(self, timeout_s: float) -> list[Fetched]:
        from kafka.errors import KafkaError, OffsetOutOfRangeError

        if not self._assigned:
            time.sleep(timeout_s)
            return []
        try:
            polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=self._max_records)
        except OffsetOutOfRangeError as exc:
            stored = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
            raise OutOfRange({(tp[0], tp[1]): int(off) for tp, off in stored.items()}) from exc
        except KafkaError as exc:
            raise FetchError(f"{type(exc).__name__}: {exc}") from exc
        out = []
        for tp, records in polled.items():
            if records:
                offsets = np.fromiter((r.offset for r in records), dtype=np.int64, count=len(records))
                out.append(Fetched((tp[0], tp[1]), offsets, [r.value for r in records], [r.key for r in records]))
        return out

    def seek(self, key: PartitionKey, offset: int) -> None:
        from kafka import TopicPartition

        self._consumer.seek(TopicPartition(*key), offset)

    def watermarks(self, keys: Sequence[PartitionKey]) -> dict[PartitionKey, tuple[int, int]]:
        from kafka import TopicPartition

        tps = [TopicPartition(*k) for k in keys]
        try:
            starts, ends = self._consumer.beginning_offsets(tps), self._consumer.end_offsets(tps)
        except Exception as exc:
            raise FetchError(f"{type(exc).__name__}: {exc}") from exc
        return {(tp[0], tp[1]): (int(starts[tp]), int(ends[tp])) for tp in tps}

    def close(self) -> None:
        self._consumer.close(autocommit=False)
