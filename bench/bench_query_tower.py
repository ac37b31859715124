"""Step cost of the query towers and of the extra optimiser steps, per sampler, in one run (issue 16;
issue 19 item 4 asks the history tower's step to cost <= 1.5x the id tower's at B 2048 on CPU).

Each variant is a Trainer on the same random stream (100k users/items capacity, Zipf items, users
with a few events each); steps are interleaved across variants (round robin) so load drift hits all
alike; the table gives the median step time, events/s and the ratio to the id tower::

    python bench/bench_query_tower.py --batch 2048 --steps 12
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import Table, machine_info, machine_line, render  # noqa: E402

from streamtrain.config import load_config  # noqa: E402
from streamtrain.events.batch import EventBatch  # noqa: E402
from streamtrain.training.trainer import Trainer  # noqa: E402

OLD = ["model.history_input=item", "model.history_decay=0.8", "model.new_item_init=random", "model.optimizer=adam"]
VARIANTS = {
    "id": ["model.user_features=id", *OLD, "trainer.extra_steps=0"],
    "history (before issue 16)": ["model.user_features=history", *OLD, "trainer.extra_steps=0"],
    "default tower, 1 step": ["trainer.extra_steps=0"],
    "default tower, 1 step, Adam (before)": ["trainer.extra_steps=0", "model.optimizer=adam"],
    "default tower, 1 step, row-wise Adagrad": ["trainer.extra_steps=0", "model.optimizer=rowwise_adagrad"],
    "default tower + attention, 1 step": ["trainer.extra_steps=0", "model.history_pooling=attention"],
    "default (tower + 5 extra steps)": [],
}


def _stream(rng: np.random.Generator, batch: int, users: int, items: int):
    while True:
        u = rng.integers(0, users, size=batch)
        i = np.minimum(rng.zipf(1.3, size=batch), items) - 1
        yield EventBatch.from_ids(u.astype(str), i.astype(str), np.arange(batch, dtype=float))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--samplers", nargs="+", default=["inbatch_logq", "xir"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME",
                   help="a subset of the variants (default: all; 'id' is always run, the ratios need it)")
    args = p.parse_args()
    variants = {name: VARIANTS[name] for name in VARIANTS if name == "id" or name in args.variants}
    torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"# {machine_line(info)}; torch {info['torch']}, {args.threads} thread(s)", flush=True)
    table = Table(f"step cost per query tower, B = {args.batch}, CPU", ["sampler", "variant", "step ms (median)",
                                                                        "events/s", "x id tower"])
    for sampler in args.samplers:
        base = ["run.device=cpu", "model.user_capacity=100000", "model.item_capacity=100000",
                f"trainer.batch_size={args.batch}", "trainer.progressive_eval_fraction=0", f"sampler.name={sampler}"]
        trainers = {name: Trainer(load_config(overrides=[*base, *v], environ={})) for name, v in variants.items()}
        streams = {name: _stream(np.random.default_rng(0), args.batch, 50_000, 50_000) for name in variants}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for step in range(args.warmup + args.steps):
            for name, trainer in trainers.items():
                batch = next(streams[name])
                t = time.perf_counter()
                trainer.train_step(batch)
                if step >= args.warmup:
                    times[name].append(time.perf_counter() - t)
        id_ms = 1e3 * statistics.median(times["id"])
        for name in variants:
            ms = 1e3 * statistics.median(times[name])
            table.add(sampler, name, f"{ms:.1f}", f"{args.batch / ms * 1e3:,.0f}", f"{ms / id_ms:.2f}x")
        print(render(table), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
