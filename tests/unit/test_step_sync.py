"""The sync-free step (issue 12, item 4) on CPU: statistics one step late, the finite-loss guard
decided on the device (masked updates, bit-exact), checkpoints that hold the last step's stats,
the worker's metrics counting every step once, and the sync-free helpers."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from streamtrain.events.batch import EventBatch
from streamtrain.metrics import Metrics
from streamtrain.vocab.membership import member
from streamtrain.model.sparse_optim import RowSparseOptimizer
from streamtrain.training.guard import guarded_step
from streamtrain.training.prefetch import BatchPrefetcher
from streamtrain.training.trainer import Trainer
from test_trainer import Stream, make_config, with_new_ids  # noqa: I001 (shared stream and config)


def _poisoned(batch: EventBatch) -> EventBatch:
    """The same events with one NaN weight: the weighted loss, and every gradient, is NaN."""
    weight = np.ones(len(batch), dtype=np.float32)
    weight[3] = np.nan
    return dataclasses.replace(batch, weight=weight)


def _training_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Parameters and every optimizer state tensor, cloned."""
    out = {f"model.{k}": v.detach().clone() for k, v in trainer.state.model.named_parameters()}
    for i, state in enumerate(trainer.state.sparse_optimizer.state):
        out.update({f"sparse.{i}.{k}": v.clone() for k, v in state.items()})
    assert trainer.state.dense_optimizer is not None
    for i, state in enumerate(trainer.state.dense_optimizer.state.values()):
        out.update({f"dense.{i}.{k}": v.clone() for k, v in state.items() if torch.is_tensor(v)})
    return out


@pytest.mark.parametrize("masked", [True, False], ids=["masked-as-on-cuda", "cpu-skip"])
@pytest.mark.parametrize("sampler", ["inbatch_logq", "xir"])
def test_a_nan_batch_is_skipped_bit_exactly_and_reported_in_the_next_step(sampler: str, masked: bool) -> None:
    trainer = Trainer(make_config(sampler, **{"model.hidden_dims": [8], "model.user_features": "history+id"}))
    trainer.mask_updates = masked
    stream = Stream(seed=5)
    batch = stream.batch()
    assert trainer.submit_step(batch) is None  # step 1: its stats come with step 2
    before = _training_state(trainer)

    first = trainer.submit_step(_poisoned(batch))  # same ids: no new rows, so any change is the update
    assert first is not None and first.step == 1 and first.applied and math.isfinite(first.loss)
    after = _training_state(trainer)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], changed  # parameters, Adam moments and step counts: untouched, bit for bit

    second = trainer.submit_step(stream.batch())
    assert second is not None and second.step == 2 and not second.applied and math.isnan(second.loss)
    last = trainer.flush_stats()
    assert last is not None and last.step == 3 and last.applied and math.isfinite(last.loss)
    assert trainer.flush_stats() is None
    moved = _training_state(trainer)
    assert all(torch.isfinite(v).all() for v in moved.values())
    assert not torch.equal(moved["model.item.embedding.weight"], before["model.item.embedding.weight"])


def test_a_checkpoint_after_a_step_includes_its_stats() -> None:
    trainer = Trainer(make_config("xir", **{"trainer.progressive_eval_fraction": 1.0}))
    stream = Stream(seed=6)
    assert trainer.submit_step(stream.batch()) is None
    state = trainer.file_state()  # no flush by the caller: the pending step is settled first
    assert state["step"] == 1 and len(state["progressive"]["history"]) == 1
    assert all(len(r["history"]) == 1 for r in state["popularity"]["rolling"].values())
    stats = trainer.flush_stats()  # and its stats are not lost: the next flush hands them over
    assert stats is not None and stats.step == 1 and stats.progressive is not None and stats.baselines is not None
    assert trainer.flush_stats() is None
    assert trainer.submit_step(stream.batch()) is None  # nothing earlier left to report
    assert trainer.submit_step(stream.batch()).step == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("features", ["id", "history"])
def test_one_step_late_trains_exactly_like_the_synchronous_step(features: str) -> None:
    config = make_config("bir", **{"trainer.progressive_eval_fraction": 0.5, "model.user_features": features})
    sync, late = Trainer(config), Trainer(config)
    batches = [Stream(seed=8).batch() for _ in range(1)] + [Stream(seed=9 + i).batch() for i in range(5)]
    expected = [sync.train_step(b) for b in batches]
    got = [s for s in (late.submit_step(b) for b in batches) if s is not None] + [late.flush_stats()]
    assert [s.step for s in got] == [1, 2, 3, 4, 5, 6]  # type: ignore[union-attr]
    for a, b in zip(expected, got):
        assert b is not None
        assert (a.loss, a.logq_mean, a.applied, a.sampler_stats, a.progressive, a.baselines) == (
            b.loss, b.logq_mean, b.applied, b.sampler_stats, b.progressive, b.baselines)
    for (name, p), q in zip(sync.state.model.state_dict().items(), late.state.model.state_dict().values()):
        assert torch.equal(p, q), name


def test_the_worker_records_every_step_once_and_counts_the_skipped_one() -> None:
    from streamtrain.config import load_config
    from streamtrain.worker.worker import Worker

    trainer = Trainer(make_config("inbatch_logq"))
    metrics = Metrics(CollectorRegistry())
    progress = SimpleNamespace(events=0, accepts=lambda b: True, advance=lambda b: None, offsets=dict,
                               last_event_times=dict)
    source = SimpleNamespace(generation=0, lag=SimpleNamespace(refresh=lambda *a: None))
    worker = Worker(load_config(environ={}), engine=trainer, source=source, checkpointer=SimpleNamespace(),
                    runner=SimpleNamespace(), progress=progress,
                    start=SimpleNamespace(fresh=True, next_checkpoint_id=1), metrics=metrics)  # type: ignore[arg-type]
    stream = Stream(seed=10)
    good = stream.batch()
    for events in (good, _poisoned(good), stream.batch()):
        worker._train(SimpleNamespace(events=events, generation=0, ranges={}, rank_sizes=()))  # type: ignore[arg-type]

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name)

    assert sample("streamtrain_train_steps_total") == 2  # steps 1 and 2 reported, step 3 still on its way
    assert sample("streamtrain_train_steps_skipped_total") == 1
    worker._flush_stats()  # what the loop does when idle, and before a snapshot
    assert sample("streamtrain_train_steps_total") == 3 and sample("streamtrain_events_trained_total") == 3 * 64
    assert sample("streamtrain_train_steps_skipped_total") == 1
    assert math.isfinite(sample("streamtrain_train_loss") or math.nan)


def test_masked_row_sparse_step_is_bit_exact_either_way() -> None:
    torch.manual_seed(0)
    for algorithm in ("adam", "adagrad", "rowwise_adagrad", "sgd"):
        tables = [torch.nn.Embedding(50, 4, sparse=True) for _ in range(3)]
        opts = [RowSparseOptimizer([t.weight], algorithm=algorithm, lr=0.1) for t in tables]  # type: ignore[list-item]
        with torch.no_grad():
            for t in tables[1:]:
                t.weight.copy_(tables[0].weight)
        rows = torch.tensor([1, 7, 7, 30])
        for step in range(2):
            for t in tables:
                t.weight.grad = None
                t(rows).square().sum().backward()
            frozen = [tables[2].weight.detach().clone(), *(v.clone() for v in opts[2].state[0].values())]
            opts[0].step()
            opts[1].step(torch.tensor(True), masked=True)  # the CUDA path, on the CPU
            opts[2].step(torch.tensor(False), masked=True)
            assert torch.equal(tables[0].weight, tables[1].weight), algorithm
            assert all(torch.equal(a, b) for a, b in zip(opts[0].state[0].values(), opts[1].state[0].values()))
            now = [tables[2].weight.detach(), *opts[2].state[0].values()]
            assert all(torch.equal(a, b) for a, b in zip(frozen, now)), (algorithm, step)


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("name", ["adam", "adagrad", "sgd"])
def test_guarded_dense_step_restores_parameters_and_state(name: str, masked: bool) -> None:
    make = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}[name]
    torch.manual_seed(1)
    skipped, plain = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    plain.load_state_dict(skipped.state_dict())
    opt_s, opt_p = make(skipped.parameters(), lr=0.1), make(plain.parameters(), lr=0.1)
    x = torch.randn(5, 3)
    start = [p.detach().clone() for p in skipped.parameters()]
    skipped(x).sum().backward()
    guarded_step(opt_s, torch.tensor(False), masked=masked)  # the first step (lazy Adam state) skipped
    assert all(torch.equal(a, b) for a, b in zip(start, skipped.parameters()))
    for _ in range(2):  # then both train alike: the skipped step left no trace
        for model, opt in ((skipped, opt_s), (plain, opt_p)):
            opt.zero_grad()
            model(x).sum().backward()
        guarded_step(opt_s, torch.tensor(True), masked=masked)
        opt_p.step()
    assert all(torch.equal(a, b) for a, b in zip(skipped.parameters(), plain.parameters()))


def test_prefetcher_is_a_no_op_view_on_cpu() -> None:
    prefetcher = BatchPrefetcher("cpu")
    rows, values = np.arange(5, dtype=np.int64), np.ones((2, 3), dtype=np.float32)
    out = prefetcher.upload([rows, values, np.zeros(0, dtype=np.int64)])
    assert [t.dtype for t in out] == [torch.int64, torch.float32, torch.int64]
    assert out[0].data_ptr() == rows.ctypes.data and tuple(out[1].shape) == (2, 3) and out[2].numel() == 0


def test_member_agrees_with_isin() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        values = torch.from_numpy(rng.integers(-1, 40, size=(int(rng.integers(1, 30)), 3)))
        pool = torch.from_numpy(rng.integers(0, 40, size=int(rng.integers(0, 12))))
        assert torch.equal(member(values, pool), torch.isin(values, pool))


@pytest.mark.parametrize("sampler", ["inbatch_logq", "xir", "cbns"])
def test_the_new_id_path_never_assigns_a_python_scalar_through_an_index(
    sampler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``t[rows] = 0`` on a CUDA tensor copies the scalar from the host and blocks: the first lent GPU
    found three such lines in the step (user histories, popularity counts, replay weights) that the CUDA
    test reports one at a time. This CPU stand-in spies on every indexed scalar assignment during the
    CUDA test's steady-state sequence (new ids mid-run, extra steps over the replay window)."""
    config = make_config(sampler, **{
        "model.user_features": "history+id", "model.hidden_dims": [16], "trainer.progressive_eval_fraction": 0.5,
        "model.history_input": "both", "model.new_item_init": "query", "trainer.extra_steps": 2,
        "trainer.replay_window_events": 256,
    })
    trainer = Trainer(config)
    stream = Stream(seed=11)
    for _ in range(4):
        trainer.submit_step(stream.batch())
    batches = [stream.batch() for _ in range(4)]
    batches[1] = with_new_ids(batches[1])
    scalar_writes: list[str] = []
    setitem = torch.Tensor.__setitem__

    def spy(self: torch.Tensor, index: object, value: object) -> None:
        if isinstance(value, (bool, int, float)) and not isinstance(index, slice):
            scalar_writes.append(repr(index)[:60])
        setitem(self, index, value)

    monkeypatch.setattr(torch.Tensor, "__setitem__", spy)
    for batch in batches:
        trainer.submit_step(batch)
    monkeypatch.undo()
    assert trainer.state.model.history.items.shape[0] > 0  # the sequence ran through the history tower
    assert scalar_writes == []
