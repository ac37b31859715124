"""bench/quality.py's test-time histories: with ``--test-history time`` a history tower is evaluated
on each user's last H training events in time order (what serving reads from the log), not on the
buffer the last shuffled epoch left, and training continues from the buffer it had."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from streamtrain.config import validate_tree
from streamtrain.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
H = 3


@pytest.fixture(scope="module")
def bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("quality_bench", REPO / "bench/quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _trained(bench, users: np.ndarray, items: np.ndarray) -> Trainer:  # type: ignore[no-untyped-def]
    config = validate_tree({
        "model": {"embedding_dim": 8, "user_capacity": 16, "item_capacity": 32, "history_length": H},
        "sampler": {"name": "inbatch_logq"},
        "trainer": {"batch_size": 64, "progressive_eval_fraction": 0.0, "extra_steps": 0},
    })
    trainer = Trainer(config)
    order = np.random.default_rng(0).permutation(len(users))  # a shuffled epoch
    trainer.train_step(bench._batch(users[order], items[order], 0.0))
    return trainer


def test_test_time_history_is_each_users_last_events_by_time_and_is_put_back(bench) -> None:  # type: ignore[no-untyped-def]
    # Per user, oldest first (the split's order): u1 took i1..i5, u2 took i6, i7.
    users = np.array(["u1"] * 5 + ["u2"] * 2, dtype=object)
    items = np.array([f"i{k}" for k in range(1, 8)], dtype=object)
    trainer = _trained(bench, users, items)
    history = trainer.state.model.history
    before = history.items.clone()
    data = {"train_users": users, "train_items": items, "train_in_time_order": True}

    saved = bench._histories_by_time(trainer, data)
    assert saved is not None and torch.equal(saved, before)
    row = lambda vocab, ids: vocab.lookup(np.array(ids, dtype=object), admit=False).rows.tolist()  # noqa: E731
    u1, u2 = row(trainer.state.user_vocab, ["u1", "u2"])
    assert history.items[u1].tolist() == row(trainer.state.item_vocab, ["i3", "i4", "i5"])  # newest last
    assert history.items[u2].tolist() == [-1, *row(trainer.state.item_vocab, ["i6", "i7"])]
    assert not torch.equal(history.items, before)  # the shuffled epoch had left another order

    history.items.copy_(before)
    data["test_history"] = "time"
    bench._evaluate(trainer, {**data, "test": {"u1": ["i6"], "u2": ["i1"]}})
    assert torch.equal(history.items, before)  # evaluation leaves the training buffer as it was


def test_a_split_without_times_keeps_the_buffer(bench) -> None:  # type: ignore[no-untyped-def]
    users = np.array(["u1"] * 4, dtype=object)
    items = np.array(["i1", "i2", "i3", "i4"], dtype=object)
    trainer = _trained(bench, users, items)
    assert bench._histories_by_time(trainer, {"train_users": users, "train_items": items}) is None
