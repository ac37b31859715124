"""``mns``: mixed negative sampling, batch items ∪ B' uniform items (Yang et al., WWW 2020)."""

from __future__ import annotations

import math
from typing import Any

import torch

from streamtrain.sampling.base import SamplerInput, SamplerOutput, register
from streamtrain.sampling.proposal import candidates_to_known
from streamtrain.sampling.seeded import SeededSampler
from streamtrain.sampling.softmax_loss import (
    MASKED_LOGIT,
    hits,
    loss_positive_at,
    reduce_loss,
    scores,
)

__all__ = ["MixedNegativeSampler"]


@register
class MixedNegativeSampler(SeededSampler):
    """Negatives are the batch's positives plus B' items drawn uniformly from the known items
    (shared by the batch), each score corrected by the mixture's per-draw probability::

        Q(j) = r · p̂_j / B + (1 − r) / N,   r = B / (B + B')
        s'(u, j) = s(u, j) − log Q(j)        (positive included)

    ``p̂_j`` from the streaming estimator is the probability that j appears in a *batch*
    (Yi et al.); one batch slot holds j with probability ≈ p̂_j / B (clamped ≤ 1), which puts the
    two mixture parts on the same per-draw scale. For the pure logQ samplers the scale cancels; in
    the mixture it does not. Uniform items cover the tail the batch never shows.
    Reference: Yang et al., "Mixed Negative Sampling for Learning Two-tower Neural Networks in
    Recommendations", WWW 2020.
    """

    name = "mns"

    def __init__(self, num_uniform: int, *, seed: int = 0, device: torch.device | str = "cpu") -> None:
        if num_uniform < 1:
            raise ValueError(f"num_uniform must be >= 1, got {num_uniform}")
        super().__init__(seed=seed, device=device)
        self.num_uniform = num_uniform

    @classmethod
    def from_config(
        cls, config: Any, *, batch_size: int, seed: int, device: torch.device | str
    ) -> MixedNegativeSampler:
        """Build from a :class:`~streamtrain.config.SamplerConfig` (``mns.num_uniform``)."""
        return cls(config.mns.num_uniform, seed=seed, device=device)

    def _log_mixture(self, log_q: torch.Tensor, batch: int, n_known: int) -> torch.Tensor:
        """log Q(j) for items with streaming log p̂ ``log_q`` (n,)."""
        r = batch / (batch + self.num_uniform)
        per_draw = (log_q.float() - math.log(batch)).clamp(max=0.0)  # log(p̂ / B), ≤ 0
        return torch.logaddexp(per_draw + math.log(r), torch.full_like(per_draw, math.log((1 - r) / n_known)))

    def corrected_logits(self, inp: SamplerInput, generator: torch.Generator) -> torch.Tensor:
        """Draw B' uniform items with ``generator``; return the corrected logits (B, B+B') of every
        query against batch ∪ uniform items. Column b (``positive_cols[b]`` in the split step) is query b's positive; accidental hits
        elsewhere are masked (``MASKED_LOGIT``)."""
        batch = inp.pos_items.shape[0]
        n_known = inp.known_items.numel()
        if n_known == 0:
            raise ValueError("mns sampler needs at least one known item")
        picks = torch.randint(n_known, (self.num_uniform,), generator=generator, device=inp.known_items.device)
        uni_rows = inp.known_items[picks]  # (B',)
        cand_rows = torch.cat([inp.pos_items, uni_rows])  # (B+B',)
        cand_emb = torch.cat([inp.pos_emb, inp.embed_items(uni_rows).to(inp.pos_emb.dtype)])  # (B+B', D)
        log_mix = self._log_mixture(inp.log_q(cand_rows).detach(), batch, n_known)  # (B+B',)
        logits = scores(inp.queries, cand_emb, inp.temperature, log_mix)  # (B, B+B')
        hit = hits(inp.query_items(), cand_rows)  # (B, P+B')
        if inp.positive_cols is None:
            hit[:, :batch].fill_diagonal_(False)  # the positive itself stays
        else:
            hit &= ~inp.own_columns(cand_rows.shape[0])
        return logits.masked_fill(hit, MASKED_LOGIT)

    def loss(self, inp: SamplerInput, *, update_state: bool = True) -> SamplerOutput:
        """Draw B' uniform items, score batch ∪ uniform, mixture correction, masked softmax."""
        logits = self.corrected_logits(inp, self._generator(update_state))
        return SamplerOutput(loss=reduce_loss(loss_positive_at(logits, inp.positive_cols), inp.weights))

    @torch.no_grad()
    def proposal_log_probs(self, inp: SamplerInput) -> torch.Tensor:
        """r · (the batch's empirical item distribution) + (1 − r) · uniform over known items."""
        batch = inp.pos_items.shape[0]
        n_known = inp.known_items.numel()
        r = batch / (batch + self.num_uniform)
        probs = torch.full((inp.queries.shape[0], batch), 1.0 / batch, device=inp.queries.device)  # (B, P)
        batch_part = candidates_to_known(inp.pos_items, probs, inp.known_items).exp()  # (B, N)
        return torch.log(r * batch_part + (1 - r) / n_known)  # (B, N)
