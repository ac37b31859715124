"""record_step: what one step's report does to the metrics, incl. a skipped (non-finite) update."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from streamtrain.metrics import Metrics
from streamtrain.worker.step_metrics import record_step


@dataclass
class Stats:
    step: int = 1
    num_events: int = 100
    loss: float = 2.5
    duration_s: float = 0.01
    logq_mean: float = -3.0
    logq_std: float = 0.5
    sampler_stats: dict[str, Any] = field(default_factory=dict)
    progressive: dict[str, Any] | None = None
    applied: bool = True
    baselines: dict[str, dict[str, float]] | None = None


def _value(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float | None:
    return registry.get_sample_value(name, labels or {})


def test_applied_step_sets_loss_counters_and_gauges() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    record_step(m, Stats(sampler_stats={"cache_hit_ratio": 0.25}, progressive={"recall@20": 0.1, "ndcg@20": 0.05}),
                {"user": 7, "item": 9}, {"gradient_alignment": 0.9, "unknown_key": 1.0}, now=123.0)
    assert _value(registry, "streamtrain_train_steps_total") == 1
    assert _value(registry, "streamtrain_events_trained_total") == 100
    assert _value(registry, "streamtrain_train_steps_skipped_total") == 0
    assert _value(registry, "streamtrain_train_loss") == 2.5
    assert _value(registry, "streamtrain_last_train_timestamp_seconds") == 123.0
    assert _value(registry, "streamtrain_xir_cache_hit_ratio") == 0.25
    assert _value(registry, "streamtrain_vocabulary_size", {"tower": "item"}) == 9
    assert _value(registry, "streamtrain_progressive_recall_ratio", {"k": "20", "model": "model"}) == 0.1
    assert _value(registry, "streamtrain_probe_gradient_alignment_ratio") == 0.9


def test_popularity_baselines_are_the_same_gauges_with_their_model_label() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    baselines = {"popular_all": {"recall@20": 0.3, "ndcg@20": 0.2}, "popular_recent": {"recall@20": 0.4}}
    record_step(m, Stats(progressive={"recall@20": 0.1}, baselines=baselines), {})
    recall = "streamtrain_progressive_recall_ratio"
    assert _value(registry, recall, {"k": "20", "model": "model"}) == 0.1
    assert _value(registry, recall, {"k": "20", "model": "popular_all"}) == 0.3
    assert _value(registry, recall, {"k": "20", "model": "popular_recent"}) == 0.4
    assert _value(registry, "streamtrain_progressive_ndcg_ratio", {"k": "20", "model": "popular_all"}) == 0.2
    # A step that was not evaluated leaves every series where it was.
    record_step(m, Stats(), {})
    assert _value(registry, recall, {"k": "20", "model": "popular_all"}) == 0.3


def test_skipped_step_is_counted_and_keeps_the_last_finite_loss() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    record_step(m, Stats(step=1, loss=2.0), {})
    record_step(m, Stats(step=2, loss=math.nan, logq_mean=math.nan, applied=False), {})
    assert _value(registry, "streamtrain_train_steps_skipped_total") == 1
    assert _value(registry, "streamtrain_train_steps_total") == 2
    assert _value(registry, "streamtrain_events_trained_total") == 200  # the batch was consumed either way
    assert _value(registry, "streamtrain_train_loss") == 2.0
    assert _value(registry, "streamtrain_logq_correction_mean") == -3.0
