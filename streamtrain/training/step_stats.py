"""What a training step reports (:class:`StepStats`) and the bookkeeping of a step whose statistics
are still on their way from the device (:class:`PendingStep`).

A step's statistics travel as one float vector (:mod:`streamtrain.training.readback`) laid out as
``[applied, loss, logq_mean, logq_std, *sampler stats, *progressive sums, *baseline sums]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamtrain.training.readback import Ticket

__all__ = ["FIXED_FIELDS", "PendingStep", "StepStats"]

FIXED_FIELDS = 4  # applied, loss, logq_mean, logq_std


@dataclass
class StepStats:
    """What one training step reports (all plain floats; read from the device one step later)."""

    step: int  # number of steps completed, this one included (1 after the first step)
    num_events: int
    loss: float
    duration_s: float  # CUDA: device time of the step; CPU: host time of the step
    logq_mean: float  # mean log p̂ of the batch's positives
    logq_std: float
    sampler_stats: dict[str, float]
    progressive: dict[str, float] | None  # rolling Recall@K/NDCG@K when this step was evaluated
    applied: bool = True  # False when the loss was not finite and the update was skipped (on the device)
    # baseline name ("popular_all", "popular_recent", "covisit") -> its rolling Recall@K/NDCG@K, when evaluated
    baselines: dict[str, dict[str, float]] | None = None


@dataclass
class PendingStep:
    """A step whose work is queued on the device and whose statistics are not read yet."""

    step: int
    num_events: int
    names: list[str]  # sampler statistic names, in vector order
    progressive_width: int  # length of the progressive sums; 0 when the step was not evaluated
    ticket: Ticket
    covisit_sums: np.ndarray | None = None  # the co-visitation baseline's sums (host), when evaluated
