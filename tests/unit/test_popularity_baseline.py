"""Popularity baselines: hand-computed ranks, decay, forgetting reassigned rows, the trainer's wiring
(same positives as the model, counts from earlier steps only, exact restart, reassigned rows from zero)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from streamtrain.config import Config
from streamtrain.evaluation.covisit import COVISIT
from streamtrain.evaluation.progressive import ProgressiveEvaluator
from streamtrain.events.batch import EventBatch
from streamtrain.evaluation.popularity import BASELINES, PopularityBaselines
from streamtrain.training.trainer import Trainer, TrainingError
from trainer_support import restart_into


def rows(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def config(model: dict[str, object] | None = None, **trainer: object) -> Config:
    return Config.model_validate({
        "run": {"seed": 3, "device": "cpu"},
        "model": {"user_capacity": 300, "item_capacity": 120, "embedding_dim": 8, **(model or {})},
        "frequency": {"hash_size": 1024},
        "trainer": {"batch_size": 64, "progressive_eval_fraction": 1.0, **trainer},
    })


def zipf_batch(rng: np.random.Generator, t: float, n: int = 64, n_items: int = 100) -> EventBatch:
    items = np.minimum(rng.zipf(1.4, size=n) - 1, n_items - 1)
    users = rng.integers(0, 200, size=n)
    return EventBatch.from_ids([f"u{u}" for u in users], [f"i{i}" for i in items], event_time=t + np.arange(n) * 1e-3)


def test_hand_computed_recall_and_ndcg_of_the_shared_top_list() -> None:
    pop = PopularityBaselines(8, [1, 2], half_life_events=1e9)
    pop.observe(rows(1, 1, 1, 2, 2, 3))  # counts: row 1 -> 3, row 2 -> 2, row 3 -> 1
    sums = pop.score(rows(1, 2, 3, 0), known_items=rows(1, 2, 3, 4, 5)).tolist()
    # popular_all: list [1, 2]; positives 1 (position 0), 2 (position 1), 3 (miss); row 0 is the
    # fallback (no row): not ranked, not counted.
    recall1, recall2, ndcg1, ndcg2, count = sums[:5]
    assert (recall1, recall2, count) == (1.0, 2.0, 3.0)
    assert ndcg1 == pytest.approx(1.0) and ndcg2 == pytest.approx(1.0 + 1.0 / math.log2(3))
    assert sums[5:] == pytest.approx(sums[:5])  # no decay to speak of: the same list
    averages = pop.update(sums)
    assert set(averages) == set(BASELINES)
    assert averages["popular_all"]["recall@2"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="expected 10 values"):
        pop.update(sums[:5])


def test_only_known_items_are_candidates() -> None:
    pop = PopularityBaselines(8, [1], half_life_events=1e9)
    pop.observe(rows(5, 5, 5, 2))
    # Row 5 is the most counted but not a candidate (e.g. evicted): row 2 heads the list.
    assert pop.score(rows(2), known_items=rows(1, 2, 3))[0].item() == 1.0


def test_recent_counts_follow_a_popularity_swap_that_all_time_counts_miss() -> None:
    pop = PopularityBaselines(4, [1], half_life_events=100)
    for _ in range(20):
        pop.observe(torch.full((50,), 1))  # 1000 events of item 1 ...
    for _ in range(6):
        pop.observe(torch.full((50,), 2))  # ... then 300 of item 2 (3 half-lives)
    known = rows(1, 2, 3)
    all_time, recent = pop.score(rows(2), known)[[0, 3]].tolist()
    assert (all_time, recent) == (0.0, 1.0)
    # Per batch of 50: c <- c * 2^-0.5 + 50. Item 1 after its 20 batches: 50 (1 - 2^-10) / (1 - 2^-0.5),
    # then 6 batches (3 half-lives) of decay alone.
    assert pop.counts_recent[1].item() == pytest.approx(2 ** -3 * 50 * (1 - 2 ** -10) / (1 - 2 ** -0.5), rel=1e-5)
    assert pop.counts_all.tolist() == [0, 1000, 300, 0]


def test_forget_rows_zeroes_both_counts() -> None:
    pop = PopularityBaselines(4, [1], half_life_events=10)
    pop.observe(rows(1, 2, 2, 3))
    pop.forget_rows(rows(2))
    assert pop.counts_all.tolist() == [0, 1, 0, 1]
    assert pop.counts_recent[2].item() == 0 and pop.counts_recent[1].item() > 0


def test_state_round_trip_and_capacity_mismatch() -> None:
    pop = PopularityBaselines(6, [1, 2], half_life_events=7)
    pop.observe(rows(1, 2, 2, 4))
    pop.update(pop.score(rows(2, 3), rows(1, 2, 3, 4)).tolist())
    other = PopularityBaselines(6, [1, 2], half_life_events=7)
    buffer = io.BytesIO()
    torch.save(pop.state_dict(), buffer)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(other.counts_all, pop.counts_all) and torch.equal(other.counts_recent, pop.counts_recent)
    assert other.averages() == pop.averages()
    with pytest.raises(ValueError, match="item_capacity"):
        PopularityBaselines(9, [1, 2], half_life_events=7).load_state_dict(pop.state_dict())


def test_trainer_scores_the_baselines_on_the_models_positives_before_counting_the_batch() -> None:
    trainer = Trainer(config(progressive_eval_max_queries=40))
    rng = np.random.default_rng(0)
    for step in range(30):
        stats = trainer.train_step(zipf_batch(rng, float(step)))
        assert stats.baselines is not None and set(stats.baselines) == {*BASELINES, COVISIT}
    # Same positives: the count the model's evaluator and the baselines rank is the same (first 40).
    batch = zipf_batch(rng, 99.0)
    items = torch.from_numpy(trainer.state.item_vocab.lookup(batch.item_ids, admit=False).rows)
    users = torch.from_numpy(trainer.state.user_vocab.lookup(batch.user_ids, admit=False).rows)
    known = trainer.state.item_vocab.known_rows()
    model_sums = trainer.state.progressive.score(trainer.state.model, trainer.state.model.user_tower(users), items, known)
    base_sums = trainer.state.popularity.score(items, known)
    width = trainer.state.popularity.width
    assert 30 < model_sums[-1] == base_sums[width - 1] == base_sums[-1] <= 40
    # On a Zipf(1.4) stream over 100 items, the top 20 hold most events: the baseline must see it.
    assert stats.baselines["popular_all"]["recall@20"] > 0.6
    assert trainer.state.popularity.counts_all.sum().item() == 30 * 64

    # A batch never counts towards its own ranking: a brand-new item seen 64 times in one batch ranks
    # below the 64 items of the step before, so it is in none of the top-10 lists (window 1: this step
    # alone; covisit: no history item lists it, so the 64 counted items are above it).
    fresh = Trainer(config(progressive_eval_window=1))
    fresh.train_step(EventBatch.from_ids(range(64), [f"i{i}" for i in range(64)], event_time=np.zeros(64)))
    only_new = EventBatch.from_ids(range(64), ["brand-new"] * 64, event_time=np.full(64, 1.0))
    stats = fresh.train_step(only_new)
    assert stats.baselines == {name: {"recall@10": 0.0, "recall@20": 0.0, "recall@50": 0.0, "ndcg@10": 0.0,
                                      "ndcg@20": 0.0, "ndcg@50": 0.0} for name in (*BASELINES, COVISIT)}
    row = fresh.state.item_vocab.lookup(np.asarray(["brand-new"], dtype=object), admit=False).rows[0]
    assert fresh.state.popularity.counts_all[row].item() == 64  # counted after it was ranked


def test_trainer_restart_restores_the_counts_and_rolling_windows_exactly() -> None:
    cfg = config()
    rng = np.random.default_rng(1)
    original = Trainer(cfg)
    for step in range(5):
        original.train_step(zipf_batch(rng, float(step)))
    resumed = restart_into(original, Trainer(cfg))
    for step in range(5, 8):
        batch = zipf_batch(rng, float(step))
        a, b = original.train_step(batch), resumed.train_step(batch)
        assert a.baselines == b.baselines
    assert torch.equal(original.state.popularity.counts_recent, resumed.state.popularity.counts_recent)

    # A checkpoint from before the baselines loads (counts from zero); one for another capacity does not.
    old = original.file_state()
    old.pop("popularity")
    Trainer(cfg).load_file_state(old)
    wrong = original.file_state()
    wrong["popularity"] = {**wrong["popularity"], "counts_all": torch.zeros(7, dtype=torch.int64)}
    with pytest.raises(TrainingError, match="item_capacity"):
        Trainer(cfg).load_file_state(wrong)


def test_a_reassigned_item_row_starts_from_zero_counts() -> None:
    trainer = Trainer(config({"item_capacity": 9, "eviction_after_s": 5.0}))
    users = [f"u{i}" for i in range(16)]
    old = [f"old{i % 8}" for i in range(16)]
    for t in range(3):
        trainer.train_step(EventBatch.from_ids(users, old, event_time=np.full(16, float(t))))
    assert trainer.state.popularity.counts_all[1:9].tolist() == [6] * 8
    new = [f"new{i % 8}" for i in range(16)]
    trainer.train_step(EventBatch.from_ids(users, new, event_time=np.full(16, 100.0)))
    assert trainer.state.item_vocab.stats()["evictions_total"] == 8
    assert trainer.state.popularity.counts_all[1:9].tolist() == [2] * 8  # the new ids' own events only


def test_progressive_evaluator_rolling_window_is_what_the_baselines_reuse() -> None:
    pop = PopularityBaselines(4, [1], half_life_events=1, window=2)
    assert all(isinstance(ev, ProgressiveEvaluator) and ev.window == 2 for ev in pop.rolling.values())
    pop.reset_rolling()
    assert all(math.isnan(v) for avg in pop.averages().values() for v in avg.values())
