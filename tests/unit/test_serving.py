"""Checkpoint loading, export, recommend and eval on a tiny model trained by the real Trainer and saved
the way the worker saves it (snapshot → CheckpointFiles.write)."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from streamtrain.serving.checkpoint_eval import evaluate_checkpoint
from streamtrain.cli import main
from streamtrain.config import Config
from streamtrain.data.interactions import read_interactions
from streamtrain.evaluation.progressive import offline_evaluate
from streamtrain.events.batch import EventBatch
from streamtrain.model.two_tower import Tower, TwoTowerModel
from streamtrain.serving.checkpoint_model import (
    CheckpointLoadError,
    hidden_dims_of,
    load_checkpoint,
    resolve_checkpoint,
)
from streamtrain.serving.ann import IndexSpec
from streamtrain.serving.export_format import ExportError, read_export, write_export
from streamtrain.serving.recommend import recommend
from streamtrain.training.trainer import Trainer
from streamtrain.state.checkpoint import take_snapshot
from streamtrain.state.files import CheckpointFiles

N_USERS, N_ITEMS, N_CLUSTERS, BATCH, STEPS = 40, 80, 4, 64, 40
# A closed port: these tests never reach a Redis, so "which checkpoint is committed" falls back to the
# newest file (tests/unit/test_committed_checkpoint.py covers the Redis-named choice).
NO_REDIS = "redis://127.0.0.1:1/0"
SETS = ["run.name=tiny", "run.device=cpu", "model.temperature=0.1", "model.user_capacity=64",
        "model.item_capacity=128", "model.user_features=id", f"redis.url={NO_REDIS}"]


def _config(ckpt_dir: Path) -> Config:
    return Config.model_validate({
        "run": {"name": "tiny", "seed": 3, "device": "cpu"},
        # id-only: the user_tower.pt rebuild below is the id model's contract (history: test_history_tower)
        "model": {"user_capacity": 64, "item_capacity": 128, "embedding_dim": 8, "temperature": 0.1,
                  "learning_rate": 0.05, "user_features": "id"},
        "sampler": {"name": "inbatch_logq"},
        "frequency": {"hash_size": 1024, "alpha": 0.05, "initial_gap": 20.0},
        "trainer": {"batch_size": BATCH, "progressive_eval_fraction": 0.0},
        "checkpoint": {"dir": str(ckpt_dir)},
        "redis": {"url": NO_REDIS},
    })


def _objects(values: Any) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = [str(v) for v in values]
    return arr


def _pairs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """User u likes cluster u % 4 except its held-out items (see _held_out); plus 4 events per batch of
    user 'alice' with item 'star', seen nowhere else."""
    users = rng.integers(0, N_USERS, size=n - 4)
    per = N_ITEMS // N_CLUSTERS
    offset = rng.integers(0, per, size=n - 4)
    items = (users % N_CLUSTERS) * per + offset
    held = (items + users) % 3 == 0
    items[held] = (users[held] % N_CLUSTERS) * per + (offset[held] + 1) % per  # the next item is not held out
    return (_objects([f"u{u}" for u in users] + ["alice"] * 4),
            _objects([f"i{i}" for i in items] + ["star"] * 4))


def _held_out() -> tuple[list[str], list[str]]:
    """Each user's in-cluster items with (item + user) % 3 == 0: never trained by this user, but by the
    cluster's users with another user % 3."""
    per = N_ITEMS // N_CLUSTERS
    pairs = [(f"u{u}", f"i{i}") for u in range(N_USERS)
             for i in range((u % N_CLUSTERS) * per, (u % N_CLUSTERS + 1) * per) if (i + u) % 3 == 0]
    return [u for u, _ in pairs], [i for _, i in pairs]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("serving")
    config = _config(root / "checkpoints")
    torch.manual_seed(0)
    trainer = Trainer(config)
    rng = np.random.default_rng(0)
    seen_u, seen_i = [], []
    for step in range(STEPS):
        u, i = _pairs(rng, BATCH)
        seen_u += u.tolist()
        seen_i += i.tolist()
        trainer.train_step(EventBatch(user_ids=u, item_ids=i, event_time=np.full(BATCH, 1e9 + step),
                                      weight=np.ones(BATCH, np.float32), event_type=np.full(BATCH, None, object)))
    files = CheckpointFiles(config.checkpoint.dir, config.run.name, keep=3)
    snap = take_snapshot(trainer, 7, {}, STEPS * BATCH, [])  # what the worker's checkpoint writes
    path = files.write(snap.checkpoint_id, snap.file_state)
    # Held-out: each user's untrained in-cluster items, one unknown user and one unknown item.
    held_u, held_i = _held_out()
    test_u = held_u + ["stranger", "u1"]
    test_i = held_i + ["i0", "never-seen-item"]
    train_file, test_file = root / "train.txt", root / "test.txt"
    _write_gowalla(train_file, seen_u, seen_i)
    _write_gowalla(test_file, test_u, test_i)
    return {"root": root, "config": config, "trainer": trainer, "path": path, "train_file": train_file,
            "test_file": test_file, "test": (test_u, test_i)}


def _write_gowalla(path: Path, users: list[str], items: list[str]) -> None:
    by_user: dict[str, list[str]] = {}
    for u, i in zip(users, items):
        by_user.setdefault(u, []).append(i)
    path.write_text("".join(f"{u} {' '.join(its)}\n" for u, its in by_user.items()))


# ---------------------------------------------------------------- loading
def test_loaded_checkpoint_scores_like_the_trainer(trained: dict[str, Any]) -> None:
    trainer: Trainer = trained["trainer"]
    ckpt = load_checkpoint(trained["path"], trained["config"])
    assert (ckpt.checkpoint_id, ckpt.run, ckpt.step) == (7, "tiny", STEPS)
    rows = trainer.state.item_vocab.known_rows()
    users = torch.arange(0, len(trainer.state.user_vocab) + 1)
    assert torch.equal(ckpt.model.score(users, rows), trainer.state.model.score(users, rows))
    assert ckpt.item_vocab.ids_of(rows.numpy()) == trainer.state.item_vocab.ids_of(rows.numpy())


def test_resolve_checkpoint_picks_the_newest_file(trained: dict[str, Any], tmp_path: Path) -> None:
    config = trained["config"].model_copy(update={"checkpoint": trained["config"].checkpoint.model_copy(
        update={"dir": tmp_path})})
    files = CheckpointFiles(tmp_path, "tiny", keep=5)
    for checkpoint_id in (2, 11, 5):
        files.write(checkpoint_id, {"x": torch.zeros(1)})
    def no_state(run: str) -> None:  # Redis has no committed state for the run
        return None

    assert resolve_checkpoint(None, config, committed=no_state) == files.path(11)  # <checkpoint.dir>/<run.name>
    assert resolve_checkpoint(tmp_path, config, committed=no_state) == files.path(11)  # run.name inside
    assert resolve_checkpoint(files.dir, config, committed=no_state) == files.path(11)
    assert resolve_checkpoint(files.path(2), config) == files.path(2)
    with pytest.raises(CheckpointLoadError, match="no checkpoint file"):
        resolve_checkpoint(tmp_path / "nothing", config, committed=no_state)
    with pytest.raises(CheckpointLoadError, match="not a streamtrain checkpoint"):
        load_checkpoint(files.path(2), config)


def test_mlp_head_widths_are_read_back_from_the_weights() -> None:
    model = TwoTowerModel(user_capacity=4, item_capacity=4, dim=8, hidden_dims=(16, 12))
    assert hidden_dims_of(model.state_dict()) == [16, 12]
    assert hidden_dims_of(TwoTowerModel(user_capacity=4, item_capacity=4, dim=8).state_dict()) == []


# ---------------------------------------------------------------- export
def test_export_round_trips_embeddings_exactly(trained: dict[str, Any], tmp_path: Path) -> None:
    trainer: Trainer = trained["trainer"]
    manifest = write_export(load_checkpoint(trained["path"], trained["config"]), tmp_path / "exp")
    export = read_export(tmp_path / "exp")
    item_rows, user_rows = trainer.state.item_vocab.known_rows(), trainer.state.user_vocab.known_rows()
    with torch.no_grad():
        np.testing.assert_array_equal(export.item_embeddings, trainer.state.model.item_tower(item_rows).numpy())
        np.testing.assert_array_equal(export.user_embeddings, trainer.state.model.user_tower(user_rows).numpy())
        np.testing.assert_array_equal(export.user_fallback, trainer.state.model.user_tower(torch.tensor([0])).numpy()[0])
    assert export.item_ids == trainer.state.item_vocab.ids_of(item_rows.numpy())
    assert export.user_ids == trainer.state.user_vocab.ids_of(user_rows.numpy())
    assert export.item_embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(export.item_embeddings, axis=1), 1.0, rtol=1e-5)
    assert manifest["counts"] == {"items": len(trainer.state.item_vocab), "users": len(trainer.state.user_vocab)}
    assert manifest["model"] | {} == {"dim": 8, "temperature": 0.1, "normalize": True, "hidden_dims": [],
                                      "user_capacity": 64, "item_capacity": 128, "user_features": "id"}
    assert manifest["source"]["checkpoint_id"] == 7 and manifest["source"]["committed"] is False
    assert manifest["faiss"]["index"] == "IndexHNSWFlat" and manifest["faiss"]["recall_at_20"]["recall"] == 1.0
    # The user tower file rebuilds the tower: embedding users by row reproduces the export.
    tower = Tower(64, 8, manifest["model"]["hidden_dims"], manifest["model"]["normalize"])
    tower.load_state_dict(torch.load(tmp_path / "exp" / "user_tower.pt", weights_only=True))
    with torch.no_grad():
        again = tower(torch.from_numpy(np.load(tmp_path / "exp" / "user_rows.npy"))).numpy()
    np.testing.assert_array_equal(again, export.user_embeddings)


def test_export_refuses_to_overwrite_without_force(trained: dict[str, Any], tmp_path: Path) -> None:
    ckpt = load_checkpoint(trained["path"], trained["config"])
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="--force"):
        write_export(ckpt, tmp_path / "exp")
    write_export(ckpt, tmp_path / "exp", force=True)
    assert not (tmp_path / "exp" / "keep.txt").exists() and (tmp_path / "exp" / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # no staging directory left behind


# ---------------------------------------------------------------- recommend
def test_recommend_ranks_the_strongly_associated_item_first(trained: dict[str, Any], tmp_path: Path) -> None:
    trainer: Trainer = trained["trainer"]
    write_export(load_checkpoint(trained["path"], trained["config"]), tmp_path / "exp", use_faiss=False)
    export = read_export(tmp_path / "exp")
    rec = recommend(export, "alice", 5)
    assert rec.known_user and rec.backend == "numpy" and rec.items[0] == "star"
    # Same items and scores as ranking the live model.
    for user in ("alice", "u3", "u10"):
        want_items, want_scores = trainer.state.recommend([user], 10)
        got = recommend(export, user, 10)
        assert got.items == want_items[0]
        np.testing.assert_allclose(got.scores, want_scores[0], rtol=1e-5)
    # Users with cluster taste: most of u3's top 10 come from cluster 3.
    per = N_ITEMS // N_CLUSTERS
    in_cluster = [int(i[1:]) // per == 3 for i in recommend(export, "u3", 10).items if i != "star"]
    assert sum(in_cluster) >= 7


def test_recommend_excludes_seen_items_and_serves_unknown_users(trained: dict[str, Any], tmp_path: Path) -> None:
    write_export(load_checkpoint(trained["path"], trained["config"]), tmp_path / "exp", use_faiss=False)
    export = read_export(tmp_path / "exp")
    full = recommend(export, "alice", 6)
    fewer = recommend(export, "alice", 5, exclude=["star", "not-an-item"])
    assert fewer.excluded == 1 and "star" not in fewer.items and fewer.items == full.items[1:]
    unknown = recommend(export, "nobody", 5)
    fallback = export.item_embeddings @ export.user_fallback
    assert not unknown.known_user
    assert unknown.items == [export.item_ids[i] for i in np.argsort(-fallback, kind="stable")[:5]]
    everything = recommend(export, "alice", 10_000)
    assert len(everything.items) == len(export.item_ids)


class _FakeIndex:
    """Enough of faiss.IndexFlatIP: exact inner-product search."""

    def __init__(self, dim: int) -> None:
        self.vectors = np.empty((0, dim), np.float32)

    def add(self, x: np.ndarray) -> None:
        self.vectors = np.concatenate([self.vectors, x])

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = q @ self.vectors.T
        cols = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, cols, 1), cols


def test_faiss_index_is_written_and_used_when_faiss_imports(trained: dict[str, Any], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.SimpleNamespace(
        IndexFlatIP=_FakeIndex,
        write_index=lambda index, path: Path(path).write_bytes(pickle.dumps(index.vectors)),
        read_index=lambda path: _loaded(pickle.loads(Path(path).read_bytes())),
    )
    monkeypatch.setitem(sys.modules, "faiss", fake)
    manifest = write_export(load_checkpoint(trained["path"], trained["config"]), tmp_path / "exp",
                            index=IndexSpec(kind="flat"))
    assert manifest["faiss"]["file"] == "items.faiss" and manifest["faiss"]["index"] == "IndexFlatIP"
    assert manifest["faiss"]["exact"] is True and manifest["faiss"]["recall_at_20"]["recall"] == 1.0
    export = read_export(tmp_path / "exp")
    via_faiss = recommend(export, "u3", 8, exclude=["star"])
    via_numpy = recommend(export, "u3", 8, exclude=["star"], backend="numpy")
    assert via_faiss.backend == "faiss" and via_faiss.items == via_numpy.items
    np.testing.assert_allclose(via_faiss.scores, via_numpy.scores, rtol=1e-5)


def _loaded(vectors: np.ndarray) -> _FakeIndex:
    index = _FakeIndex(vectors.shape[1])
    index.add(vectors)
    return index


# ---------------------------------------------------------------- eval
def test_eval_equals_offline_evaluate_and_counts_unknowns(trained: dict[str, Any]) -> None:
    ckpt = load_checkpoint(trained["path"], trained["config"])
    train = read_interactions([trained["train_file"]])
    test = read_interactions([trained["test_file"]])
    report = evaluate_checkpoint(ckpt, test, train)
    trainer: Trainer = trained["trainer"]
    expected = offline_evaluate(trainer.state.model, {"user": trainer.state.user_vocab, "item": trainer.state.item_vocab},
                                (train.users, train.items), test.by_user(), k_list=(10, 20, 50))
    assert report.metrics == {k: v for k, v in expected.items() if k != "users"}
    assert report.metrics["recall@10"] > 0.3  # cluster structure learnt (chance: about 10 / 68 = 0.15)
    assert report.unknown_users == 1 and report.unknown_item_interactions == 1 and report.unknown_items == 1
    assert report.test_users == len(set(trained["test"][0])) and report.test_interactions == len(trained["test"][0])
    assert report.excluded_pairs == STEPS * BATCH
    without = evaluate_checkpoint(ckpt, test, None)
    assert without.excluded_pairs == 0 and without.metrics != report.metrics


def test_cli_eval_export_recommend(trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("STREAMTRAIN_")]:
        monkeypatch.delenv(name)
    sets = [a for s in SETS for a in ("--set", s)]
    # Held-out events as JSONL give the same numbers as the Gowalla file.
    test_u, test_i = trained["test"]
    jsonl = tmp_path / "test.jsonl"
    jsonl.write_text("".join(json.dumps({"user_id": u, "item_id": i}) + "\n" for u, i in zip(test_u, test_i)))
    ckpt_dir = str(trained["path"].parent)
    outputs = []
    for test_file in (trained["test_file"], jsonl):
        assert main([*sets, "eval", "--checkpoint", ckpt_dir, "--test", str(test_file),
                     "--exclude", str(trained["train_file"]), "--json"]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0]["metrics"] == outputs[1]["metrics"] and outputs[1]["unknown_users"] == 1
    assert main([*sets, "eval", "--checkpoint", ckpt_dir, "--test", str(jsonl)]) == 0
    text = capsys.readouterr().out
    assert "Recall" in text and "NDCG" in text and "1 test users without a row" in text

    assert main([*sets, "export", str(tmp_path / "exp"), "--checkpoint", str(trained["path"])]) == 0
    assert "faiss index: items.faiss (IndexHNSWFlat" in capsys.readouterr().out
    assert main([*sets, "export", str(tmp_path / "exp"), "--checkpoint", str(trained["path"])]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["recommend", "--export", str(tmp_path / "exp"), "--user", "alice", "--user", "ghost", "-k", "3",
                 "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert recs[0]["items"][0] == "star" and recs[1]["known_user"] is False and len(recs[1]["items"]) == 3
    seen = tmp_path / "seen.txt"
    seen.write_text("alice star\n")
    assert main(["recommend", "--export", str(tmp_path / "exp"), "--user", "alice", "-k", "3",
                 "--exclude-seen", str(seen)]) == 0
    out = capsys.readouterr().out
    assert "1 seen excluded" in out and "star" not in out.split("\n", 1)[1]


def test_checkpoint_carries_normalize_and_temperature(trained: dict[str, Any]) -> None:
    # A reader with another config still scores like the trainer: the file's settings win.
    config = trained["config"]
    other = config.model_copy(update={"model": config.model.model_copy(
        update={"normalize": not config.model.normalize, "temperature": config.model.temperature * 3})})
    ckpt = load_checkpoint(trained["path"], other)
    trainer: Trainer = trained["trainer"]
    rows = trainer.state.item_vocab.known_rows()
    users = torch.arange(0, len(trainer.state.user_vocab) + 1)
    assert torch.equal(ckpt.model.score(users, rows), trainer.state.model.score(users, rows))
