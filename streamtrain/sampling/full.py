"""``full``: the exact softmax over every known item (the reference; small catalogues only)."""

from __future__ import annotations

from typing import Any

import torch

from streamtrain.sampling.base import Sampler, SamplerInput, SamplerOutput, register
from streamtrain.sampling.softmax_loss import (
    MASKED_LOGIT,
    hits,
    loss_separate_positive,
    positive_scores,
    reduce_loss,
    scores,
)

__all__ = ["FullSoftmax"]


@register
class FullSoftmax(Sampler):
    """Exact softmax cross-entropy over all N known items, no correction::

        L(u, i⁺) = −log exp(s(u,i⁺)) / Σ_{j ∈ known} exp(s(u,j)),   s = <q_u, v_j> / τ

    The positive's score comes from ``pos_emb``; its own column among the known items is masked
    so it is counted once. Costs O(B·N·D) per step: the reference the bias probe and tests compare
    the other samplers against, not a production choice for large catalogues.
    """

    name = "full"

    def __init__(self, *, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    @classmethod
    def from_config(cls, config: Any, *, batch_size: int, seed: int, device: torch.device | str) -> FullSoftmax:
        """Build from a :class:`~streamtrain.config.SamplerConfig` (nothing to configure)."""
        return cls(device=device)

    def loss(self, inp: SamplerInput, *, update_state: bool = True) -> SamplerOutput:
        """Exact loss; keeps no state, so ``update_state`` changes nothing."""
        neg = scores(inp.queries, inp.embed_items(inp.known_items), inp.temperature)  # (B, N)
        neg = neg.masked_fill(hits(inp.query_items(), inp.known_items), MASKED_LOGIT)
        pos = positive_scores(inp.queries, inp.query_pos_emb(), inp.temperature)  # (B,)
        return SamplerOutput(loss=reduce_loss(loss_separate_positive(pos, neg), inp.weights))

    @torch.no_grad()
    def proposal_log_probs(self, inp: SamplerInput) -> torch.Tensor:
        """The full softmax itself: the exact sum is what every sampler's negatives estimate."""
        return torch.log_softmax(scores(inp.queries, inp.embed_items(inp.known_items), inp.temperature), dim=1)
