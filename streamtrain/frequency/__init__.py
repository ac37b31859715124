"""Streaming item-frequency estimation for the logQ correction.

Two methods behind one small interface (``update(keys)``, ``log_prob(keys)``, ``state_dict``,
``load_state_dict``, ``exact_equal``), chosen by ``frequency.method``:

- ``occurrences`` (default, :class:`StreamingFrequencyEstimator`): log of the expected occurrences
  per event, every occurrence counted, no gap from a first sighting, start-up bias removed;
  persisted as state format 2.
- ``presence`` (:class:`PresenceFrequencyEstimator`): Yi et al. 2019 as published, log P(item in a
  batch); format 1. Kept to compare against in benchmarks.
"""

from __future__ import annotations

from typing import Any, Union

import torch

from streamtrain.frequency.occurrence import OCCURRENCE_FORMAT, StreamingFrequencyEstimator
from streamtrain.frequency.presence import PRESENCE_FORMAT, PresenceFrequencyEstimator

__all__ = [
    "FrequencyEstimator",
    "OCCURRENCE_FORMAT",
    "PRESENCE_FORMAT",
    "PresenceFrequencyEstimator",
    "StreamingFrequencyEstimator",
    "build_frequency_estimator",
]

FrequencyEstimator = Union[StreamingFrequencyEstimator, PresenceFrequencyEstimator]

_METHODS: dict[str, Any] = {"occurrences": StreamingFrequencyEstimator, "presence": PresenceFrequencyEstimator}


def build_frequency_estimator(config: Any, *, seed: int, device: torch.device | str) -> FrequencyEstimator:
    """The estimator ``config.method`` names (a :class:`~streamtrain.config.FrequencyConfig`)."""
    try:
        cls = _METHODS[config.method]
    except KeyError:
        raise ValueError(f"unknown frequency.method {config.method!r}; known: {sorted(_METHODS)}") from None
    return cls.from_config(config, seed=seed, device=device)
