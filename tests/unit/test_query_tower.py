"""The query tower's parts from issue 16 (history encoder inputs and pooling, a user row that starts
as the shared row, new item rows from the queries that took them, extra optimiser steps over a replay
window): each keeps test-then-train, survives a checkpoint round trip exactly, and does what it says."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamtrain.config import Config
from streamtrain.model.history import EMPTY
from streamtrain.model.item_init import init_new_items_from_queries
from streamtrain.model.two_tower import TwoTowerModel
from streamtrain.training.trainer import Trainer
from test_history_tower import _bursty_stream  # noqa: I001 (shared bursty stream)
from trainer_support import restart_into

ALL_ON = {"history_input": "both", "history_pooling": "attention", "new_item_init": "query",
          "user_features": "history+id"}
REPLAY = {"extra_steps": 2, "replay_window_events": 300}


def _config(model: dict | None = None, trainer: dict | None = None, sampler: str = "inbatch_logq") -> Config:
    return Config.model_validate({
        "run": {"seed": 1, "device": "cpu"},
        "model": {"user_capacity": 4096, "item_capacity": 256, "embedding_dim": 16, "history_length": 8,
                  "user_features": "history", **(model or {})},
        "sampler": {"name": sampler},
        "frequency": {"hash_size": 4096},
        "trainer": {"batch_size": 128, "progressive_eval_fraction": 1.0, "progressive_eval_max_queries": 128,
                    "progressive_eval_window": 1000, "eval_k": [10], **(trainer or {})},
    })


@pytest.mark.parametrize("history_input", ["item", "context", "both"])
@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_encoder_pools_each_row_alone_and_an_empty_history_is_the_shared_row(history_input: str, pooling: str) -> None:
    torch.manual_seed(0)
    model = TwoTowerModel(user_capacity=8, item_capacity=8, dim=4, normalize=False, user_features="history",
                          history_length=3, history_input=history_input, history_pooling=pooling)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    users = torch.tensor([3, 4, 5])
    history = torch.tensor([[EMPTY, 1, 2], [EMPTY, EMPTY, EMPTY], [4, 5, 6]])
    q = model.query(users, history)
    torch.testing.assert_close(q[1], model.user.embedding.weight[0])  # no history: the shared row only
    other = history.clone()
    other[2] = torch.tensor([7, 7, 1])  # another row's history changes nothing in rows 0 and 1
    torch.testing.assert_close(model.query(users, other)[:2], q[:2])
    if history_input != "item":  # the query reads the context rows
        with torch.no_grad():
            model.encoder.context.weight[2] += 1.0
        assert not torch.allclose(model.query(users, history)[0], q[0])


def test_context_rows_start_at_zero_and_follow_the_vocabulary() -> None:
    trainer = Trainer(_config({"history_input": "context"}))
    stream = list(_bursty_stream(seed=3, steps=3))
    trainer.train_step(stream[0])
    ctx = trainer.state.model.encoder.context.weight
    assert bool((ctx.abs().sum(1) > 0).any())  # trained rows moved
    rows = torch.tensor([trainer.state.item_vocab.row_of(i) for i in stream[0].item_ids[:3]])
    trainer.state.model.reinit_rows("item", rows, torch.Generator().manual_seed(0))
    assert float(ctx[rows].detach().abs().sum()) == 0.0  # a row handed to a new id forgets its context
    assert trainer.state.model.row_tables("item")[1] is ctx  # so its optimizer state is reset too


def test_a_new_users_own_row_starts_as_the_shared_row() -> None:
    history = Trainer(_config({"user_features": "history"}, {"extra_steps": 0}))
    both = Trainer(_config({"user_features": "history+id"}, {"extra_steps": 0}))
    batch = next(iter(_bursty_stream(seed=4, steps=1)))
    a, b = history.train_step(batch), both.train_step(batch)
    # Same seed, same draws: before any training, history+id queries equal the history tower's.
    assert a.progressive == b.progressive
    row = both.state.user_vocab.row_of(batch.user_ids[-1])
    assert row != 0 and not torch.equal(both.state.model.user.embedding.weight[row], both.state.model.user.embedding.weight[0])


def test_new_item_rows_point_at_the_mean_query_that_took_them() -> None:
    torch.manual_seed(0)
    model = TwoTowerModel(user_capacity=4, item_capacity=10, dim=3, init_std=0.1)
    with torch.no_grad():
        model.item.embedding.weight.normal_()
    before = model.item.embedding.weight.clone()
    queries = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0], [0, 1.0, 0]])
    items = torch.tensor([5, 5, 7, 2])
    init_new_items_from_queries(model, torch.tensor([7, 5, 9]), items, queries)
    w = model.item.embedding.weight
    scale = 0.1 * math.sqrt(3)
    torch.testing.assert_close(w[5], torch.tensor([1.0, 1.0, 0]) / math.sqrt(2) * scale)  # mean of two directions
    torch.testing.assert_close(w[7], torch.tensor([0, 0, 1.0]) * scale)
    torch.testing.assert_close(w[9], before[9])  # no event took it: unchanged
    torch.testing.assert_close(w[2], before[2])  # not new: unchanged


@pytest.mark.parametrize("option", ["replay", "item_init", "all"])
def test_extra_work_comes_after_the_batch_is_scored(option: str) -> None:
    """Test-then-train: a step's progressive numbers are those of the model before the step, so
    switching on work done inside the step (extra steps, new-row init) cannot change the first step's
    numbers, and does change later ones."""
    model = {"new_item_init": "query" if option != "replay" else "random"}
    trainer = REPLAY if option != "item_init" else {"extra_steps": 0}
    if option == "all":
        model = {**ALL_ON}
    base_model = {**model, "new_item_init": "random"}
    off, on = Trainer(_config(base_model, {"extra_steps": 0})), Trainer(_config(model, trainer))
    stream = list(_bursty_stream(seed=6, steps=4))
    first_off, first_on = off.train_step(stream[0]), on.train_step(stream[0])
    assert first_off.progressive == first_on.progressive
    later = [(off.train_step(b).progressive, on.train_step(b).progressive) for b in stream[1:]]
    assert any(a != b for a, b in later)


def test_extra_steps_help_on_the_bursty_stream() -> None:
    def second_half(trainer_cfg: dict) -> float:
        trainer_cfg = {"extra_steps": 0, **trainer_cfg}
        trainer = Trainer(_config({"history_input": "both"}, trainer_cfg))
        recalls = [trainer.train_step(b).progressive["recall@10"] for b in _bursty_stream(seed=2, steps=40)]
        return float(np.mean(recalls[20:]))

    one, more = second_half({}), second_half(REPLAY)
    assert more > one, (one, more)


def test_a_restored_trainer_with_every_new_part_continues_exactly() -> None:
    stream = list(_bursty_stream(seed=5, steps=7))
    a = Trainer(_config(ALL_ON, REPLAY, sampler="xir"))
    for batch in stream[:4]:
        a.train_step(batch)
    assert a.state.replay._filled > 0
    b = restart_into(a, Trainer(_config(ALL_ON, REPLAY, sampler="xir")))
    for batch in stream[4:]:
        sa, sb = a.train_step(batch), b.train_step(batch)
        assert sa.loss == sb.loss and sa.progressive == sb.progressive
    for (name, pa), pb in zip(a.state.model.state_dict().items(), b.state.model.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_replay_ring_wraps_keeps_causal_histories_and_forgets_on_eviction() -> None:
    trainer = Trainer(_config({}, {"extra_steps": 1, "replay_window_events": 200}))  # ring of 200
    stream = list(_bursty_stream(seed=7, steps=3))
    histories = []
    for batch in stream:
        before = trainer.state.model.history.items.clone()
        trainer.train_step(batch)
        histories.append(before)
    ring = trainer.state.replay
    assert ring._filled == 200 and ring._at == (3 * 128) % 200
    # The newest 128 ring entries are the last batch, each with the history it had before that batch.
    last = stream[-1]
    rows = torch.tensor([trainer.state.user_vocab.row_of(u) for u in last.user_ids])
    pos = (torch.arange(128) + (2 * 128) % 200) % 200
    assert torch.equal(ring.users[pos], rows)
    first_of_user = {}
    for n, u in enumerate(rows.tolist()):
        first_of_user.setdefault(u, n)
    for u, n in first_of_user.items():  # a user's first event in the batch saw the stored history
        assert torch.equal(ring.history[pos[n]], histories[-1][u])
    ring.forget()
    assert ring._filled == 0
