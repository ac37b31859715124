"""Fault handling with fakes: file verification at resume, fenced writers, disk failures, restore points,
broker health and the idle exit (the integration tests run the same faults against real servers)."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any

import pytest
import torch

from streamtrain.config import load_config
from streamtrain.errors import ConfigError
from streamtrain.ingest.broker_health import BrokerHealth
from streamtrain.state.checkpoint import take_snapshot
from streamtrain.state.files import CheckpointFiles, file_digest
from streamtrain.errors import CheckpointError, FencedError, ResumeError
from streamtrain.worker.progress import Progress
from streamtrain.state.restore_point import unpack
from streamtrain.state.resume import resume
from test_worker_checkpoint import TP, FakeEngine, make, sample


def _commit(cp: Any, engine: FakeEngine, checkpoint_id: int, offset: int) -> None:
    engine.train()
    cp.commit(take_snapshot(engine, checkpoint_id, {TP: offset}, offset, [], skipped={TP: 3}))


def test_every_file_is_a_restore_point_named_per_writer(tmp_path: Path) -> None:
    cp, store, files, metrics, log = make(tmp_path)
    engine = FakeEngine()
    _commit(cp, engine, 1, 5)
    (entry,) = files.entries()
    assert entry.path.name == f"ckpt-000000000001-{files.writer}.pt" and entry.writer == files.writer
    file_state, point = unpack(files.read(entry.path))
    assert point is not None and (point.checkpoint_id, point.step, point.events) == (1, 1, 5)
    assert point.offsets == {TP: 5} and point.skipped == {TP: 3}
    assert point.shared["frequency.counts"].tolist() == [1, 0, 0, 0, 0]
    assert torch.equal(file_state["weights"], engine.weights)
    assert store.committed["digest"] == file_digest(entry.path) and store.committed["writer"] == files.writer


def test_resume_refuses_a_file_that_is_not_the_committed_one(tmp_path: Path) -> None:
    cp, store, files, metrics, log = make(tmp_path)
    engine = FakeEngine()
    _commit(cp, engine, 1, 5)
    _commit(cp, engine, 2, 9)
    committed = files.dir / store.committed["file_name"]
    older = files.find(1)[0].path
    committed.write_bytes(older.read_bytes())  # e.g. another writer's bytes under the committed name
    with pytest.raises(ResumeError, match=r"not the file Redis committed.*--restore 1"):
        resume(FakeEngine(), store, files, fresh=False)  # type: ignore[arg-type]
    store.committed["digest"] = file_digest(committed)  # same digest, but the content is checkpoint 1's
    with pytest.raises(ResumeError, match="holds checkpoint 1 at step 1 .* Redis committed checkpoint 2 at step 2"):
        resume(FakeEngine(), store, files, fresh=False)  # type: ignore[arg-type]


def test_a_fenced_writer_removes_only_its_own_file(tmp_path: Path) -> None:
    cp, store, files, metrics, log = make(tmp_path)
    engine = FakeEngine()
    _commit(cp, engine, 1, 5)
    committed = files.dir / store.committed["file_name"]
    before = committed.read_bytes()

    def fenced(**kwargs: Any) -> None:
        raise FencedError("commit", "another worker is writing this run")

    store.commit = fenced  # type: ignore[method-assign]
    with pytest.raises(CheckpointError, match="another worker"):
        _commit(cp, engine, 2, 9)
    assert [e.path for e in files.entries()] == [committed] and committed.read_bytes() == before
    assert sample(metrics, "streamtrain_checkpoints_total", outcome="failed") == 1


def test_a_full_disk_is_a_counted_failure_and_leaves_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    cp, store, files, metrics, log = make(tmp_path)
    engine = FakeEngine()
    _commit(cp, engine, 1, 5)
    real_save = torch.save

    def full_disk(obj: Any, f: Any) -> None:
        f.write(b"partial bytes")
        raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="step 2: .*RuntimeError"):
        _commit(cp, engine, 2, 9)
    assert sample(metrics, "streamtrain_checkpoints_total", outcome="failed") == 1
    assert not list(files.dir.glob(".*.tmp")) and files.ids() == [1]
    assert log[-1] == "file"  # Redis and Kafka untouched
    monkeypatch.setattr(torch, "save", real_save)
    _commit(cp, engine, 3, 12)
    assert sample(metrics, "streamtrain_checkpoints_total", outcome="ok") == 2


def test_temp_cleanup_skips_a_file_another_writer_holds(tmp_path: Path) -> None:
    files = CheckpointFiles(tmp_path, "run", keep=2)
    files.dir.mkdir(parents=True)
    crashed = files.dir / ".ckpt-000000000003-aaaa.pt.1234.tmp"
    crashed.write_bytes(b"half")
    busy = files.dir / ".ckpt-000000000004-bbbb.pt.5678.tmp"
    with open(busy, "wb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert files.remove_temporaries() == 1
        assert not crashed.exists() and busy.exists()


def test_prune_never_deletes_the_committed_file(tmp_path: Path) -> None:
    mine = CheckpointFiles(tmp_path, "run", keep=1)
    other = CheckpointFiles(tmp_path, "run", keep=1)
    committed = mine.write(5, {"x": torch.zeros(1)}).path
    other.write(6, {"x": torch.ones(1)})  # a fenced writer's higher id
    mine.prune(protect=committed)
    assert committed.exists()


def test_restore_from_an_older_file_rewinds_and_becomes_the_committed_state(tmp_path: Path, caplog) -> None:
    cp, store, files, metrics, log = make(tmp_path)
    engine = FakeEngine()
    _commit(cp, engine, 1, 5)
    _commit(cp, engine, 2, 9)
    files.find(2)[0].path.write_bytes(b"corrupt")
    with pytest.raises(ResumeError, match="cannot read"):
        resume(FakeEngine(), store, files, fresh=False, restore="2")  # type: ignore[arg-type]
    restored = FakeEngine()
    caplog.set_level("INFO")
    point = resume(restored, store, files, fresh=False, restore="1")  # type: ignore[arg-type]
    assert point.checkpoint_id == 1 and point.offsets == {TP: 5} and point.next_checkpoint_id == 3
    assert restored.step == 1 and restored.counts.tolist() == [1, 0, 0, 0, 0]
    assert store.committed["checkpoint_id"] == 1 and store.committed["offsets"] == {TP: 5}
    assert "t[0] rewound from 9 to 5 (4 offsets to train again)" in caplog.text
    again = FakeEngine()  # and a plain restart now resumes from it, verified
    assert resume(again, store, files, fresh=False).checkpoint_id == 1  # type: ignore[arg-type]


def test_resume_without_redis_names_the_restore_remedy(tmp_path: Path) -> None:
    cp, store, files, metrics, log = make(tmp_path)
    _commit(cp, FakeEngine(), 1, 5)
    store.clear()
    with pytest.raises(ResumeError, match=r"--restore 1 .*--fresh"):
        resume(FakeEngine(), store, files, fresh=False)  # type: ignore[arg-type]


def test_progress_reset_counts_offsets_lost_below_the_log_start() -> None:
    progress = Progress({TP: 100}, events=100, skipped={TP: 7})
    assert progress.reset_offset(TP, 160) == 60
    assert progress.offset(TP) == 160 and progress.skipped() == {TP: 67}
    assert progress.reset_offset(TP, 40) == 0  # past the end: moves back, nothing lost
    assert progress.offset(TP) == 40 and progress.skipped() == {TP: 67}


def test_broker_health_fails_after_the_bound_and_recovers() -> None:
    from prometheus_client import CollectorRegistry

    from streamtrain.metrics import Metrics

    now = [0.0]
    m = Metrics(CollectorRegistry())
    health = BrokerHealth(m, 5.0, clock=lambda: now[0], wall_clock=lambda: 1000.0 + now[0])
    assert health.problem() is None and m.registry.get_sample_value("streamtrain_broker_connected") == 1
    now[0] = 2.0
    health.failure("end_offsets", TimeoutError("no answer"))
    assert health.failing() and health.problem() is None  # within the bound
    assert m.registry.get_sample_value("streamtrain_broker_connected") == 0
    now[0] = 5.5
    assert "unreachable for 6 s" in (health.problem() or "")
    health.success()
    assert health.problem() is None and not health.failing()
    assert m.registry.get_sample_value("streamtrain_broker_last_success_timestamp_seconds") == 1005.5
    # A poll error that repeats fails readiness even while other round trips succeed.
    health.failure("poll", RuntimeError("boom"))
    now[0] = 11.0
    health.success()
    assert "polls failing for 6 s" in (health.problem() or "")
    health.poll_ok()
    assert health.problem() is None
    assert m.registry.get_sample_value("streamtrain_kafka_errors_total", {"operation": "poll"}) == 1


def test_config_requires_the_unreachable_bound_to_exceed_one_probe() -> None:
    with pytest.raises(ConfigError, match="broker_unreachable_s"):
        load_config(overrides=["kafka.lag_interval_s=5", "kafka.broker_unreachable_s=6"], environ={})
    assert load_config(overrides=["kafka.broker_unreachable_s=8"], environ={}).kafka.broker_unreachable_s == 8


def test_idle_exit_is_an_error_when_nothing_could_be_read() -> None:
    import queue
    import time
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from streamtrain.metrics import Metrics
    from streamtrain.worker.worker import Worker

    def worker_with(health: Any) -> Worker:
        source = SimpleNamespace(
            fatal=None, batches=queue.Queue(), assigned_at=time.monotonic() - 60, joining=False,
            last_message_at=None, pending_in_batcher=lambda: False, health=health,
        )
        engine = SimpleNamespace(step=0, vocabulary_sizes=lambda: {"user": 0, "item": 0}, vocabulary_stats=dict, enable_split=lambda ctx: None,
                                 flush_stats=lambda: None)
        return Worker(load_config(environ={}), engine=engine, source=source, checkpointer=SimpleNamespace(),
                      runner=SimpleNamespace(fatal=None), progress=SimpleNamespace(events=0),
                      start=SimpleNamespace(fresh=False, next_checkpoint_id=1), metrics=Metrics(CollectorRegistry()),
                      idle_exit_s=0.5)

    down = worker_with(SimpleNamespace(failing=lambda: True, problem=lambda: "Kafka broker unreachable for 40 s"))
    down._run_loop()
    assert down.exit_error is not None and "unreachable" in down.exit_error
    fine = worker_with(SimpleNamespace(failing=lambda: False, problem=lambda: None))
    fine._run_loop()
    assert fine.exit_error is None and fine.stop_reason == "idle for 0.5 s"


def test_a_run_checkpointed_before_restore_points_still_resumes(tmp_path: Path) -> None:
    cp, store, files, metrics, log = make(tmp_path)
    engine = FakeEngine()
    engine.train()
    files.dir.mkdir(parents=True)
    legacy = files.dir / "ckpt-000000000004.pt"  # the old name and content: file state alone
    torch.save(engine.file_state(), legacy)
    store.commit(checkpoint_id=4, file_name=legacy.name, offsets={TP: 5}, shared=engine.shared_state(),
                 events=5, step=1)  # format-1 meta: no digest, no writer
    restored = FakeEngine()
    point = resume(restored, store, files, fresh=False)  # type: ignore[arg-type]
    assert point.checkpoint_id == 4 and point.next_checkpoint_id == 5 and restored.step == 1
    assert [e.checkpoint_id for e in files.entries()] == [4]
