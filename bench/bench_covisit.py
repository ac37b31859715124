"""Co-visitation baseline at scale: host time per step and resident memory, by catalogue size.

    PYTHONPATH=$PWD python bench/bench_covisit.py                    # R = 10k, 100k, 1M item rows
    PYTHONPATH=$PWD python bench/bench_covisit.py --rows 10000 --steps 50

A session-like stream over R item rows (users walk Zipf-popular items in runs), B events per step,
H = 20, decay 0.8, M neighbours per row. After ``--warmup`` counted steps, each measured step is timed
twice on copies of the same state: counting only (an unevaluated step) and scoring + counting (an
evaluated step, every known item a candidate; "ranking" says whether the last one used a dense score
block or the scored pairs, see streamtrain.evaluation.covisit.DENSE_CELLS). RSS is the process's resident growth
after building and warming up the baseline: untouched rows (calloc'd) cost nothing, used ones 8·M
bytes (committed a page, or a 2 MB huge page, at a time); "allocated" is the arrays' address space.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/report.py when run as a script

from report import Table, machine_info, machine_line, render  # noqa: E402

from streamtrain.evaluation.covisit import CovisitBaseline  # noqa: E402


def _rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _stream(rng: np.random.Generator, rows: int, users: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """One step: users continue a walk near an item they like (a co-visitation signal to count). Items
    live in the lowest tenth of the rows: the vocabulary hands rows out in order, so used rows are a prefix."""
    u = rng.integers(1, users, size=batch)
    anchor = (u * 7919) % (rows // 10 - 1) + 1
    hop = np.minimum(rng.zipf(1.3, size=batch), 50)
    return u, (anchor + hop) % (rows // 10 - 1) + 1


def measure(rows: int, neighbours: int, batch: int, warmup: int, steps: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    users = max(1000, rows // 10)
    before = _rss()
    cv = CovisitBaseline(rows, users, (20,), history_length=20, decay=0.8, neighbours=neighbours, max_queries=batch)
    for _ in range(warmup):
        cv.step(*_stream(rng, rows, users, batch), None, None)
    rss = _rss() - before
    known = np.arange(1, rows)
    count_ms, eval_ms = [], []
    for _ in range(steps):
        u, i = _stream(rng, rows, users, batch)
        twin = copy.deepcopy(cv) if rows <= 100_000 else None  # same state for both timings when cheap
        start = time.perf_counter()
        cv.step(u, i, None, None)
        count_ms.append(1e3 * (time.perf_counter() - start))
        other = twin if twin is not None else cv
        start = time.perf_counter()
        other.step(u, i, None, known)
        eval_ms.append(1e3 * (time.perf_counter() - start))
        if twin is not None:
            cv = twin
    return {
        "rows": rows, "neighbours": neighbours, "batch": batch,
        "path": "dense" if cv.last_dense else "pairs",
        "count_ms": statistics.median(count_ms), "eval_ms": statistics.median(eval_ms),
        "rss_mb": rss / 2**20, "allocated_mb": cv.nbytes() / 2**20,
        "rows_with_neighbours": int((cv.nbr[:, 0] > 0).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--neighbours", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    info = machine_info()
    print(f"# {machine_line(info)}; commit {info['commit']}", flush=True)
    table = Table(f"covisit baseline per step, B = {args.batch}, H = 20, M = {args.neighbours}",
                  ["item rows", "ranking", "count ms (every step)", "score + count ms (evaluated step)",
                   "resident MB", "allocated MB", "rows with neighbours"])
    for rows in args.rows:
        r = measure(rows, args.neighbours, args.batch, args.warmup, args.steps)
        table.add(f"{rows:,}", r["path"], f"{r['count_ms']:.1f}", f"{r['eval_ms']:.1f}", f"{r['rss_mb']:.0f}",
                  f"{r['allocated_mb']:.0f}", f"{r['rows_with_neighbours']:,}")
        print(f"# {r}", flush=True)
    table.notes.append(f"after {args.warmup} counted steps of {args.batch} events; medians of {args.steps} steps")
    print(render(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
