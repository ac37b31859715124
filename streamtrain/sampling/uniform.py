"""``uniform``: K negatives drawn uniformly from the known items (Bengio & Senécal, 2008)."""

from __future__ import annotations

import math
from typing import Any

import torch

from streamtrain.sampling.base import SamplerInput, SamplerOutput, register
from streamtrain.sampling.proposal import uniform_log_probs
from streamtrain.sampling.seeded import SeededSampler
from streamtrain.sampling.softmax_loss import (
    MASKED_LOGIT,
    hits,
    loss_separate_positive,
    positive_scores,
    reduce_loss,
    scores,
)

__all__ = ["UniformSampler"]


@register
class UniformSampler(SeededSampler):
    """K items drawn uniformly with replacement from the N known items, shared by the batch::

        s'(u, j) = s(u, j) − log(1/N)      (on the positive too, so it cancels; kept for uniformity)
        L = log(exp(s'(u,i⁺)) + Σ_{k=1..K} exp(s'(u,j_k))) − s'(u,i⁺)

    A drawn item equal to the query's positive is masked. Sharing the K draws across the batch
    keeps the step one (B, K) matmul. Reference: Bengio & Senécal, IEEE TNN 2008.
    """

    name = "uniform"

    def __init__(self, num_negatives: int, *, seed: int = 0, device: torch.device | str = "cpu") -> None:
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        super().__init__(seed=seed, device=device)
        self.num_negatives = num_negatives

    @classmethod
    def from_config(cls, config: Any, *, batch_size: int, seed: int, device: torch.device | str) -> UniformSampler:
        """Build from a :class:`~streamtrain.config.SamplerConfig` (``uniform.num_negatives``)."""
        return cls(config.uniform.num_negatives, seed=seed, device=device)

    def loss(self, inp: SamplerInput, *, update_state: bool = True) -> SamplerOutput:
        """Draw K items, score them, masked sampled softmax; advances the generator if allowed."""
        gen = self._generator(update_state)
        n_known = inp.known_items.numel()
        if n_known == 0:
            raise ValueError("uniform sampler needs at least one known item")
        picks = torch.randint(n_known, (self.num_negatives,), generator=gen, device=inp.known_items.device)  # (K,)
        rows = inp.known_items[picks]  # (K,)
        log_q = torch.full((self.num_negatives,), -math.log(n_known), device=rows.device)  # log(1/N)
        neg = scores(inp.queries, inp.embed_items(rows), inp.temperature, log_q)  # (B, K)
        neg = neg.masked_fill(hits(inp.query_items(), rows), MASKED_LOGIT)
        pos = positive_scores(inp.queries, inp.query_pos_emb(), inp.temperature) + math.log(n_known)  # (B,) s − log(1/N)
        return SamplerOutput(loss=reduce_loss(loss_separate_positive(pos, neg), inp.weights))

    @torch.no_grad()
    def proposal_log_probs(self, inp: SamplerInput) -> torch.Tensor:
        """log(1/N) for every known item."""
        return uniform_log_probs(inp.queries.shape[0], inp.known_items)
