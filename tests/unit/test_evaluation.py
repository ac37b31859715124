"""Recall@K / NDCG@K against hand-computed cases; progressive and offline evaluation on tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamtrain.evaluation.progressive import (
    ProgressiveEvaluator,
    offline_evaluate,
    recall_ndcg_at_k,
)
from streamtrain.model.two_tower import TwoTowerModel
from streamtrain.vocab.vocabulary import IdVocabulary

L3 = 1 / math.log2(3)  # discount of rank 1 (0-based)
L4 = 1 / math.log2(4)


def test_recall_ndcg_hand_computed() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]])
    positives = torch.tensor([[False, True, False, True, False], [True, False, False, False, False]])
    out = recall_ndcg_at_k(scores, positives, [2, 4])
    # user 0: top-2 = items 0,1 → one hit at rank 1; top-4 adds item 3 at rank 3.
    assert out["recall@2"][0].item() == pytest.approx(0.5)
    assert out["ndcg@2"][0].item() == pytest.approx(L3 / (1 + L3))
    assert out["recall@4"][0].item() == pytest.approx(1.0)
    assert out["ndcg@4"][0].item() == pytest.approx((L3 + 1 / math.log2(5)) / (1 + L3))
    # user 1: its only positive ranks last (rank 4).
    assert out["recall@4"][1].item() == 0.0 and out["ndcg@4"][1].item() == 0.0


def test_exclusion_removes_items_from_the_ranking() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6]])
    positives = torch.tensor([[False, False, True, False]])
    exclude = torch.tensor([[True, False, False, False]])
    out = recall_ndcg_at_k(scores, positives, [2], exclude)
    assert out["recall@2"].item() == 1.0
    assert out["ndcg@2"].item() == pytest.approx(L3)  # ideal DCG over min(1, 2) = 1 item
    # An excluded positive is never a hit, even when fewer than K items remain.
    both = recall_ndcg_at_k(scores, exclude, [4], exclude)
    assert both["recall@4"].item() == 0.0


def test_ideal_dcg_is_capped_at_k_and_no_positive_gives_nan() -> None:
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    positives = torch.tensor([[True, True, True, False], [False, False, False, False]])
    out = recall_ndcg_at_k(scores, positives, [2, 10])
    assert out["ndcg@2"][0].item() == pytest.approx(1.0)  # 3 positives, K=2: ideal = 2 hits
    assert out["recall@2"][0].item() == pytest.approx(2 / 3)
    assert out["recall@10"][0].item() == pytest.approx(1.0)  # K larger than N is fine
    assert math.isnan(out["recall@2"][1].item()) and math.isnan(out["ndcg@2"][1].item())


def _fixed_model(user_vecs: list[list[float]], item_vecs: list[list[float]]) -> TwoTowerModel:
    model = TwoTowerModel(
        user_capacity=len(user_vecs) + 1, item_capacity=len(item_vecs) + 1, dim=2, normalize=False, temperature=1.0
    )
    with torch.no_grad():
        model.user.embedding.weight[1:] = torch.tensor(user_vecs)
        model.item.embedding.weight[1:] = torch.tensor(item_vecs)
    return model


def _vocab(names: list[str], capacity: int) -> IdVocabulary:
    vocab = IdVocabulary(capacity)
    arr = np.empty(len(names), dtype=object)
    arr[:] = names
    vocab.lookup(arr)
    return vocab


def test_progressive_ranks_each_positive_against_all_known_items() -> None:
    # item scores for user row 1 (vector (1, 0)): items 1..4 score 4, 3, 2, 1.
    model = _fixed_model([[1.0, 0.0]], [[4.0, 0.0], [3.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    ev = ProgressiveEvaluator([1, 3], window=2, item_chunk=3)  # chunking exercised
    known = torch.arange(1, 5)
    users = torch.tensor([1, 1, 1])
    items = torch.tensor([1, 3, 0])  # ranks 0 and 2; the fallback positive is skipped
    sums = ev.score(model, model.user_tower(users), items, known).tolist()
    # [hits@1, hits@3, gain@1, gain@3, count]
    assert sums == pytest.approx([1.0, 2.0, 1.0, 1.0 + 1 / math.log2(4), 2.0])
    avg = ev.update(sums)
    assert avg["recall@3"] == pytest.approx(1.0) and avg["recall@1"] == pytest.approx(0.5)
    ev.update(ev.score(model, model.user_tower(torch.tensor([1])), torch.tensor([4]), known).tolist())  # rank 3: miss
    assert ev.averages()["recall@3"] == pytest.approx(2 / 3)
    ev.update(ev.score(model, model.user_tower(torch.tensor([1])), torch.tensor([4]), known).tolist())  # window drops the first
    assert ev.averages()["recall@3"] == pytest.approx(0.0)


def test_offline_evaluate_excludes_trained_items_and_counts_unknown_test_items_as_misses() -> None:
    # Users u0 = (1, 0), u1 = (0, 1); items i0..i3.
    model = _fixed_model([[1.0, 0.0], [0.0, 1.0]], [[4.0, 0.0], [3.0, 1.0], [2.0, 2.0], [0.0, 3.0]])
    users = _vocab(["u0", "u1"], 3)
    items = _vocab(["i0", "i1", "i2", "i3"], 5)
    train = (["u0", "u1"], ["i0", "i3"])
    # u0 ranking (i0 excluded): i1 (3), i2 (2), i3 (0) → test i2 at rank 1.
    # u1 ranking (i3 excluded): i2 (2), i1 (1), i0 (0) → test i0 at rank 2, "new" never ranked.
    test = {"u0": ["i2"], "u1": ["i0", "new"]}
    out = offline_evaluate(model, {"user": users, "item": items}, train, test, k_list=(1, 2, 3))
    assert out["users"] == 2
    assert out["recall@1"] == pytest.approx(0.0)
    assert out["recall@2"] == pytest.approx((1.0 + 0.0) / 2)
    assert out["recall@3"] == pytest.approx((1.0 + 0.5) / 2)
    assert out["ndcg@2"] == pytest.approx((L3 / 1.0 + 0.0) / 2)
    assert out["ndcg@3"] == pytest.approx((L3 + (1 / math.log2(4)) / (1 + L3)) / 2)


def test_offline_evaluate_matches_recall_ndcg_on_random_data() -> None:
    rng = np.random.default_rng(3)
    n_users, n_items = 7, 12
    model = _fixed_model(rng.normal(size=(n_users, 2)).tolist(), rng.normal(size=(n_items, 2)).tolist())
    users = _vocab([f"u{i}" for i in range(n_users)], n_users + 1)
    items = _vocab([f"i{i}" for i in range(n_items)], n_items + 1)
    train_u, train_i, test = [], [], {}
    exclude = torch.zeros(n_users, n_items, dtype=torch.bool)
    positives = torch.zeros_like(exclude)
    for u in range(n_users):
        perm = rng.permutation(n_items)
        for j in perm[:3]:
            train_u.append(f"u{u}")
            train_i.append(f"i{j}")
            exclude[u, j] = True
        test[f"u{u}"] = [f"i{j}" for j in perm[3:5]] + [f"i{perm[3]}"]  # a repeated test item counts once
        positives[u, perm[3:5]] = True
    out = offline_evaluate(model, {"user": users, "item": items}, (train_u, train_i), test, k_list=(5,), chunk=3)
    scores = model.score(torch.arange(1, n_users + 1), torch.arange(1, n_items + 1))
    ref = recall_ndcg_at_k(scores, positives, [5], exclude)
    assert out["recall@5"] == pytest.approx(ref["recall@5"].mean().item(), abs=1e-6)
    assert out["ndcg@5"] == pytest.approx(ref["ndcg@5"].mean().item(), abs=1e-6)
