"""Steps 4-9 of a training step on a staged batch (:mod:`.staging` did 1-3), and reading its
statistics back one step later:

4. read each event's causal history (the user's items before it), then fold the batch into the
   stored histories;
5. on a ``progressive_eval_fraction`` of steps, score the batch before training on it, with the
   popularity baselines on the same positives;
6. update the frequency estimator and the popularity counts with the batch's items;
7. build the :class:`SamplerInput` (queries, positives, item tower, log p̂, known items);
8. sampler loss (bf16 autocast on CUDA), backward, optimizer steps masked on the device by the
   finite-loss flag (:mod:`.guard`): a NaN/inf loss never reaches the parameters;
9. start the copy of every statistic to pinned host memory (:mod:`.readback`).

Two strategies compute the model's part of a step, with one interface (:class:`StepStrategy`):

* :class:`LocalStep`: this process's queries against its own batch (W = 1, or replicated ranks);
* :class:`SplitStep`: the split step (docs/distributed.md, phase 2): every rank holds the global
  batch, computes its own events' queries against all positives and exchanges gradients. What must
  stay identical on every rank (vocabularies, histories, estimator, popularity counts) still runs on
  the global batch in :func:`run_step`; the collectives live in
  :class:`~streamtrain.distributed.split_step.SplitExchange`.

Nothing here reads the device: statistics are pushed to pinned memory (:mod:`.readback`) and read by
:func:`finish_step` during the next step.
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch

from streamtrain.distributed.split_step import SplitExchange
from streamtrain.evaluation.covisit import COVISIT
from streamtrain.model.item_init import init_new_items_from_queries
from streamtrain.sampling.base import SamplerInput, SamplerOutput
from streamtrain.training.device import autocast_context
from streamtrain.training.guard import finite_flag, guarded_step
from streamtrain.training.readback import StatsReadback
from streamtrain.training.staging import Staged
from streamtrain.training.state import TrainState
from streamtrain.training.step_stats import FIXED_FIELDS, PendingStep, StepStats

__all__ = ["LocalStep", "SplitStep", "StepStrategy", "finish_step", "histories", "local_bounds", "replay_steps", "rows_input", "run_step",
           "sampler_input"]

log = logging.getLogger(__name__)


def histories(state: TrainState, staged: Staged, *, append: bool) -> torch.Tensor | None:
    """(B, H) causal history of each event (None for an id-only model); ``append`` then folds the
    batch into the stored histories (training), or leaves them as they are (probe)."""
    if staged.order is None:
        return None
    history = state.model.history.causal(staged.user_rows, staged.item_rows, staged.order)  # (B, H)
    if append:
        state.model.history.append(staged.item_rows, staged.order)
    return history


def sampler_input(state: TrainState, staged: Staged, history: torch.Tensor | None) -> SamplerInput:
    """The whole batch's queries against its own positives (the local step and the probe)."""
    return rows_input(state, staged.user_rows, staged.item_rows, history, staged.weights, staged.known)


def rows_input(state: TrainState, users: torch.Tensor, items: torch.Tensor, history: torch.Tensor | None,
               weights: torch.Tensor | None, known: torch.Tensor) -> SamplerInput:
    """Queries of ``users`` (n,) with their histories (n, H) against the positives ``items`` (n,)."""
    keys, frequency = state.item_keys, state.frequency
    return SamplerInput(
        queries=state.model.query(users, history),  # (n, D)
        pos_items=items,  # (n,)
        pos_emb=state.model.item_tower(items),  # (n, D)
        embed_items=state.model.item_tower,  # (m,) -> (m, D)
        log_q=lambda rows: frequency.log_prob(keys[rows]),  # (m,) -> (m,)
        known_items=known,  # (N,)
        temperature=state.model.temperature,
        num_item_rows=state.item_vocab.capacity,
        weights=weights,
    )


def replay_steps(state: TrainState, staged: Staged, history: torch.Tensor | None, *, masked: bool) -> None:
    """``trainer.extra_steps`` more optimiser steps, each on the batch and a draw of recent events
    (:mod:`.replay`), then the batch joins the window. The samplers' state follows the stream only once
    per batch (``update_state=False`` here)."""
    ring = state.replay
    if not ring.enabled:
        return
    for users, items, hist, weights in ring.draws(staged.user_rows, staged.item_rows, history, staged.weights):
        state.zero_grads()
        with autocast_context(state.device, state.config.trainer.mixed_precision):
            out = state.sampler.loss(rows_input(state, users, items, hist, weights, staged.known), update_state=False)
        if out.loss.requires_grad:
            out.loss.backward()
        apply = finite_flag(out.loss)
        state.sparse_optimizer.step(apply, masked=masked)
        if state.dense_optimizer is not None:
            guarded_step(state.dense_optimizer, apply, masked=masked)
    state.zero_grads()
    ring.push(staged.user_rows, staged.item_rows, history, staged.weights)


class StepStrategy(Protocol):
    """The model's part of a step: progressive sums before training, then loss and gradients."""

    def progressive(self, state: TrainState, staged: Staged, history: torch.Tensor | None,
                    exclude: torch.Tensor | None) -> torch.Tensor:
        """(2K+1,) progressive sums of the batch, scored before it trains; ``exclude`` (B, H): items
        left out of each query's ranking (None: none)."""
        ...

    def loss_and_grads(self, state: TrainState, staged: Staged,
                       history: torch.Tensor | None) -> tuple[SamplerOutput, torch.Tensor]:
        """The sampler's output and the batch loss, with gradients left on the parameters."""
        ...


class LocalStep:
    """One process's queries against its own batch."""

    def progressive(self, state: TrainState, staged: Staged, history: torch.Tensor | None,
                    exclude: torch.Tensor | None) -> torch.Tensor:
        queries = state.model.query(staged.user_rows, history)  # (B, D)
        return state.progressive.score(state.model, queries, staged.item_rows, staged.known, exclude)  # (2K+1,)

    def loss_and_grads(self, state: TrainState, staged: Staged,
                       history: torch.Tensor | None) -> tuple[SamplerOutput, torch.Tensor]:
        with autocast_context(state.device, state.config.trainer.mixed_precision):
            out = state.sampler.loss(sampler_input(state, staged, history), update_state=True)
        if out.loss.requires_grad:  # a batch whose negatives were all masked has a constant loss
            out.loss.backward()
        return out, out.loss


def local_bounds(rank_sizes: list[int], rank: int) -> tuple[int, int]:
    """[lo, hi) of ``rank``'s events in the global batch (ranks' micro-batches in rank order)."""
    lo = sum(rank_sizes[:rank])
    return lo, lo + rank_sizes[rank]


class SplitStep:
    """This rank's slice ``rank_sizes`` of the global batch; the loss is the global batch's."""

    def __init__(self, exchange: SplitExchange, rank_sizes: list[int]) -> None:
        self.ex = exchange
        self.lo, self.hi = local_bounds(rank_sizes, exchange.rank)
        self.rank_sizes = rank_sizes

    def progressive(self, state: TrainState, staged: Staged, history: torch.Tensor | None,
                    exclude: torch.Tensor | None) -> torch.Tensor:
        """Summed over ranks (the evaluator scores the first ``max_queries`` events: this rank's part)."""
        lo, hi = self.lo, min(self.hi, max(self.lo, state.progressive.max_queries))
        queries = state.model.query(staged.user_rows[lo:hi], None if history is None else history[lo:hi])  # (b, D)
        own = None if exclude is None else exclude[lo:hi]
        return self.ex.sum(state.progressive.score(state.model, queries, staged.item_rows[lo:hi], staged.known, own))

    def loss_and_grads(self, state: TrainState, staged: Staged,
                       history: torch.Tensor | None) -> tuple[SamplerOutput, torch.Tensor]:
        """The sampler output's loss is this rank's local mean and its stats describe this rank's
        queries; the returned loss is the W = 1 loss of the global batch, identical on every rank, and
        the gradients left on the parameters are identical on every rank."""
        ex, lo, hi, model = self.ex, self.lo, self.hi, state.model
        keys, frequency = state.item_keys, state.frequency
        item_rows, weights = staged.item_rows, staged.weights  # (P,) global
        ex.bytes_last_step = 0
        with autocast_context(state.device, state.config.trainer.mixed_precision):
            queries = model.query(staged.user_rows[lo:hi], None if history is None else history[lo:hi])  # (b, D)
            pos_emb = ex.gather(model.item_tower(item_rows[lo:hi]), self.rank_sizes)  # (P, D), grad per rank
            out = state.sampler.loss(SamplerInput(
                queries=queries, pos_items=item_rows, pos_emb=pos_emb, embed_items=model.item_tower,
                log_q=lambda rows: frequency.log_prob(keys[rows]), known_items=staged.known,
                temperature=model.temperature, num_item_rows=state.item_vocab.capacity,
                weights=None if weights is None else weights[lo:hi],
                positive_cols=torch.arange(lo, hi, device=item_rows.device),
                draw_generator=ex.draw_generator, sum_over_ranks=ex.sum,
            ), update_state=True)
        # This rank's share of the global mean: Σ_local w·l / Σ_global w (plain counts without weights).
        if weights is None:
            local_total = out.loss * ((hi - lo) / max(len(item_rows), 1)) if hi > lo else None
        else:
            share = weights[lo:hi].sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)
            local_total = out.loss * share if hi > lo else None
        # Every rank runs the backward (it holds the gather's collective), an idle rank with a zero loss.
        zero = pos_emb.float().sum() * 0.0
        target = zero if local_total is None else local_total.float() + zero
        target.backward()
        global_loss = ex.reduce_dense(target, model.dense_parameters())
        ex.reduce_sparse(model.embedding_parameters())
        return out, global_loss


def run_step(state: TrainState, staged: Staged, strategy: StepStrategy, readback: StatsReadback, *,
             masked: bool, num_events: int) -> PendingStep:
    """Steps 4-9 on the device; returns what is needed to report the step later."""
    history = histories(state, staged, append=True)  # (B, H) or None
    evaluated = state.rng.random() < state.config.trainer.progressive_eval_fraction
    prog_sums = base_sums = None
    if evaluated and staged.known.numel():
        own = history if state.config.trainer.exclude_history_items else None  # (B, H) left out of the ranking
        prog_sums = strategy.progressive(state, staged, history, own)  # (2K+1,)
        base_sums = state.popularity.score(staged.item_rows, staged.known, own)  # (2 * (2K+1),) same positives
    if state.config.model.new_item_init == "query" and staged.new_items is not None:  # after the scoring
        init_new_items_from_queries(state.model, staged.new_items, staged.item_rows,
                                    state.model.query(staged.user_rows, history))

    state.frequency.update(state.item_keys[staged.item_rows])
    state.popularity.observe(staged.item_rows)

    state.zero_grads()
    out, loss = strategy.loss_and_grads(state, staged, history)
    apply = finite_flag(loss)  # () bool on the device: the host never reads it inside the step
    state.sparse_optimizer.step(apply, masked=masked)
    if state.dense_optimizer is not None:
        guarded_step(state.dense_optimizer, apply, masked=masked)
    state.zero_grads()
    replay_steps(state, staged, history, masked=masked)
    state.step += 1
    # Host work, after the device's is queued: the co-visitation baseline scores (when evaluated) and counts.
    covisit_sums = None if state.covisit is None else state.covisit.step(
        staged.host_user_rows, staged.host_item_rows, staged.event_time,  # type: ignore[arg-type]
        state.item_vocab.known_rows_np() if prog_sums is not None else None,
    )

    with torch.no_grad():
        log_q = state.frequency.log_prob(state.item_keys[staged.item_rows]).float()  # (B,)
        names = list(out.stats)
        parts = [
            apply.float().reshape(1),
            loss.detach().float().reshape(1),
            log_q.mean().reshape(1),
            log_q.std(unbiased=False).reshape(1),
            *(out.stats[name].detach().float().reshape(1) for name in names),
        ]
        if prog_sums is not None and base_sums is not None:
            parts += [prog_sums.float(), base_sums.float()]
        ticket = readback.push(torch.cat(parts))
    width = 0 if prog_sums is None else prog_sums.numel()
    return PendingStep(state.step, num_events, names, width, ticket, covisit_sums)


def finish_step(state: TrainState, pending: PendingStep, readback: StatsReadback) -> StepStats:
    """Read a pending step's statistics (waits for that step on the device) and fold its evaluation
    sums into the rolling metrics."""
    values, duration = readback.read(pending.ticket)
    applied = values[0] > 0.5
    if not applied:
        log.warning("step %d: loss is %s; update skipped for this batch", pending.step, values[1])
    n_fixed = FIXED_FIELDS + len(pending.names)
    progressive = baselines = None
    if pending.progressive_width:
        n_prog = n_fixed + pending.progressive_width
        progressive = state.progressive.update(values[n_fixed:n_prog])
        baselines = state.popularity.update(values[n_prog:])
        if state.covisit is not None and pending.covisit_sums is not None:
            baselines[COVISIT] = state.covisit.update(pending.covisit_sums)
    return StepStats(
        step=pending.step, num_events=pending.num_events, loss=values[1], duration_s=duration,
        logq_mean=values[2], logq_std=values[3], sampler_stats=dict(zip(pending.names, values[FIXED_FIELDS:n_fixed])),
        progressive=progressive, applied=applied, baselines=baselines,
    )
