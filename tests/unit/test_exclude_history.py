"""trainer.exclude_history_items (issue 16, deliverable 5): each user's own recent items are left out of
the ranking by the model's progressive evaluation and the popularity baselines (brute force on small
cases; a positive among them is a miss), the option is off by default, needs a history tower, and the
trainer passes each event's causal history to every ranker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamtrain.config import Config
from streamtrain.errors import ConfigError
from streamtrain.evaluation.progressive import ProgressiveEvaluator
from streamtrain.events.batch import EventBatch
from streamtrain.model.history import EMPTY
from streamtrain.model.two_tower import TwoTowerModel
from streamtrain.evaluation.popularity import PopularityBaselines
from streamtrain.training.trainer import Trainer

K = (1, 3, 5)


def _sums(ranks: list[float], keep: np.ndarray) -> np.ndarray:
    r = np.asarray(ranks, dtype=np.float64)
    hit = (r[:, None] < np.asarray(K)) & keep[:, None]
    return np.concatenate([hit.sum(0), (hit / np.log2(r + 2)[:, None]).sum(0), [keep.sum()]])


def _own_lists(rng: np.random.Generator, b: int, h: int, items: int, pos: np.ndarray) -> torch.Tensor:
    """(b, H) histories with empty slots, the fallback row, repeats and (for some) the positive itself."""
    ex = rng.integers(-1, items, size=(b, h))
    ex[:, 0] = ex[:, 1]  # a repeat in every history
    ex[::4, 2] = pos[::4]  # every 4th positive is one of its user's recent items
    return torch.from_numpy(ex)


def _brute_rank(s: np.ndarray, pos: int, known: np.ndarray, own: set[int], tie: np.ndarray | None = None) -> float:
    if pos in own:
        return 1e9
    cand = [j for j in known.tolist() if j != pos and j not in own]
    above = [j for j in cand if s[j] > s[pos] or (tie is not None and s[j] == s[pos] and tie[j] > tie[pos])]
    return float(len(above))


def test_model_evaluator_leaves_the_users_items_out() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    items, b, h = 40, 24, 5
    model = TwoTowerModel(user_capacity=8, item_capacity=items, dim=6)
    torch.nn.init.normal_(model.item.embedding.weight)
    known = torch.arange(1, items - 3)  # rows 37..39 are not candidates
    pos = rng.integers(1, items - 3, size=b)
    pos[5] = 0  # the fallback: not rankable, not counted
    ex = _own_lists(rng, b, h, items, pos)
    q = torch.randn(b, 6)
    got = ProgressiveEvaluator(K).score(model, q, torch.from_numpy(pos), known, ex)
    emb = model.item_tower(torch.arange(items)).float().detach()
    s_all = (q @ emb.T).numpy()  # (b, items)
    pos_s = (q * emb[torch.from_numpy(pos)]).sum(1).numpy()
    ranks = []
    for i in range(b):
        s = s_all[i].copy()
        s[pos[i]] = pos_s[i]
        ranks.append(_brute_rank(s, int(pos[i]), known.numpy(), {int(x) for x in ex[i].tolist()}))
    np.testing.assert_allclose(got.numpy(), _sums(ranks, pos != 0), rtol=1e-6)
    without = ProgressiveEvaluator(K).score(model, q, torch.from_numpy(pos), known)
    assert not torch.equal(got, without)  # the option changes the outcome here


def test_popularity_baselines_leave_the_users_items_out() -> None:
    rng = np.random.default_rng(1)
    items, b, h = 30, 20, 4
    pop = PopularityBaselines(items, K, half_life_events=1e9)
    counts = rng.permutation(items) + 1  # distinct: the list order is unambiguous
    pop.counts_all.copy_(torch.from_numpy(counts))
    pop.counts_recent.copy_(torch.from_numpy(counts[::-1].copy()).float())
    known = torch.arange(1, items)
    pos = rng.integers(1, items, size=b)
    ex = _own_lists(rng, b, h, items, pos)
    got = pop.score(torch.from_numpy(pos), known, ex).numpy()
    for part, c in enumerate((counts, counts[::-1])):
        ranks = [_brute_rank(c.astype(float), int(pos[i]), known.numpy(), {int(x) for x in ex[i].tolist()})
                 for i in range(b)]
        np.testing.assert_allclose(got[part * 7 : (part + 1) * 7], _sums(ranks, np.ones(b, bool)), rtol=1e-6)


def config(**trainer: object) -> Config:
    return Config.model_validate({
        "run": {"seed": 3, "device": "cpu"},
        "model": {"user_capacity": 64, "item_capacity": 64, "embedding_dim": 8, "history_length": 4},
        "frequency": {"hash_size": 1024},
        "trainer": {"batch_size": 64, "progressive_eval_fraction": 1.0, "covisit_neighbours": 32, **trainer},
    })


def test_off_by_default_and_needs_a_history_tower() -> None:
    assert Config().trainer.exclude_history_items is False
    with pytest.raises((ConfigError, ValueError), match="trainer.exclude_history_items"):
        Config.model_validate({"model": {"user_features": "id"}, "trainer": {"exclude_history_items": True}})


def test_trainer_excludes_for_the_model_and_every_baseline() -> None:
    """Users who take their own recent items again: with the option those positives are misses for
    every ranker, so each ranker's recall drops below its recall without the option."""
    rng = np.random.default_rng(2)
    batches = []
    for t in range(12):
        users = rng.integers(0, 20, size=64)
        items = (users + rng.integers(0, 3, size=64)) % 30  # each user cycles over three items
        batches.append(EventBatch.from_ids([f"u{u}" for u in users], [f"i{i}" for i in items],
                                           event_time=t + np.arange(64) * 1e-3))
    results = {}
    for flag in (False, True):
        trainer = Trainer(config(exclude_history_items=flag))
        assert trainer.state.covisit is not None and trainer.state.covisit.exclude_history is flag
        for batch in batches:
            stats = trainer.train_step(batch)
        assert stats.baselines is not None and stats.progressive is not None
        results[flag] = {"model": stats.progressive, **stats.baselines}
    for ranker in ("model", "popular_all", "popular_recent", "covisit"):
        assert results[True][ranker]["recall@10"] < results[False][ranker]["recall@10"] - 0.2, ranker
    assert EMPTY == -1


def test_recommend_leaves_the_users_recent_items_out(tmp_path: Path) -> None:
    from streamtrain.serving.checkpoint_model import load_checkpoint
    from streamtrain.serving.export_format import ExportError, read_export, write_export
    from streamtrain.serving.recommend import recommend
    from streamtrain.state.checkpoint import take_snapshot
    from streamtrain.state.files import CheckpointFiles

    cfg = config().model_copy(update={"checkpoint": config().checkpoint.model_copy(update={"dir": str(tmp_path)})})
    trainer = Trainer(cfg)
    rng = np.random.default_rng(5)
    for t in range(6):
        users, items = rng.integers(0, 10, size=64), rng.integers(0, 40, size=64)
        trainer.train_step(EventBatch.from_ids([f"u{u}" for u in users], [f"i{i}" for i in items],
                                               event_time=t + np.arange(64) * 1e-3))
    snap = take_snapshot(trainer, 1, {}, 6 * 64, [])
    path = CheckpointFiles(cfg.checkpoint.dir, cfg.run.name, keep=2).write(snap.checkpoint_id, snap.file_state)
    write_export(load_checkpoint(path, cfg), tmp_path / "exp", use_faiss=False)
    export = read_export(tmp_path / "exp")
    row = trainer.state.user_vocab.lookup(np.asarray(["u3"], dtype=object), admit=False).rows
    recent = {i for i in trainer.state.item_vocab.ids_of(trainer.state.model.history.current(torch.from_numpy(row))[0].numpy())
              if i is not None}
    assert len(recent) >= 2
    full = recommend(export, "u3", 40)
    kept = recommend(export, "u3", 40, exclude_recent=True)
    assert kept.items == [i for i in full.items if i not in recent]  # the same ranking without them
    assert kept.excluded == len(recent)
    assert recommend(export, "stranger", 5, exclude_recent=True).excluded == 0

    id_cfg = Config.model_validate({**cfg.model_dump(), "model": {**cfg.model.model_dump(), "user_features": "id"}})
    id_trainer = Trainer(id_cfg)
    id_trainer.train_step(EventBatch.from_ids(["a", "b"], ["x", "y"], event_time=np.zeros(2)))
    snap = take_snapshot(id_trainer, 2, {}, 2, [])
    path = CheckpointFiles(tmp_path / "id", "id", keep=2).write(snap.checkpoint_id, snap.file_state)
    write_export(load_checkpoint(path, id_cfg), tmp_path / "id-exp", use_faiss=False)
    with pytest.raises(ExportError, match="exclude-recent"):
        recommend(read_export(tmp_path / "id-exp"), "a", 2, exclude_recent=True)
