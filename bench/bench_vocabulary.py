"""Vocabulary at scale, old beside new: lookups/s on one core and bytes per id, N ids filled.

    PYTHONPATH=$PWD python bench/bench_vocabulary.py --ids 10000000        # prints JSON rows

Each implementation runs in its own child process pinned to one core, so resident memory is
measured cleanly (RSS after filling minus RSS before, divided by N) and neither heap disturbs the
other. "old" is the per-event ``OrderedDict`` vocabulary as of commit ``LEGACY_COMMIT``, loaded from
git history (nothing is copied into the tree); "new" is ``streamtrain.vocab.vocabulary``.

Measured per batch size B, over batches of ids drawn uniformly from the N known ones (the
cache-unfriendly case), each lookup with ``admit=True`` and event times as the trainer calls it:
- ``id lookups/s``: string ids in, rows out (the new one hashes the strings in the call);
- ``key lookups/s`` (new only): the keys come precomputed, as a source that hashes ids passes them;
- ``hash ids/s`` (new only): ``id_keys`` alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LEGACY_COMMIT", "measure"]

REPO = Path(__file__).resolve().parent.parent
LEGACY_COMMIT = "c16baf1"  # main just before the vectorised vocabulary
_FILL_CHUNK = 100_000


def _rss() -> int:
    """Resident bytes after handing freed heap back to the OS (glibc keeps it otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _legacy_class() -> Any:
    source = subprocess.run(
        ["git", "show", f"{LEGACY_COMMIT}:streamtrain/vocab/vocabulary.py"], cwd=REPO, capture_output=True,
        text=True, check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "legacy_vocabulary.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("legacy_vocabulary", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.IdVocabulary


def _names(indices: np.ndarray) -> np.ndarray:
    out = np.empty(len(indices), dtype=object)
    out[:] = [f"item-{i:08d}" for i in indices.tolist()]
    return out


def _timed(fn: Any, batches: list[Any], seconds: float) -> float:
    """Events per second of ``fn`` over ``batches`` (cycled), for about ``seconds``."""
    fn(batches[0])  # warm
    done = 0
    started = time.perf_counter()
    i = 0
    while True:
        fn(batches[i % len(batches)])
        done += 1
        i += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and done >= 3:
            break
    return sum(len(batches[j % len(batches)][0]) for j in range(done)) / elapsed


def child(impl: str, n: int, batch_sizes: list[int], seconds: float) -> dict[str, Any]:
    """Fill one vocabulary with ``n`` ids and time lookups; runs in its own pinned process."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    from streamtrain.events.ids import id_keys

    cls = _legacy_class() if impl == "old" else __import__("streamtrain.vocab.vocabulary", fromlist=["x"]).IdVocabulary
    rng = np.random.default_rng(0)
    queries = {b: [_names(rng.integers(0, n, size=b)) for _ in range(max(4, 2**20 // b))] for b in batch_sizes}
    keys = {b: [id_keys(q) for q in qs] for b, qs in queries.items()}
    rss_before = _rss()
    vocab = cls(n + 1)
    fill_s = 0.0
    for start in range(0, n, _FILL_CHUNK):
        names = _names(np.arange(start, min(n, start + _FILL_CHUNK)))
        t0 = time.perf_counter()
        vocab.lookup(names, admit=True, event_time=np.full(len(names), 1.0))
        fill_s += time.perf_counter() - t0
    rss_after = _rss()
    assert len(vocab) == n, (impl, len(vocab))
    row: dict[str, Any] = {
        "impl": impl, "ids": n, "fill_ids_s": n / fill_s, "bytes_per_id": (rss_after - rss_before) / n,
        "cells": [],
    }
    if impl == "new":
        row["accounted_bytes_per_id"] = vocab.memory_bytes() / n
    for b in batch_sizes:
        times = np.full(b, 2.0)
        cell = {"batch": b}
        batches = [(q,) for q in queries[b]]
        cell["id_lookups_s"] = _timed(lambda q: vocab.lookup(q[0], admit=True, event_time=times), batches, seconds)
        if impl == "new":
            pairs = list(zip(queries[b], keys[b]))
            cell["key_lookups_s"] = _timed(
                lambda q: vocab.lookup(q[0], admit=True, event_time=times, keys=q[1]), pairs, seconds
            )
            cell["hash_ids_s"] = _timed(lambda q: id_keys(q[0]), batches, seconds)
        row["cells"].append(cell)
    return row


def measure(n: int, batch_sizes: list[int], seconds: float = 3.0, impls: tuple[str, ...] = ("old", "new")) -> list[dict[str, Any]]:
    """One child process per implementation; returns their rows (see :func:`child`)."""
    rows = []
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for impl in impls:
        cmd = [sys.executable, __file__, "--child", impl, "--ids", str(n), "--seconds", str(seconds),
               "--batch-sizes", *map(str, batch_sizes)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{impl} vocabulary benchmark failed: {done.stderr.strip()[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ids", type=int, default=10_000_000)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--child", choices=("old", "new"))
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.ids, args.batch_sizes, args.seconds)))
        return
    for row in measure(args.ids, args.batch_sizes, args.seconds):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
