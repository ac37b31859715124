"""The Trainer: one object that turns micro-batches of events into sampled-softmax training steps.

It owns the two-tower model, the user and item vocabularies, the optimizers (row-sparse for the
tables, dense for MLP heads), the negative sampler, the streaming frequency estimator (logQ), the
progressive evaluator and its own seeded RNGs. The worker calls :meth:`Trainer.submit_step` per
micro-batch (and :meth:`Trainer.flush_stats` before a checkpoint and when idle), :meth:`Trainer.probe`
every few steps, and persists :meth:`Trainer.file_state` (checkpoint file) and
:meth:`Trainer.shared_state` (Redis) together.

One step, in order:
1. map user and item ids to rows on the host, admitting new ids, and draw initial values for rows
   the vocabularies (re)assigned; order the batch by user for the history tower (host rows);
2. upload all of it at once from a pinned buffer on a side stream (:mod:`.prefetch`);
3. re-initialise the (re)assigned rows, reset their optimizer state, and clear the per-row state
   that still describes the old id (user histories, sampler caches, popularity counts);
4. read each event's causal history (the user's items before it), then fold the batch into the
   stored histories;
5. on a ``progressive_eval_fraction`` of steps, score the batch before training on it, with the
   popularity baselines on the same positives;
6. update the frequency estimator and the popularity counts with the batch's items;
7. build the :class:`SamplerInput` (queries, positives, item tower, log p̂, known items);
8. sampler loss (bf16 autocast on CUDA), backward, optimizer steps masked on the device by the
   finite-loss flag (:mod:`.guard`): a NaN/inf loss never reaches the parameters (the split step,
   W > 1, computes this rank's queries only and exchanges gradients: :mod:`.split_train`);
9. start the copy of every statistic to pinned host memory (:mod:`.readback`).

Nothing in a step reads the device: the host learns step t's statistics (and whether its update
was applied) during step t+1, after t+1's work is queued. :meth:`Trainer.train_step` is the
synchronous form (submit, then flush: one wait per step) for callers that want each step's stats.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from streamtrain.config import Config
from streamtrain.distributed.context import DistContext
from streamtrain.distributed.split_step import SplitExchange
from streamtrain.errors import StreamtrainError
from streamtrain.evaluation import ProgressiveEvaluator
from streamtrain.events.batch import EventBatch, object_array
from streamtrain.frequency import build_frequency_estimator
from streamtrain.model.item_init import init_new_items_from_queries
from streamtrain.model.sparse_optim import RowSparseOptimizer
from streamtrain.model.two_tower import TwoTowerModel
from streamtrain.model.vocabulary import FALLBACK_ROW, IdVocabulary
from streamtrain.popularity_baseline import PopularityBaselines
from streamtrain.probe import probe_sampler
from streamtrain.sampling.base import SamplerInput, build_sampler
from streamtrain.training.device import autocast_context, resolve_device
from streamtrain.training.guard import finite_flag, guarded_step
from streamtrain.training.prefetch import BatchPrefetcher
from streamtrain.training.readback import StatsReadback
from streamtrain.training.replay import ReplaySteps
from streamtrain.training.split_train import split_loss_and_grads, split_progressive
from streamtrain.training.staging import Staged, apply_assigned, lookup_ids, stage_batch
from streamtrain.training.state import (
    flatten_state,
    numpy_tree_to_torch,
    torch_tree_to_numpy,
    unflatten_state,
)
from streamtrain.training.step_stats import FIXED_FIELDS, PendingStep, StepStats

__all__ = ["StepStats", "Trainer", "TrainingError"]

log = logging.getLogger(__name__)

_FILE_STATE_FORMAT = 1


class TrainingError(StreamtrainError):
    """A batch or a state cannot be used for training (empty batch, state from another model)."""


class Trainer:
    """Owns the model and everything a training step needs; see the module docstring for a step."""

    def __init__(self, config: Config, *, device: str | torch.device | None = None) -> None:
        self.config = config
        self.device = resolve_device(device if device is not None else config.run.device)
        mc, tc = config.model, config.trainer
        seed = config.run.seed
        self._rng = np.random.default_rng(seed)  # progressive-eval draws
        self._gen = torch.Generator().manual_seed(seed)  # row initialisation (CPU, device-independent)
        self.model = TwoTowerModel.from_config(mc).to(self.device)
        self.user_vocab = IdVocabulary(
            mc.user_capacity, admission_threshold=mc.admission_threshold, eviction_after_s=mc.eviction_after_s
        )
        self.item_vocab = IdVocabulary(
            mc.item_capacity, admission_threshold=mc.admission_threshold, eviction_after_s=mc.eviction_after_s
        )
        self.sparse_optimizer = RowSparseOptimizer(
            self.model.embedding_parameters(), algorithm=mc.optimizer, lr=mc.learning_rate
        )
        dense = self.model.dense_parameters()
        cuda = self.device.type == "cuda"
        # capturable Adam keeps its step count on the device, so the finite-loss mask covers it too.
        dense_lr = mc.dense_learning_rate or mc.learning_rate
        dense_optimizers = {
            "adam": lambda: torch.optim.Adam(dense, lr=dense_lr, capturable=cuda),
            "adagrad": lambda: torch.optim.Adagrad(dense, lr=dense_lr),
            "sgd": lambda: torch.optim.SGD(dense, lr=dense_lr),
        }
        self.dense_optimizer = dense_optimizers[mc.optimizer]() if dense else None
        self.sampler = build_sampler(config.sampler, batch_size=tc.batch_size, seed=seed, device=self.device)
        self.frequency = build_frequency_estimator(config.frequency, seed=seed, device=self.device)
        self.progressive = ProgressiveEvaluator(
            tc.eval_k, window=tc.progressive_eval_window, max_queries=tc.progressive_eval_max_queries
        )
        self.popularity = PopularityBaselines(
            mc.item_capacity, tc.eval_k, half_life_events=tc.popularity_half_life_events,
            window=tc.progressive_eval_window, max_queries=tc.progressive_eval_max_queries, device=self.device,
        )
        # Finite-loss guard as masked updates (CUDA: the host never reads the flag); on CPU a false flag
        # just skips the optimizer steps (same result, no masking cost). Tests force the masked path.
        self.mask_updates = self.device.type == "cuda"
        self.prefetcher = BatchPrefetcher(self.device)
        self._readback = StatsReadback(self.device)
        self._pending: PendingStep | None = None  # queued on the device, statistics not read yet
        self._done: StepStats | None = None  # read (e.g. for a checkpoint) but not handed out yet
        self._step = 0
        # The fallback rows are real rows that train; give them their initial values now.
        fallback = torch.tensor([FALLBACK_ROW])
        self.model.reinit_rows("user", fallback, self._gen)
        self.model.reinit_rows("item", fallback, self._gen)
        self._item_keys = self._keys_on_device()  # (item_capacity,) int64 stable key per item row
        self.split: SplitExchange | None = None  # set by enable_split: W > 1 ranks share the step
        self.replay = ReplaySteps(tc.extra_steps, tc.replay_window_events, self.model.history.length, seed, self.device,
                                  reverse=tc.replay_reverse)

    def enable_split(self, ctx: DistContext) -> None:
        """Train with the split step (docs/distributed.md, phase 2) on ``ctx``'s ranks: each rank
        computes its own events' queries; :meth:`submit_step` then needs the per-rank sizes."""
        if ctx.distributed:
            self.split = SplitExchange(ctx, self.config.run.seed, self.device)
            self.split.reseed(self._step, self.device)  # after a resume: the stream of this step

    # ------------------------------------------------------------------ small accessors
    @property
    def step(self) -> int:
        """Training steps submitted (their updates are queued on the device, in order)."""
        return self._step

    def vocabulary_sizes(self) -> dict[str, int]:
        """Ids that own a row, per tower (for metrics)."""
        return {"user": len(self.user_vocab), "item": len(self.item_vocab)}

    def _keys_on_device(self) -> torch.Tensor:
        return torch.from_numpy(self.item_vocab.row_keys).to(self.device, copy=True)

    def register_ids(self, tower: str, ids: Sequence[str] | np.ndarray, event_time: float = 0.0) -> int:
        """Admit ``ids`` into the ``"user"`` or ``"item"`` vocabulary (and initialise their rows)
        without training, e.g. to preload a catalogue so its items are candidates before anyone
        interacts with them. Subject to the admission threshold and capacity; returns rows assigned."""
        vocab = {"user": self.user_vocab, "item": self.item_vocab}[tower]
        before = vocab.admissions_total
        arr = object_array(list(ids))
        found = lookup_ids(self, tower, vocab, arr, np.full(len(arr), event_time))
        apply_assigned(self, found, self.prefetcher.upload(found.arrays()))
        return vocab.admissions_total - before

    # ------------------------------------------------------------------ the step
    def _histories(self, staged: Staged, *, append: bool) -> torch.Tensor | None:
        """(B, H) causal history of each event (None for an id-only model); ``append`` then folds the
        batch into the stored histories (training), or leaves them as they are (probe)."""
        if staged.order is None:
            return None
        history = self.model.history.causal(staged.user_rows, staged.item_rows, staged.order)  # (B, H)
        if append:
            self.model.history.append(staged.item_rows, staged.order)
        return history

    def _sampler_input(self, staged: Staged, history: torch.Tensor | None) -> SamplerInput:
        return self._replay_input(staged.user_rows, staged.item_rows, history, staged.weights, staged.known)

    def _replay_input(self, users: torch.Tensor, items: torch.Tensor, history: torch.Tensor | None,
                      weights: torch.Tensor | None, known: torch.Tensor) -> SamplerInput:
        keys = self._item_keys
        frequency = self.frequency
        return SamplerInput(
            queries=self.model.query(users, history),  # (B, D)
            pos_items=items,  # (B,)
            pos_emb=self.model.item_tower(items),  # (B, D)
            embed_items=self.model.item_tower,  # (n,) -> (n, D)
            log_q=lambda rows: frequency.log_prob(keys[rows]),  # (n,) -> (n,)
            known_items=known,  # (N,)
            temperature=self.model.temperature,
            num_item_rows=self.item_vocab.capacity,
            weights=weights,
        )

    def _zero_grads(self) -> None:
        self.sparse_optimizer.zero_grad()
        if self.dense_optimizer is not None:
            self.dense_optimizer.zero_grad(set_to_none=True)

    def submit_step(self, batch: EventBatch, rank_sizes: Sequence[int] | None = None) -> StepStats | None:
        """Queue one training step on ``batch`` (test-then-train) and return the *previous* step's
        statistics (None when there is none: the first step, or right after :meth:`flush_stats`).

        Called by the worker once per batch. Nothing here waits for the device except reading the
        previous step's statistics, after this step's work is queued. Raises TrainingError on an
        empty batch. A non-finite loss skips the parameter update on the device (one bad batch must
        not poison the tables); the stats report it (``applied=False``) one step later.
        ``rank_sizes``: events of each rank in the global ``batch`` (rank order); the split step
        trains this rank's slice, the replicated step (None, or no split) the whole batch.
        """
        if len(batch) == 0:
            raise TrainingError("train_step got an empty batch; skip empty micro-batches before training")
        sizes = list(rank_sizes) if self.split is not None and rank_sizes is not None else None
        previous, self._pending = self._pending, self._run_step(batch, sizes)
        if previous is not None:
            self._done = self._finish(previous)
        done, self._done = self._done, None
        return done

    def flush_stats(self) -> StepStats | None:
        """Read the last submitted step's statistics now (waits for the device); None when every
        step was already reported. Call before a checkpoint, at stop and when the stream is idle."""
        if self._pending is not None:
            self._done, self._pending = self._finish(self._pending), None
        done, self._done = self._done, None
        return done

    def train_step(self, batch: EventBatch, rank_sizes: Sequence[int] | None = None) -> StepStats:
        """Synchronous form of :meth:`submit_step`: train on ``batch`` and return *its* statistics
        (one wait for the device per step). Statistics of an earlier submitted step that was not
        flushed are folded into the rolling metrics but not returned."""
        self.submit_step(batch, rank_sizes)
        stats = self.flush_stats()
        assert stats is not None
        return stats

    def _run_step(self, batch: EventBatch, sizes: list[int] | None = None) -> PendingStep:
        """Queue steps 1-9 of one batch on the device; returns what is needed to report it later."""
        self._readback.begin()
        staged = stage_batch(self, batch)
        history = self._histories(staged, append=True)  # (B, H) or None
        evaluated = self._rng.random() < self.config.trainer.progressive_eval_fraction
        prog_sums = base_sums = None
        if evaluated and staged.known.numel():
            if sizes is None:
                queries = self.model.query(staged.user_rows, history)  # (B, D)
                prog_sums = self.progressive.score(self.model, queries, staged.item_rows, staged.known)  # (2K+1,)
            else:
                prog_sums = split_progressive(self, staged, history, sizes)
            base_sums = self.popularity.score(staged.item_rows, staged.known)  # (2 * (2K+1),) same positives
        if self.config.model.new_item_init == "query" and staged.new_items is not None:
            init_new_items_from_queries(self.model, staged.new_items, staged.item_rows,
                                        self.model.query(staged.user_rows, history))

        self.frequency.update(self._item_keys[staged.item_rows])
        self.popularity.observe(staged.item_rows)

        self._zero_grads()
        if sizes is None:
            with autocast_context(self.device, self.config.trainer.mixed_precision):
                out = self.sampler.loss(self._sampler_input(staged, history), update_state=True)
            if out.loss.requires_grad:  # a batch whose negatives were all masked has a constant loss
                out.loss.backward()
            loss = out.loss
        else:  # split: this rank's queries, gradients exchanged; the loss is the global batch's
            out, loss = split_loss_and_grads(self, staged, history, sizes)
        apply = finite_flag(loss)  # () bool on the device: the host never reads it inside the step
        self.sparse_optimizer.step(apply, masked=self.mask_updates)
        if self.dense_optimizer is not None:
            guarded_step(self.dense_optimizer, apply, masked=self.mask_updates)
        self._zero_grads()
        self.replay.run(self, staged.user_rows, staged.item_rows, history, staged.weights, staged.known)
        self._step += 1

        with torch.no_grad():
            log_q = self.frequency.log_prob(self._item_keys[staged.item_rows]).float()  # (B,)
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
            ticket = self._readback.push(torch.cat(parts))
        width = 0 if prog_sums is None else prog_sums.numel()
        return PendingStep(self._step, len(batch), names, width, ticket)

    def _finish(self, pending: PendingStep) -> StepStats:
        """Read a pending step's statistics (waits for that step on the device) and fold its
        evaluation sums into the rolling metrics."""
        values, duration = self._readback.read(pending.ticket)
        applied = values[0] > 0.5
        if not applied:
            log.warning("step %d: loss is %s; update skipped for this batch", pending.step, values[1])
        n_fixed = FIXED_FIELDS + len(pending.names)
        progressive = baselines = None
        if pending.progressive_width:
            n_prog = n_fixed + pending.progressive_width
            progressive = self.progressive.update(values[n_fixed:n_prog])
            baselines = self.popularity.update(values[n_prog:])
        return StepStats(
            step=pending.step,
            num_events=pending.num_events,
            loss=values[1],
            duration_s=duration,
            logq_mean=values[2],
            logq_std=values[3],
            sampler_stats=dict(zip(pending.names, values[FIXED_FIELDS:n_fixed])),
            progressive=progressive,
            applied=applied,
            baselines=baselines,
        )

    def _settle(self) -> None:
        """Fold a pending step's statistics into the rolling metrics (kept for the next flush), so
        a checkpoint taken now holds them."""
        if self._pending is not None:
            self._done, self._pending = self._finish(self._pending), None

    def probe(self, batch: EventBatch) -> dict[str, float]:
        """Sampling-bias numbers (loss bias, gradient cosine, KL, ESS...) on ``batch`` without
        changing any training state (vocabularies read-only, sampler with ``update_state=False``,
        no optimizer step). Called by the worker every ``probe_interval_steps``; reads its results
        at once (a host sync, every few steps only)."""
        staged = stage_batch(self, batch, admit=False)
        history = self._histories(staged, append=False)
        try:
            return probe_sampler(self.sampler, self._sampler_input(staged, history))
        finally:
            self._zero_grads()  # the probe may have backpropagated into the tables

    # ------------------------------------------------------------------ serving helpers
    @torch.no_grad()
    def score_users(self, user_ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of ``user_ids`` (unknown users get the fallback row) against every known item:
        returns (scores (n, N), item rows (N,)). For export and evaluation; no state change."""
        rows = torch.from_numpy(self.user_vocab.lookup(np.asarray(user_ids, dtype=object), admit=False).rows)
        known = self.item_vocab.known_rows(self.device)  # (N,)
        return self.model.score(rows.to(self.device), known), known  # (n, N), (N,)

    def recommend(self, user_ids: Sequence[str], k: int) -> tuple[list[list[str]], np.ndarray]:
        """Top-``k`` item ids and scores (n, k) per user; fewer columns if fewer items are known."""
        scores, known = self.score_users(user_ids)
        top = scores.topk(min(k, known.numel()), dim=1)
        rows = known[top.indices].cpu().numpy()  # (n, k)
        return [self.item_vocab.ids_of(r) for r in rows], top.values.float().cpu().numpy()  # type: ignore[misc]

    # ------------------------------------------------------------------ persistence
    def file_state(self) -> dict[str, Any]:
        """Everything the checkpoint file holds: model, optimizers, vocabularies, step, RNGs.
        Plain tensors/lists/ints, so ``torch.load(weights_only=True)`` reads it back. Settles a
        pending step first, so the rolling metrics it holds include every submitted step."""
        self._settle()
        return {
            "format": _FILE_STATE_FORMAT,
            "step": self._step,
            "model": self.model.state_dict(),
            "sparse_optimizer": self.sparse_optimizer.state_dict(),
            "dense_optimizer": None if self.dense_optimizer is None else self.dense_optimizer.state_dict(),
            "vocab": {
                "user": numpy_tree_to_torch(self.user_vocab.state_dict()),
                "item": numpy_tree_to_torch(self.item_vocab.state_dict()),
            },
            "rng": {"numpy": self._rng.bit_generator.state, "torch": self._gen.get_state()},
            "progressive": self.progressive.state_dict(),
            "popularity": self.popularity.state_dict(),
            "replay": self.replay.state_dict(),
            # What the tensors cannot tell a reader (eval, export): both change scores, normalize the ranking.
            "model_settings": {
                "normalize": self.config.model.normalize,
                "temperature": self.config.model.temperature,
                "user_features": self.model.user_features,
                "history_decay": self.model.history_decay,
                "history_input": self.model.encoder.history_input,
                "history_pooling": self.model.encoder.pooling,
            },
        }

    def load_file_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`file_state`; called once at resume, before :meth:`load_shared_state`."""
        self._pending = self._done = None  # statistics of steps before the restore describe another state
        if state.get("format") != _FILE_STATE_FORMAT:
            raise TrainingError(f"checkpoint format {state.get('format')!r} is not {_FILE_STATE_FORMAT}")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise TrainingError(f"checkpoint does not fit the configured model: {exc}") from exc
        self.sparse_optimizer.load_state_dict(state["sparse_optimizer"])
        if self.dense_optimizer is not None:
            self.dense_optimizer.load_state_dict(state["dense_optimizer"])
        self.user_vocab.load_state_dict(torch_tree_to_numpy(state["vocab"]["user"]))
        self.item_vocab.load_state_dict(torch_tree_to_numpy(state["vocab"]["item"]))
        self._item_keys = self._keys_on_device()
        self._rng.bit_generator.state = state["rng"]["numpy"]
        self._gen.set_state(state["rng"]["torch"])
        self.progressive.load_state_dict(state["progressive"])
        if "popularity" in state:
            try:
                self.popularity.load_state_dict(state["popularity"])
            except ValueError as exc:
                raise TrainingError(f"checkpoint does not fit the configured model: {exc}") from exc
        else:  # a checkpoint from before the baselines: they restart from zero counts
            log.info("checkpoint has no popularity-baseline counts; the progressive baselines start from zero")
        if "replay" in state:
            self.replay.load_state_dict(state["replay"])
        self._step = int(state["step"])
        if self.split is not None:  # the rank's own draw stream, deterministic from the resume point
            self.split.reseed(self._step, self.device)

    def shared_state(self) -> dict[str, np.ndarray]:
        """The frequency statistics and the sampler state as flat ``name -> ndarray`` (Redis)."""
        out = flatten_state("frequency", self.frequency.state_dict())
        out.update(flatten_state("sampler", self.sampler.state_dict()))
        return out

    def load_shared_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore :meth:`shared_state`; called once at resume."""
        if self.item_vocab.keys_migrated:
            # The saved statistics hash the item keys of an older key function (blake2b before
            # vocabulary state format 2): they would credit each item with other items' counts.
            log.warning("item keys were migrated to a new key function: frequency statistics start afresh")
        else:
            self.frequency.load_state_dict(unflatten_state("frequency", state))
        self.sampler.load_state_dict(unflatten_state("sampler", state))
