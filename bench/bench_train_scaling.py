"""Does a training step cost the same whatever the item-table size? (target: 10M/100k <= 1.3x)

For each item capacity the item vocabulary is first filled to capacity (every row owned, its
embedding initialised, so pages are resident), then steps are timed on batches whose items are
drawn uniformly over the whole catalogue (the worst case for locality) and whose users come from a
prefilled user table. Id-only towers, D=64, no progressive evaluation (that one is O(N) by design).

    python bench/bench_train_scaling.py                         # 100k, 1M, 10M; B = 1024, 4096
    python bench/bench_train_scaling.py --capacities 100000 1000000 --steps 20

Memory: a 10M x 64 float32 table is 2.5 GB, x3 with Adam moments, plus ~2 GB of vocabulary.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch

from streamtrain.config import Config
from streamtrain.events.batch import EventBatch
from streamtrain.sampling import build_sampler
from streamtrain.training.trainer import Trainer


def _ids(prefix: str, values: np.ndarray) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = [f"{prefix}{v}" for v in values.tolist()]
    return out


def _prefill(trainer: Trainer, tower: str, n: int, chunk: int = 1_000_000) -> float:
    started = time.perf_counter()
    for start in range(0, n, chunk):
        trainer.register_ids(tower, _ids(tower[0], np.arange(start, min(n, start + chunk))))
    return time.perf_counter() - started


def _batch(rng: np.random.Generator, batch_size: int, users: int, items: int, t: float) -> EventBatch:
    return EventBatch(
        user_ids=_ids("u", rng.integers(0, users, batch_size)),
        item_ids=_ids("i", rng.integers(0, items, batch_size)),
        event_time=np.full(batch_size, t),
        weight=np.ones(batch_size, dtype=np.float32),
        event_type=np.full(batch_size, None, dtype=object),
    )


def _timed_step(trainer: Trainer, batch: EventBatch) -> float:
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    trainer.train_step(batch)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def make_trainer(
    capacity: int, *, user_capacity: int, dim: int, device: str, sampler: str, batch_size: int,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> tuple[Trainer, float]:
    """A Trainer whose item (and user) vocabulary is filled to capacity; returns it and the fill seconds.
    ``overrides``: config sections merged over these settings, e.g. ``{"trainer": {"extra_steps": 0}}``."""
    settings: dict[str, dict[str, Any]] = {
        "run": {"device": device, "seed": 0},
        "model": {"embedding_dim": dim, "user_capacity": user_capacity, "item_capacity": capacity, "learning_rate": 0.01},
        "sampler": {"name": sampler},
        "trainer": {"batch_size": batch_size, "progressive_eval_fraction": 0.0},
    }
    for section, values in (overrides or {}).items():
        settings[section] = {**settings.get(section, {}), **values}
    trainer = Trainer(Config.model_validate(settings))
    fill_s = _prefill(trainer, "item", capacity - 1) + _prefill(trainer, "user", user_capacity - 1)
    return trainer, fill_s


def sampler_for(trainer: Trainer, sampler: str, batch_size: int) -> Any:
    """A fresh ``sampler`` with the trainer's sampler config, for swapping into it."""
    sampler_config = trainer.config.sampler.model_copy(update={"name": sampler})
    return build_sampler(sampler_config, batch_size=batch_size, seed=0, device=trainer.device)


def set_sampler(trainer: Trainer, sampler: str, batch_size: int) -> None:
    """Swap the sampler in place: refilling a 10M vocabulary per sampler costs minutes."""
    trainer.state.sampler = sampler_for(trainer, sampler, batch_size)


def round_robin(
    steps: dict, warmup: int, repeats: int, budget_s: float | None = None, min_repeats: int = 2
) -> dict[object, list[float]]:
    """Seconds per timed call of each ``steps[key]()`` (which runs one step and returns its seconds).

    Calls go round robin, so a noisy neighbour slows every key alike and ratios stay meaningful on a
    shared machine. After ``warmup`` untimed rounds, stops at ``repeats`` timed rounds, or earlier once
    ``budget_s`` of timed rounds have passed and at least ``min_repeats`` are in.
    """
    times: dict[object, list[float]] = {key: [] for key in steps}
    spent = 0.0
    for i in range(warmup + repeats):
        if i >= warmup and budget_s is not None and spent >= budget_s and i - warmup >= min_repeats:
            break
        for key, step in steps.items():
            elapsed = step()
            if i >= warmup:
                times[key].append(elapsed)
                spent += elapsed
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacities", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--samplers", nargs="+", default=["inbatch_logq", "xir"])
    parser.add_argument("--user-capacity", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    # Every capacity lives at once and steps are interleaved round-robin, so a noisy neighbour
    # slows all capacities alike and the ratio stays meaningful on a shared machine.
    trainers: dict[int, Trainer] = {}
    for capacity in args.capacities:
        trainer, fill_s = make_trainer(
            capacity, user_capacity=args.user_capacity, dim=args.dim, device=args.device,
            sampler=args.samplers[0], batch_size=max(args.batch_sizes),
        )
        print(f"# capacity {capacity:>10,}: vocabularies filled in {fill_s:.1f} s on {trainer.device}", flush=True)
        trainers[capacity] = trainer

    results: dict[tuple[str, int, int], tuple[float, float]] = {}
    rng = np.random.default_rng(0)
    for sampler in args.samplers:
        for batch_size in args.batch_sizes:
            for trainer in trainers.values():
                set_sampler(trainer, sampler, batch_size)
            steps = {
                c: (lambda t=t, c=c: _timed_step(t, _batch(rng, batch_size, args.user_capacity - 1, c - 1, float(t.step))))
                for c, t in trainers.items()
            }
            times = round_robin(steps, args.warmup, args.steps)
            for capacity, values in times.items():
                results[(sampler, batch_size, capacity)] = (statistics.median(values), min(values))
            print(
                f"#   {sampler:<13} B={batch_size:<5} "
                + "  ".join(f"{c:,}: {1e3 * results[(sampler, batch_size, c)][0]:.1f} ms" for c in trainers),
                flush=True,
            )

    lo, hi = min(args.capacities), max(args.capacities)
    for label, pick in (("median", 0), ("min", 1)):
        header = f"{'sampler':<13} {'B':>5} " + " ".join(f"{c:>12,}" for c in args.capacities) + f" {'ratio':>7}"
        print(f"\n{label} step time (ms) by item capacity; ratio = largest / smallest capacity (target <= 1.3)")
        print(header)
        print("-" * len(header))
        for sampler in args.samplers:
            for batch_size in args.batch_sizes:
                row = [results[(sampler, batch_size, c)][pick] for c in args.capacities]
                ratio = results[(sampler, batch_size, hi)][pick] / results[(sampler, batch_size, lo)][pick]
                print(
                    f"{sampler:<13} {batch_size:>5} " + " ".join(f"{1e3 * t:>12.2f}" for t in row) + f" {ratio:>7.2f}"
                )


if __name__ == "__main__":
    main()
