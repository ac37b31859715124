"""Ranking metrics: Recall@K / NDCG@K building blocks, progressive (test-then-train) and offline evaluation.

Overview: docs/algorithms.md, section 5.

Offline protocol (the XIR paper's, Chen et al. NeurIPS 2022): every item known to the model is a
candidate, the items the user trained on are excluded, and per test user

    Recall@K = |top-K ∩ test items| / |test items|
    NDCG@K   = Σ_{r<K, item at r relevant} 1/log2(r+2)  /  Σ_{r<min(|test items|, K)} 1/log2(r+2)

averaged over test users. Test items the model never saw cannot be ranked and count as misses
(they stay in the denominator), so a small vocabulary cannot inflate the numbers.

Progressive evaluation scores each micro-batch *before* training on it: each positive is ranked
against every known item (exact rank by counting higher scores, chunked over items), giving
Recall@K = [rank < K] and NDCG@K = [rank < K] / log2(rank + 2); rolling averages over a window.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from streamtrain.vocab.membership import member
from streamtrain.model.two_tower import TwoTowerModel
from streamtrain.vocab.vocabulary import FALLBACK_ROW, IdVocabulary

__all__ = ["ProgressiveEvaluator", "excluded_candidates", "offline_evaluate", "recall_ndcg_at_k"]


def _discounts(k: int, device: torch.device) -> torch.Tensor:
    return 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float32, device=device))  # (k,)


def recall_ndcg_at_k(
    scores: torch.Tensor,
    positives: torch.Tensor,
    k_list: Sequence[int],
    exclude: torch.Tensor | None = None,
    num_positives: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-user Recall@K and NDCG@K for a dense block of scores.

    ``scores`` (B, N); ``positives`` (B, N) bool relevance; ``exclude`` (B, N) bool items removed
    from the ranking (e.g. trained items; an excluded item is never a hit); ``num_positives`` (B,)
    the row sums of ``positives`` when the caller already knows them (a bool row sum over a large
    (B, N) block is slow on CPU: ~0.15 s at 1024 x 36k). Returns
    ``{"recall@K": (B,), "ndcg@K": (B,)}``; users without positives get NaN (average with nanmean).
    """
    if scores.shape != positives.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and positives {tuple(positives.shape)} differ")
    k_max = min(max(k_list), scores.shape[1])
    scores = scores.float()
    if exclude is not None:
        scores = scores.masked_fill(exclude, float("-inf"))
    top = scores.topk(k_max, dim=1).indices  # (B, k_max)
    hits = positives.gather(1, top)  # (B, k_max) bool
    if exclude is not None:
        hits &= ~exclude.gather(1, top)
    hits_f = hits.float()
    n_pos = (positives.sum(1) if num_positives is None else num_positives).float()  # (B,)
    disc = _discounts(max(k_list), scores.device)  # (K,)
    ideal_cum = torch.cat([disc.new_zeros(1), disc.cumsum(0)])  # (K+1,) ideal DCG by #relevant
    out: dict[str, torch.Tensor] = {}
    for k in k_list:
        kk = min(k, k_max)
        hit_k = hits_f[:, :kk]  # (B, kk)
        recall = hit_k.sum(1) / n_pos  # (B,) NaN where n_pos == 0
        dcg = (hit_k * disc[:kk]).sum(1)  # (B,)
        idcg = ideal_cum[n_pos.clamp(max=k).long()]  # (B,)
        out[f"recall@{k}"] = recall
        out[f"ndcg@{k}"] = dcg / idcg  # NaN where n_pos == 0 (0/0)
    return out


def excluded_candidates(
    exclude: torch.Tensor, item_rows: torch.Tensor, known_items: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``exclude`` (b, H) item rows per query and positives ``item_rows`` (b,): which entries are
    candidates to remove (b, H) — known, not the positive, the first of repeats — and which positives
    are themselves excluded (b,). Sync-free (sorted-search membership)."""
    b, h = exclude.shape
    valid = (exclude > FALLBACK_ROW) & member(exclude, known_items)  # (b, H)
    earlier = torch.ones(h, h, dtype=torch.bool, device=exclude.device).tril(-1)  # (H, H) column j < i
    repeat = ((exclude.unsqueeze(2) == exclude.unsqueeze(1)) & earlier).any(2)  # (b, H) equals an earlier column
    is_pos = exclude == item_rows[:b].unsqueeze(1)  # (b, H)
    return valid & ~repeat & ~is_pos, (is_pos & valid).any(1)


class ProgressiveEvaluator:
    """Test-then-train metrics: rank each positive of a batch among all known items, then roll.

    :meth:`score` runs on the device and returns sums without a host sync; the trainer reads them
    with its other end-of-step stats and passes the floats to :meth:`update`.
    """

    def __init__(
        self, k_list: Sequence[int], *, window: int = 50, max_queries: int = 256, item_chunk: int = 65536
    ) -> None:
        if not k_list or min(k_list) < 1:
            raise ValueError(f"k_list must hold positive ints, got {list(k_list)}")
        self.k_list = tuple(int(k) for k in k_list)
        self.window = window
        self.max_queries = max_queries
        self.item_chunk = item_chunk
        self._history: deque[tuple[float, ...]] = deque(maxlen=window)

    @property
    def names(self) -> list[str]:
        return [f"recall@{k}" for k in self.k_list] + [f"ndcg@{k}" for k in self.k_list]

    @torch.no_grad()
    def score(
        self, model: TwoTowerModel, queries: torch.Tensor, item_rows: torch.Tensor, known_items: torch.Tensor,
        exclude: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sums of Recall@K and NDCG@K over the batch's rankable positives, then their count:
        a (2·len(k_list) + 1,) tensor on the model's device. Called before the step trains on the batch,
        with the step's queries (B, D) (each event's query as the step builds it). Positives without a
        row (fallback) are skipped: they are not in the candidate set. ``exclude`` (B, H) item rows
        (``EMPTY`` = none), e.g. each user's recent items, are left out of that query's ranking; a
        positive among them is a miss."""
        rank, counted = self.ranks(model, queries, item_rows, known_items, exclude)
        # Compared with Python ints: a torch.tensor(k_list) on CUDA would be a blocking host→device copy.
        hit = torch.stack([rank < k for k in self.k_list], dim=1) & counted.unsqueeze(1)  # (b, K)
        # float64 sums: the split step adds per-rank sums, and float32 sums in another order would
        # differ in the last bit from one process's; rounded to float32 later, both agree.
        gain = hit.double() / torch.log2(rank.double() + 2).unsqueeze(1)  # (b, K)
        count = (item_rows[: self.max_queries] != FALLBACK_ROW).sum().double().unsqueeze(0)  # (1,)
        return torch.cat([hit.double().sum(0), gain.sum(0), count])  # (2K + 1,) float64

    @torch.no_grad()
    def ranks(
        self, model: TwoTowerModel, queries: torch.Tensor, item_rows: torch.Tensor, known_items: torch.Tensor,
        exclude: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(b,) rank of each of the first ``max_queries`` positives (candidates scored above it, after
        ``exclude``), and (b,) whether it can count as a hit: it has a row and is not itself excluded."""
        item_rows = item_rows[: self.max_queries]
        keep = item_rows != FALLBACK_ROW  # (b,)
        q = queries[: self.max_queries].float()  # (b, D)
        pos_score = (q * model.item_tower(item_rows).float()).sum(1)  # (b,)
        rank = torch.zeros_like(item_rows)  # (b,) items scored above the positive
        for start in range(0, known_items.numel(), self.item_chunk):
            cand = known_items[start : start + self.item_chunk]  # (c,)
            s = q @ model.item_tower(cand).float().T  # (b, c)
            above = (s > pos_score.unsqueeze(1)) & (cand.unsqueeze(0) != item_rows.unsqueeze(1))  # (b, c)
            rank += above.sum(1)
        excluded = torch.zeros_like(keep)  # (b,) the positive is one of the excluded items
        if exclude is not None:
            ex = exclude[: self.max_queries]  # (b, H)
            ex_emb = model.item_tower(ex.clamp(min=0).reshape(-1)).float().reshape(*ex.shape, -1)  # (b, H, D)
            ex_above = (ex_emb * q.unsqueeze(1)).sum(2) > pos_score.unsqueeze(1)  # (b, H)
            drop, excluded = excluded_candidates(ex, item_rows, known_items)
            rank -= (drop & ex_above).sum(1)  # they were counted above; now they are not candidates
        return rank, keep & ~excluded

    def update(self, sums: Sequence[float]) -> dict[str, float]:
        """Add one evaluated step (the floats of :meth:`score`) and return the rolling averages."""
        if len(sums) != 2 * len(self.k_list) + 1:
            raise ValueError(f"expected {2 * len(self.k_list) + 1} values, got {len(sums)}")
        if sums[-1] > 0:
            self._history.append(tuple(float(v) for v in sums))
        return self.averages()

    def averages(self) -> dict[str, float]:
        """Rolling Recall@K / NDCG@K over the last ``window`` evaluated steps (NaN before any)."""
        if not self._history:
            return {name: math.nan for name in self.names}
        total = np.sum(np.asarray(self._history, dtype=np.float64), axis=0)
        return {name: float(total[i] / total[-1]) for i, name in enumerate(self.names)}

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self._history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._history = deque((tuple(h) for h in state["history"]), maxlen=self.window)


@torch.no_grad()
def offline_evaluate(
    model: TwoTowerModel,
    vocabs: Mapping[str, IdVocabulary],
    train_pairs: tuple[Sequence[str], Sequence[str]],
    test_user_items: Mapping[str, Sequence[str]],
    k_list: Sequence[int] = (10, 20, 50),
    chunk: int = 1024,
) -> dict[str, float]:
    """Full-ranking Recall@K / NDCG@K over all known items, trained items excluded (see module doc).

    ``vocabs`` has ``"user"`` and ``"item"``; ``train_pairs`` is (user ids, item ids) of the
    training interactions; ``test_user_items`` maps a test user to its held-out items. Called after
    (or between) training runs; reads only, no vocabulary or model state changes. Users without a
    row are scored with the fallback embedding. Returns averages plus ``"users"`` evaluated.
    """
    user_vocab, item_vocab = vocabs["user"], vocabs["item"]
    device = next(model.parameters()).device
    known = item_vocab.known_rows(device)  # (N,)
    col_of_row = np.full(item_vocab.capacity, -1, dtype=np.int64)  # row -> column in the ranking
    col_of_row[known.cpu().numpy()] = np.arange(known.numel())
    item_emb = torch.cat([model.item_tower(known[s : s + 65536]).float() for s in range(0, known.numel(), 65536)])

    test_users = [u for u, items in test_user_items.items() if len(items)]
    train_users, train_items = train_pairs
    train_cols = col_of_row[item_vocab.lookup(np.asarray(train_items, dtype=object), admit=False).rows]
    test_rows = user_vocab.lookup(np.asarray(test_users, dtype=object), admit=False).rows
    # Trained items per user are keyed by the *user id* (two unknown users share the fallback row
    # but not their histories).
    trained: dict[str, list[int]] = {}
    for user, col in zip(train_users, train_cols.tolist()):
        if col >= 0:
            trained.setdefault(user, []).append(col)

    sums = {f"{m}@{k}": 0.0 for m in ("recall", "ndcg") for k in k_list}
    for start in range(0, len(test_users), chunk):
        users = test_users[start : start + chunk]
        b = len(users)
        q = model.user_tower(torch.from_numpy(test_rows[start : start + b]).to(device)).float()  # (b, D)
        scores = q @ item_emb.T  # (b, N)
        positives = torch.zeros(b, known.numel(), dtype=torch.bool, device=device)  # (b, N)
        exclude = torch.zeros_like(positives)  # (b, N)
        n_test = np.empty(b, dtype=np.float64)
        pr, pc, er, ec = [], [], [], []
        for i, user in enumerate(users):
            items = test_user_items[user]
            n_test[i] = len(set(items))
            cols = col_of_row[item_vocab.lookup(np.asarray(items, dtype=object), admit=False).rows]
            cols = np.unique(cols[cols >= 0])
            pr.append(np.full(len(cols), i))
            pc.append(cols)
            tc = trained.get(user, [])
            er.append(np.full(len(tc), i))
            ec.append(np.asarray(tc, dtype=np.int64))
        positives[torch.from_numpy(np.concatenate(pr)).long(), torch.from_numpy(np.concatenate(pc)).long()] = True
        exclude[torch.from_numpy(np.concatenate(er)).long(), torch.from_numpy(np.concatenate(ec)).long()] = True
        # (b,) distinct rankable test items per user
        ranked = torch.tensor([len(c) for c in pc], dtype=torch.float64, device=device)
        metrics = recall_ndcg_at_k(scores, positives, k_list, exclude, ranked)
        # Unrankable test items stay in the denominators: rescale recall and the ideal DCG.
        denom = torch.from_numpy(n_test).to(device)
        for k in k_list:
            hits = torch.nan_to_num(metrics[f"recall@{k}"].double()) * ranked
            sums[f"recall@{k}"] += float((hits / denom).sum())
            ideal_cum = torch.cat([torch.zeros(1, device=device), _discounts(k, device).cumsum(0)]).double()
            full_idcg = ideal_cum[denom.clamp(max=k).long()]
            ranked_idcg = ideal_cum[ranked.clamp(max=k).long()]
            dcg = torch.nan_to_num(metrics[f"ndcg@{k}"].double()) * ranked_idcg
            sums[f"ndcg@{k}"] += float((dcg / full_idcg).sum())
    n_users = max(len(test_users), 1)
    out = {name: value / n_users for name, value in sums.items()}
    out["users"] = float(len(test_users))
    return out
