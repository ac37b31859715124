"""Trainer: learning on a structured stream, exact resume from file + shared state, vocabulary
growth and reuse, every registered sampler, probe and serving helpers."""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import numpy as np
import pytest
import torch

from streamtrain.config import Config
from streamtrain.events.batch import EventBatch
from streamtrain.training.trainer import Trainer, TrainingError

N_USERS, N_ITEMS, N_CLUSTERS = 48, 96, 6


def make_config(sampler: str = "inbatch_logq", **overrides: Any) -> Config:
    tree: dict[str, Any] = {
        "run": {"seed": 7, "device": "cpu"},
        "model": {
            "user_capacity": 200,
            "item_capacity": 200,
            "embedding_dim": 16,
            "temperature": 0.1,
            "learning_rate": 0.05,
        },
        "sampler": {
            "name": sampler,
            "uniform": {"num_negatives": 32},
            "mns": {"num_uniform": 32},
            "cbns": {"bank_size": 64, "warmup_steps": 1},
        },
        "frequency": {"hash_size": 4096, "alpha": 0.05, "initial_gap": 20.0},
        # One optimiser step per batch: these tests count and compare single steps (extra steps: test_query_tower).
        "trainer": {"batch_size": 64, "progressive_eval_fraction": 0.0, "extra_steps": 0},
    }
    for path, value in overrides.items():
        node = tree
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return Config.model_validate(tree)


def with_new_ids(batch: EventBatch) -> EventBatch:
    """The same events from users and items never seen before: the step assigns rows mid-run."""
    n = len(batch)
    return dataclasses.replace(batch, user_ids=np.array([f"new-u{i}" for i in range(n)], dtype=object),
                               item_ids=np.array([f"new-i{i}" for i in range(n)], dtype=object))


class Stream:
    """User u likes the items of cluster u % N_CLUSTERS, with popularity skew inside a cluster."""

    def __init__(self, seed: int, n_items: int = N_ITEMS) -> None:
        self.rng = np.random.default_rng(seed)
        self.n_items = n_items
        self.t = 0.0

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        users = self.rng.integers(0, N_USERS, size=n)
        per_cluster = self.n_items // N_CLUSTERS
        rank = np.minimum(self.rng.zipf(1.5, size=n) - 1, per_cluster - 1)
        items = (users % N_CLUSTERS) + N_CLUSTERS * rank
        return users, items

    def batch(self, n: int = 64) -> EventBatch:
        users, items = self.pairs(n)
        times = self.t + np.arange(n) * 1e-3
        self.t += 1.0
        return EventBatch.from_ids([f"u{u}" for u in users], [f"i{i}" for i in items], event_time=times)


def full_softmax_loss(trainer: Trainer, batch: EventBatch) -> float:
    """Exact cross-entropy of the batch's positives over all known items (the quality yardstick)."""
    with torch.no_grad():
        users = torch.from_numpy(trainer.state.user_vocab.lookup(batch.user_ids, admit=False).rows)
        items = torch.from_numpy(trainer.state.item_vocab.lookup(batch.item_ids, admit=False).rows)
        known = trainer.state.item_vocab.known_rows()
        logits = trainer.state.model.score(users, known)  # (B, N)
        target = (known.unsqueeze(0) == items.unsqueeze(1)).float().argmax(1)  # (B,)
        return float(torch.nn.functional.cross_entropy(logits, target))


@pytest.mark.parametrize("sampler", ["inbatch_logq", "xir"])
def test_training_on_a_structured_stream_lowers_the_full_softmax_loss(sampler: str) -> None:
    trainer = Trainer(make_config(sampler, **{"trainer.progressive_eval_fraction": 0.2}))
    stream = Stream(seed=1)
    trainer.register_ids("item", [f"i{i}" for i in range(N_ITEMS)])
    trainer.register_ids("user", [f"u{u}" for u in range(N_USERS)])
    held_out = Stream(seed=99).batch(256)
    before = full_softmax_loss(trainer, held_out)
    losses = [trainer.train_step(stream.batch()).loss for _ in range(80)]
    after = full_softmax_loss(trainer, held_out)
    assert all(math.isfinite(v) for v in losses)
    assert after < before - 0.5, (before, after)
    # Users are scored against all 96 items; the right cluster holds 16, so chance Recall@10 is low.
    assert trainer.state.progressive.averages()["recall@10"] > 0.3
    if sampler == "inbatch_logq":
        assert np.mean(losses[-10:]) < np.mean(losses[:10])


@pytest.mark.parametrize("sampler", ["xir", "cbns", "inbatch_logq"])
def test_resume_from_file_and_shared_state_reproduces_the_next_steps(sampler: str) -> None:
    config = make_config(sampler, **{"trainer.progressive_eval_fraction": 0.5})
    stream = Stream(seed=2)
    original = Trainer(config)
    for _ in range(6):
        original.train_step(stream.batch())
    buffer = io.BytesIO()
    torch.save(original.file_state(), buffer)
    shared = {name: value.copy() for name, value in original.shared_state().items()}
    assert all(isinstance(v, np.ndarray) for v in shared.values())

    resumed = Trainer(config)
    buffer.seek(0)
    resumed.load_file_state(torch.load(buffer, weights_only=True))
    resumed.load_shared_state(shared)
    assert resumed.step == original.step == 6
    for _ in range(3):
        batch = stream.batch()
        a, b = original.train_step(batch), resumed.train_step(batch)
        assert b.loss == pytest.approx(a.loss, abs=1e-6)
        assert b.step == a.step
        assert (a.progressive is None) == (b.progressive is None)
    for name, value in original.state.model.state_dict().items():
        torch.testing.assert_close(resumed.state.model.state_dict()[name], value, rtol=0, atol=1e-6)


def test_vocabulary_grows_mid_stream_and_new_items_train() -> None:
    trainer = Trainer(make_config())
    early = Stream(seed=3, n_items=48)
    for _ in range(5):
        trainer.train_step(early.batch())
    n_before = trainer.vocabulary_sizes()["item"]
    new_ids = [f"new{i}" for i in range(20)]
    users = [f"u{i % N_USERS}" for i in range(64)]
    items = [new_ids[i % 20] for i in range(64)]
    trainer.train_step(EventBatch.from_ids(users, items, event_time=np.full(64, 10.0)))
    rows = trainer.state.item_vocab.lookup(np.asarray(new_ids, dtype=object), admit=False).rows
    assert trainer.vocabulary_sizes()["item"] == n_before + 20
    assert (rows > 0).all() and len(set(rows.tolist())) == 20
    # The device copy of the stable keys follows the vocabulary (logQ reads it).
    np.testing.assert_array_equal(trainer.state.item_keys.numpy()[rows], trainer.state.item_vocab.row_keys[rows])
    emb_before = trainer.state.model.item.embedding.weight.detach()[rows].clone()
    assert (emb_before.norm(dim=1) > 0).all()  # initialised on assignment
    trainer.train_step(EventBatch.from_ids(users, items, event_time=np.full(64, 11.0)))
    assert not torch.equal(trainer.state.model.item.embedding.weight.detach()[rows], emb_before)


def test_evicted_rows_are_reinitialised_with_fresh_optimizer_state() -> None:
    # Adam: its per-row step count shows the reset (every algorithm's reset is in test_two_tower.py).
    config = make_config(**{"model.item_capacity": 9, "model.eviction_after_s": 5.0, "model.optimizer": "adam"})
    trainer = Trainer(config)
    old = [f"old{i}" for i in range(8)]
    for t in range(3):
        trainer.train_step(EventBatch.from_ids([f"u{i}" for i in range(8)], old, event_time=np.full(8, float(t))))
    steps = trainer.state.sparse_optimizer.state[1]["step"]
    assert steps[1:9].min() == 3
    new = [f"new{i}" for i in range(8)]
    trainer.train_step(EventBatch.from_ids([f"u{i}" for i in range(8)], new, event_time=np.full(8, 100.0)))
    rows = trainer.state.item_vocab.lookup(np.asarray(new, dtype=object), admit=False).rows
    assert sorted(rows.tolist()) == list(range(1, 9))  # every old row was reused
    assert trainer.state.item_vocab.stats()["evictions_total"] == 8
    assert steps[1:9].max() == 1  # reset on reuse, then one step


def test_reassigned_item_rows_are_forgotten_by_the_sampler() -> None:
    """Eviction hands rows 1-8 to new ids: the XIR cache and o hold nothing of the old ids."""
    config = make_config("xir", **{"model.item_capacity": 9, "model.eviction_after_s": 5.0})
    trainer = Trainer(config)
    old = [f"old{i}" for i in range(8)]
    for t in range(3):
        trainer.train_step(EventBatch.from_ids([f"u{i}" for i in range(8)], old, event_time=np.full(8, float(t))))
    assert (trainer.state.sampler.occurrence[1:9] > 1).any() and (trainer.state.sampler.cache_rows >= 1).all()
    forgotten: list[list[int]] = []
    forget = trainer.state.sampler.forget_rows
    trainer.state.sampler.forget_rows = lambda rows: (forgotten.append(sorted(rows.tolist())), forget(rows))  # type: ignore[method-assign]
    trainer.register_ids("item", [f"new{i}" for i in range(8)], event_time=100.0)
    assert forgotten == [list(range(1, 9))]
    assert (trainer.state.sampler.occurrence[1:9] == 1).all() and (trainer.state.sampler.cache_rows == -1).all()


def test_unadmitted_ids_train_through_the_fallback_row() -> None:
    trainer = Trainer(make_config(**{"model.admission_threshold": 3}))
    users = [f"u{i}" for i in range(48)]  # each seen once: all on the fallback row
    items = [f"i{i % 16}" for i in range(48)]  # each seen 3 times: admitted on the third sighting
    batch = EventBatch.from_ids(users, items)
    fallback_before = trainer.state.model.user.embedding.weight.detach()[0].clone()
    stats = trainer.train_step(batch)
    assert math.isfinite(stats.loss)
    assert trainer.vocabulary_sizes() == {"user": 0, "item": 16}
    assert not torch.equal(trainer.state.model.user.embedding.weight.detach()[0], fallback_before)
    for _ in range(2):
        trainer.train_step(batch)
    assert trainer.vocabulary_sizes() == {"user": 48, "item": 16}  # third sighting admits


def test_every_registered_sampler_runs_two_steps() -> None:
    import streamtrain.sampling  # noqa: F401  -- fills the registry
    from streamtrain.sampling.base import SAMPLERS

    assert {"inbatch_logq", "xir"} <= set(SAMPLERS)
    for name in sorted(SAMPLERS):
        trainer = Trainer(make_config(name, **{"trainer.progressive_eval_fraction": 1.0}))
        stream = Stream(seed=5)
        for expected_step in (1, 2):
            stats = trainer.train_step(stream.batch())
            assert stats.step == expected_step and stats.num_events == 64
            assert math.isfinite(stats.loss), name
            assert math.isfinite(stats.logq_mean) and stats.logq_mean <= 0
            assert all(isinstance(v, float) for v in stats.sampler_stats.values())
            assert stats.progressive is not None and 0 <= stats.progressive["recall@20"] <= 1


def test_non_finite_loss_skips_the_update_and_training_goes_on() -> None:
    trainer = Trainer(make_config("inbatch_logq"))
    stream = Stream(seed=3)
    batch = stream.batch()
    assert trainer.train_step(batch).applied
    before = trainer.state.model.tower("item").embedding.weight.detach().clone()
    real_loss = trainer.state.sampler.loss

    def poisoned(inp, update_state=True):  # a NaN that flows into the gradients too
        out = real_loss(inp, update_state=update_state)
        out.loss = out.loss * float("nan")
        return out

    trainer.state.sampler.loss = poisoned
    stats = trainer.train_step(batch)  # same ids: no new rows, so any change would be the update
    assert not stats.applied and math.isnan(stats.loss)
    assert torch.equal(trainer.state.model.tower("item").embedding.weight, before)
    trainer.state.sampler.loss = real_loss
    stats = trainer.train_step(batch)
    assert stats.applied and math.isfinite(stats.loss)
    assert torch.isfinite(trainer.state.model.tower("item").embedding.weight).all()
    assert not torch.equal(trainer.state.model.tower("item").embedding.weight, before)


def test_event_weights_reach_the_loss() -> None:
    """A batch at weight 3 trains exactly like the same batch at weight 1 (normalised mean), while
    zero weight on all but one event changes the update."""
    plain, tripled, single = (Trainer(make_config("inbatch")) for _ in range(3))
    batch = Stream(seed=4).batch()
    heavy = dataclasses.replace(batch, weight=np.full(len(batch), 3.0, dtype=np.float32))
    lone = dataclasses.replace(batch, weight=np.eye(1, len(batch), dtype=np.float32)[0])
    a, b, c = plain.train_step(batch), tripled.train_step(heavy), single.train_step(lone)
    assert math.isclose(a.loss, b.loss, rel_tol=1e-5)
    assert torch.allclose(plain.state.model.tower("user").embedding.weight, tripled.state.model.tower("user").embedding.weight)
    assert not math.isclose(a.loss, c.loss, rel_tol=1e-3)


def test_probe_leaves_training_state_untouched() -> None:
    trainer = Trainer(make_config("xir"))
    stream = Stream(seed=6)
    for _ in range(3):
        trainer.train_step(stream.batch())
    before_model = {k: v.clone() for k, v in trainer.state.model.state_dict().items()}
    before_shared = trainer.shared_state()
    before_vocab = trainer.state.item_vocab.state_dict()
    probe_batch = stream.batch()
    probe_batch = EventBatch.from_ids(list(probe_batch.user_ids) + ["never-seen"], list(probe_batch.item_ids) + ["i0"])
    result = trainer.probe(probe_batch)
    assert result and all(isinstance(v, float) for v in result.values())
    for name, value in trainer.state.model.state_dict().items():
        assert torch.equal(value, before_model[name]), name
    after_shared = trainer.shared_state()
    assert before_shared.keys() == after_shared.keys()
    for name, value in before_shared.items():
        np.testing.assert_array_equal(after_shared[name], value, err_msg=name)
    assert trainer.state.item_vocab.state_dict()["ids"] == before_vocab["ids"]
    assert "never-seen" not in trainer.state.user_vocab
    assert all(p.grad is None for p in trainer.state.model.parameters())


def test_recommend_returns_known_items_best_first_and_empty_batch_is_refused() -> None:
    trainer = Trainer(make_config())
    stream = Stream(seed=8)
    for _ in range(3):
        trainer.train_step(stream.batch())
    ids, scores = trainer.state.recommend(["u1", "unknown-user"], k=5)
    assert len(ids) == 2 and all(len(row) == 5 for row in ids)
    assert all(i in trainer.state.item_vocab for row in ids for i in row)
    assert (np.diff(scores, axis=1) <= 0).all()
    with pytest.raises(TrainingError):
        trainer.train_step(EventBatch.empty())


def test_device_resolution_and_precision_policy() -> None:
    from streamtrain.training.device import DeviceError, resolve_device, uses_bf16

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError):
            resolve_device("cuda")
    cpu = torch.device("cpu")
    assert not uses_bf16(cpu, "auto") and uses_bf16(cpu, "bf16") and not uses_bf16(cpu, "off")


def test_bf16_autocast_step_runs_and_stays_finite() -> None:
    trainer = Trainer(make_config("xir", **{"trainer.mixed_precision": "bf16"}))
    stream = Stream(seed=9)
    losses = [trainer.train_step(stream.batch()).loss for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    assert trainer.state.model.item.embedding.weight.dtype == torch.float32  # master weights stay fp32
