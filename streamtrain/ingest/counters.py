"""Counters of an ingest process reach the trainer's registry as deltas (one small message, not per event).

The child counts into its own :class:`~streamtrain.metrics.Metrics` (same names and labels); every
status message carries the counter totals that changed, and the trainer adds the differences to its
own counters, so ``/metrics`` shows one process's view of the whole pipeline.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter

from streamtrain.metrics import Metrics

__all__ = ["CounterSnapshot", "CounterSink"]

Totals = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class CounterSnapshot:
    """Child side: totals of every counter sample that changed since the last call."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._last: Totals = {}

    def changed(self) -> Totals:
        out: Totals = {}
        for family in self._registry.collect():
            if family.type != "counter":
                continue
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                key = (family.name, tuple(sorted(sample.labels.items())))
                if self._last.get(key) != sample.value:
                    out[key] = self._last[key] = sample.value
        return out


class CounterSink:
    """Trainer side: adds each child's increments to the trainer's counters."""

    def __init__(self, metrics: Metrics) -> None:
        self._by_name: dict[str, Any] = {}
        for value in vars(metrics).values():
            if isinstance(value, Counter):
                self._by_name[value.describe()[0].name] = value
        self._seen: dict[tuple[int, str, tuple[tuple[str, str], ...]], float] = {}

    def apply(self, child: int, totals: Totals) -> None:
        for (name, labels), total in totals.items():
            counter = self._by_name.get(name)
            if counter is None:
                continue
            delta = total - self._seen.get((child, name, labels), 0.0)
            self._seen[(child, name, labels)] = total
            if delta > 0:
                (counter.labels(**dict(labels)) if labels else counter).inc(delta)
