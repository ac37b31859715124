"""Offline evaluation of a checkpoint on a held-out file: what ``streamtrain eval`` and the demo report.

Protocol: :func:`streamtrain.evaluation.progressive.offline_evaluate` (full ranking over every item with a row,
Recall@K / NDCG@K averaged over test users), unchanged; this module feeds it a loaded checkpoint
and files, and counts what the vocabulary does not know instead of dropping it:

* a test user without a row is still evaluated, scored with the shared fallback embedding (row 0,
  what the worker would use for that user), and counted in ``unknown_users``;
* a test interaction whose item has no row cannot be ranked: it stays in the user's denominator
  (a miss) and is counted in ``unknown_item_interactions``.

Exclusion: the checkpoint does not record which items each user trained on (the vocabulary maps
ids to rows, nothing more), so the trained pairs come from the training file(s) passed as
``exclude`` — the same files that were replayed into the topic. Without them nothing is excluded
and recall is lower than under the paper's protocol; the report says which was used.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from streamtrain.data.interactions import Interactions
from streamtrain.evaluation.progressive import offline_evaluate
from streamtrain.vocab.vocabulary import FALLBACK_ROW
from streamtrain.serving.checkpoint_model import LoadedCheckpoint

__all__ = ["DEFAULT_K", "EvalReport", "evaluate_checkpoint"]

DEFAULT_K = (10, 20, 50)


@dataclass
class EvalReport:
    """Metrics plus the counts that say what they cover."""

    metrics: dict[str, float]  # "recall@K" / "ndcg@K"
    k_list: list[int]
    checkpoint: dict[str, Any]
    test_files: list[str]
    test_users: int
    test_interactions: int
    unknown_users: int
    unknown_item_interactions: int
    unknown_items: int  # distinct test item ids without a row
    candidate_items: int
    exclude_files: list[str] = field(default_factory=list)
    excluded_pairs: int = 0
    bad_lines: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _limit_users(test: dict[str, list[str]], max_users: int | None) -> dict[str, list[str]]:
    if max_users is None or max_users >= len(test):
        return test
    return dict(list(test.items())[:max_users])


def evaluate_checkpoint(
    ckpt: LoadedCheckpoint,
    test: Interactions,
    exclude: Interactions | None = None,
    *,
    k_list: Sequence[int] = DEFAULT_K,
    max_users: int | None = None,
) -> EvalReport:
    """Evaluate ``ckpt`` on ``test`` (its users' held-out items), excluding ``exclude``'s pairs.

    ``max_users``: only the first N test users (file order), for quick looks. Reads only.
    """
    started = time.perf_counter()
    test_items = _limit_users(test.by_user(), max_users)
    users = list(test_items)
    user_rows = ckpt.user_vocab.lookup(np.asarray(users, dtype=object), admit=False).rows
    flat_items = np.asarray([i for items in test_items.values() for i in items], dtype=object)
    item_rows = ckpt.item_vocab.lookup(flat_items, admit=False).rows if len(flat_items) else np.empty(0, np.int64)
    unknown = item_rows == FALLBACK_ROW
    train_pairs = (exclude.users, exclude.items) if exclude is not None else ([], [])
    with torch.no_grad():
        metrics = offline_evaluate(ckpt.model, ckpt.vocabs, train_pairs, test_items, k_list=tuple(k_list))
    metrics.pop("users", None)
    return EvalReport(
        metrics=metrics,
        k_list=[int(k) for k in k_list],
        checkpoint=ckpt.describe(),
        test_files=list(test.files),
        test_users=len(users),
        test_interactions=int(len(flat_items)),
        unknown_users=int((user_rows == FALLBACK_ROW).sum()),
        unknown_item_interactions=int(unknown.sum()),
        unknown_items=len(set(flat_items[unknown].tolist())),
        candidate_items=len(ckpt.item_vocab),
        exclude_files=list(exclude.files) if exclude is not None else [],
        excluded_pairs=len(exclude) if exclude is not None else 0,
        bad_lines=test.bad_lines + (exclude.bad_lines if exclude is not None else 0),
        seconds=time.perf_counter() - started,
    )
