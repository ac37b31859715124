"""The worker's metrics: every labelled series at start (:func:`init_series`), and one training step's
report → counters, step histogram, loss, probe gauges (:func:`record_step`)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from streamtrain.config import Config
from streamtrain.evaluation.covisit import COVISIT
from streamtrain.evaluation.popularity import BASELINES
from streamtrain.events import RejectReason
from streamtrain.metrics import Metrics
from streamtrain.training.engine import StepResult

__all__ = ["init_series", "record_step"]

# probe result key → Metrics attribute
_PROBE_GAUGES = {
    "full_loss": "probe_full_loss",
    "sampled_loss": "probe_sampled_loss",
    "loss_bias": "probe_loss_bias",
    "gradient_alignment": "probe_gradient_alignment",
    "kl": "probe_kl",
    "ess": "probe_ess",
    "cache_hit_ratio": "cache_hit_ratio",
}


def record_step(
    m: Metrics,
    stats: StepResult,
    vocabulary_sizes: Mapping[str, int],
    probe: Mapping[str, float] | None = None,
    *,
    now: float | None = None,
) -> None:
    """Update every per-step metric. A skipped update (non-finite loss) is counted and leaves the loss
    and logQ gauges at their last finite values: a NaN gauge would blank the dashboard's loss panel,
    while the skip counter is what an operator should look at."""
    m.train_steps.inc()
    m.events_trained.inc(stats.num_events)
    m.step_duration.observe(stats.duration_s)
    m.last_train_timestamp.set(time.time() if now is None else now)
    if stats.applied:
        m.train_loss.set(stats.loss)
        m.logq_correction_mean.set(stats.logq_mean)
        m.logq_correction_stddev.set(stats.logq_std)
    else:
        m.train_steps_skipped.inc()
    if "cache_hit_ratio" in stats.sampler_stats:
        m.cache_hit_ratio.set(float(stats.sampler_stats["cache_hit_ratio"]))
    for tower, size in vocabulary_sizes.items():
        m.vocabulary_size.labels(tower=tower).set(size)
    rankers = {"model": stats.progressive or {}, **(stats.baselines or {})}
    for ranker, values in rankers.items():
        for name, value in values.items():
            metric, _, k = name.partition("@")
            gauge = {"recall": m.progressive_recall, "ndcg": m.progressive_ndcg}.get(metric)
            if gauge is not None and k:
                gauge.labels(k=k, model=ranker).set(float(value))
    for name, value in (probe or {}).items():
        attr = _PROBE_GAUGES.get(name)
        if attr is not None:
            getattr(m, attr).set(float(value))


def init_series(m: Metrics, config: Config, vocabulary_sizes: Mapping[str, int]) -> None:
    """Create every labelled series at 0 so dashboards and ``rate()`` see them before the first event."""
    for reason in RejectReason:
        m.events_dead_lettered.labels(reason=str(reason))
        for cause in ("too_large", "refused"):
            m.dead_letters_bounded.labels(reason=str(reason), cause=cause)
    for outcome in ("ok", "failed"):
        m.checkpoints.labels(outcome=outcome)
    for outcome in ("ok", "skipped", "failed"):  # at 0 also when export.every_checkpoints is off
        m.exports.labels(outcome=outcome)
    for operation in ("load", "commit", "read", "clear"):
        m.redis_errors.labels(operation=operation)
    for operation in ("poll", "commit", "end_offsets", "dead_letter", "dead_letter_flush", "offset_out_of_range"):
        m.kafka_errors.labels(operation=operation)
    for tower, size in vocabulary_sizes.items():
        m.vocabulary_size.labels(tower=tower).set(size)
    for k in config.trainer.eval_k:
        for ranker in ("model", *BASELINES, *([COVISIT] if config.trainer.covisit_neighbours else [])):
            m.progressive_recall.labels(k=str(k), model=ranker)
            m.progressive_ndcg.labels(k=str(k), model=ranker)
    m.assigned_partitions.set(0)
    m.partitions_discovered.labels(topic=config.kafka.topic)
    m.topic_recreated.labels(topic=config.kafka.topic, decision=config.kafka.on_topic_recreated)
    m.redis_connected.set(1)  # resume just read the run's state from Redis
    # Start time as the baseline: 0 would read as "no step for 56 years" on dashboards and make the
    # staleness alerts true from the first scrape; this way they measure time since start.
    now = time.time()
    m.last_train_timestamp.set(now)
    m.last_checkpoint_timestamp.set(now)
