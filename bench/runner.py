"""``bench/run``: run the selected benchmark suites, print one table per suite, append them to BENCHMARKS.md.

    bench/run --quick                                   # every suite, smoke sizes (a few minutes)
    bench/run --suite train scaling --batch-sizes 1024 4096 --catalogues 100000 1000000
    bench/run --suite decode ingest e2e                 # ingest/e2e/checkpoint/replay need the local stack

Suites: decode (in-memory decoder strategies), ingest (real broker → ready batches; decoders side by
side; 1 vs N consumer processes), train (steps/s, examples/s, memory per sampler × B × catalogue),
scaling (step time vs catalogue and batch size, side by side), e2e (replay → Kafka → `streamtrain
consume` vs the trainer alone), checkpoint (pause and resume), replay (producer settings), vocab (id
vocabulary lookups/s per core and bytes per id, old vs new).
Sizes default to the full run; ``--quick`` shrinks every default, and explicit flags win over both.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

from report import REPO, Table, append_run, machine_info, machine_line, render

__all__ = ["main", "SUITES"]

_SUITE_MODULES = {
    "decode": ("suite_misc", "decode_tables"),
    "ingest": ("suite_ingest", "ingest_tables"),
    "train": ("suite_train", "train_tables"),
    "scaling": ("suite_train", "scaling_tables"),
    "e2e": ("suite_e2e", "e2e_tables"),
    "checkpoint": ("suite_misc", "checkpoint_tables"),
    "replay": ("suite_misc", "replay_tables"),
    "vocab": ("suite_misc", "vocab_tables"),
}
SUITES = list(_SUITE_MODULES)

FULL: dict[str, Any] = {
    "batch_sizes": [1024, 4096, 16384], "catalogues": [100_000, 1_000_000, 10_000_000],
    "samplers": ["inbatch", "inbatch_logq", "xir"], "scaling_samplers": ["inbatch_logq", "xir"],
    "scaling_batch_sizes": [1024, 4096], "steps": 10, "warmup": 2, "cell_seconds": 15.0, "user_capacity": 100_000,
    "decode_events": 200_000, "decode_repeat": 3,
    "ingest_events": 200_000, "poll_records": [500, 5000], "ingest_procs": [1, 2], "ingest_partitions": 4,
    "ingest_repeat": 2,
    "e2e_events": 100_000, "e2e_samplers": ["xir", "inbatch_logq"], "e2e_batch_size": 1024,
    "e2e_capacity": 100_000,
    "checkpoint_capacity": 1_000_000, "checkpoint_repeats": 3,
    "replay_events": 200_000, "replay_repeat": 2,
    "vocab_ids": 10_000_000, "vocab_seconds": 3.0,
}
QUICK: dict[str, Any] = {
    **FULL,
    "batch_sizes": [1024], "scaling_batch_sizes": [1024], "catalogues": [100_000, 1_000_000], "steps": 3,
    "warmup": 1, "cell_seconds": 5.0,
    "decode_events": 20_000, "decode_repeat": 1,
    "ingest_events": 50_000, "poll_records": [5000], "ingest_repeat": 1,
    "e2e_events": 10_000, "e2e_samplers": ["xir"],
    "checkpoint_capacity": 100_000, "checkpoint_repeats": 2,
    "replay_events": 20_000, "replay_repeat": 1,
    "vocab_ids": 1_000_000, "vocab_seconds": 1.0,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", nargs="+", choices=SUITES, default=SUITES, help="suites to run (default: all)")
    p.add_argument("--quick", action="store_true", help="smoke sizes for every suite")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="train/scaling/e2e device")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md", help="file the tables are appended to")
    p.add_argument("--no-write", action="store_true", help="print only; do not append to --markdown")
    g = p.add_argument_group("train / scaling")
    g.add_argument("--batch-sizes", type=int, nargs="+")
    g.add_argument("--catalogues", type=int, nargs="+", help="item catalogue sizes (vocabulary filled to capacity)")
    g.add_argument("--samplers", nargs="+", help="train suite samplers; the first is the ratio baseline")
    g.add_argument("--scaling-samplers", nargs="+")
    g.add_argument("--scaling-batch-sizes", type=int, nargs="+", help="default: --batch-sizes if given, else 1024 4096")
    g.add_argument("--steps", type=int, help="timed rounds per cell (at most)")
    g.add_argument("--warmup", type=int, help="untimed rounds per cell")
    g.add_argument("--cell-seconds", type=float, help="stop a cell's timed rounds after this long (min 2 rounds)")
    g.add_argument("--user-capacity", type=int)
    g.add_argument("--dim", type=int, default=64)
    g = p.add_argument_group("decode / ingest")
    g.add_argument("--decode-events", type=int)
    g.add_argument("--decode-repeat", type=int)
    g.add_argument("--ingest-events", type=int)
    g.add_argument("--poll-records", type=int, nargs="+", help="max_poll_records values")
    g.add_argument("--ingest-procs", type=int, nargs="+", help="consumer process counts")
    g.add_argument("--ingest-partitions", type=int)
    g.add_argument("--ingest-repeat", type=int, help="best of this many interleaved runs")
    g = p.add_argument_group("e2e")
    g.add_argument("--e2e-events", type=int)
    g.add_argument("--e2e-samplers", nargs="+")
    g.add_argument("--e2e-batch-size", type=int)
    g.add_argument("--e2e-capacity", type=int, help="user and item capacity of the e2e model")
    g = p.add_argument_group("checkpoint / replay")
    g.add_argument("--checkpoint-capacity", type=int)
    g.add_argument("--checkpoint-repeats", type=int)
    g.add_argument("--replay-events", type=int)
    g.add_argument("--replay-repeat", type=int)
    g = p.add_argument_group("vocab")
    g.add_argument("--vocab-ids", type=int, help="ids the vocabularies are filled with")
    g.add_argument("--vocab-seconds", type=float, help="timed seconds per lookup cell")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset size options from the quick or full defaults."""
    defaults = QUICK if args.quick else FULL
    if args.scaling_batch_sizes is None and args.batch_sizes is not None:
        args.scaling_batch_sizes = args.batch_sizes
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def _suite(name: str) -> Callable[[argparse.Namespace], list[Table]]:
    module, func = _SUITE_MODULES[name]
    return getattr(__import__(module), func)


def main(argv: list[str] | None = None) -> int:
    args = resolve(build_parser().parse_args(argv))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"# machine: {machine_line(info)}; torch {info['torch']}; commit {info['commit']}", flush=True)
    tables: list[Table] = []
    failed: list[str] = []
    for name in [s for s in SUITES if s in args.suite]:
        started = time.perf_counter()
        print(f"# suite {name} ...", flush=True)
        try:
            produced = _suite(name)(args)
        except Exception as exc:  # noqa: BLE001 - one broken suite must not lose the others' tables
            print(f"# suite {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        if produced:
            produced[-1].notes.append(f"suite wall time {time.perf_counter() - started:.0f} s")
        for table in produced:
            print("\n" + render(table), flush=True)
        tables += produced
    if tables and not args.no_write:
        command = "bench/run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        append_run(args.markdown, info, command, tables)
        print(f"# appended {len(tables)} tables to {os.path.relpath(args.markdown)}")
    return 1 if failed else 0
