"""Lockstep training with W gloo ranks on this box: events/s and bytes exchanged per step.

``--step replicated``: each rank trains the whole all-gathered global batch (the exchange costs on
top of one process's step). ``--step split`` (the default, as in ``consume``): each rank computes its
own events' queries, positives are all-gathered with autograd and gradients all-reduced; the row
reports the payload bytes this rank sent into those collectives in the last step. Ids are synthetic
(Zipf items); no Kafka or Redis.

    PYTHONPATH=$PWD python bench/bench_distributed.py --world 2 --batch 1024 --steps 60 --step split
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamtrain.config import load_config  # noqa: E402
from streamtrain.distributed.context import init_context  # noqa: E402
from streamtrain.distributed.exchange import StepExchange  # noqa: E402
from streamtrain.events.batch import EventBatch  # noqa: E402
from streamtrain.events.records import MicroBatch, PartitionRange


def _batches(rank: int, batch: int, steps: int) -> list[MicroBatch]:
    rng = np.random.default_rng(rank)
    out = []
    for s in range(steps):
        users = [f"user-{u}" for u in rng.integers(0, 200_000, batch)]
        items = [f"item-{i}" for i in np.minimum(rng.zipf(1.2, batch), 50_000)]
        ev = EventBatch.from_ids(users, items, s + np.linspace(0, 1, batch))
        out.append(MicroBatch(ev, {("t", rank): PartitionRange(s * batch, (s + 1) * batch, batch, None)}, batch))
    return out


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    from streamtrain.training.trainer import Trainer

    torch.set_num_threads(1)
    env = {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)}
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    ctx = init_context("gloo", "cpu", 120.0, environ=env)
    sets = ["run.device=cpu", f"model.embedding_dim={args.dim}", "model.user_capacity=262144",
            "model.item_capacity=65536", f"sampler.name={args.sampler}", f"trainer.batch_size={args.batch}",
            "trainer.progressive_eval_fraction=0", *args.set]
    trainer = Trainer(load_config(overrides=sets, environ={}))
    if args.step == "split":
        trainer.enable_split(ctx)
    ex = StepExchange(ctx)
    batches = _batches(rank, args.batch, args.steps + 5)
    exchange_s = 0.0
    for i, local in enumerate(batches):
        if i == 5:
            ctx.barrier()
            t0, exchange_s = time.perf_counter(), 0.0
        e0 = time.perf_counter()
        ex.agree(has_batch=True, stop=False, idle=False)
        merged = ex.global_batch(local, 0)
        exchange_s += time.perf_counter() - e0
        trainer.train_step(merged.events, merged.rank_sizes or None)
    elapsed = time.perf_counter() - t0
    if rank == 0:
        row = {"world": world, "batch_per_rank": args.batch, "dim": args.dim, "sampler": args.sampler,
               "events_per_s": world * args.batch * args.steps / elapsed, "steps_per_s": args.steps / elapsed,
               "exchange_ms_per_step": 1000 * exchange_s / args.steps,
               "gathered_bytes_per_rank_per_step": len(pickle.dumps(batches[0])), "flags_bytes": 4 * 8,
               "step": args.step if world > 1 else "single",
               "split_bytes_sent_per_rank_last_step": trainer.split.bytes_last_step if trainer.split else 0}
        Path(out).write_text(json.dumps(row))
    ctx.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--batch", type=int, default=1024, help="events per rank per step")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--sampler", default="inbatch_logq")
    p.add_argument("--step", choices=["split", "replicated"], default="split")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. sampler.xir.batch_draws=512 (sizes that default from the per-rank batch)")
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = f"/tmp/bench-distributed-{os.getpid()}.json"
    if args.world == 1:
        os.environ.pop("WORLD_SIZE", None)
        _rank(0, 1, port, args, out)
    else:
        mp.start_processes(_rank, args=(args.world, port, args, out), nprocs=args.world, start_method="spawn")
    print(Path(out).read_text())
    os.unlink(out)


if __name__ == "__main__":
    main()
