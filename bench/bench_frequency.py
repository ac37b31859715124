"""Step time with the occurrences frequency estimator (default) against the presence one (Yi et al.).

    python bench/bench_frequency.py                              # CPU, B = 1024, 5 logQ samplers
    python bench/bench_frequency.py --device cuda --batch-sizes 1024 4096

Two parts, each printed with new/old ratios:
1. the estimator alone: ``update`` plus one ``log_prob`` of the batch (Zipf keys over 100k items,
   H = 2^20, m = 2, the config defaults);
2. a whole ``Trainer.train_step`` per sampler (id towers, D = 64, no progressive evaluation), the
   two estimators' trainers stepped round robin on the same batches so load spikes on a shared
   machine hit both alike. Min and median over ``--steps`` timed steps after ``--warmup``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from streamtrain.config import Config
from streamtrain.events.batch import EventBatch
from streamtrain.frequency import build_frequency_estimator
from streamtrain.training.trainer import Trainer

METHODS = ("presence", "occurrences")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _zipf_keys(rng: np.random.Generator, n_items: int, shape: tuple[int, ...]) -> np.ndarray:
    cdf = np.cumsum(1.0 / np.arange(1, n_items + 1))
    return np.searchsorted(cdf / cdf[-1], rng.random(shape), side="right")


def estimator_only(args: argparse.Namespace, batch: int, device: torch.device) -> None:
    rng = np.random.default_rng(0)
    keys = [torch.as_tensor(k).to(device) for k in _zipf_keys(rng, args.items, (args.steps + args.warmup, batch))]
    ests = {m: build_frequency_estimator(Config().frequency.model_copy(update={"method": m}), seed=0, device=device)
            for m in METHODS}
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for i, k in enumerate(keys):
        for m, est in ests.items():
            _sync(device)
            started = time.perf_counter()
            est.update(k)
            est.log_prob(k)
            _sync(device)
            if i >= args.warmup:
                times[m].append(time.perf_counter() - started)
    _report(f"B={batch} estimator update+read", times)


def _config(method: str, sampler: str, batch: int, args: argparse.Namespace) -> Config:
    return Config.model_validate({
        "run": {"seed": 0, "device": args.device},
        "model": {"user_capacity": args.items + 1, "item_capacity": args.items + 1, "embedding_dim": 64},
        "sampler": {"name": sampler, "cbns": {"warmup_steps": 0}},
        "frequency": {"method": method},
        "trainer": {"batch_size": batch, "progressive_eval_fraction": 0.0, "probe_interval_steps": 0},
    })


def _ids(prefix: str, values: np.ndarray) -> np.ndarray:
    out = np.empty(values.size, dtype=object)
    out[:] = [f"{prefix}{v}" for v in values.tolist()]
    return out


def train_steps(args: argparse.Namespace, sampler: str, batch: int) -> None:
    rng = np.random.default_rng(1)
    items = _zipf_keys(rng, args.items, (args.steps + args.warmup, batch))
    users = rng.integers(0, args.items, size=items.shape)
    batches = [EventBatch.from_ids(_ids("u", u), _ids("i", i)) for u, i in zip(users, items)]
    trainers = {m: Trainer(_config(m, sampler, batch, args)) for m in METHODS}
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for i, b in enumerate(batches):
        for m, trainer in trainers.items():
            _sync(trainer.device)
            started = time.perf_counter()
            trainer.train_step(b)
            _sync(trainer.device)
            if i >= args.warmup:
                times[m].append(time.perf_counter() - started)
    _report(f"B={batch} train_step {sampler}", times)


def _report(label: str, times: dict[str, list[float]]) -> None:
    (lo_old, med_old), (lo_new, med_new) = ((min(times[m]) * 1e3, statistics.median(times[m]) * 1e3) for m in METHODS)
    print(f"{label:>40}  presence min/med {lo_old:8.2f}/{med_old:8.2f} ms  occurrences {lo_new:8.2f}/{med_new:8.2f} ms"
          f"  new/old min {lo_new / lo_old:5.2f} med {med_new / med_old:5.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--samplers", nargs="+", default=["inbatch_logq", "mns", "cbns", "bir", "xir"])
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} items={args.items} steps={args.steps}")
    for batch in args.batch_sizes:
        estimator_only(args, batch, device)
        for sampler in args.samplers:
            train_steps(args, sampler, batch)


if __name__ == "__main__":
    main()
