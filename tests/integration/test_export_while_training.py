"""Exports follow training against the real Kafka and Redis: the worker publishes after committed
checkpoints while a reader polls ``latest``; no reader ever loads a partial export, the manifest's
checkpoint id is what Redis named as committed when ``latest`` flipped, and eval/export pick the
committed checkpoint over a newer orphan file."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import streamtrain.serving.publish as publish
from streamtrain.config import load_config
from streamtrain.serving.checkpoint_model import choose_checkpoint, load_checkpoint
from streamtrain.serving.export_format import read_export
from streamtrain.state.redis_store import redis_client, state_store
from streamtrain.state.files import CheckpointFiles
from worker_support import overrides, produce, run_worker, stop_worker, stream

pytestmark = pytest.mark.integration

EVENTS = 12_000


def test_reader_polling_latest_sees_only_complete_committed_exports(
    kafka_bootstrap: str, redis_url: str, topic_factory: Any, unique_name: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
) -> None:
    topic = topic_factory(1, prefix="export-live")
    produce(kafka_bootstrap, topic, stream(EVENTS, seed=4))
    exports = tmp_path / "exports"
    sets = overrides(unique_name, topic, tmp_path / "ckpt", bootstrap=kafka_bootstrap, redis_url=redis_url, extra=[
        "checkpoint.interval_events=1500", "checkpoint.keep=10", "export.every_checkpoints=1",
        f"export.dir={exports}", "export.keep=2", "trainer.batch_size=256", "trainer.max_batch_latency_s=0.5",
    ])
    config = load_config(overrides=sets, environ={})
    client = redis_client(config)
    store = state_store(config, client)
    root = exports / config.run.name

    def drop_namespace() -> None:  # the shared Redis is never flushed: only this run's keys go
        for key in client.scan_iter(match=f"{config.redis.key_prefix}:*"):
            client.delete(key)

    request.addfinalizer(drop_namespace)

    # What Redis names at the instant latest flips, read independently of the publisher's own check.
    flips: list[tuple[str, int | None]] = []
    real_flip = publish.flip_latest

    def observed_flip(where: Path, version: str) -> None:
        flips.append((version, store.checkpoint_id()))
        real_flip(where, version)

    monkeypatch.setattr(publish, "flip_latest", observed_flip)

    stop, seen, errors = threading.Event(), [], []

    def reader() -> None:
        while not stop.is_set():
            if not (root / "latest").exists():
                continue
            try:
                export = read_export(root)
                assert export.item_embeddings.shape == (len(export.item_ids), 16)
                assert export.faiss_index is not None and export.faiss_index.ntotal == len(export.item_ids)
                seen.append(export.manifest["source"]["checkpoint_id"])
            except Exception as exc:  # a partial, mixed or vanished export would land here
                errors.append(repr(exc))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    parts = run_worker(config, fresh=True, idle_exit_s=3.0)
    try:
        stop_worker(parts, timeout_s=180)
    finally:
        stop.set()
        thread.join(10)
    published = list(parts.worker.publisher.history)

    assert errors == []
    assert len(published) >= 4, f"only {len(published)} exports published"
    assert len(set(seen)) >= 2, "the reader never saw latest move"
    # Every flip happened while Redis named exactly the exported checkpoint.
    assert flips == [(publish.version_name(p.checkpoint_id), p.checkpoint_id) for p in published]
    final = store.load()
    assert final is not None and final.events == EVENTS
    latest = read_export(root)
    source = latest.manifest["source"]
    assert source["checkpoint_id"] == final.checkpoint_id and source["committed"] is True
    assert source["events"] == EVENTS and source["offsets"] == {f"{topic}:0": EVENTS}
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["latest"] + [publish.version_name(p.checkpoint_id) for p in published[-2:]])  # export.keep = 2
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging left behind

    # A newer file that Redis never committed (a crash between file and transaction) is not served.
    files = CheckpointFiles(config.checkpoint.dir, config.run.name, keep=10)
    committed_file = files.dir / final.file_name  # ckpt-<id>-<writer>.pt: the worker's writer id
    orphan = files.dir / final.file_name.replace(f"{final.checkpoint_id:012d}", f"{final.checkpoint_id + 1:012d}")
    orphan.write_bytes(committed_file.read_bytes())
    choice = choose_checkpoint(None, config)
    assert choice.path == committed_file and choice.committed is not None
    described = load_checkpoint(choice, config).describe()
    assert (described["checkpoint_id"], described["events"]) == (final.checkpoint_id, EVENTS)
    older = files.entries()[0]
    assert choose_checkpoint(None, config, checkpoint_id=older.checkpoint_id).path == older.path
    assert json.loads((root / "latest" / "manifest.json").read_text())["faiss"]["index"] == "IndexHNSWFlat"
    assert os.readlink(root / "latest") == publish.version_name(final.checkpoint_id)
