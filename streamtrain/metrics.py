"""Every Prometheus metric streamtrain exports, declared in one place.

Names follow Prometheus conventions: ``streamtrain_`` prefix, base units as suffixes
(``_seconds``, ``_bytes``, ``_ratio``), ``_total`` on counters, and no label whose values are
user or item ids (cardinality stays bounded). Metrics register on the registry passed in, never on
the global default, so tests build a fresh ``CollectorRegistry`` and read exact values.

The ``run`` a series belongs to is a *target* label set by the scrape config (compose, k8s,
local stack), so the same binary needs no label plumbing.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

__all__ = ["Metrics"]

_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_NS = "streamtrain"
_CHECKPOINT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The worker's metric families; one instance per worker, bound to one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._declare_ingest(_NS, registry)
        self._declare_training(_NS, registry)
        self._declare_probe(_NS, registry)
        self._declare_evaluation(_NS, registry)
        self._declare_checkpoints(_NS, registry)
        self._declare_cluster(_NS, registry)
        self._declare_vocabulary(_NS, registry)

    def _declare_ingest(self, ns: str, registry: CollectorRegistry) -> None:
        """Ingest: messages read, trained, dead-lettered or skipped, and how far behind the worker is."""
        self.events_consumed = Counter(
            "events_consumed", "Kafka messages read from the input topic", namespace=ns, registry=registry
        )
        self.events_trained = Counter(
            "events_trained", "Events that went through a training step", namespace=ns, registry=registry
        )
        self.events_dead_lettered = Counter(
            "events_dead_lettered",
            "Messages sent to the dead-letter topic, by reject reason",
            ["reason"],
            namespace=ns,
            registry=registry,
        )
        self.dead_letters_bounded = Counter(
            "dead_letters_bounded",
            "Dead letters the producer or broker refused in full (too large, or otherwise), sent instead as a "
            "bounded record (headers, digest, value prefix); by reject reason and cause (too_large, refused)",
            ["reason", "cause"],
            namespace=ns,
            registry=registry,
        )
        self.offsets_skipped = Counter(
            "offsets_skipped",
            "Offsets never trained because the log no longer held them (retention or deleted records "
            "overtook the stored offset)",
            ["topic", "partition"],
            namespace=ns,
            registry=registry,
        )
        self.consumer_lag_messages = Gauge(
            "consumer_lag_messages",
            "Messages between the end of a partition and the next offset to train",
            ["topic", "partition"],
            namespace=ns,
            registry=registry,
        )
        self.consumer_lag_seconds = Gauge(
            "consumer_lag_seconds",
            "Now minus the event time of the last trained event, per partition",
            ["topic", "partition"],
            namespace=ns,
            registry=registry,
        )
        self.trainer_wait_seconds = Counter(
            "trainer_wait_seconds", "Time the trainer spent waiting for a ready batch", namespace=ns, registry=registry
        )

    def _declare_training(self, ns: str, registry: CollectorRegistry) -> None:
        """Training steps: their count, time, loss and throughput."""
        self.train_steps = Counter("train_steps", "Training steps taken", namespace=ns, registry=registry)
        self.train_steps_skipped = Counter(
            "train_steps_skipped",
            "Steps whose update was skipped because the loss was not finite (the batch still counts as trained)",
            namespace=ns,
            registry=registry,
        )
        self.step_duration = Histogram(
            "step_duration_seconds",
            "Wall time of one training step (forward, sampling, backward, update)",
            buckets=_STEP_BUCKETS,
            namespace=ns,
            registry=registry,
        )
        self.train_loss = Gauge("train_loss", "Sampled-softmax loss of the last step", namespace=ns, registry=registry)
        self.last_train_timestamp = Gauge(
            "last_train_timestamp_seconds", "Unix time of the last training step", namespace=ns, registry=registry
        )
        self.logq_correction_mean = Gauge(
            "logq_correction_mean", "Mean of -log p̂ over the last batch's items", namespace=ns, registry=registry
        )
        self.logq_correction_stddev = Gauge(
            "logq_correction_stddev", "Standard deviation of -log p̂ over the last batch's items", namespace=ns,
            registry=registry,
        )
        self.vocabulary_size = Gauge(
            "vocabulary_size", "Ids holding their own embedding row", ["tower"], namespace=ns, registry=registry
        )

    def _declare_probe(self, ns: str, registry: CollectorRegistry) -> None:
        """The sampling-bias probe, run every few steps on a batch without training on it."""
        self.probe_full_loss = Gauge(
            "probe_full_softmax_loss", "Exact full-softmax loss on the probe batch", namespace=ns, registry=registry
        )
        self.probe_sampled_loss = Gauge(
            "probe_sampled_loss", "The sampler's loss on the probe batch", namespace=ns, registry=registry
        )
        self.probe_loss_bias = Gauge(
            "probe_loss_bias", "Sampled loss minus full-softmax loss on the probe batch", namespace=ns,
            registry=registry,
        )
        self.probe_gradient_alignment = Gauge(
            "probe_gradient_alignment_ratio",
            "Cosine between sampled and full-softmax gradients w.r.t. query embeddings (1 = unbiased)",
            namespace=ns,
            registry=registry,
        )
        self.probe_kl = Gauge(
            "probe_kl_divergence", "KL(full softmax || sampler's negative distribution), nats", namespace=ns,
            registry=registry,
        )
        self.probe_ess = Gauge(
            "probe_effective_sample_size", "Effective sample size of BIR/XIR resampling weights", namespace=ns,
            registry=registry,
        )
        self.cache_hit_ratio = Gauge(
            "xir_cache_hit_ratio", "Share of the batch's XIR candidate draws whose item was already in the hot-item cache", namespace=ns, registry=registry
        )

    def _declare_evaluation(self, ns: str, registry: CollectorRegistry) -> None:
        """Progressive (test-then-train) Recall@K/NDCG@K of the model and of the streaming baselines."""
        # model="model" is the trained model; "popular_all" / "popular_recent" rank by all-time / decayed
        # item counts on the same batches (streamtrain/evaluation/popularity.py), "covisit" by item-to-item
        # co-visitation over the user's recent items (streamtrain/evaluation/covisit.py): the bars the model must clear.
        self.progressive_recall = Gauge(
            "progressive_recall_ratio", "Rolling test-then-train Recall@K of the model and of the popularity baselines",
            ["k", "model"], namespace=ns, registry=registry,
        )
        self.progressive_ndcg = Gauge(
            "progressive_ndcg_ratio", "Rolling test-then-train NDCG@K of the model and of the popularity baselines",
            ["k", "model"], namespace=ns, registry=registry,
        )

    def _declare_checkpoints(self, ns: str, registry: CollectorRegistry) -> None:
        """Checkpoints, restarts and the faults the worker survives."""
        self.checkpoints = Counter(
            "checkpoints", "Checkpoint attempts by outcome (ok, failed)", ["outcome"], namespace=ns, registry=registry
        )
        self.checkpoint_duration = Histogram(
            "checkpoint_duration_seconds",
            "End-to-end checkpoint time: state snapshot, files, Redis transaction, offset commit",
            buckets=_CHECKPOINT_BUCKETS,
            namespace=ns,
            registry=registry,
        )
        self.checkpoint_pause = Histogram(
            "checkpoint_pause_seconds",
            "Time training stood still per checkpoint (copying state off the trainer); the rest runs in the background",
            buckets=_CHECKPOINT_BUCKETS,
            namespace=ns,
            registry=registry,
        )
        self.last_checkpoint_timestamp = Gauge(
            "last_checkpoint_timestamp_seconds", "Unix time of the last successful checkpoint", namespace=ns,
            registry=registry,
        )
        self.exports = Counter(
            "exports", "Export publishes after a checkpoint, by outcome (ok, skipped: Redis moved on, failed)",
            ["outcome"], namespace=ns, registry=registry,
        )
        self.last_export_checkpoint_id = Gauge(
            "last_export_checkpoint_id", "Checkpoint id the served export (latest) was made from", namespace=ns,
            registry=registry,
        )
        self.redis_errors = Counter(
            "redis_errors", "Failed Redis operations", ["operation"], namespace=ns, registry=registry
        )
        self.kafka_errors = Counter(
            "kafka_errors", "Failed Kafka operations", ["operation"], namespace=ns, registry=registry
        )
        self.broker_connected = Gauge(
            "broker_connected",
            "1 when the last round trip to the Kafka broker (fetch with records, end offsets, commit) worked, "
            "0 after a failure",
            namespace=ns,
            registry=registry,
        )
        self.broker_last_success_timestamp = Gauge(
            "broker_last_success_timestamp_seconds",
            "Unix time of the last successful round trip to the Kafka broker",
            namespace=ns,
            registry=registry,
        )
        self.redis_connected = Gauge(
            "redis_connected",
            "1 when the last Redis operation of the run's state (resume, checkpoint transaction) worked, 0 after "
            "a failure; updated at each checkpoint attempt",
            namespace=ns,
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "assigned_partitions", "Input partitions assigned to this worker", namespace=ns, registry=registry
        )
        self.info = Info("build", "Version, sampler and device of this worker", namespace=ns, registry=registry)

    def _declare_cluster(self, ns: str, registry: CollectorRegistry) -> None:
        """What the cluster does to a long-lived worker: new partitions, a recreated topic, a lost lease."""
        self.partitions_discovered = Counter(
            "partitions_discovered",
            "Partitions the run had never owned (the topic grew) that it started reading at their earliest offset",
            ["topic"],
            namespace=ns,
            registry=registry,
        )
        self.topic_recreated = Counter(
            "topic_recreated",
            "Resumes that found the input topic deleted and recreated (another topic id than the checkpoint's), "
            "by the decision taken (kafka.on_topic_recreated: fail or restart)",
            ["topic", "decision"],
            namespace=ns,
            registry=registry,
        )
        self.lease_retaken = Counter(
            "lease_retaken",
            "Times the run's lease had expired with nobody holding it (this job was paused or cut off from Redis "
            "past distributed.lease_ttl_s) and the heartbeat took it back",
            namespace=ns,
            registry=registry,
        )

    def _declare_vocabulary(self, ns: str, registry: CollectorRegistry) -> None:
        """The vocabularies under churn: admissions, rejections, evictions, fallback lookups."""
        self.vocabulary_lookups = Counter(
            "vocabulary_lookups", "Ids looked up to train (one per event and tower)", ["tower"], namespace=ns,
            registry=registry,
        )
        self.vocabulary_fallback_lookups = Counter(
            "vocabulary_fallback_lookups",
            "Ids trained and scored on the shared fallback row (no row of their own); divided by "
            "streamtrain_vocabulary_lookups_total it is the fallback share",
            ["tower"], namespace=ns, registry=registry,
        )
        self.vocabulary_admissions = Counter(
            "vocabulary_admissions", "Ids given a row of their own", ["tower"], namespace=ns, registry=registry
        )
        self.vocabulary_rejections = Counter(
            "vocabulary_rejections",
            "Sightings of ids without a row that got none: below_threshold (model.admission_threshold not reached "
            "yet) or table_full (no free row and none evictable: model.eviction_after_s)",
            ["tower", "reason"], namespace=ns, registry=registry,
        )
        self.vocabulary_evictions = Counter(
            "vocabulary_evictions", "Rows taken from the least recently seen ids and given to new ones", ["tower"],
            namespace=ns, registry=registry,
        )
        self.log_lines_suppressed = Counter(
            "log_lines_suppressed",
            "Kafka client log lines held back as repeats of one cause within run.log_repeat_interval_s (the next "
            "line of that cause says how many), by logger",
            ["logger"], namespace=ns, registry=registry,
        )
