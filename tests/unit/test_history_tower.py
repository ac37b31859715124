"""The history query tower: causal per-event histories, bounded stored state, rows that follow the
vocabulary, exact restarts, and the reason it exists (bursty users are scored from their 2nd event)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamtrain.config import Config
from streamtrain.events.batch import EventBatch, object_array
from streamtrain.model.history import EMPTY, BatchOrder, UserHistory
from streamtrain.model.two_tower import TwoTowerModel
from streamtrain.training.state import TrainingError
from streamtrain.training.trainer import Trainer


def _reference(stored: dict[int, list[int]], users: np.ndarray, items: np.ndarray, times: np.ndarray, h: int):
    """Brute force: per event, the user's stored items then their earlier same-batch items, last h."""
    out = np.full((len(users), h), EMPTY, dtype=np.int64)
    for b in range(len(users)):
        earlier = [j for j in range(len(users)) if users[j] == users[b] and (times[j], j) < (times[b], b)]
        earlier.sort(key=lambda j: (times[j], j))
        seq = stored.get(int(users[b]), []) + [int(items[j]) for j in earlier]
        tail = seq[-h:]
        out[b, h - len(tail):] = tail
    return out


@pytest.mark.parametrize("seed", range(5))
def test_causal_histories_and_appends_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, n_users = 4, 7
    hist = UserHistory(n_users + 1, h)
    stored: dict[int, list[int]] = {}
    for _ in range(6):
        b = int(rng.integers(1, 30))
        users = rng.integers(1, n_users + 1, size=b)
        items = rng.integers(0, 50, size=b)
        times = rng.integers(0, 4, size=b).astype(float)  # many ties: position must break them
        order = BatchOrder(users, times)
        got = hist.causal(torch.from_numpy(users), torch.from_numpy(items), order).numpy()
        np.testing.assert_array_equal(got, _reference(stored, users, items, times, h))
        hist.append(torch.from_numpy(items), order)
        for j in sorted(range(b), key=lambda j: (times[j], j)):
            stored.setdefault(int(users[j]), []).append(int(items[j]))
        for u in range(1, n_users + 1):
            want = stored.get(u, [])[-h:]
            row = hist.items[u].tolist()
            assert row == [EMPTY] * (h - len(want)) + want


def test_an_event_never_sees_itself_or_later_events() -> None:
    hist = UserHistory(4, 3)
    users, items = np.array([1, 1, 1, 2]), np.array([10, 11, 12, 13])
    times = np.array([3.0, 1.0, 2.0, 0.0])  # user 1's events arrive out of time order
    got = hist.causal(torch.from_numpy(users), torch.from_numpy(items), BatchOrder(users, times)).tolist()
    assert got == [[EMPTY, 11, 12], [EMPTY, EMPTY, EMPTY], [EMPTY, EMPTY, 11], [EMPTY, EMPTY, EMPTY]]


def test_forgetting_rows_clears_users_and_drops_reassigned_items() -> None:
    hist = UserHistory(4, 3)
    users, items = np.array([1, 1, 2, 2]), np.array([5, 6, 6, 7])
    hist.append(torch.from_numpy(items), BatchOrder(users))
    hist.forget_items(torch.tensor([6]))
    assert hist.items[1].tolist() == [EMPTY, 5, EMPTY] and hist.items[2].tolist() == [EMPTY, EMPTY, 7]
    hist.forget_users(torch.tensor([2]))
    assert hist.items[2].tolist() == [EMPTY] * 3 and hist.items[1].tolist() == [EMPTY, 5, EMPTY]


def test_query_pools_the_history_and_an_empty_history_gets_the_shared_row() -> None:
    torch.manual_seed(0)
    model = TwoTowerModel(user_capacity=8, item_capacity=8, dim=4, normalize=False, user_features="history",
                          history_length=3, history_decay=0.5)
    with torch.no_grad():
        model.user.embedding.weight.normal_()
        model.item.embedding.weight.normal_()
    users = torch.tensor([3, 4])
    history = torch.tensor([[EMPTY, 1, 2], [EMPTY, EMPTY, EMPTY]])
    q = model.query(users, history)
    items, shared = model.item.embedding.weight, model.user.embedding.weight[0]
    want0 = shared + (0.5 * items[1] + 1.0 * items[2]) / 1.5  # newest weighs 1, one older 0.5
    torch.testing.assert_close(q[0], want0)
    torch.testing.assert_close(q[1], shared)  # not the user's own row: "history" ignores ids
    both = TwoTowerModel(user_capacity=8, item_capacity=8, dim=4, normalize=False, user_features="history+id",
                         history_length=3)
    both.load_state_dict(model.state_dict())
    torch.testing.assert_close(both.query(users, history)[1], model.user.embedding.weight[4])


def _config(features: str, **model: object) -> Config:
    return Config.model_validate({
        "run": {"seed": 1, "device": "cpu"},
        "model": {"user_capacity": 4096, "item_capacity": 256, "embedding_dim": 16, "user_features": features,
                  "history_length": 8, **model},
        "sampler": {"name": "inbatch_logq"},
        "frequency": {"hash_size": 4096},
        "trainer": {"batch_size": 128, "progressive_eval_fraction": 1.0, "progressive_eval_max_queries": 128,
                    "progressive_eval_window": 1000, "eval_k": [10]},
    })


def _bursty_stream(seed: int, steps: int, batch: int = 128, burst: int = 8, clusters: int = 16, items: int = 256):
    """Every user arrives once, in one burst of ``burst`` events inside one batch, all from one item
    cluster: an id embedding never sees the user again, a history query knows them after one event."""
    rng = np.random.default_rng(seed)
    per = items // clusters
    next_user = 0
    for step in range(steps):
        users, its = [], []
        for _ in range(batch // burst):
            cluster = int(rng.integers(clusters))
            users += [f"u{next_user}"] * burst
            its += [f"i{cluster * per + int(k)}" for k in rng.integers(0, per, size=burst)]
            next_user += 1
        yield EventBatch(user_ids=object_array(users), item_ids=object_array(its),
                         event_time=np.arange(batch, dtype=float) + step * batch,
                         weight=np.ones(batch, np.float32), event_type=np.full(batch, None, object))


def _second_half_recall(features: str) -> float:
    trainer = Trainer(_config(features))
    recalls = []
    for batch in _bursty_stream(seed=2, steps=60):
        stats = trainer.train_step(batch)
        recalls.append(stats.progressive["recall@10"] if stats.progressive else np.nan)
    return float(np.nanmean(recalls[30:]))


def test_bursty_users_are_scored_from_their_history_not_their_untrained_id() -> None:
    history, ids = _second_half_recall("history"), _second_half_recall("id")
    # 16 clusters of 16 items: a query that knows the cluster puts ~10/16 of its items in the top 10.
    assert history > 0.35, history
    assert history > 3 * ids, (history, ids)


def test_a_restored_trainer_continues_exactly_like_the_uninterrupted_one() -> None:
    stream = list(_bursty_stream(seed=5, steps=6))
    a = Trainer(_config("history+id", history_decay=0.8))
    for batch in stream[:4]:
        a.train_step(batch)
    b = Trainer(_config("history+id", history_decay=0.8))
    b.load_file_state(a.file_state())
    b.load_shared_state(a.shared_state())
    for batch in stream[4:]:
        sa, sb = a.train_step(batch), b.train_step(batch)
        assert sa.loss == sb.loss
    assert torch.equal(a.state.model.history.items, b.state.model.history.items)
    assert bool((a.state.model.history.items != EMPTY).any())


def test_a_checkpoint_of_another_optimizer_names_the_key_that_resumes_it() -> None:
    old = Trainer(_config("history", optimizer="adam"))
    old.train_step(next(_bursty_stream(seed=1, steps=1)))
    with pytest.raises(TrainingError, match="set model.optimizer=adam to resume"):
        Trainer(_config("history")).load_file_state(old.file_state())


def test_an_evicted_user_row_starts_with_an_empty_history() -> None:
    config = _config("history", user_capacity=3, eviction_after_s=1.0)
    trainer = Trainer(config)

    def batch(users: list[str], items: list[str], t: float) -> EventBatch:
        n = len(users)
        return EventBatch(user_ids=object_array(users), item_ids=object_array(items), event_time=np.full(n, t),
                          weight=np.ones(n, np.float32), event_type=np.full(n, None, object))

    trainer.train_step(batch(["a", "b", "a"], ["i1", "i2", "i3"], 0.0))
    row_a = trainer.state.user_vocab.row_of("a")
    assert trainer.state.model.history.items[row_a].tolist()[-2:] == [trainer.state.item_vocab.row_of(i) for i in ("i1", "i3")]
    trainer.train_step(batch(["b", "c"], ["i2", "i4"], 10.0))  # "a" is stale: "c" takes its row
    assert trainer.state.user_vocab.row_of("c") == row_a
    assert trainer.state.model.history.items[row_a].tolist()[-2:] == [EMPTY, trainer.state.item_vocab.row_of("i4")]
