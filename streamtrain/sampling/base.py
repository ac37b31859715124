"""The one small interface every negative sampler implements, and the registry that names them.

A training step hands a sampler a :class:`SamplerInput` (query embeddings, the positives'
embeddings, and callables to embed any other item and read its log p̂). The sampler draws its
negatives, applies its correction and returns the sampled-softmax loss of docs/algorithms.md
in a :class:`SamplerOutput`. No gradient flows through a sampling step; gradients do flow through
the scores of the items drawn.

Contract (checked for every registered sampler by tests/unit/test_sampler_contract.py):
- ``loss`` returns a finite scalar; its gradient w.r.t. queries and item embeddings is finite;
- accidental hits (a negative equal to the query's own positive) are masked;
- the same seed and the same inputs give the same draws;
- ``state_dict`` → ``load_state_dict`` on a fresh instance reproduces the next step exactly;
- ``loss(..., update_state=False)`` leaves the sampler's state (cache, bank, RNG) untouched,
  so the sampling-bias probe can call it between training steps;
- after ``forget_rows(r)`` no state refers to the item rows ``r`` (state arrays of item rows are
  named ``*rows``), and the next step draws nothing from what the sampler kept about them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

__all__ = ["SamplerInput", "SamplerOutput", "Sampler", "SAMPLERS", "register"]


@dataclass
class SamplerInput:
    """What one training step hands to a sampler. ``B`` batch size, ``D`` dim, ``N`` known items."""

    queries: torch.Tensor  # (B, D) query-tower outputs (already L2-normalised if the model does so)
    pos_items: torch.Tensor  # (B,) int64 item rows of the positives
    pos_emb: torch.Tensor  # (B, D) item-tower outputs of the positives
    embed_items: Callable[[torch.Tensor], torch.Tensor]  # (n,) rows -> (n, D), current item tower, grad flows
    log_q: Callable[[torch.Tensor], torch.Tensor]  # (n,) rows -> (n,) log p̂ (streaming estimate), no grad
    known_items: torch.Tensor  # (N,) int64 rows of every item that owns a row; candidates for full/uniform
    temperature: float
    # Rows the item table can hold (the vocabulary's capacity). Optional; lets XIR size its
    # occurrence vector up front instead of reading the largest row back from the device.
    num_item_rows: int | None = None
    # (B,) non-negative event weights; None means all 1. Samplers reduce with softmax_loss.reduce_loss.
    weights: torch.Tensor | None = None
    # Split training step (W > 1 ranks): ``pos_items``/``pos_emb`` are the global batch's P positives
    # (P >= B) and query b's positive sits at column ``positive_cols[b]`` ((B,) int64). None: the
    # diagonal, P == B (one process). Every sampler takes its in-batch candidates from all P columns.
    positive_cols: torch.Tensor | None = None
    # Per-query draws (resampling) of *these* queries come from this generator (the rank's own stream);
    # None: the sampler's own generator. What must agree across ranks (XIR's cache) keeps the sampler's.
    draw_generator: torch.Generator | None = None
    # Sums a tensor over the ranks of the split step (XIR's per-column draw counts, so the cache update
    # sees every rank's draws); None: identity (one process).
    sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None

    def positive_columns(self) -> torch.Tensor:
        """(B,) int64 column of each query's positive among the P in-batch candidates."""
        if self.positive_cols is not None:
            return self.positive_cols
        return torch.arange(self.queries.shape[0], device=self.pos_items.device)

    def query_items(self) -> torch.Tensor:
        """(B,) item row of each query's own positive."""
        return self.pos_items if self.positive_cols is None else self.pos_items[self.positive_cols]

    def query_pos_emb(self) -> torch.Tensor:
        """(B, D) item-tower output of each query's own positive (grad flows)."""
        return self.pos_emb if self.positive_cols is None else self.pos_emb[self.positive_cols]

    def own_columns(self, n: int) -> torch.Tensor:
        """(B, n) bool, True at (b, positive column of b): the positive, not a negative."""
        b = self.queries.shape[0]
        if self.positive_cols is None:
            return torch.eye(b, n, dtype=torch.bool, device=self.pos_items.device)
        out = torch.zeros(b, n, dtype=torch.bool, device=self.pos_items.device)
        return out.scatter_(1, self.positive_cols.unsqueeze(1), True)

    def summed_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the split step's ranks (``t`` itself for one process)."""
        return t if self.sum_over_ranks is None else self.sum_over_ranks(t)


@dataclass
class SamplerOutput:
    """The loss of one step plus plain diagnostics (floats as 0-dim tensors, read lazily)."""

    loss: torch.Tensor  # () mean over the batch
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. "ess", "cache_hit_ratio"


class Sampler(ABC):
    """A negative sampler plus the loss correction that goes with it."""

    name: ClassVar[str]

    @abstractmethod
    def loss(self, inp: SamplerInput, *, update_state: bool = True) -> SamplerOutput:
        """Called once per training step (``update_state=True``) and by the bias probe (False)."""

    @abstractmethod
    def proposal_log_probs(self, inp: SamplerInput) -> torch.Tensor:
        """(B, N) log-probability each known item is drawn as a negative for each query (rows of
        ``inp.known_items``); used by the bias probe for KL(full softmax || sampler). No state change.
        Conditioned on this input's batch (and the sampler's cache or bank): items the sampler
        cannot reach get −inf; the probe accounts for that (see streamtrain/evaluation/probe.py)."""

    def forget_rows(self, rows: torch.Tensor) -> None:
        """Drop everything kept about item ``rows`` ((k,) int64, on the sampler's device): the
        vocabulary handed them to new ids after eviction. Called by the trainer whenever it
        (re)assigns item rows; must not read the device (no host sync). Stateless samplers: no-op."""

    def state_dict(self) -> dict[str, Any]:
        """Everything a restart needs (tensors, numpy arrays, ints); persisted in Redis."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; called once at resume, before any step."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state but was given keys {sorted(state)}")


SAMPLERS: dict[str, type[Sampler]] = {}


def register(cls: type[Sampler]) -> type[Sampler]:
    """Class decorator adding a sampler to :data:`SAMPLERS` under ``cls.name``."""
    if cls.name in SAMPLERS:
        raise ValueError(f"sampler {cls.name!r} registered twice")
    SAMPLERS[cls.name] = cls
    return cls
