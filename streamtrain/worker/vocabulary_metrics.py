"""The vocabularies' own counters (admissions, rejections, evictions, fallback lookups) → Prometheus counters.

The vocabularies count in their state (:meth:`streamtrain.vocab.vocabulary.IdVocabulary.stats`), so the
totals survive restarts; Prometheus counters start at 0 per process. This adds the increase since the
last call, from the totals found at start on (:meth:`TrainingEngine.vocabulary_stats`).
"""

from __future__ import annotations

from streamtrain.metrics import Metrics
from streamtrain.training.engine import TrainingEngine

__all__ = ["VocabularyCounters"]

# stats() key → (Metrics attribute, extra labels)
_COUNTERS = {
    "lookups_total": ("vocabulary_lookups", {}),
    "fallback_total": ("vocabulary_fallback_lookups", {}),
    "admissions_total": ("vocabulary_admissions", {}),
    "evictions_total": ("vocabulary_evictions", {}),
    "held_back_total": ("vocabulary_rejections", {"reason": "below_threshold"}),
    "table_full_total": ("vocabulary_rejections", {"reason": "table_full"}),
}


class VocabularyCounters:
    """Reads the engine's vocabulary counters; :meth:`update` after each recorded step."""

    def __init__(self, metrics: Metrics, engine: TrainingEngine) -> None:
        self._metrics = metrics
        self._engine = engine
        self._last: dict[tuple[str, str], int] = {}
        for tower, stats in engine.vocabulary_stats().items():
            for key, (attr, labels) in _COUNTERS.items():
                getattr(metrics, attr).labels(tower=tower, **labels)  # every series exists at 0
                self._last[(tower, key)] = int(stats.get(key, 0))

    def update(self) -> None:
        """Add what the vocabularies counted since the last call (loop thread, between steps)."""
        for tower, stats in self._engine.vocabulary_stats().items():
            for key, (attr, labels) in _COUNTERS.items():
                total = int(stats.get(key, 0))
                delta = total - self._last.get((tower, key), 0)
                self._last[(tower, key)] = total
                if delta > 0:
                    getattr(self._metrics, attr).labels(tower=tower, **labels).inc(delta)
