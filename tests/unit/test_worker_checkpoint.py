"""Checkpoint order with fakes: each step runs only after the previous one succeeded; resume rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from streamtrain.metrics import Metrics
from streamtrain.backoff import Backoff
from streamtrain.state.checkpoint import Checkpointer, take_snapshot
from streamtrain.state.files import CheckpointFiles
from streamtrain.state.runner import CheckpointRunner
from streamtrain.errors import CheckpointError, OffsetsBackwardsError, ResumeError, StateStoreError
from streamtrain.state.resume import resume
from streamtrain.state.redis_store import StoredState, decode_array, encode_array

TP = ("t", 0)


class FakeEngine:
    """Minimal engine: one tensor, one shared array, a step counter."""

    def __init__(self) -> None:
        self.weights = torch.zeros(4, 3)
        self.counts = np.zeros(5, dtype=np.int64)
        self._step = 0

    @property
    def step(self) -> int:
        return self._step

    def train(self) -> None:
        self.weights += 1
        self.counts[self._step % 5] += 1
        self._step += 1

    def file_state(self) -> dict[str, Any]:
        return {"weights": self.weights, "step": self._step}

    def load_file_state(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"].clone()
        self._step = int(state["step"])

    def shared_state(self) -> dict[str, np.ndarray]:
        return {"frequency.counts": self.counts}

    def load_shared_state(self, state: dict[str, np.ndarray]) -> None:
        self.counts = np.array(state["frequency.counts"])


class FakeStore:
    namespace = "test:run"

    def __init__(self, log: list[str], fail: bool = False) -> None:
        self.log = log
        self.fail = fail
        self.committed: dict[str, Any] | None = None
        self.topic_ids: dict[str, str] = {}

    def check_lease(self) -> None:
        """No lease guards this run (RedisStateStore.check_lease without one)."""

    def commit(self, **kwargs: Any) -> None:
        self.log.append("redis")
        if self.fail:
            raise StateStoreError("commit", "connection refused")
        self.committed = kwargs

    def load(self) -> StoredState | None:
        if self.committed is None:
            return None
        c = self.committed
        shared = {k: decode_array(v) if isinstance(v, bytes) else v for k, v in c["shared"].items()}
        return StoredState(c["checkpoint_id"], c["file_name"], c["events"], c["step"], 0.0, dict(c["offsets"]),
                           shared, c.get("digest"), c.get("writer"), dict(c.get("skipped") or {}))

    def trained_ranges(self) -> list[Any]:
        return list((self.committed or {}).get("trained_ranges") or [])

    def clear(self) -> None:
        self.committed = None


class LoggingFiles(CheckpointFiles):
    def __init__(self, root: Path, log: list[str]) -> None:
        super().__init__(root, "run", keep=2)
        self.log = log

    def write(self, checkpoint_id: int, state: dict[str, Any]) -> Any:
        self.log.append("file")
        return super().write(checkpoint_id, state)


def make(tmp_path: Path, *, store_fails: bool = False, flush_ok: bool = True):
    log: list[str] = []
    metrics = Metrics(CollectorRegistry())
    store = FakeStore(log, fail=store_fails)
    files = LoggingFiles(tmp_path, log)

    def flush(timeout_s: float) -> bool:
        log.append("dead_letters")
        return flush_ok

    def commit_offsets(offsets: Any) -> None:
        log.append("kafka")

    cp = Checkpointer(
        files=files, store=store, flush_dead_letters=flush, commit_offsets=commit_offsets, metrics=metrics,
        committed_id=None, committed_offsets={},
    )
    return cp, store, files, metrics, log


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_steps_run_in_the_documented_order(tmp_path: Path) -> None:
    cp, store, files, metrics, log = make(tmp_path)
    engine = FakeEngine()
    engine.train()
    cp.commit(take_snapshot(engine, 1, {TP: 10}, 10, []))
    assert log == ["dead_letters", "file", "redis", "kafka"]
    assert store.committed is not None and store.committed["offsets"] == {TP: 10}
    assert cp.committed_id == 1 and files.ids() == [1]
    assert sample(metrics, "streamtrain_checkpoints_total", outcome="ok") == 1


def test_redis_failure_stops_before_kafka_and_keeps_previous_state(tmp_path: Path) -> None:
    cp, store, files, metrics, log = make(tmp_path, store_fails=True)
    engine = FakeEngine()
    with pytest.raises(CheckpointError) as err:
        cp.commit(take_snapshot(engine, 1, {TP: 10}, 10, []))
    assert err.value.step == 3
    assert "kafka" not in log and log == ["dead_letters", "file", "redis"]
    assert cp.committed_id is None and cp.committed_offsets == {}
    assert sample(metrics, "streamtrain_checkpoints_total", outcome="failed") == 1
    assert sample(metrics, "streamtrain_redis_errors_total", operation="commit") == 1
    # The next attempt (new id) may find the uncertain id in Redis: it is accepted as previous.
    store.fail = False
    cp.commit(take_snapshot(engine, 2, {TP: 12}, 12, []))
    assert store.committed is not None and None in store.committed["previous_ids"] and 1 in store.committed[
        "previous_ids"]
    assert log[-1] == "kafka" and cp.committed_offsets == {TP: 12}


def test_unflushed_dead_letters_block_everything_after(tmp_path: Path) -> None:
    cp, store, files, metrics, log = make(tmp_path, flush_ok=False)
    with pytest.raises(CheckpointError) as err:
        cp.commit(take_snapshot(FakeEngine(), 1, {TP: 10}, 10, []))
    assert err.value.step == 1 and log == ["dead_letters"] and files.ids() == []


def test_offsets_going_backwards_are_refused(tmp_path: Path) -> None:
    cp, store, files, metrics, log = make(tmp_path)
    engine = FakeEngine()
    cp.commit(take_snapshot(engine, 1, {TP: 10}, 10, []))
    log.clear()
    with pytest.raises(OffsetsBackwardsError):
        cp.commit(take_snapshot(engine, 2, {TP: 9}, 10, []))
    assert log == []


def test_snapshot_does_not_share_memory_with_the_engine(tmp_path: Path) -> None:
    engine = FakeEngine()
    snap = take_snapshot(engine, 1, {TP: 1}, 1, [])
    engine.train()
    assert float(snap.file_state["weights"].sum()) == 0.0
    assert int(snap.shared_state["frequency.counts"].sum()) == 0


def test_files_keep_the_newest(tmp_path: Path) -> None:
    cp, store, files, metrics, log = make(tmp_path)
    engine = FakeEngine()
    for i in range(1, 5):
        engine.train()
        cp.commit(take_snapshot(engine, i, {TP: i}, i, []))
    assert files.ids() == [3, 4]
    assert float(files.read(4)["weights"][0, 0]) == 4.0


def test_runner_backs_off_after_failures(tmp_path: Path) -> None:
    cp, store, files, metrics, log = make(tmp_path, store_fails=True)
    now = [100.0]
    runner = CheckpointRunner(cp, Backoff(1.0, 4.0), interval_events=10, interval_s=1000.0, clock=lambda: now[0])
    engine = FakeEngine()
    assert runner.due(10) and runner.try_acquire()
    assert not runner.try_acquire() and not runner.due(10)  # reserved: nobody else snapshots
    assert not runner.run_now(take_snapshot(engine, 1, {TP: 10}, 10, []))
    assert not runner.due(10)  # backoff 1 s
    now[0] += 1.0
    assert runner.due(10) and runner.acquire(1.0)
    assert not runner.run_now(take_snapshot(engine, 2, {TP: 10}, 10, []))
    now[0] += 1.5
    assert not runner.due(10)  # backoff 2 s
    now[0] += 0.5
    store.fail = False
    assert runner.due(10) and runner.try_acquire()
    assert runner.run_now(take_snapshot(engine, 3, {TP: 10}, 10, []))
    assert runner.committed_events == 10 and not runner.due(15) and runner.due(20)


def test_runner_commits_in_the_background_and_releases(tmp_path: Path) -> None:
    cp, store, files, metrics, log = make(tmp_path)
    runner = CheckpointRunner(cp, Backoff(1.0, 4.0), interval_events=1, interval_s=1000.0)
    assert runner.try_acquire()
    runner.submit(take_snapshot(FakeEngine(), 1, {TP: 3}, 3, []))
    assert runner.wait(10.0) and runner.try_acquire()
    runner.release()
    assert cp.committed_id == 1 and log[-1] == "kafka"


def test_snapshot_reuses_the_previous_buffers(tmp_path: Path) -> None:
    engine = FakeEngine()
    first = take_snapshot(engine, 1, {TP: 1}, 1, [])
    buffer = first.file_state["weights"]
    engine.train()
    second = take_snapshot(engine, 2, {TP: 2}, 2, [], reuse=first)
    assert second.file_state["weights"] is buffer and float(buffer[0, 0]) == 1.0
    assert second.file_state["weights"].data_ptr() != engine.weights.data_ptr()


def test_backoff_doubles_and_caps() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


def test_resume_loads_the_id_redis_names_not_the_newest_file(tmp_path: Path) -> None:
    cp, store, files, metrics, log = make(tmp_path)
    engine = FakeEngine()
    engine.train()
    cp.commit(take_snapshot(engine, 1, {TP: 5}, 5, []))
    engine.train()
    files.write(2, engine.file_state())  # a step-2 file whose Redis step never happened
    restored = FakeEngine()
    point = resume(restored, store, files, fresh=False)  # type: ignore[arg-type]
    assert point.checkpoint_id == 1 and point.next_checkpoint_id == 3 and point.offsets == {TP: 5}
    assert restored.step == 1 and float(restored.weights[0, 0]) == 1.0
    assert restored.counts.tolist() == [1, 0, 0, 0, 0]


def test_resume_refuses_files_without_redis_state(tmp_path: Path) -> None:
    cp, store, files, metrics, log = make(tmp_path)
    files.write(1, FakeEngine().file_state())
    with pytest.raises(ResumeError, match="--fresh"):
        resume(FakeEngine(), store, files, fresh=False)  # type: ignore[arg-type]
    point = resume(FakeEngine(), store, files, fresh=True)  # type: ignore[arg-type]
    assert point.fresh and files.ids() == []


def test_resume_with_nothing_is_a_fresh_start(tmp_path: Path) -> None:
    cp, store, files, metrics, log = make(tmp_path)
    point = resume(FakeEngine(), store, files, fresh=False)  # type: ignore[arg-type]
    assert point.fresh and point.checkpoint_id is None and point.offsets == {}


def test_resume_refuses_a_missing_file(tmp_path: Path) -> None:
    cp, store, files, metrics, log = make(tmp_path)
    cp.commit(take_snapshot(FakeEngine(), 1, {TP: 5}, 5, []))
    files.path(1).unlink()
    with pytest.raises(ResumeError, match="not in"):
        resume(FakeEngine(), store, files, fresh=False)  # type: ignore[arg-type]


def test_arrays_round_trip_with_dtype_and_shape() -> None:
    for array in (np.arange(12, dtype=np.int64).reshape(3, 4), np.linspace(0, 1, 5, dtype=np.float32),
                  np.array(7), np.array(["a", "bc"])):
        back = decode_array(encode_array(array))
        assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)
    with pytest.raises(ValueError):
        encode_array(np.array(["a", None], dtype=object))
