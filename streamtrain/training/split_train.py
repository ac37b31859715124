"""The split training step's model part (docs/distributed.md, phase 2): this rank's queries against
the global batch's positives, the loss share, the backward and the gradient exchange.

The trainer keeps running everything that must stay identical on every rank (vocabularies, histories,
estimator, popularity counts) on the global batch before calling :func:`split_loss_and_grads`; the
collectives live in :class:`~streamtrain.distributed.split_step.SplitExchange`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from streamtrain.sampling.base import SamplerInput, SamplerOutput
from streamtrain.training.device import autocast_context

if TYPE_CHECKING:
    from streamtrain.training.staging import Staged
    from streamtrain.training.trainer import Trainer

__all__ = ["local_bounds", "split_loss_and_grads", "split_progressive"]


def local_bounds(rank_sizes: list[int], rank: int) -> tuple[int, int]:
    """[lo, hi) of ``rank``'s events in the global batch (ranks' micro-batches in rank order)."""
    lo = sum(rank_sizes[:rank])
    return lo, lo + rank_sizes[rank]


def split_loss_and_grads(
    trainer: Trainer, staged: Staged, history: torch.Tensor | None, rank_sizes: list[int]
) -> tuple[SamplerOutput, torch.Tensor]:
    """Forward this rank's queries, backward, exchange gradients. Returns the sampler output (its
    loss is this rank's local mean; its stats describe this rank's queries) and the global loss
    (the W = 1 loss of the global batch, identical on every rank); gradients are left on the
    parameters, identical on every rank, for the optimizer steps."""
    ex = trainer.split
    assert ex is not None
    lo, hi = local_bounds(rank_sizes, ex.rank)
    model, keys, frequency = trainer.model, trainer._item_keys, trainer.frequency
    item_rows = staged.item_rows  # (P,) global
    weights = staged.weights
    ex.bytes_last_step = 0
    with autocast_context(trainer.device, trainer.config.trainer.mixed_precision):
        local_history = None if history is None else history[lo:hi]  # (b, H)
        queries = model.query(staged.user_rows[lo:hi], local_history)  # (b, D)
        pos_emb = ex.gather(model.item_tower(item_rows[lo:hi]), rank_sizes)  # (P, D), grad flows back per rank
        inp = SamplerInput(
            queries=queries,
            pos_items=item_rows,
            pos_emb=pos_emb,
            embed_items=model.item_tower,
            log_q=lambda rows: frequency.log_prob(keys[rows]),
            known_items=staged.known,
            temperature=model.temperature,
            num_item_rows=trainer.item_vocab.capacity,
            weights=None if weights is None else weights[lo:hi],
            positive_cols=torch.arange(lo, hi, device=item_rows.device),
            draw_generator=ex.draw_generator,
            sum_over_ranks=ex.sum,
        )
        out = trainer.sampler.loss(inp, update_state=True)
    # This rank's share of the global mean: Σ_local w·l / Σ_global w (plain counts without weights).
    if weights is None:
        share = (hi - lo) / max(len(item_rows), 1)
        local_total = out.loss * share if hi > lo else None
    else:
        share_t = weights[lo:hi].sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)
        local_total = out.loss * share_t if hi > lo else None
    # Every rank runs the backward (it holds the gather's collective), an idle rank with a zero loss.
    zero = pos_emb.float().sum() * 0.0
    target = zero if local_total is None else local_total.float() + zero
    target.backward()
    global_loss = ex.reduce_dense(target, trainer.model.dense_parameters())
    ex.reduce_sparse(trainer.model.embedding_parameters())
    return out, global_loss


def split_progressive(
    trainer: Trainer, staged: Staged, history: torch.Tensor | None, rank_sizes: list[int],
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """(2K+1,) progressive sums of the global batch from this rank's queries, summed over ranks
    (the evaluator scores the first ``max_queries`` events: this rank's part of them)."""
    ex = trainer.split
    assert ex is not None
    lo, hi = local_bounds(rank_sizes, ex.rank)
    hi = min(hi, max(lo, trainer.progressive.max_queries))
    queries = trainer.model.query(staged.user_rows[lo:hi], None if history is None else history[lo:hi])  # (b, D)
    own = None if exclude is None else exclude[lo:hi]
    return ex.sum(trainer.progressive.score(trainer.model, queries, staged.item_rows[lo:hi], staged.known, own))
