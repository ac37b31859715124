"""The Trainer: one object that turns micro-batches of events into sampled-softmax training steps.

It owns the two-tower model, the user and item vocabularies, the optimizers (row-sparse for the
tables, dense for MLP heads), the negative sampler, the streaming frequency estimator (logQ), the
progressive evaluator and its own seeded RNGs. The worker calls :meth:`Trainer.train_step` per
micro-batch, :meth:`Trainer.probe` every few steps, and persists :meth:`Trainer.file_state`
(checkpoint file) and :meth:`Trainer.shared_state` (Redis) together.

One step, in order (:meth:`Trainer.train_step`):
1. map user and item ids to rows, admitting new ids;
2. re-initialise rows the vocabularies (re)assigned, reset their optimizer state, and clear the
   per-row state that still describes the old id (user histories, sampler caches, popularity counts);
3. read each event's causal history (the user's items before it), then fold the batch into the
   stored histories;
4. on a ``progressive_eval_fraction`` of steps, score the batch before training on it, with the
   popularity baselines on the same positives;
5. update the frequency estimator and the popularity counts with the batch's items;
6. build the :class:`SamplerInput` (queries, positives, item tower, log p̂, known items);
7. sampler loss (bf16 autocast on CUDA), backward, optimizer steps;
8. read every statistic in one device→host transfer.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamtrain.config import Config
from streamtrain.errors import StreamtrainError
from streamtrain.evaluation import ProgressiveEvaluator
from streamtrain.events.batch import EventBatch, object_array
from streamtrain.frequency import build_frequency_estimator
from streamtrain.model.history import BatchOrder
from streamtrain.model.sparse_optim import RowSparseOptimizer
from streamtrain.model.two_tower import TwoTowerModel
from streamtrain.model.vocabulary import FALLBACK_ROW, IdVocabulary
from streamtrain.popularity_baseline import PopularityBaselines
from streamtrain.probe import probe_sampler
from streamtrain.sampling.base import SamplerInput, build_sampler
from streamtrain.training.device import autocast_context, resolve_device
from streamtrain.training.state import (
    flatten_state,
    numpy_tree_to_torch,
    torch_tree_to_numpy,
    unflatten_state,
)

__all__ = ["StepStats", "Trainer", "TrainingError"]

log = logging.getLogger(__name__)

_FILE_STATE_FORMAT = 1


class TrainingError(StreamtrainError):
    """A batch or a state cannot be used for training (empty batch, state from another model)."""


@dataclass
class StepStats:
    """What one training step reports (all plain floats, read once at the end of the step)."""

    step: int  # number of steps completed, this one included (1 after the first step)
    num_events: int
    loss: float
    duration_s: float
    logq_mean: float  # mean log p̂ of the batch's positives
    logq_std: float
    sampler_stats: dict[str, float]
    progressive: dict[str, float] | None  # rolling Recall@K/NDCG@K when this step was evaluated
    applied: bool = True  # False when the loss was not finite and the update was skipped
    # baseline name ("popular_all", "popular_recent") -> its rolling Recall@K/NDCG@K, when evaluated
    baselines: dict[str, dict[str, float]] | None = None


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
        dense_cls = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}[mc.optimizer]
        self.dense_optimizer = dense_cls(dense, lr=mc.learning_rate) if dense else None
        self.sampler = build_sampler(config.sampler, batch_size=tc.batch_size, seed=seed, device=self.device)
        self.frequency = build_frequency_estimator(config.frequency, seed=seed, device=self.device)
        self.progressive = ProgressiveEvaluator(
            tc.eval_k, window=tc.progressive_eval_window, max_queries=tc.progressive_eval_max_queries
        )
        self.popularity = PopularityBaselines(
            mc.item_capacity, tc.eval_k, half_life_events=tc.popularity_half_life_events,
            window=tc.progressive_eval_window, max_queries=tc.progressive_eval_max_queries, device=self.device,
        )
        self._step = 0
        # The fallback rows are real rows that train; give them their initial values now.
        fallback = torch.tensor([FALLBACK_ROW])
        self.model.reinit_rows("user", fallback, self._gen)
        self.model.reinit_rows("item", fallback, self._gen)
        self._item_keys = self._keys_on_device()  # (item_capacity,) int64 stable key per item row

    # ------------------------------------------------------------------ small accessors
    @property
    def step(self) -> int:
        """Training steps completed."""
        return self._step

    def vocabulary_sizes(self) -> dict[str, int]:
        """Ids that own a row, per tower (for metrics)."""
        return {"user": len(self.user_vocab), "item": len(self.item_vocab)}

    def _keys_on_device(self) -> torch.Tensor:
        return torch.from_numpy(self.item_vocab.row_keys).to(self.device, copy=True)

    # ------------------------------------------------------------------ the step
    def _assign(self, tower: str, vocab: IdVocabulary, ids: np.ndarray, times: np.ndarray) -> torch.Tensor:
        """Steps 1-2: rows for ``ids`` (n,), re-initialising any row handed to a new id."""
        evictions_before = vocab.evictions_total
        lookup = vocab.lookup(ids, admit=True, event_time=times)
        if lookup.assigned.size:
            assigned = torch.from_numpy(lookup.assigned)
            self.model.reinit_rows(tower, assigned, self._gen)  # type: ignore[arg-type]
            assigned_dev = assigned.to(self.device)
            self.sparse_optimizer.reset_rows(self.model.tower(tower).embedding.weight, assigned_dev)  # type: ignore[arg-type]
            if tower == "item":
                self._item_keys[assigned_dev] = torch.from_numpy(vocab.row_keys[lookup.assigned]).to(self.device)
                self.sampler.forget_rows(assigned_dev)  # cache/bank entries of the row's old id
                self.popularity.forget_rows(assigned_dev)
                if vocab.evictions_total != evictions_before:  # a fresh row is in no history yet
                    self.model.history.forget_items(assigned_dev)
            else:
                self.model.history.forget_users(assigned_dev)
        return torch.from_numpy(lookup.rows).to(self.device, non_blocking=True)  # (n,)

    def register_ids(self, tower: str, ids: Sequence[str] | np.ndarray, event_time: float = 0.0) -> int:
        """Admit ``ids`` into the ``"user"`` or ``"item"`` vocabulary (and initialise their rows)
        without training, e.g. to preload a catalogue so its items are candidates before anyone
        interacts with them. Subject to the admission threshold and capacity; returns rows assigned."""
        vocab = {"user": self.user_vocab, "item": self.item_vocab}[tower]
        before = vocab.admissions_total
        arr = object_array(list(ids))
        self._assign(tower, vocab, arr, np.full(len(arr), event_time))
        return vocab.admissions_total - before

    def _histories(self, batch: EventBatch, user_rows: torch.Tensor, item_rows: torch.Tensor, *, append: bool):
        """(B, H) causal history of each event (None for an id-only model); ``append`` then folds the
        batch into the stored histories (training), or leaves them as they are (probe)."""
        if not self.model.uses_history:
            return None
        order = BatchOrder(user_rows.cpu().numpy(), batch.event_time)
        history = self.model.history.causal(user_rows, item_rows, order)  # (B, H)
        if append:
            self.model.history.append(item_rows, order)
        return history

    def _sampler_input(
        self, user_rows: torch.Tensor, item_rows: torch.Tensor, history: torch.Tensor | None
    ) -> SamplerInput:
        keys = self._item_keys
        frequency = self.frequency
        return SamplerInput(
            queries=self.model.query(user_rows, history),  # (B, D)
            pos_items=item_rows,  # (B,)
            pos_emb=self.model.item_tower(item_rows),  # (B, D)
            embed_items=self.model.item_tower,  # (n,) -> (n, D)
            log_q=lambda rows: frequency.log_prob(keys[rows]),  # (n,) -> (n,)
            known_items=self.item_vocab.known_rows(self.device),  # (N,)
            temperature=self.model.temperature,
            num_item_rows=self.item_vocab.capacity,
        )

    def _zero_grads(self) -> None:
        self.sparse_optimizer.zero_grad()
        if self.dense_optimizer is not None:
            self.dense_optimizer.zero_grad(set_to_none=True)

    def train_step(self, batch: EventBatch) -> StepStats:
        """Train on one micro-batch (test-then-train); called by the worker once per batch.

        Raises TrainingError on an empty batch. A non-finite loss skips the parameter update (one bad
        batch must not poison the tables) and is reported in the stats (``applied=False``), not raised.
        """
        if len(batch) == 0:
            raise TrainingError("train_step got an empty batch; skip empty micro-batches before training")
        started = time.perf_counter()
        user_rows = self._assign("user", self.user_vocab, batch.user_ids, batch.event_time)  # (B,)
        item_rows = self._assign("item", self.item_vocab, batch.item_ids, batch.event_time)  # (B,)
        history = self._histories(batch, user_rows, item_rows, append=True)  # (B, H) or None

        evaluated = self._rng.random() < self.config.trainer.progressive_eval_fraction
        prog_sums = base_sums = None
        if evaluated:
            known = self.item_vocab.known_rows(self.device)
            if known.numel():
                queries = self.model.query(user_rows, history)  # (B, D)
                prog_sums = self.progressive.score(self.model, queries, item_rows, known)  # (2K+1,)
                base_sums = self.popularity.score(item_rows, known)  # (2 * (2K+1),) same positives

        self.frequency.update(self._item_keys[item_rows])
        self.popularity.observe(item_rows)

        self._zero_grads()
        with autocast_context(self.device, self.config.trainer.mixed_precision):
            inp = self._sampler_input(user_rows, item_rows, history)
            inp.weights = self._weights(batch)
            out = self.sampler.loss(inp, update_state=True)
        if out.loss.requires_grad:  # a batch whose negatives were all masked has a constant loss
            out.loss.backward()

        with torch.no_grad():
            log_q = inp.log_q(item_rows).float()  # (B,)
            names = list(out.stats)
            parts = [
                out.loss.detach().float().reshape(1),
                log_q.mean().reshape(1),
                log_q.std(unbiased=False).reshape(1),
                *(out.stats[name].detach().float().reshape(1) for name in names),
            ]
            if prog_sums is not None and base_sums is not None:
                parts += [prog_sums.float(), base_sums.float()]
            values = torch.cat(parts).tolist()  # the step's only device→host sync
        # The update waits for the sync so a NaN/inf loss never reaches the parameters.
        applied = math.isfinite(values[0])
        if applied:
            self.sparse_optimizer.step()
            if self.dense_optimizer is not None:
                self.dense_optimizer.step()
        else:
            log.warning("step %d: loss is %s; update skipped for this batch", self._step + 1, values[0])
        self._zero_grads()
        self._step += 1
        n_fixed = 3 + len(names)
        progressive = baselines = None
        if prog_sums is not None:
            n_prog = n_fixed + prog_sums.numel()
            progressive = self.progressive.update(values[n_fixed:n_prog])
            baselines = self.popularity.update(values[n_prog:])
        return StepStats(
            step=self._step,
            num_events=len(batch),
            loss=values[0],
            duration_s=time.perf_counter() - started,
            logq_mean=values[1],
            logq_std=values[2],
            sampler_stats=dict(zip(names, values[3:n_fixed])),
            progressive=progressive,
            applied=applied,
            baselines=baselines,
        )

    def _weights(self, batch: EventBatch) -> torch.Tensor | None:
        """(B,) event weights on the device, or None when all are 1 (the common case costs nothing)."""
        if bool(np.all(batch.weight == 1.0)):
            return None
        return torch.from_numpy(np.ascontiguousarray(batch.weight, dtype=np.float32)).to(self.device)

    def probe(self, batch: EventBatch) -> dict[str, float]:
        """Sampling-bias numbers (loss bias, gradient cosine, KL, ESS...) on ``batch`` without
        changing any training state (vocabularies read-only, sampler with ``update_state=False``,
        no optimizer step). Called by the worker every ``probe_interval_steps``."""
        user_rows = torch.from_numpy(self.user_vocab.lookup(batch.user_ids, admit=False).rows).to(self.device)
        item_rows = torch.from_numpy(self.item_vocab.lookup(batch.item_ids, admit=False).rows).to(self.device)
        history = self._histories(batch, user_rows, item_rows, append=False)
        try:
            return probe_sampler(self.sampler, self._sampler_input(user_rows, item_rows, history))
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
        Plain tensors/lists/ints, so ``torch.load(weights_only=True)`` reads it back."""
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
            # What the tensors cannot tell a reader (eval, export): both change scores, normalize the ranking.
            "model_settings": {
                "normalize": self.config.model.normalize,
                "temperature": self.config.model.temperature,
                "user_features": self.model.user_features,
                "history_decay": self.model.history_decay,
            },
        }

    def load_file_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`file_state`; called once at resume, before :meth:`load_shared_state`."""
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
        self._step = int(state["step"])

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
