"""The run's committed state in Redis, written in one MULTI/EXEC transaction per checkpoint.

Keys (``ns`` = ``<redis.key_prefix>:<run.name>``):

=========================  ====  ==============================================================
``ns:meta``                hash  checkpoint_id, file, digest (sha256 of the file), writer, events, step,
                                 timestamp, skipped (JSON: offsets lost to retention per partition), format,
                                 topic_ids (JSON topic -> Kafka topic id: which incarnation the offsets are of),
                                 world_size and partition_map (JSON rank -> partitions; "group" for W = 1)
``ns:offsets``             hash  ``<topic>:<partition>`` → next offset to train (-2: earliest)
``ns:state``               hash  shared-state name → ``.npy`` bytes (dtype + shape + data)
``ns:lease``               str   the job holding the run (streamtrain/distributed/lease.py)
``ns:trained_ranges``      list  debug: ``topic,partition,first,next,events`` per trained batch
=========================  ====  ==============================================================

Arrays use the ``.npy`` format (read with ``allow_pickle=False``), so a value carries its dtype
and shape and cannot execute code. The commit WATCHes ``ns:meta`` and checks that the stored
checkpoint id is the one this worker last wrote: a second worker on the same run is fenced off
instead of silently interleaving state.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from streamtrain.events.records import PartitionKey
from streamtrain.errors import FencedError, LeaseExpiredError, LeaseLostError, StateStoreError

__all__ = ["redis_client", "state_store", "StoredState", "RedisStateStore", "encode_array", "decode_array", "TrainedRange"]


log = logging.getLogger(__name__)

_FORMAT = "2"  # 2: adds digest, writer, skipped

TrainedRange = tuple[str, int, int, int, int]
"""(topic, partition, first_offset, next_offset, events) of one trained micro-batch."""


def encode_array(array: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes; object arrays are refused (they would need pickle)."""
    array = np.asarray(array)
    if array.dtype.hasobject:
        raise ValueError(f"cannot store an object array ({array.dtype}) in Redis; convert it to a numeric or str dtype")
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def decode_array(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_array`; raises ValueError on bytes that are not a plain ``.npy``."""
    return np.load(io.BytesIO(data), allow_pickle=False)


@dataclass(frozen=True)
class StoredState:
    """What the last successful checkpoint committed to Redis."""

    checkpoint_id: int
    file_name: str
    events: int
    step: int
    timestamp: float
    offsets: dict[PartitionKey, int]
    shared: dict[str, np.ndarray]
    digest: str | None = None  # sha256 of the committed file; None for state written before digests
    writer: str | None = None
    skipped: dict[PartitionKey, int] = field(default_factory=dict)
    topic_ids: dict[str, str] = field(default_factory=dict)  # {} for state written before topic ids


def _offset_field(key: PartitionKey) -> str:
    return f"{key[0]}:{key[1]}"


def _parse_offset_field(name: str) -> PartitionKey:
    # Kafka topic names cannot contain ':', so the last one separates the partition.
    topic, _, partition = name.rpartition(":")
    return topic, int(partition)


class RedisStateStore:
    """Reads and commits one run's state; every Redis failure becomes a :class:`StateStoreError`."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self._client = client
        self.namespace = namespace
        self.meta_key = f"{namespace}:meta"
        self.offsets_key = f"{namespace}:offsets"
        self.state_key = f"{namespace}:state"
        self.ranges_key = f"{namespace}:trained_ranges"
        # Extra ns:meta fields of every commit: the job's layout (world_size, partition_map; see distributed/).
        self.layout: dict[str, str] = {}
        # Kafka topic id per topic, recorded with every commit (streamtrain/worker/topic_identity.py).
        self.topic_ids: dict[str, str] = {}
        # (key, value) of the run's lease when one guards it: a commit applies only while Redis holds our value.
        self.lease: tuple[str, str] | None = None

    def load(self) -> StoredState | None:
        """The committed state, or None when this run has none; called once at start."""
        try:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.hgetall(self.meta_key).hgetall(self.offsets_key).hgetall(self.state_key)
                meta, offsets, state = pipe.execute()
        except redis.RedisError as exc:
            raise StateStoreError("load", str(exc)) from exc
        if not meta:
            return None
        try:
            m = {k.decode(): v.decode() for k, v in meta.items()}
            return StoredState(
                checkpoint_id=int(m["checkpoint_id"]),
                file_name=m["file"],
                events=int(m["events"]),
                step=int(m["step"]),
                timestamp=float(m["timestamp"]),
                offsets={_parse_offset_field(k.decode()): int(v) for k, v in offsets.items()},
                shared={k.decode(): decode_array(v) for k, v in state.items()},
                digest=m.get("digest"),
                writer=m.get("writer"),
                skipped={_parse_offset_field(k): int(v) for k, v in json.loads(m.get("skipped", "{}")).items()},
                topic_ids={str(k): str(v) for k, v in json.loads(m.get("topic_ids", "{}")).items()},
            )
        except (KeyError, ValueError) as exc:
            raise StateStoreError("load", f"state under {self.namespace} is malformed: {exc}") from exc

    def check_lease(self) -> None:
        """Raise unless this job holds the run's lease (no-op without one); checkpoints call it before writing.

        Raises:
            LeaseLostError: another job holds it (fatal: write nothing more).
            LeaseExpiredError: nobody holds it (retried once the heartbeat has taken it back).
        A Redis failure is left to the commit's transaction, which counts and reports it.
        """
        if self.lease is None:
            return
        try:
            current = self._client.get(self.lease[0])
        except redis.RedisError:
            return
        self._judge_lease(current)

    def _judge_lease(self, current: bytes | None) -> None:
        assert self.lease is not None
        key, value = self.lease
        if current is None:
            raise LeaseExpiredError("commit", f"the run's lease {key} expired and nobody holds it; not writing "
                                              "until the heartbeat takes it back")
        if current.decode(errors="replace") != value:
            holder = current.decode(errors="replace")
            try:
                holder = str(json.loads(holder).get("holder", holder))
            except (ValueError, AttributeError):
                pass
            raise LeaseLostError("commit", f"the run's lease {key} is held by {holder}, not by this job")

    def checkpoint_id(self) -> int | None:
        """The committed checkpoint id alone (cheap; used to resolve an ambiguous failed commit)."""
        try:
            raw = self._client.hget(self.meta_key, "checkpoint_id")
        except redis.RedisError as exc:
            raise StateStoreError("read", str(exc)) from exc
        return None if raw is None else int(raw)

    def commit(
        self,
        *,
        checkpoint_id: int,
        previous_ids: Iterable[int | None],
        file_name: str,
        offsets: Mapping[PartitionKey, int],
        shared: Mapping[str, np.ndarray | bytes],
        events: int,
        step: int,
        trained_ranges: Iterable[TrainedRange] | None = None,
        timestamp: float | None = None,
        digest: str | None = None,
        writer: str | None = None,
        skipped: Mapping[PartitionKey, int] | None = None,
    ) -> None:
        """Replace the committed state in one transaction; called by checkpoint step 3.

        Args:
            previous_ids: checkpoint ids this worker may find in Redis (the last one it committed, plus
                ids whose commit outcome was unknown). Anything else means another writer: FencedError.
                No id at all means Redis lost the keys; the commit then restores them.
            shared: arrays, or their :func:`encode_array` bytes (the checkpoint file already encoded them).
            trained_ranges: test mode: the run's whole list of trained ranges, which replaces the stored
                one (so a rewrite after Redis lost its keys, or a restore, keeps the history exact);
                None leaves the list alone.
            digest, writer: identify the committed file; resume verifies the file against them.

        Raises:
            FencedError: another writer committed in between; nothing was written.
            StateStoreError: Redis failed; the transaction was either fully applied or not at all.
        """
        allowed = set(previous_ids)
        encoded = {name: a if isinstance(a, bytes) else encode_array(a) for name, a in shared.items()}
        meta = {
            "checkpoint_id": str(checkpoint_id),
            "file": file_name,
            "events": str(events),
            "step": str(step),
            "timestamp": repr(time.time() if timestamp is None else timestamp),
            "format": _FORMAT,
            "skipped": json.dumps({_offset_field(k): int(v) for k, v in (skipped or {}).items()}),
        }
        meta.update(self.layout)
        if self.topic_ids:
            meta["topic_ids"] = json.dumps(self.topic_ids, sort_keys=True)
        if digest is not None:
            meta["digest"] = digest
        if writer is not None:
            meta["writer"] = writer
        ranges = None if trained_ranges is None else [json.dumps(list(r)) for r in trained_ranges]
        # The lease key is WATCHed too, and the heartbeat's renewal (PEXPIRE) also trips a WATCH: such a
        # transaction is tried again, and the re-read then tells a renewal from another writer.
        attempts = 5 if self.lease is not None else 1
        for attempt in range(attempts):
            try:
                with self._client.pipeline(transaction=True) as pipe:
                    self._transaction(pipe, allowed, encoded, offsets, meta, ranges)
                return
            except redis.WatchError as exc:
                if attempt + 1 < attempts:
                    continue
                raise FencedError(
                    "commit", f"{self.meta_key} or the run's lease changed during the transaction: another worker "
                    "is writing this run"
                ) from exc
            except redis.RedisError as exc:
                raise StateStoreError("commit", str(exc)) from exc

    def _transaction(self, pipe: Any, allowed: set[int | None], encoded: Mapping[str, bytes],
                     offsets: Mapping[PartitionKey, int], meta: Mapping[str, str], ranges: list[str] | None) -> None:
        pipe.watch(self.meta_key, *([self.lease[0]] if self.lease is not None else []))
        if self.lease is not None:  # WATCHed: the lease cannot change hands before EXEC applies
            self._judge_lease(pipe.get(self.lease[0]))
        raw = pipe.hget(self.meta_key, "checkpoint_id")
        current = None if raw is None else int(raw)
        if current is None and allowed - {None}:
            # Redis lost the run's keys (restarted without persistence, flushed): the worker's
            # memory holds the complete state, so writing it back is the recovery.
            log.warning("%s is gone from Redis; rewriting the run's state from memory", self.meta_key)
        elif current not in allowed:
            raise FencedError(
                "commit",
                f"{self.meta_key} holds checkpoint {current}, expected one of {sorted(allowed, key=str)}: "
                "another worker is writing this run",
            )
        pipe.multi()
        pipe.delete(self.state_key, self.offsets_key)
        if encoded:
            pipe.hset(self.state_key, mapping=encoded)
        if offsets:
            pipe.hset(self.offsets_key, mapping={_offset_field(k): str(v) for k, v in offsets.items()})
        pipe.delete(self.meta_key)  # no field of an older format survives (e.g. a digest)
        pipe.hset(self.meta_key, mapping=meta)
        if ranges is not None:
            pipe.delete(self.ranges_key)
            if ranges:
                pipe.rpush(self.ranges_key, *ranges)
        pipe.execute()

    def load_layout(self) -> dict[str, str]:
        """world_size and partition_map of the last commit ({} before the first, or state before them)."""
        try:
            raw = self._client.hmget(self.meta_key, ["world_size", "partition_map"])
        except redis.RedisError as exc:
            raise StateStoreError("read", str(exc)) from exc
        return {k: v.decode() for k, v in zip(("world_size", "partition_map"), raw, strict=True) if v is not None}

    def clear(self) -> None:
        """Delete the run's state (``--fresh``)."""
        try:
            self._client.delete(self.meta_key, self.offsets_key, self.state_key, self.ranges_key)
        except redis.RedisError as exc:
            raise StateStoreError("clear", str(exc)) from exc

    def trained_ranges(self) -> list[TrainedRange]:
        """The debug record of trained batches (tests audit exactly-once training with it)."""
        try:
            raw = self._client.lrange(self.ranges_key, 0, -1)
        except redis.RedisError as exc:
            raise StateStoreError("read", str(exc)) from exc
        out: list[Any] = [tuple(json.loads(r)) for r in raw]
        return out


def redis_client(config: Any) -> redis.Redis:
    """A Redis client with the configured timeouts (connects lazily)."""
    r = config.redis
    return redis.Redis.from_url(
        r.url,
        password=r.password.get_secret_value() if r.password else None,
        socket_timeout=r.socket_timeout_s,
        socket_connect_timeout=r.socket_timeout_s,
    )


def state_store(config: Any, client: redis.Redis) -> RedisStateStore:
    """The run's Redis namespace: ``<redis.key_prefix>:<run.name>``."""
    return RedisStateStore(client, f"{config.redis.key_prefix}:{config.run.name}")
