"""TrainState: everything a training step reads and writes, and so everything a checkpoint holds.

The model and its two vocabularies, the optimizers, the sampler, the streaming frequency estimator,
the progressive evaluator with its baselines, the RNGs and the step count. The checkpoint file holds
:meth:`TrainState.file_state`; Redis holds :meth:`TrainState.shared_state` (the frequency statistics
and sampler caches). The steps that change it live in :mod:`streamtrain.training.step`; the
:class:`~streamtrain.training.trainer.Trainer` only sequences them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamtrain.config import Config
from streamtrain.errors import StreamtrainError
from streamtrain.evaluation.covisit import CovisitBaseline
from streamtrain.evaluation.popularity import PopularityBaselines
from streamtrain.evaluation.progressive import ProgressiveEvaluator
from streamtrain.frequency import build_frequency_estimator
from streamtrain.model.sparse_optim import RowSparseOptimizer
from streamtrain.model.two_tower import TwoTowerModel
from streamtrain.training.replay import ReplaySteps
from streamtrain.sampling import Sampler, build_sampler
from streamtrain.training.state_tree import flatten_state, numpy_tree_to_torch, torch_tree_to_numpy, unflatten_state
from streamtrain.vocab.vocabulary import FALLBACK_ROW, IdVocabulary

__all__ = ["TrainState", "TrainingError"]

log = logging.getLogger(__name__)

_FILE_STATE_FORMAT = 1


class TrainingError(StreamtrainError):
    """A batch or a state cannot be used for training (empty batch, state from another model)."""


@dataclass
class TrainState:
    """The training state of one worker (every rank holds an identical copy)."""

    config: Config
    device: torch.device
    model: TwoTowerModel
    user_vocab: IdVocabulary
    item_vocab: IdVocabulary
    sparse_optimizer: RowSparseOptimizer
    dense_optimizer: torch.optim.Optimizer | None
    sampler: Sampler
    frequency: Any  # a streamtrain.frequency estimator
    progressive: ProgressiveEvaluator
    popularity: PopularityBaselines
    covisit: CovisitBaseline | None  # host-side; None when trainer.covisit_neighbours is 0
    rng: np.random.Generator  # progressive-eval draws
    gen: torch.Generator  # row initialisation (CPU, device-independent)
    item_keys: torch.Tensor  # (item_capacity,) int64 stable key per item row, on the device
    replay: ReplaySteps  # extra optimiser steps over a window of recent events (training/replay.py)
    step: int = 0

    @classmethod
    def from_config(cls, config: Config, device: torch.device) -> TrainState:
        mc, tc, seed = config.model, config.trainer, config.run.seed
        model = TwoTowerModel.from_config(mc).to(device)
        vocab = lambda capacity: IdVocabulary.from_config(mc, capacity)  # noqa: E731
        dense = model.dense_parameters()
        # capturable Adam keeps its step count on the device, so the finite-loss mask covers it too.
        dense_lr = mc.dense_learning_rate or mc.learning_rate
        dense_optimizers = {
            "adam": lambda: torch.optim.Adam(dense, lr=dense_lr, capturable=device.type == "cuda"),
            "adagrad": lambda: torch.optim.Adagrad(dense, lr=dense_lr),
            # Row-wise state is for tables; a dense head's few weights take plain Adagrad.
            "rowwise_adagrad": lambda: torch.optim.Adagrad(dense, lr=dense_lr),
            "sgd": lambda: torch.optim.SGD(dense, lr=dense_lr),
        }
        item_vocab = vocab(mc.item_capacity)
        state = cls(
            config=config, device=device, model=model, user_vocab=vocab(mc.user_capacity), item_vocab=item_vocab,
            sparse_optimizer=RowSparseOptimizer(model.embedding_parameters(), algorithm=mc.optimizer,
                                                lr=mc.learning_rate),
            dense_optimizer=dense_optimizers[mc.optimizer]() if dense else None,
            sampler=build_sampler(config.sampler, batch_size=tc.batch_size, seed=seed, device=device),
            frequency=build_frequency_estimator(config.frequency, seed=seed, device=device),
            progressive=ProgressiveEvaluator(tc.eval_k, window=tc.progressive_eval_window,
                                             max_queries=tc.progressive_eval_max_queries),
            popularity=PopularityBaselines(
                mc.item_capacity, tc.eval_k, half_life_events=tc.popularity_half_life_events,
                window=tc.progressive_eval_window, max_queries=tc.progressive_eval_max_queries, device=device),
            covisit=CovisitBaseline.from_config(config) if tc.covisit_neighbours else None,
            rng=np.random.default_rng(seed), gen=torch.Generator().manual_seed(seed),
            item_keys=torch.from_numpy(item_vocab.row_keys).to(device, copy=True),
            replay=ReplaySteps(tc.extra_steps, tc.replay_window_events, model.history.length, seed, device),
        )
        # The fallback rows are real rows that train; give them their initial values now.
        fallback = torch.tensor([FALLBACK_ROW])
        model.reinit_rows("user", fallback, state.gen)
        model.reinit_rows("item", fallback, state.gen)
        return state

    def vocabulary_sizes(self) -> dict[str, int]:
        """Ids that own a row, per tower (for metrics)."""
        return {"user": len(self.user_vocab), "item": len(self.item_vocab)}

    def vocabulary_stats(self) -> dict[str, dict[str, int]]:
        """Each vocabulary's running totals, per tower (for metrics)."""
        return {"user": self.user_vocab.stats(), "item": self.item_vocab.stats()}

    def zero_grads(self) -> None:
        self.sparse_optimizer.zero_grad()
        if self.dense_optimizer is not None:
            self.dense_optimizer.zero_grad(set_to_none=True)

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

    # ------------------------------------------------------------------ the checkpoint file
    def file_state(self) -> dict[str, Any]:
        """Model, optimizers, vocabularies, step, RNGs, rolling metrics: plain tensors/lists/ints, so
        ``torch.load(weights_only=True)`` reads it back."""
        return {
            "format": _FILE_STATE_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "sparse_optimizer": self.sparse_optimizer.state_dict(),
            "dense_optimizer": None if self.dense_optimizer is None else self.dense_optimizer.state_dict(),
            "vocab": {
                "user": numpy_tree_to_torch(self.user_vocab.state_dict()),
                "item": numpy_tree_to_torch(self.item_vocab.state_dict()),
            },
            "rng": {"numpy": self.rng.bit_generator.state, "torch": self.gen.get_state()},
            "progressive": self.progressive.state_dict(),
            "popularity": self.popularity.state_dict(),
            "covisit": None if self.covisit is None else self.covisit.state_dict(),
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
        if state.get("format") != _FILE_STATE_FORMAT:
            raise TrainingError(f"checkpoint format {state.get('format')!r} is not {_FILE_STATE_FORMAT}")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise TrainingError(f"checkpoint does not fit the configured model: {exc}") from exc
        saved = state["sparse_optimizer"].get("algorithm")
        if saved != self.sparse_optimizer.algorithm:
            # The default changed from adam to adagrad (issue 16): name the key that resumes an older run.
            raise TrainingError(
                f"checkpoint was trained with model.optimizer={saved}, configured {self.sparse_optimizer.algorithm}: "
                f"set model.optimizer={saved} to resume it, or start a new run.name"
            )
        self.sparse_optimizer.load_state_dict(state["sparse_optimizer"])
        if self.dense_optimizer is not None:
            self.dense_optimizer.load_state_dict(state["dense_optimizer"])
        self.user_vocab.load_state_dict(torch_tree_to_numpy(state["vocab"]["user"]))
        self.item_vocab.load_state_dict(torch_tree_to_numpy(state["vocab"]["item"]))
        self.item_keys = torch.from_numpy(self.item_vocab.row_keys).to(self.device, copy=True)
        self.rng.bit_generator.state = state["rng"]["numpy"]
        self.gen.set_state(state["rng"]["torch"])
        self.progressive.load_state_dict(state["progressive"])
        if "popularity" in state:
            try:
                self.popularity.load_state_dict(state["popularity"])
            except ValueError as exc:
                raise TrainingError(f"checkpoint does not fit the configured model: {exc}") from exc
        else:  # a checkpoint from before the baselines: they restart from zero counts
            log.info("checkpoint has no popularity-baseline counts; the progressive baselines start from zero")
        if self.covisit is not None:
            if state.get("covisit") is None:
                log.info("checkpoint has no co-visitation counts; the covisit baseline starts from zero")
            else:
                try:
                    self.covisit.load_state_dict(state["covisit"])
                except ValueError as exc:
                    raise TrainingError(f"checkpoint does not fit the configured baseline: {exc}") from exc
        if "replay" in state:  # checkpoints from before issue 16: an empty ring
            self.replay.load_state_dict(state["replay"])
        self.step = int(state["step"])

    # ------------------------------------------------------------------ Redis
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
