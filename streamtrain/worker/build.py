"""Builds a :class:`Worker` and its Kafka, Redis and HTTP collaborators from the configuration.

The only module that constructs clients; everything else receives them. Called by
``streamtrain consume`` and by the integration tests.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from kafka import KafkaConsumer, KafkaProducer
from kafka.record import util as kafka_record_util
from prometheus_client import CollectorRegistry

from streamtrain import __version__
from streamtrain.config import Config
from streamtrain.distributed.assignment import partition_map, partitions_for_rank
from streamtrain.distributed.context import DistContext
from streamtrain.distributed.exchange import StepExchange
from streamtrain.distributed.lease import RunLease
from streamtrain.distributed.startup import on_main, share_resume
from streamtrain.ingest.pooled_source import PooledSource
from streamtrain.log_limit import count_held_back_log_lines
from streamtrain.metrics import Metrics
from streamtrain.backoff import Backoff
from streamtrain.ingest.batcher import Batcher
from streamtrain.ingest.broker_health import BrokerHealth
from streamtrain.state.checkpoint import Checkpointer
from streamtrain.state.files import CheckpointFiles
from streamtrain.state.runner import CheckpointRunner
from streamtrain.ingest.dead_letter import DeadLetterSink, ensure_dead_letter_topic
from streamtrain.training.engine import TrainingEngine
from streamtrain.worker.http import MetricsServer
from streamtrain.ingest.lag import LagTracker
from streamtrain.worker.progress import Progress
from streamtrain.state.resume import resume
from streamtrain.ingest.source import KafkaSource
from streamtrain.errors import StateStoreError
from streamtrain.state.redis_store import RedisStateStore, redis_client, state_store
from streamtrain.worker.topic_identity import describe_topic_id, reconcile_topic
from streamtrain.worker.worker import Worker

__all__ = ["WorkerParts", "build_worker", "take_lease", "kafka_client_options"]

log = logging.getLogger(__name__)


def kafka_client_options(config: Config) -> dict[str, Any]:
    """Connection options shared by the consumer and the dead-letter producer."""
    k = config.kafka
    options: dict[str, Any] = {
        "bootstrap_servers": list(k.bootstrap_servers),
        "client_id": k.client_id,
        "security_protocol": k.security_protocol,
    }
    if k.sasl_mechanism:
        options["sasl_mechanism"] = k.sasl_mechanism
        options["sasl_plain_username"] = k.sasl_username
        options["sasl_plain_password"] = k.sasl_password.get_secret_value() if k.sasl_password else None
    return options


@dataclass
class WorkerParts:
    """A built worker plus what the caller must close after it stops."""

    worker: Worker
    http: MetricsServer | None
    producer: Any
    redis: redis.Redis
    start_seconds: float
    lease: RunLease | None = None

    def close(self) -> None:
        """Stop the HTTP server, release the run's lease and close the clients; called after the worker stopped."""
        if self.http is not None:
            self.http.stop()
        if self.lease is not None:
            self.lease.release()
        try:
            self.producer.close(timeout=5)
        except Exception as exc:
            log.warning("closing the dead-letter producer failed: %s", exc)
        self.redis.close()


def _publisher(config: Config, store: RedisStateStore, files: CheckpointFiles, metrics: Metrics) -> Any:
    """``export.every_checkpoints`` > 0: an ExportPublisher the worker calls after each committed checkpoint
    (serving/publish.py); otherwise None."""
    e = config.export
    if not e.every_checkpoints:
        return None
    from streamtrain.serving.ann import IndexSpec
    from streamtrain.serving.publish import ExportPublisher

    return ExportPublisher(
        Path(e.dir) / config.run.name, every=e.every_checkpoints, keep=e.keep, config=config,
        committed_id=store.checkpoint_id, checkpoint_file=files.path, index=IndexSpec.from_config(e),
        metrics=metrics,
    )


def _assign_statically(source: KafkaSource, worker: Worker, ctx: DistContext, consumer: KafkaConsumer,
                       store: RedisStateStore) -> None:
    """Under torchrun: partition p to rank p mod W, and every rank knows every partition's offset.

    Another world size than the last checkpoint's re-deals the partitions: correct, because every rank
    holds the whole model and every partition's committed offset (nothing is per rank but the reading).
    """

    def mine(partitions: list[int]) -> list[int]:
        # Every rank resolves every partition (fresh: all at the beginning) so the replicated progress,
        # and so rank 0's checkpoint, covers the partitions of all ranks, also the ones that stay empty.
        for p in partitions:
            worker.positions.resolve_position((source.topic, p))
        keys = partitions_for_rank(partitions, ctx.rank, ctx.world_size)
        if ctx.is_main:
            layout = json.dumps(partition_map(partitions, ctx.world_size), sort_keys=True)
            try:
                before = store.load_layout()
            except StateStoreError as exc:  # only for the log line; the commit reports Redis trouble
                before = {"world_size": f"unknown ({exc})"}
            if before.get("world_size", str(ctx.world_size)) != str(ctx.world_size):
                log.warning("world size %s -> %d: partitions re-dealt %s (every rank resumes every partition "
                            "from the global checkpoint)", before["world_size"], ctx.world_size, layout)
            store.layout = {"world_size": str(ctx.world_size), "partition_map": layout}
        log.info("rank %d of %d reads partitions %s of %s", ctx.rank, ctx.world_size, keys, source.topic)
        return keys

    source.static_partitions = mine
    if ctx.is_main:  # rank 0's checkpoint commits every partition's offset to Kafka, for lag tools
        source.commit_keys = {(source.topic, p) for p in (consumer.partitions_for_topic(source.topic) or ())}


def _prepare_topics(config: Config) -> str | None:
    """Create the dead-letter topic with a size limit matching the producer's (kept if it exists), and
    return the input topic's id (None when the broker cannot say; see topic_identity.py)."""
    from kafka.admin import KafkaAdminClient

    try:
        admin = KafkaAdminClient(**kafka_client_options(config), request_timeout_ms=10_000)
    except Exception as exc:  # no broker yet: the consumer's bootstrap reports it
        log.warning("cannot reach the broker to create %s: %s", config.kafka.dead_letter_topic, exc)
        return None
    try:
        ensure_dead_letter_topic(admin, config.kafka.dead_letter_topic, config.kafka.dead_letter_max_bytes)
        return describe_topic_id(admin, config.kafka.topic)
    finally:
        admin.close()


def _pool_factory(config: Config, processes: int, metrics: Metrics) -> Callable[..., Any]:
    """What :class:`PooledSource` calls to build its :class:`IngestPool` (it supplies the callbacks)."""
    from streamtrain.ingest.pool import IngestPool
    from streamtrain.ingest.slots import SlotLayout

    k, b = config.kafka, config.trainer.batch_size
    settings = {
        "client": k.client, "options": kafka_client_options(config), "max_records": k.max_poll_records,
        "max_message_bytes": k.max_message_bytes, "batch_size": b, "max_latency_s": config.trainer.max_batch_latency_s,
        "dead_letter_topic": k.dead_letter_topic, "dead_letter_max_bytes": k.dead_letter_max_bytes,
        "log_level": config.run.log_level, "log_repeat_interval_s": config.run.log_repeat_interval_s,
    }
    layout = SlotLayout(b, b * config.ingest.id_bytes)

    def factory(on_batch: Any, on_reset: Any, on_health: Any) -> IngestPool:
        return IngestPool(processes, topic=k.topic, settings=settings, layout=layout,
                          slots_per_process=k.queue_batches + 1, metrics=metrics,
                          on_batch=on_batch, on_reset=on_reset, on_health=on_health)

    return factory


def build_worker(
    config: Config,
    *,
    engine_factory: Callable[[Config], TrainingEngine],
    fresh: bool = False,
    restore: str | None = None,
    max_steps: int | None = None,
    idle_exit_s: float | None = None,
    registry: CollectorRegistry | None = None,
    ctx: DistContext | None = None,
) -> WorkerParts:
    """Resume the run's state into a new engine and wire a worker ready to ``start``.

    Raises:
        ResumeError: the stored state cannot be used (see :mod:`streamtrain.state.resume`).
        kafka.errors.KafkaError: no broker answered at bootstrap.
    """
    t0 = time.perf_counter()
    if kafka_record_util.crc32c_c is None:
        log.warning("the crc32c package is not installed: kafka-python checks CRCs in pure Python, "
                    "which halves ingest throughput (pip install crc32c)")
    metrics = Metrics(registry or CollectorRegistry())
    count_held_back_log_lines(metrics)
    client = redis_client(config)
    store = state_store(config, client)
    ctx = ctx if ctx is not None else DistContext()
    # Before --fresh clears anything; one lease per job, held by rank 0.
    lease = on_main(ctx, "take the run's lease", lambda: take_lease(config, client, store.namespace, metrics))
    if lease is not None:
        store.lease = (lease.key, lease.value)  # every commit applies only while the lease is this job's
    try:
        parts = _build(config, client, store, metrics, engine_factory=engine_factory, fresh=fresh, restore=restore,
                       max_steps=max_steps, idle_exit_s=idle_exit_s, ctx=ctx)
    except BaseException:
        if lease is not None:
            lease.release()
        client.close()
        raise
    parts.lease = lease
    if lease is not None:
        lease.on_lost = parts.worker.lease_lost
    parts.start_seconds = time.perf_counter() - t0
    return parts


def take_lease(config: Config, client: redis.Redis, namespace: str, metrics: Metrics | None = None) -> RunLease | None:
    """The run's lease (one job per run), or None when ``distributed.lease`` is off.

    Raises:
        LeaseHeldError: another job holds it; the message names the holder and the expiry.
    """
    d = config.distributed
    if not d.lease:
        return None
    lease = RunLease(client, namespace, ttl_s=d.lease_ttl_s,
                     on_retaken=metrics.lease_retaken.inc if metrics is not None else None)
    lease.acquire(d.lease_wait_s)
    lease.start_heartbeat()  # from now: resuming a large checkpoint can outlast the TTL
    return lease


def _build(
    config: Config,
    client: redis.Redis,
    store: RedisStateStore,
    metrics: Metrics,
    *,
    engine_factory: Callable[[Config], TrainingEngine],
    fresh: bool,
    restore: str | None,
    max_steps: int | None,
    idle_exit_s: float | None,
    ctx: DistContext,
) -> WorkerParts:
    engine = engine_factory(config)
    files = CheckpointFiles(config.checkpoint.dir, config.run.name, config.checkpoint.keep)
    record = config.checkpoint.record_trained_ranges
    k = config.kafka
    topic_id = on_main(ctx, "describe the topic", lambda: _prepare_topics(config))
    start = on_main(ctx, "resume", lambda: reconcile_topic(
        resume(engine, store, files, fresh=fresh, restore=restore, record_ranges=record),
        k.topic, topic_id, k.on_topic_recreated, metrics))
    start = share_resume(ctx, engine, start)
    store.topic_ids = dict(start.topic_ids)
    progress = Progress(start.offsets, start.events, record_ranges=record, skipped=start.skipped)

    consumer, producer, dead_letters = _kafka_clients(config, metrics)
    worker_ref: list[Worker] = []
    source = _source(config, consumer, dead_letters, metrics, _Hooks(worker_ref, progress))
    checkpointer = Checkpointer(
        files=files,
        store=store,
        flush_dead_letters=dead_letters.flush,
        commit_offsets=source.request_commit,
        metrics=metrics,
        committed_id=start.checkpoint_id,
        committed_offsets=start.offsets,
        history_ranges=start.trained_ranges if record else None,
    )
    c = config.checkpoint
    runner = CheckpointRunner(
        checkpointer,
        Backoff(c.retry_backoff_s, max(c.retry_backoff_s, c.max_retry_backoff_s)),
        interval_events=c.interval_events,
        interval_s=c.interval_s,
    )
    runner.committed_events = start.events
    worker = Worker(
        config,
        engine=engine,
        source=source,
        checkpointer=checkpointer,
        runner=runner,
        progress=progress,
        start=start,
        metrics=metrics,
        max_steps=max_steps if max_steps is not None else config.trainer.max_steps,
        idle_exit_s=idle_exit_s if idle_exit_s is not None else config.trainer.idle_exit_s,
        exchange=StepExchange(ctx),
        publisher=_publisher(config, store, files, metrics),
    )
    store.layout = {"world_size": str(ctx.world_size), "partition_map": '"group"'}
    if ctx.launched:
        _assign_statically(source, worker, ctx, consumer, store)
    worker_ref.append(worker)
    metrics.info.info({"version": __version__, "sampler": config.sampler.name, "device": str(engine.device)})
    return WorkerParts(worker, _http(config, worker, metrics, ctx), producer, client, 0.0)


class _Hooks:
    """The source's view of the worker, which does not exist yet when the source is built."""

    def __init__(self, worker_ref: list[Worker], progress: Progress) -> None:
        self._worker = worker_ref
        self._progress = progress

    def resolve_position(self, key: Any) -> int | None:
        return self._worker[0].positions.resolve_position(key)

    def on_revoked(self, keys: Any) -> None:
        self._worker[0].on_revoked(keys)

    def trained_offsets(self) -> Any:
        return self._progress.offsets()

    def last_event_times(self) -> Any:
        return self._progress.last_event_times()

    def on_offset_reset(self, key: Any, stored: int, new: int, log_start: int | None = None) -> None:
        self._worker[0].positions.on_offset_reset(key, stored, new, log_start)


def _kafka_clients(config: Config, metrics: Metrics) -> tuple[KafkaConsumer, KafkaProducer, DeadLetterSink]:
    """The group consumer (membership, commits, lag) and the dead-letter producer with its sink."""
    k = config.kafka
    common = kafka_client_options(config)
    consumer = KafkaConsumer(
        **common,
        group_id=k.group_id,
        group_instance_id=k.group_instance_id,
        enable_auto_commit=False,
        # Positions always come from our own state; "none" makes a missing one an error, not a guess.
        auto_offset_reset="none",
        max_poll_records=k.max_poll_records,
        session_timeout_ms=int(k.session_timeout_s * 1000),
        heartbeat_interval_ms=max(1000, int(k.session_timeout_s * 1000 / 4)),
        # A changed partition count in the metadata makes the group rebalance: this bounds how late new
        # partitions are noticed.
        metadata_max_age_ms=int(k.metadata_max_age_s * 1000),
    )
    producer = KafkaProducer(**common, linger_ms=5, max_request_size=k.dead_letter_max_bytes)
    return consumer, producer, DeadLetterSink(producer, k.dead_letter_topic, metrics)


def _source(config: Config, consumer: KafkaConsumer, dead_letters: DeadLetterSink, metrics: Metrics,
            hooks: _Hooks) -> KafkaSource:
    """The inline source, or the pooled one when ``ingest.processes`` resolves to > 0."""
    k = config.kafka
    source_args: dict[str, Any] = dict(
        batcher=Batcher(config.trainer.batch_size, config.trainer.max_batch_latency_s),
        dead_letters=dead_letters,
        metrics=metrics,
        lag=LagTracker(metrics, k.lag_interval_s, health=BrokerHealth(metrics, k.broker_unreachable_s)),
        hooks=hooks,
        queue_batches=k.queue_batches,
        max_message_bytes=k.max_message_bytes,
        max_poll_records=k.max_poll_records,
        assignment_timeout_s=max(30.0, 5 * k.session_timeout_s),
    )
    processes = config.ingest.resolved_processes
    if processes > 0:
        return PooledSource(consumer, k.topic, pool_factory=_pool_factory(config, processes, metrics), **source_args)
    return KafkaSource(consumer, k.topic, **source_args)


def _http(config: Config, worker: Worker, metrics: Metrics, ctx: DistContext) -> MetricsServer | None:
    """``/metrics``, ``/healthz`` and ``/readyz``, one port per local rank (0 stays "pick a free one")."""
    if not config.metrics.enabled:
        return None
    port = config.metrics.port and config.metrics.port + ctx.local_rank
    http = MetricsServer(metrics.registry, config.metrics.host, port, healthy=worker.healthy, ready=worker.ready)
    http.start()
    return http
