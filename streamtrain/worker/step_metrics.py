"""One training step's report → the Prometheus metrics (counters, step histogram, loss, probe gauges)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from streamtrain.metrics import Metrics
from streamtrain.training.engine import StepResult

__all__ = ["record_step"]

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
