"""Two gloo ranks train the global batch: the same parameters and loss as one process fed the same
global batches (W = 2 vs W = 1), and bit-identical replicas (tables, optimizer state, vocabularies,
user histories, frequency estimator, XIR cache, RNG states) after N steps, also when one rank's
partitions are empty for a stretch of steps."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from streamtrain.config import load_config
from streamtrain.distributed.assignment import partition_map, partitions_for_rank
from streamtrain.distributed.context import DistContext, init_context, torchrun_world
from streamtrain.distributed.exchange import StepExchange, merge_batches
from streamtrain.events.batch import EventBatch
from streamtrain.events.records import MicroBatch, PartitionRange

STEPS = 12
SETS = [
    "run.device=cpu", "run.seed=5", "model.embedding_dim=8", "model.user_capacity=64", "model.item_capacity=48",
    "model.user_features=history+id", "model.history_length=4", "sampler.name=xir", "frequency.hash_size=256",
    "trainer.batch_size=16", "trainer.progressive_eval_fraction=0.5", "trainer.eval_k=[5]",
    "model.eviction_after_s=30",  # rows change owners: the reassignment paths run too
]


def _local_batches(rank: int) -> list[MicroBatch | None]:
    """Rank ``rank``'s micro-batches: partition ``rank``; rank 1 has nothing on steps 3-6 (an empty partition)."""
    rng = np.random.default_rng(100 + rank)
    out: list[MicroBatch | None] = []
    offset = 0
    for step in range(STEPS):
        if rank == 1 and 3 <= step <= 6:
            out.append(None)
            continue
        n = int(rng.integers(4, 17))
        users = [f"u{u}" for u in rng.integers(0, 90, n)]  # more ids than rows: evictions
        items = [f"i{i}" for i in np.minimum(rng.zipf(1.4, n), 70)]
        times = step * 10.0 + np.sort(rng.uniform(0, 10, n))
        events = EventBatch.from_ids(users, items, times)
        out.append(MicroBatch(events, {("t", rank): PartitionRange(offset, offset + n, n, float(times[-1]))}, n))
        offset += n
    return out


def _state(trainer: Any) -> dict[str, np.ndarray]:
    """Every piece of trainer state as flat arrays (tensors and numpy leaves; other leaves as repr bytes)."""
    out: dict[str, np.ndarray] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], (dict, torch.Tensor, np.ndarray)):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)
        elif isinstance(value, torch.Tensor):
            out[prefix] = value.detach().cpu().numpy().copy()
        elif isinstance(value, np.ndarray):
            out[prefix] = value.copy()
        else:
            out[prefix] = np.frombuffer(repr(value).encode(), dtype=np.uint8).copy()

    walk("file", trainer.file_state())
    walk("shared", trainer.shared_state())
    return out


def _train(trainer: Any, exchange: StepExchange, batches: list[MicroBatch | None]) -> list[float]:
    losses = []
    for local in batches:
        agreed = exchange.agree(has_batch=local is not None, stop=False, idle=False)
        assert agreed.step  # rank 0 always has data here
        batch = exchange.global_batch(local, 0)
        assert batch is not None
        losses.append(trainer.train_step(batch.events).loss)
    return losses


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    from streamtrain.training.trainer import Trainer

    torch.set_num_threads(1)
    env = {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    ctx = init_context("auto", "cpu", 60.0, environ=env)
    try:
        trainer = Trainer(load_config(overrides=SETS, environ={}))
        losses = _train(trainer, StepExchange(ctx), _local_batches(rank))
        np.savez(Path(out_dir) / f"rank{rank}.npz", losses=np.array(losses), **_state(trainer))
    finally:
        ctx.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_ranks_match_one_process_and_each_other(tmp_path: Path) -> None:
    from streamtrain.training.trainer import Trainer

    mp.start_processes(_rank_main, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(2)]

    # Replicas: bit-identical, every array (tables, optimizer state, vocabularies, histories, estimator, XIR cache).
    assert ranks[0].keys() == ranks[1].keys()
    assert any(k.startswith("shared.sampler") for k in ranks[0]) and any(k.startswith("shared.frequency") for k in ranks[0])
    for key in ranks[0]:
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)

    # One process on the same global batches (rank order): same losses and parameters.
    torch.set_num_threads(1)
    single = Trainer(load_config(overrides=SETS, environ={}))
    locals_ = [_local_batches(r) for r in range(2)]
    globals_ = [merge_batches([locals_[0][s], locals_[1][s]], 0) for s in range(STEPS)]
    losses = _train(single, StepExchange(DistContext()), globals_)
    np.testing.assert_allclose(ranks[0]["losses"], losses, rtol=1e-6, atol=1e-7)
    want = _state(single)
    for key, value in want.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(ranks[0][key], value, rtol=1e-5, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(ranks[0][key], value, err_msg=key)
    # The model did move (the comparison is not between two untouched initialisations).
    fresh = _state(Trainer(load_config(overrides=SETS, environ={})))
    for table in ("file.model.user.embedding.weight", "file.model.item.embedding.weight"):
        assert not np.array_equal(fresh[table], want[table]), table


def test_merge_keeps_rank_order_and_ranges() -> None:
    a, b = _local_batches(0)[0], _local_batches(1)[0]
    assert a is not None and b is not None
    merged = merge_batches([a, None, b], 3)
    assert list(merged.events.user_ids) == [*a.events.user_ids, *b.events.user_ids]
    assert merged.ranges == {**a.ranges, **b.ranges} and merged.messages == a.messages + b.messages
    assert merged.generation == 3
    empty = merge_batches([None, None], 0)
    assert len(empty.events) == 0 and not empty.ranges


def test_static_assignment_and_world() -> None:
    assert partitions_for_rank(range(4), 0, 2) == [0, 2] and partitions_for_rank(range(4), 1, 2) == [1, 3]
    assert partition_map(range(3), 4) == {0: [0], 1: [1], 2: [2], 3: []}
    with pytest.raises(ValueError):
        partitions_for_rank(range(4), 2, 2)
    assert torchrun_world({}) is None
    assert torchrun_world({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1)
    single = init_context(environ={})
    assert (single.rank, single.world_size, single.launched) == (0, 1, False)
    assert single.all_reduce_max([0, 1]) == [0, 1] and single.all_gather_object("x") == ["x"]
