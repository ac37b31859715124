"""Does the sync-free step (issue 12, item 4) cost anything on CPU? Old vs new, side by side.

The *old* step is the Trainer of a baseline commit (default 28f4d3b: one device→host read per step,
the finite-loss skip decided on the host), loaded from git into this process; the *new* one is this
tree's ``Trainer.submit_step`` (statistics one step late, masked updates, one packed upload). Both
get the same batches, prefilled vocabularies, and are timed interleaved (ABBA), so load on the
shared machine hits both alike. Also checks that both end with bit-identical parameters.

    PYTHONPATH=$PWD python bench/bench_step_sync.py                     # inbatch_logq and xir, B=1024
    PYTHONPATH=$PWD python bench/bench_step_sync.py --samplers xir --user-features history --steps 60
    PYTHONPATH=$PWD python bench/bench_step_sync.py --append BENCHMARKS.md

Needs git and the baseline commit in this clone (a development benchmark, not part of bench/run).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train_scaling import _batch, _prefill  # noqa: E402
from report import REPO, Table, append_run, machine_info, machine_line, render  # noqa: E402

from streamtrain.config import Config  # noqa: E402
from streamtrain.training.trainer import Trainer  # noqa: E402


def baseline_module(rev: str) -> ModuleType:
    """The trainer module as of ``rev``, importable beside this tree's (it uses the same helpers)."""
    source = subprocess.run(["git", "show", f"{rev}:streamtrain/training/trainer.py"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    spec = importlib.util.spec_from_loader("baseline_trainer", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_trainer"] = module
    exec(compile(source, f"{rev}:trainer.py", "exec"), module.__dict__)  # noqa: S102 - our own history
    return module


def _config(args: argparse.Namespace, sampler: str) -> Config:
    return Config.model_validate({
        "run": {"device": "cpu", "seed": 0},
        "model": {"embedding_dim": args.dim, "user_capacity": args.capacity, "item_capacity": args.capacity,
                  "user_features": args.user_features, "hidden_dims": args.hidden},
        "sampler": {"name": sampler},
        "trainer": {"batch_size": args.batch, "progressive_eval_fraction": args.eval_fraction},
    })


def _same_parameters(a: Any, b: Any) -> bool:
    sa, sb = a.state.model.state_dict(), b.state.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def compare(args: argparse.Namespace, sampler: str, old_cls: type) -> list[object]:
    config = _config(args, sampler)
    torch.manual_seed(0)  # MLP heads initialise from the global generator: the same start for both
    old = old_cls(config)
    torch.manual_seed(0)
    new = Trainer(config)
    for trainer in (old, new):
        _prefill(trainer, "user", args.capacity // 2)
        _prefill(trainer, "item", args.capacity // 2)
    rng = np.random.default_rng(1)
    batches = [_batch(rng, args.batch, args.capacity, args.capacity, float(i)) for i in range(args.warmup + args.steps)]
    times: dict[str, list[float]] = {"old": [], "new": []}

    def run(which: str, batch: Any, keep: bool) -> None:
        started = time.perf_counter()
        if which == "old":
            old.train_step(batch)
        else:
            new.submit_step(batch)
        if keep:
            times[which].append(time.perf_counter() - started)

    for i, batch in enumerate(batches):
        order = ("old", "new") if i % 2 == 0 else ("new", "old")
        for which in order:
            run(which, batch, i >= args.warmup)
    new.flush_stats()
    t_old, t_new = statistics.median(times["old"]), statistics.median(times["new"])
    same = "yes" if _same_parameters(old, new) else "NO"
    return [sampler, args.user_features, args.batch, f"{t_old * 1e3:.1f}", f"{t_new * 1e3:.1f}",
            f"{t_new / t_old:.3f}x", same]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-rev", default="28f4d3b")
    parser.add_argument("--samplers", nargs="+", default=["inbatch_logq", "xir"])
    parser.add_argument("--user-features", default="id", choices=["id", "history", "history+id"])
    parser.add_argument("--hidden", nargs="*", type=int, default=[])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--capacity", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--eval-fraction", type=float, default=0.0)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: one core per trainer)")
    parser.add_argument("--append", type=Path, help="append the table to this BENCHMARKS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    old_cls = baseline_module(args.baseline_rev).Trainer
    table = Table(
        f"step-sync: old step (host read + host skip, {args.baseline_rev}) vs sync-free step, cpu, "
        f"{args.capacity:,} users/items prefilled half, D={args.dim}, hidden {args.hidden or 'none'}, "
        f"median of {args.steps} interleaved steps",
        ["sampler", "user_features", "B", "old ms", "new ms", "new/old", "same parameters"],
    )
    for sampler in args.samplers:
        table.add(*compare(args, sampler, old_cls))
    table.notes.append("new = Trainer.submit_step: statistics read one step late, finite-loss guard as masked "
                       "updates on the device, one packed upload; on CPU the upload is a no-op view")
    info = machine_info()
    print(machine_line(info))
    print(render(table))
    if args.append:
        append_run(args.append, info, "python bench/bench_step_sync.py " + " ".join(argv or sys.argv[1:]), [table])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
