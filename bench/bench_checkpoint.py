#!/usr/bin/env python3
"""Checkpoint pause and resume time at production size (default 1M users × 1M items × 64 dims,
the default optimizer: its per-row state is part of the file).

Measures, on the real Trainer and the local stack's Redis:

* ``pause``   the training thread's stop: :func:`take_snapshot` (copy of model, optimizer, vocabulary,
              shared state); repeat 1 allocates the snapshot buffers, later ones copy into them.
              The commit steps then run on a background thread while training goes on.
* ``commit``  the background part: dead letters (none here), file write with fsync, Redis MULTI/EXEC.
* ``resume``  what a restarted worker does before consuming: build the Trainer, read the file named by
              Redis, load it and the shared state (the process start itself is reported by
              ``streamtrain consume`` as "worker started in ... s").

    python bench/bench_checkpoint.py --capacity 1000000 --dim 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from streamtrain.config import load_config
from streamtrain.events import EventBatch
from streamtrain.localstack import StackAddresses
from streamtrain.metrics import Metrics
from streamtrain.training.trainer import Trainer
from streamtrain.state.redis_store import redis_client, state_store
from streamtrain.state.checkpoint import Checkpointer, take_snapshot
from streamtrain.state.files import CheckpointFiles
from streamtrain.state.resume import resume


def measure(capacity: int, dim: int, steps: int, repeats: int) -> dict:
    """Pause and commit seconds per repeat, file size, trainer build and resume seconds (needs Redis)."""
    run = f"bench-ckpt-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="streamtrain-bench-ckpt-") as tmp:
        config = load_config(
            overrides=[
                f"run.name={run}", "run.device=cpu", f"redis.url={StackAddresses.from_env().redis_url}",
                "redis.key_prefix=bench", f"checkpoint.dir={tmp}", f"model.embedding_dim={dim}",
                f"model.user_capacity={capacity}", f"model.item_capacity={capacity}",
                "trainer.batch_size=1024", "sampler.name=xir",
            ],
            environ={},
        )
        t0 = time.perf_counter()
        trainer = Trainer(config)
        build_s = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        hi = min(200_000, capacity), min(500_000, capacity)
        for _ in range(steps):
            trainer.train_step(EventBatch.from_ids(rng.integers(0, hi[0], 1024), rng.integers(0, hi[1], 1024)))
        client = redis_client(config)
        store = state_store(config, client)
        files = CheckpointFiles(Path(tmp), run, keep=2)
        checkpointer = Checkpointer(
            files=files, store=store, flush_dead_letters=lambda _t: True, commit_offsets=None,
            metrics=Metrics(CollectorRegistry()), committed_id=None, committed_offsets={},
        )
        rows = []
        snap = None
        for i in range(1, repeats + 1):
            # As in the worker: the previous snapshot's buffers are reused (the first pause allocates them).
            snap = take_snapshot(trainer, i, {("bench", 0): i * 1024}, i * 1024, [], reuse=snap)
            t1 = time.perf_counter()
            checkpointer.commit(snap, kafka=False)
            rows.append((snap.copy_seconds, time.perf_counter() - t1))
        size_mb = files.path(repeats).stat().st_size / 1e6

        t2 = time.perf_counter()
        fresh = Trainer(config)
        rebuild_s = time.perf_counter() - t2
        point = resume(fresh, store, files, fresh=False)
        resume_s = time.perf_counter() - t2
        assert point.checkpoint_id == repeats
        store.clear()
        client.close()
    return {"rows": rows, "size_mb": size_mb, "build_s": build_s, "rebuild_s": rebuild_s, "resume_s": resume_s,
            "optimizer": config.model.optimizer}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=int, default=1_000_000, help="user and item table rows")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="training steps before checkpointing")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = measure(args.capacity, args.dim, args.steps, args.repeats)

    print(f"\n{args.capacity:,} users × {args.capacity:,} items × {args.dim} dims, {result['optimizer']}, "
          f"file {result['size_mb']:,.0f} MB")
    print(f"{'repeat':<8} {'pause s':>9} {'commit s':>9}")
    for i, (pause, commit) in enumerate(result["rows"], 1):
        print(f"{i:<8} {pause:>9.3f} {commit:>9.3f}")
    print(f"trainer build {result['build_s']:.2f} s; resume (build {result['rebuild_s']:.2f} s + load) "
          f"{result['resume_s']:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
