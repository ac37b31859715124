"""Every checkpoint file is a restore point: after Redis lost the run's keys and the worker was killed, and
with the newest file corrupt, ``consume --restore`` resumes exactly from an older file; a second
``--restore`` rewinds a live run and says how far. Across the whole history every offset is trained
exactly once (trained-ranges audit) and the final frequency state equals one uninterrupted run's.

Before: Redis losing its data, or a corrupt committed file, ended in a refusal whose only remedy was
``--fresh`` (retrain everything) although complete older files sat on disk.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import numpy as np
import pytest

from streamtrain.config import load_config
from streamtrain.state.redis_store import redis_client, state_store
from streamtrain.state.files import CheckpointFiles
from streamtrain.state.restore_point import unpack
from worker_support import produce_in_background, overrides, spawn_worker, stream, wait_until, assert_trained_once

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 8000
PRODUCE_S = 26.0
EXTRA = [
    "checkpoint.interval_events=1024",
    "checkpoint.interval_s=1000",
    "checkpoint.keep=6",
    "checkpoint.record_trained_ranges=true",
    "trainer.max_batch_latency_s=5",  # only the last partial batch is cut by time (deterministic batches)
]


def _run(sets: list[str], log: Path, *flags: str, timeout: float = 120) -> int:
    proc = spawn_worker(sets, log, *flags)
    return proc.wait(timeout=timeout)


def _kill_when(sets: list[str], log: Path, ready, *flags: str, what: str) -> None:
    proc = spawn_worker(sets, log, *flags)
    try:
        wait_until(lambda: ready() or proc.poll() is not None, 90, what=what)
        assert proc.poll() is None, f"worker exited early ({proc.returncode}):\n{log.read_text()[-3000:]}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def test_restore_from_files_after_redis_lost_the_run_and_the_newest_file_is_corrupt(
    kafka_bootstrap: str, redis_url: str, topic_factory, unique_name: str, tmp_path: Path
) -> None:
    topic = topic_factory(1, prefix="worker-restore")
    values = stream(EVENTS, seed=31)

    producer_thread = produce_in_background(kafka_bootstrap, topic, values, PRODUCE_S)
    run = f"restore-{unique_name}"
    sets = overrides(run, topic, tmp_path / "ckpt", bootstrap=kafka_bootstrap, redis_url=redis_url, extra=EXTRA)
    config = load_config(overrides=sets, environ={})
    store = state_store(config, redis_client(config))
    files = CheckpointFiles(config.checkpoint.dir, config.run.name, config.checkpoint.keep)
    log = tmp_path / "worker.log"

    def committed_events() -> int:
        state = store.load()
        return state.events if state is not None else -1

    # 1. Train a while, then SIGKILL, then Redis loses the run's keys (only this run's: the server is shared).
    _kill_when(sets, log, lambda: committed_events() >= 3072, "--fresh", what="3 checkpoints")
    kept = files.ids()
    assert len(kept) >= 3
    store.clear()

    # 2. A plain restart refuses to guess, and names the remedy.
    mark = len(log.read_text())
    assert _run(sets, log) == 1
    refusal = log.read_text()[mark:]
    assert "--restore" in refusal and str(kept[-1]) in refusal, refusal[-2000:]

    # 3. The newest file is corrupt: restoring it is refused clearly, nothing is trained.
    newest = files.find(kept[-1])[0].path
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    mark = len(log.read_text())
    assert _run(sets, log, "--restore", str(kept[-1])) == 1
    assert "cannot read" in log.read_text()[mark:]
    assert store.load() is None

    # 4. The next older file, by path: training resumes from it (Redis had nothing), then SIGKILL again.
    older = files.find(kept[-2])[0].path
    _, point = unpack(files.read(older))
    assert point is not None and point.events < 3072
    mark = len(log.read_text())
    _kill_when(sets, log, lambda: committed_events() >= point.events + 2048, "--restore", str(older),
               what="two checkpoints after the restore")
    text = log.read_text()[mark:]
    assert f"restored checkpoint {kept[-2]} from {older}: step {point.step}, {point.events} events" in text
    assert "Redis had no state" in text

    # 5. Rewind a live run to an older kept file: the log says how far, per partition.
    live = store.load()
    assert live is not None
    candidates = [i for i in files.ids() if i < live.checkpoint_id and i != kept[-1]]
    target = candidates[-1]
    mark = len(log.read_text())
    _kill_when(sets, log, lambda: f"restored checkpoint {target}" in log.read_text()[mark:], "--restore", str(target),
               what="the rewind")
    text = log.read_text()[mark:]
    match = re.search(rf"{re.escape(topic)}\[0\] rewound from (\d+) to (\d+) \((\d+) offsets to train again\)", text)
    assert match, text[-2000:]
    before, after, count = map(int, match.groups())
    assert before == live.offsets[(topic, 0)] and before - after == count > 0

    # 6. Run to the end.
    producer_thread.join(120)
    assert _run(sets, log, "--idle-exit", "4") == 0, log.read_text()[-3000:]

    # Exactly once across the whole history: the committed ranges tile [0, EVENTS).
    assert_trained_once(store, topic, {0: (0, EVENTS)}, every_message_an_event=True)
    got = store.load()
    assert got is not None and got.events == EVENTS and got.offsets == {(topic, 0): EVENTS}

    # And the state is the uninterrupted run's: same batches in the same order, same frequency estimates.
    ref_sets = overrides(f"ref-{unique_name}", topic, tmp_path / "ckpt", bootstrap=kafka_bootstrap,
                         redis_url=redis_url, extra=EXTRA)
    assert _run(ref_sets, tmp_path / "reference.log", "--fresh", "--idle-exit", "4") == 0
    ref_config = load_config(overrides=ref_sets, environ={})
    ref_store = state_store(ref_config, redis_client(ref_config))
    want = ref_store.load()
    assert want is not None and got.step == want.step
    freq = sorted(k for k in want.shared if k.startswith("frequency."))
    assert freq
    for key in freq:
        np.testing.assert_array_equal(got.shared[key], want.shared[key], err_msg=key)
    store.clear()
    ref_store.clear()
