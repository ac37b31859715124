"""The co-visitation baseline in the trainer and the worker's metrics: scored on the model's evaluated
steps and positives, counted on every step, rows following the vocabulary, exact restart from a
checkpoint, exported as streamtrain_progressive_*{model="covisit"}, off with covisit_neighbours=0."""

from __future__ import annotations


import numpy as np
from prometheus_client import CollectorRegistry

from streamtrain.config import Config
from streamtrain.evaluation.covisit import COVISIT, CovisitBaseline
from streamtrain.events.batch import EventBatch
from streamtrain.metrics import Metrics
from streamtrain.training.trainer import Trainer
from streamtrain.worker.step_metrics import record_step
from trainer_support import restart_into


def config(model: dict[str, object] | None = None, **trainer: object) -> Config:
    return Config.model_validate({
        "run": {"seed": 3, "device": "cpu"},
        "model": {"user_capacity": 300, "item_capacity": 120, "embedding_dim": 8, "history_length": 5,
                  "history_decay": 0.7, **(model or {})},
        "frequency": {"hash_size": 1024},
        "trainer": {"batch_size": 64, "progressive_eval_fraction": 1.0, "covisit_neighbours": 16, **trainer},
    })


def session_batch(rng: np.random.Generator, t: float, n: int = 64) -> EventBatch:
    """Users walk item chains (i, i+1, i+2 ...): what co-visitation counts."""
    users = rng.integers(0, 40, size=n)
    items = (users * 7 + int(t) * 3 + np.arange(n) % 3) % 100
    return EventBatch.from_ids([f"u{u}" for u in users], [f"i{i}" for i in items], event_time=t + np.arange(n) * 1e-3)


def test_trainer_scores_covisit_on_the_models_evaluated_steps_and_positives() -> None:
    trainer = Trainer(config(progressive_eval_max_queries=40, progressive_eval_fraction=0.5))
    assert trainer.state.covisit is not None
    assert (trainer.state.covisit.history_length, trainer.state.covisit.decay, trainer.state.covisit.neighbours) == (5, 0.7, 16)
    rng = np.random.default_rng(0)
    evaluated = 0
    for step in range(30):
        stats = trainer.train_step(session_batch(rng, float(step)))
        assert (stats.progressive is None) == (stats.baselines is None)
        if stats.baselines is not None:
            evaluated += 1
            assert set(stats.baselines[COVISIT]) == set(stats.progressive)  # type: ignore[arg-type]
            # The same positives as the model: the last window entry's count (first 40 events).
            assert trainer.state.covisit.rolling._history[-1][-1] == trainer.state.progressive._history[-1][-1] == 40
    assert 5 < evaluated < 25
    assert trainer.state.covisit.counts.sum() == 30 * 64  # counted on every step, evaluated or not
    assert stats.baselines is None or stats.baselines[COVISIT]["recall@10"] > 0.5  # chains are easy to count
    assert trainer.state.covisit.averages()["recall@10"] > 0.5


def test_covisit_matches_a_standalone_baseline_fed_the_same_rows() -> None:
    trainer = Trainer(config())
    ref = CovisitBaseline(120, 300, [10, 20, 50], history_length=5, decay=0.7, neighbours=16)
    rng = np.random.default_rng(4)
    for step in range(6):
        batch = session_batch(rng, float(step))
        stats = trainer.train_step(batch)
        users = trainer.state.user_vocab.lookup(batch.user_ids, admit=False).rows
        items = trainer.state.item_vocab.lookup(batch.item_ids, admit=False).rows
        expect = ref.update(ref.step(users, items, batch.event_time, trainer.state.item_vocab.known_rows_np()))  # type: ignore[arg-type]
        assert stats.baselines is not None and stats.baselines[COVISIT] == expect


def test_a_reassigned_item_row_is_forgotten() -> None:
    trainer = Trainer(config({"item_capacity": 9, "eviction_after_s": 5.0}))
    users = [f"u{i}" for i in range(16)]
    old = [f"old{i % 8}" for i in range(16)]
    for t in range(3):
        trainer.train_step(EventBatch.from_ids(users, old, event_time=np.full(16, float(t))))
    assert trainer.state.covisit is not None and trainer.state.covisit.nbr[1:9].any(1).all()
    new = [f"new{i % 8}" for i in range(16)]
    trainer.train_step(EventBatch.from_ids(users, new, event_time=np.full(16, 100.0)))
    assert trainer.state.item_vocab.stats()["evictions_total"] == 8
    assert trainer.state.covisit.counts[1:9].tolist() == [2] * 8  # the new ids' own events only
    # The old ids' co-visits are gone: the only pairs left are between the new ids (users saw one each
    # at t=100 after histories of old ids, which were dropped from the histories on eviction).
    assert not trainer.state.covisit.nbr.any()


def test_trainer_restart_restores_covisit_exactly_and_old_checkpoints_load() -> None:
    cfg = config()
    rng = np.random.default_rng(1)
    original = Trainer(cfg)
    for step in range(5):
        original.train_step(session_batch(rng, float(step)))
    resumed = restart_into(original, Trainer(cfg))
    for step in range(5, 9):
        batch = session_batch(rng, float(step))
        a, b = original.train_step(batch), resumed.train_step(batch)
        assert a.baselines is not None and a.baselines == b.baselines
    assert original.state.covisit is not None and resumed.state.covisit is not None
    for name in ("nbr", "wts", "counts", "history"):
        np.testing.assert_array_equal(getattr(original.state.covisit, name), getattr(resumed.state.covisit, name))
    old = original.file_state()
    old.pop("covisit")  # a checkpoint from before the baseline: it starts from zero counts
    fresh = Trainer(cfg)
    fresh.load_file_state(old)
    assert fresh.state.covisit is not None and not fresh.state.covisit.counts.any()


def test_switched_off_and_exported_with_its_model_label() -> None:
    off = Trainer(config(covisit_neighbours=0))
    stats = off.train_step(session_batch(np.random.default_rng(2), 0.0))
    assert off.state.covisit is None and stats.baselines is not None and COVISIT not in stats.baselines

    trainer = Trainer(config())
    rng = np.random.default_rng(2)
    for step in range(4):
        stats = trainer.train_step(session_batch(rng, float(step)))
    registry = CollectorRegistry()
    m = Metrics(registry=registry)
    record_step(m, stats, {})
    value = registry.get_sample_value("streamtrain_progressive_recall_ratio", {"k": "20", "model": COVISIT})
    assert stats.baselines is not None and value == stats.baselines[COVISIT]["recall@20"]
    assert registry.get_sample_value("streamtrain_progressive_ndcg_ratio", {"k": "10", "model": COVISIT}) is not None
