"""Which checkpoint is committed, and continuous versioned exports: write v-<id>, flip latest, keep K."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from streamtrain.config import Config
from streamtrain.events.batch import EventBatch
from streamtrain.serving.checkpoint_model import CheckpointLoadError, choose_checkpoint, load_checkpoint
from streamtrain.serving.export_format import ExportError, read_export, resolve_export
from streamtrain.serving.publish import ExportPublisher, flip_latest
from streamtrain.training.trainer import Trainer
from streamtrain.state.checkpoint import take_snapshot
from streamtrain.state.files import CheckpointFiles
from streamtrain.state.committed import CommittedCheckpoint

WRITER = "0123abcd"  # fixed writer id: file names are ckpt-<id>-<writer>.pt

BATCH = 32


def _config(root: Path) -> Config:
    return Config.model_validate({
        "run": {"name": "pub", "seed": 1, "device": "cpu"},
        "model": {"user_capacity": 64, "item_capacity": 128, "embedding_dim": 8},
        "sampler": {"name": "inbatch_logq"},
        "trainer": {"batch_size": BATCH, "progressive_eval_fraction": 0.0},
        "checkpoint": {"dir": str(root / "ckpt")},
        "redis": {"url": "redis://127.0.0.1:1/0"},
    })


def _train(trainer: Trainer, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for step in range(steps):
        users = np.asarray([f"u{u}" for u in rng.integers(0, 40, BATCH)], dtype=object)
        items = np.asarray([f"i{i}" for i in rng.integers(0, 90, BATCH)], dtype=object)
        trainer.train_step(EventBatch(user_ids=users, item_ids=items, event_time=np.full(BATCH, 1e9 + step),
                                      weight=np.ones(BATCH, np.float32), event_type=np.full(BATCH, None, object)))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("publish")
    config = _config(root)
    torch.manual_seed(0)
    trainer = Trainer(config)
    files = CheckpointFiles(config.checkpoint.dir, config.run.name, keep=10, writer=WRITER)
    snaps = []
    for checkpoint_id in (3, 4, 5):  # three checkpoints with different weights
        _train(trainer, 5, checkpoint_id)
        snap = take_snapshot(trainer, checkpoint_id, {("t", 0): 160 * checkpoint_id}, 160 * checkpoint_id, [])
        files.write(checkpoint_id, snap.file_state)
        snaps.append(snap)
    return {"root": root, "config": config, "files": files, "snaps": snaps}


def _committed(checkpoint_id: int, events: int = 480) -> CommittedCheckpoint:
    return CommittedCheckpoint(checkpoint_id, f"ckpt-{checkpoint_id:012d}-{WRITER}.pt", events, 15, {"t:0": events})


# ---------------------------------------------------------------- which checkpoint
def test_the_committed_checkpoint_wins_over_a_newer_orphan_file(run: dict[str, Any]) -> None:
    config, files = run["config"], run["files"]
    choice = choose_checkpoint(None, config, committed=lambda name: _committed(4) if name == "pub" else None)
    assert choice.path == files.path(4) and choice.committed == _committed(4)  # ckpt 5 is newer but uncommitted
    source = load_checkpoint(choice, config).describe()
    assert source["checkpoint_id"] == 4 and source["committed"] is True
    assert (source["events"], source["offsets"]) == (480, {"t:0": 480})


def test_an_older_checkpoint_by_id_and_the_errors_that_name_what_exists(run: dict[str, Any]) -> None:
    config, files = run["config"], run["files"]
    older = choose_checkpoint(None, config, checkpoint_id=3, committed=lambda name: _committed(4))
    assert older.path == files.path(3)
    assert load_checkpoint(older, config).describe()["committed"] is False  # not the committed id: no offsets
    with pytest.raises(CheckpointLoadError, match=r"no checkpoint 9 .* ids \[3, 4, 5\]"):
        choose_checkpoint(None, config, checkpoint_id=9, committed=lambda name: None)
    with pytest.raises(CheckpointLoadError, match="Redis names checkpoint 8"):
        choose_checkpoint(None, config, committed=lambda name: _committed(8))


def test_without_redis_the_newest_file_is_used_and_said_so(run: dict[str, Any]) -> None:
    choice = choose_checkpoint(None, run["config"])  # redis.url is a closed port
    assert choice.path == run["files"].path(5) and "cannot ask Redis" in choice.reason


# ---------------------------------------------------------------- publishing
def _publisher(run: dict[str, Any], root: Path, redis_id: list[int], *, every: int = 1,
               keep: int = 2) -> ExportPublisher:
    return ExportPublisher(root, every=every, keep=keep, config=run["config"], committed_id=lambda: redis_id[0],
                           checkpoint_file=run["files"].path)


def _commit_all(publisher: ExportPublisher, snaps: list[Any], redis_id: list[int]) -> list[int | None]:
    out = []
    for snap in snaps:
        redis_id[0] = snap.checkpoint_id  # what Redis names once the checkpoint committed
        published = publisher.on_commit(snap)
        out.append(published.checkpoint_id if published else None)
    return out


def test_every_nth_commit_is_published(run: dict[str, Any], tmp_path: Path) -> None:
    redis_id = [0]
    assert _commit_all(_publisher(run, tmp_path / "pub", redis_id, every=2), run["snaps"], redis_id) == [None, 4, None]
    assert os.readlink(tmp_path / "pub" / "latest") == "v-000000000004"


def test_latest_follows_commits_and_the_newest_k_versions_are_kept(run: dict[str, Any], tmp_path: Path) -> None:
    redis_id = [0]
    publisher = _publisher(run, tmp_path / "pub", redis_id, every=1, keep=2)
    assert _commit_all(publisher, run["snaps"], redis_id) == [3, 4, 5]
    assert all(p.redis_checkpoint_id == p.checkpoint_id for p in publisher.history)
    assert os.readlink(tmp_path / "pub" / "latest") == "v-000000000005"
    assert sorted(p.name for p in (tmp_path / "pub").iterdir()) == ["latest", "v-000000000004", "v-000000000005"]
    source = read_export(tmp_path / "pub").manifest["source"]
    assert (source["checkpoint_id"], source["committed"], source["events"], source["offsets"]) == (
        5, True, 800, {"t:0": 800})
    assert str(source["path"]).endswith(f"ckpt-000000000005-{WRITER}.pt")
    assert read_export(tmp_path / "pub", checkpoint_id=4).manifest["source"]["checkpoint_id"] == 4
    with pytest.raises(ExportError, match="kept versions"):
        read_export(tmp_path / "pub", checkpoint_id=3)  # pruned: keep=2


def test_exported_embeddings_are_the_snapshot_s(run: dict[str, Any], tmp_path: Path) -> None:
    snap = run["snaps"][1]
    _publisher(run, tmp_path / "pub", [snap.checkpoint_id]).on_commit(snap)
    from_file = load_checkpoint(run["files"].path(4), run["config"])
    export = read_export(tmp_path / "pub")
    with torch.no_grad():
        rows = from_file.item_vocab.known_rows()
        np.testing.assert_array_equal(export.item_embeddings, from_file.model.item_tower(rows).numpy())


def test_nothing_is_published_when_redis_moved_on_or_the_export_fails(run: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "pub"
    publisher = _publisher(run, root, [7])  # another writer committed 7 meanwhile
    assert publisher.on_commit(run["snaps"][0]) is None
    assert not (root / "latest").exists() and not list(root.glob("v-*"))
    broken = _publisher(run, root, [3])
    bad = SimpleNamespace(**{**vars(run["snaps"][0]), "file_state": {"not": "a checkpoint"}})
    assert broken.on_commit(bad) is None  # logged, never raised: serving keeps what it had


def test_a_reader_polling_latest_never_sees_a_partial_export(run: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "pub"
    redis_id = [0]
    publisher = _publisher(run, root, redis_id, keep=2)
    redis_id[0] = 3
    publisher.on_commit(run["snaps"][0])
    stop, seen, errors = threading.Event(), set(), []

    def reader() -> None:
        while not stop.is_set():
            try:
                export = read_export(root)
                assert export.item_embeddings.shape[0] == len(export.item_ids)
                seen.add(export.manifest["source"]["checkpoint_id"])
            except Exception as exc:  # a partial or vanished export would land here
                errors.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for round_ in range(3):  # ids keep growing, as a worker's do; the weights cycle through the snapshots
            for snap in run["snaps"]:
                again = SimpleNamespace(**{**vars(snap), "checkpoint_id": snap.checkpoint_id + 10 * (round_ + 1)})
                redis_id[0] = again.checkpoint_id
                assert publisher.on_commit(again) is not None
    finally:
        stop.set()
        thread.join()
    assert errors == [] and len(seen) >= 2
    assert len(list(root.glob("v-*"))) == 2


def test_flip_latest_replaces_the_link_atomically(tmp_path: Path) -> None:
    (tmp_path / "v-1").mkdir()
    (tmp_path / "v-2").mkdir()
    flip_latest(tmp_path, "v-1")
    flip_latest(tmp_path, "v-2")
    assert os.readlink(tmp_path / "latest") == "v-2" and resolve_export(tmp_path) == tmp_path / "v-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "v-1", "v-2"]  # no temporary link left
