"""``inbatch``: the other positives of the batch are the negatives (Covington et al., 2016)."""

from __future__ import annotations

from typing import Any

import torch

from streamtrain.sampling.base import Sampler, SamplerInput, SamplerOutput, register
from streamtrain.sampling.proposal import candidates_to_known
from streamtrain.sampling.softmax_loss import (
    MASKED_LOGIT,
    hits,
    loss_positive_at,
    reduce_loss,
    scores,
)

__all__ = ["InBatchSampler", "duplicate_hits"]


def duplicate_hits(pos_items: torch.Tensor, inp: SamplerInput | None = None) -> torch.Tensor:
    """(B, P) bool: column k holds query b's positive item but is not b's own column. These
    duplicates are masked; the own column stays, it is the positive. Without ``inp`` (or with the
    diagonal layout) P = B and the own column is the diagonal; with ``inp.positive_cols`` the
    queries' positives sit at those columns of the P global positives ``pos_items``."""
    if inp is None or inp.positive_cols is None:
        dup = hits(pos_items, pos_items)  # (B, B)
        return dup.fill_diagonal_(False)
    dup = hits(inp.query_items(), pos_items)  # (B, P)
    return dup & ~inp.own_columns(pos_items.shape[0])


@register
class InBatchSampler(Sampler):
    """Negatives of query b are the positives of the other queries, no correction::

        L_b = log Σ_{k ∈ batch} exp(s(u_b, i_k)) − s(u_b, i_b),   duplicates of i_b masked

    Popular items appear more often in batches, so they are over-used as negatives and the
    model is biased against them (what ``inbatch_logq`` corrects). Reference: Covington et al.,
    "Deep Neural Networks for YouTube Recommendations", RecSys 2016.
    """

    name = "inbatch"
    uses_log_q = False

    def __init__(self, *, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    @classmethod
    def from_config(cls, config: Any, *, batch_size: int, seed: int, device: torch.device | str) -> InBatchSampler:
        """Build from a :class:`~streamtrain.config.SamplerConfig` (nothing to configure)."""
        return cls(device=device)

    def loss(self, inp: SamplerInput, *, update_state: bool = True) -> SamplerOutput:
        """In-batch softmax; keeps no state."""
        log_q = inp.log_q(inp.pos_items) if self.uses_log_q else None
        logits = scores(inp.queries, inp.pos_emb, inp.temperature, log_q)  # (B, P), positive at its column
        logits = logits.masked_fill(duplicate_hits(inp.pos_items, inp), MASKED_LOGIT)
        return SamplerOutput(loss=reduce_loss(loss_positive_at(logits, inp.positive_cols), inp.weights))

    @torch.no_grad()
    def proposal_log_probs(self, inp: SamplerInput) -> torch.Tensor:
        """The batch's empirical item distribution (each batch position equally likely), the same
        for every query: in-batch negatives are draws from the stream's popularity."""
        batch = inp.pos_items.shape[0]
        probs = torch.full((inp.queries.shape[0], batch), 1.0 / batch, device=inp.queries.device)  # (B, P)
        return candidates_to_known(inp.pos_items, probs, inp.known_items)  # (B, N)
