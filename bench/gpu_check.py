"""``bench/gpu-check``: everything the GPU path must prove, in one command and one table.

    bench/gpu-check --out gpu-check.json            # on a CUDA host: full sizes, within ~8 minutes
    bench/gpu-check --tiny --out /tmp/gpu.json      # CPU, tiny sizes, well under a minute (CI)

Sections (each row says what it measured, or the error that stopped it; nothing stops the rest):

* ``train``: Trainer steps for inbatch, inbatch_logq, bir, xir and full at 1M and 10M items,
  B = 4096 and 16384, D = 64 (vocabularies filled to capacity; items uniform over the catalogue):
  examples/s and peak memory (CUDA: ``max_memory_allocated``; CPU: peak RSS). Full softmax only
  where its (B × N) matrices fit in 70% of the free memory; other cells say "does not fit". The
  rows run the default config (history tower, 5 extra steps per batch), then ``id 1-step`` rows for
  inbatch_logq and xir: the id tower with one step per batch, the step the H100 target was set for.
* ``sync``: per sampler and ``user_features`` (id, history), steady-state steps through the
  one-step-late path under CUDA's sync debug mode "error" (any host sync in a step fails the cell;
  a NaN batch among them), examples/s beside the synchronous ``train_step`` (a host wait per step).
* ``worker``: the real ``Worker`` loop fed by an in-process source (real decoder and batcher on one
  thread, no Kafka, no Redis; bench/inprocess.py), vocabularies prefilled: events/s from the start
  to the last step, the share of that time the loop waited for a batch, and the share spent inside
  train steps (the device is idle at most the rest: waiting, metrics, probes, bookkeeping).
* ``checkpoint``: pause (snapshot copy; the first one allocates its buffers), commit (file write +
  state store), resume into a fresh Trainer on the device, and whether the weights came back equal.
* ``eval``: ``streamtrain eval``'s code (``evaluate_checkpoint``) with the checkpoint's model on the
  device: users/s and Recall@20 over the synthetic test users.

Everything runs in this process with unbuffered output; ``--budget-s`` bounds the whole run
(cells that would start after it say so). Reuses bench_train_scaling (trainer set-up, timed steps,
round robin) and suite_train (memory estimate of a step).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpu_check_sync import sync_section
from report import machine_info, machine_line, peak_rss, reset_peak_rss

__all__ = ["main", "run_checks"]

SAMPLERS = ["inbatch", "inbatch_logq", "bir", "xir", "full"]
# Train rows per query tower: the defaults (history tower, 5 extra steps per batch: each batch trains ~11x
# its events), and the step the H100 throughput target was set for (issue 12: id tower, one step per batch).
TOWERS: list[tuple[str, dict[str, Any] | None, list[str]]] = [
    ("", None, SAMPLERS),
    ("id 1-step ", {"model": {"user_features": "id"}, "trainer": {"extra_steps": 0}}, ["inbatch_logq", "xir"]),
]
FULL: dict[str, Any] = {
    "catalogues": [1_000_000, 10_000_000], "batch_sizes": [4096, 16384], "users": 1_000_000, "dim": 64,
    "warmup": 2, "steps": 20, "cell_seconds": 2.5, "worker_batches": 24, "worker_batch": 16384,
    "worker_catalogue": 1_000_000, "worker_samplers": ["inbatch_logq", "xir"], "ckpt_catalogue": 1_000_000,
    "eval_users": 2000, "budget_s": 450.0, "sync_catalogue": 100_000, "sync_batch": 4096, "sync_steps": 10,
}
TINY: dict[str, Any] = {
    "catalogues": [2_000, 20_000], "batch_sizes": [64, 256], "users": 5_000, "dim": 16,
    "warmup": 1, "steps": 3, "cell_seconds": 0.2, "worker_batches": 6, "worker_batch": 256,
    "worker_catalogue": 20_000, "worker_samplers": ["inbatch_logq", "xir"], "ckpt_catalogue": 20_000,
    "eval_users": 200, "budget_s": 50.0, "sync_catalogue": 2_000, "sync_batch": 64, "sync_steps": 3,
}


class Budget:
    """The run's time limit; a cell that would start after it is reported as skipped."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e9:.2f} GB"


def _peak_start(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated())
    return peak_rss()[0]


def _guarded(rows: list[dict[str, Any]], section: str, case: str, fn: Callable[[], dict[str, Any]]) -> None:
    """Run one cell; its row holds the result or the error (the run goes on either way)."""
    started = time.perf_counter()
    try:
        row = {"section": section, "case": case, **fn()}
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row, the check goes on
        row = {"section": section, "case": case, "error": f"{type(exc).__name__}: {exc}"[:300]}
        traceback.print_exc(file=sys.stderr)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    row["seconds"] = round(time.perf_counter() - started, 2)
    rows.append(row)
    print(f"# {_line(row)}", flush=True)


# ---------------------------------------------------------------------------------------------- train
def train_section(p: dict[str, Any], device: str, budget: Budget, rows: list[dict[str, Any]]) -> None:
    for catalogue in p["catalogues"]:
        for label, overrides, samplers in TOWERS:
            if budget.left() < 30 and (catalogue, label) != (p["catalogues"][0], ""):
                rows.append({"section": "train", "case": f"{label}N={catalogue:,}", "error": "skipped: time budget"})
                continue
            _train_cells(p, device, budget, rows, catalogue, label, overrides, samplers)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _train_cells(p: dict[str, Any], device: str, budget: Budget, rows: list[dict[str, Any]], catalogue: int,
                 label: str, overrides: dict[str, Any] | None, samplers: list[str]) -> None:
    """One trainer per catalogue and tower (``TOWERS``), filled once; a row per sampler and batch size."""
    from bench_train_scaling import _batch, _timed_step, make_trainer, round_robin, sampler_for
    from suite_train import _available_bytes, estimate_bytes

    holder: dict[str, Any] = {}

    def build() -> dict[str, Any]:
        trainer, fill_s = make_trainer(catalogue, user_capacity=p["users"], dim=p["dim"], device=device,
                                       sampler="inbatch", batch_size=max(p["batch_sizes"]), overrides=overrides)
        holder["trainer"] = trainer
        return {"note": f"vocabularies filled in {fill_s:.1f} s"}

    _guarded(rows, "train", f"build {label}N={catalogue:,}", build)
    trainer = holder.pop("trainer", None)
    if trainer is None:
        return
    rng = np.random.default_rng(0)
    for batch_size in p["batch_sizes"]:
        for name in samplers:
            case = f"{label}{name} N={catalogue:,} B={batch_size}"
            need = estimate_bytes(name, batch_size, catalogue)
            if need > 0.7 * _available_bytes(trainer.device):
                rows.append({"section": "train", "case": case, "note": f"does not fit (~{need / 1e9:.0f} GB)"})
                continue
            if budget.left() < 5:
                rows.append({"section": "train", "case": case, "error": "skipped: time budget"})
                continue

            def cell(name: str = name, batch_size: int = batch_size) -> dict[str, Any]:
                trainer.state.sampler = sampler_for(trainer, name, batch_size)
                _peak_start(trainer.device)
                step = lambda: _timed_step(  # noqa: E731
                    trainer, _batch(rng, batch_size, p["users"] - 1, catalogue - 1, float(trainer.step))
                )
                times = round_robin({name: step}, p["warmup"], p["steps"], min(p["cell_seconds"], budget.left()))
                median = float(np.median(times[name]))
                return {"rate": batch_size / median, "unit": "examples/s", "peak_bytes": _peak(trainer.device),
                        "note": f"{len(times[name])} steps, median {1e3 * median:.1f} ms"}

            _guarded(rows, "train", case, cell)


# --------------------------------------------------------------------------------------------- worker
def worker_section(p: dict[str, Any], device: str, budget: Budget, rows: list[dict[str, Any]], tmp: Path) -> None:
    from bench_train_scaling import make_trainer, sampler_for
    from inprocess import TOPIC, InProcessSource, MemoryStateStore, synthetic_messages
    from prometheus_client import CollectorRegistry

    from streamtrain.metrics import Metrics
    from streamtrain.backoff import Backoff
    from streamtrain.state.checkpoint import Checkpointer
    from streamtrain.state.files import CheckpointFiles
    from streamtrain.state.runner import CheckpointRunner
    from streamtrain.worker.progress import Progress
    from streamtrain.state.resume import resume
    from streamtrain.worker.worker import Worker

    batch, catalogue = p["worker_batch"], p["worker_catalogue"]
    values = synthetic_messages(batch * p["worker_batches"], p["users"] - 1, catalogue - 1)
    for name in p["worker_samplers"]:
        if budget.left() < 20:
            rows.append({"section": "worker", "case": name, "error": "skipped: time budget"})
            continue

        def run(name: str = name) -> dict[str, Any]:
            trainer, _ = make_trainer(catalogue, user_capacity=p["users"], dim=p["dim"], device=device,
                                      sampler=name, batch_size=batch)
            trainer.state.sampler = sampler_for(trainer, name, batch)
            registry = CollectorRegistry()
            metrics = Metrics(registry)
            store = MemoryStateStore()
            files = CheckpointFiles(tmp / f"worker-{name}", "gpu-check", 1)
            start = resume(trainer, store, files, fresh=True)  # type: ignore[arg-type]
            checkpointer = Checkpointer(files=files, store=store, flush_dead_letters=lambda _t: True,  # type: ignore[arg-type]
                                        commit_offsets=None, metrics=metrics, committed_id=None, committed_offsets={})
            runner = CheckpointRunner(checkpointer, Backoff(1.0, 5.0), interval_events=10**12, interval_s=1e9)
            progress = Progress({}, 0)
            progress.set_earliest([(TOPIC, 0)])
            source = InProcessSource(values, batch)
            worker = Worker(trainer.config, engine=trainer, source=source, checkpointer=checkpointer,  # type: ignore[arg-type]
                            runner=runner, progress=progress, start=start, metrics=metrics,
                            max_steps=trainer.step + p["worker_batches"])
            _peak_start(trainer.device)
            t0 = time.monotonic()
            worker.start()
            finished = worker.join(max(10.0, budget.left()))
            source.stop()
            if worker.fatal is not None:
                raise RuntimeError(f"worker loop failed: {worker.fatal}")
            if not finished or worker.last_step_at is None:
                raise RuntimeError(f"worker loop did not finish ({worker.stop_reason})")
            window = worker.last_step_at - t0
            wait = registry.get_sample_value("streamtrain_trainer_wait_seconds_total") or 0.0
            busy = registry.get_sample_value("streamtrain_step_duration_seconds_sum") or 0.0
            return {"rate": progress.events / window, "unit": "events/s", "peak_bytes": _peak(trainer.device),
                    "wait_share": wait / window, "step_share": busy / window,
                    "note": f"{window:.1f} s: loop waited for batches {100 * wait / window:.0f}%, in train steps "
                            f"{100 * busy / window:.0f}% (device idle <= {100 * (1 - busy / window):.0f}%); "
                            f"source decoded for {source.decode_seconds:.1f} s"}

        _guarded(rows, "worker", f"{name} N={catalogue:,} B={batch}", run)


# ------------------------------------------------------------------------------------ checkpoint, eval
def checkpoint_and_eval_sections(
    p: dict[str, Any], device: str, budget: Budget, rows: list[dict[str, Any]], tmp: Path
) -> None:
    from bench_train_scaling import _batch, make_trainer
    from inprocess import TOPIC, MemoryStateStore
    from prometheus_client import CollectorRegistry

    from streamtrain.serving.checkpoint_eval import evaluate_checkpoint
    from streamtrain.data.interactions import Interactions
    from streamtrain.events.batch import object_array
    from streamtrain.metrics import Metrics
    from streamtrain.serving.checkpoint_model import load_checkpoint
    from streamtrain.training.trainer import Trainer
    from streamtrain.state.checkpoint import Checkpointer, take_snapshot
    from streamtrain.state.files import CheckpointFiles
    from streamtrain.state.resume import resume

    catalogue, batch = p["ckpt_catalogue"], min(p["batch_sizes"])
    state: dict[str, Any] = {}
    if budget.left() < 20:
        rows.append({"section": "checkpoint", "case": "pause/resume", "error": "skipped: time budget"})
        return

    def checkpoint() -> dict[str, Any]:
        trainer, _ = make_trainer(catalogue, user_capacity=catalogue, dim=p["dim"], device=device,
                                  sampler="xir", batch_size=batch)
        rng = np.random.default_rng(1)
        for _ in range(3):
            trainer.train_step(_batch(rng, batch, catalogue - 1, catalogue - 1, float(trainer.step)))
        store = MemoryStateStore()
        files = CheckpointFiles(tmp / "ckpt", "gpu-check", 2)
        checkpointer = Checkpointer(files=files, store=store, flush_dead_letters=lambda _t: True,  # type: ignore[arg-type]
                                    commit_offsets=None, metrics=Metrics(CollectorRegistry()), committed_id=None,
                                    committed_offsets={})
        first = take_snapshot(trainer, 1, {(TOPIC, 0): 1}, batch, [])
        checkpointer.commit(first, kafka=False)
        second = take_snapshot(trainer, 2, {(TOPIC, 0): 2}, 2 * batch, [], reuse=first)
        commit_s = checkpointer.commit(second, kafka=False) - second.copy_seconds
        t0 = time.perf_counter()
        fresh = Trainer(trainer.config)
        point = resume(fresh, store, files, fresh=False)  # type: ignore[arg-type]
        resume_s = time.perf_counter() - t0
        equal = all(torch.equal(a, b) for a, b in zip(trainer.state.model.state_dict().values(),
                                                      fresh.state.model.state_dict().values()))
        state.update(path=files.path(point.checkpoint_id), config=trainer.config, device=trainer.device)
        return {"rate": None, "unit": "", "peak_bytes": None, "pause_s": second.copy_seconds,
                "first_pause_s": first.copy_seconds, "commit_s": commit_s, "resume_s": resume_s, "equal": equal,
                "note": f"{catalogue:,} users x items: pause {second.copy_seconds:.3f} s (first {first.copy_seconds:.2f} s), "
                        f"commit {commit_s:.2f} s, resume {resume_s:.2f} s, file "
                        f"{files.path(point.checkpoint_id).stat().st_size / 1e6:.0f} MB, weights equal: {equal}"}

    _guarded(rows, "checkpoint", f"pause/resume on {device}", checkpoint)
    if "path" not in state:
        rows.append({"section": "eval", "case": "evaluate_checkpoint", "error": "skipped: no checkpoint"})
        return

    def evaluate() -> dict[str, Any]:
        ckpt = load_checkpoint(state["path"], state["config"])
        ckpt.model.to(state["device"])
        rng = np.random.default_rng(2)
        users = rng.integers(0, catalogue - 1, p["eval_users"])
        test = Interactions(object_array([f"u{u}" for u in users]),
                            object_array([f"i{i}" for i in rng.integers(0, catalogue - 1, len(users))]),
                            ("synthetic",), 0)
        _peak_start(state["device"])
        report = evaluate_checkpoint(ckpt, test, None, k_list=[20])
        return {"rate": report.test_users / report.seconds, "unit": "users/s", "peak_bytes": _peak(state["device"]),
                "note": f"{report.test_users} users over {report.candidate_items:,} items on "
                        f"{next(ckpt.model.parameters()).device}, recall@20 {report.metrics['recall@20']:.4f}"}

    _guarded(rows, "eval", f"evaluate_checkpoint on {device}", evaluate)


# ----------------------------------------------------------------------------------------------- main
def _line(row: dict[str, Any]) -> str:
    rate = row.get("rate")
    value = f"{rate:,.0f} {row.get('unit', '')}" if isinstance(rate, (int, float)) else "-"
    what = row.get("error") or row.get("note", "")
    return f"{row['section']:<10} | {row['case']:<34} | {value:>20} | {_gb(row.get('peak_bytes')):>9} | {what}"


def render_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'section':<10} | {'case':<34} | {'rate':>20} | {'peak mem':>9} | notes / error"
    return "\n".join([head, "-" * len(head), *(_line(r) for r in rows)])


def run_checks(p: dict[str, Any], device: str) -> list[dict[str, Any]]:
    budget = Budget(p["budget_s"])
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="streamtrain-gpu-check-") as tmp:
        sections: list[tuple[str, Callable[[], None]]] = [
            ("train", lambda: train_section(p, device, budget, rows)),
            ("sync", lambda: sync_section(p, device, budget, rows, SAMPLERS, _guarded, _peak_start, _peak)),
            ("worker", lambda: worker_section(p, device, budget, rows, Path(tmp))),
            ("checkpoint", lambda: checkpoint_and_eval_sections(p, device, budget, rows, Path(tmp))),
        ]
        for name, section in sections:
            try:
                section()
            except Exception as exc:  # noqa: BLE001 - set-up outside a cell failed: one row, go on
                traceback.print_exc(file=sys.stderr)
                rows.append({"section": name, "case": "set-up", "error": f"{type(exc).__name__}: {exc}"[:300]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/gpu-check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny sizes (automatic without CUDA)")
    ap.add_argument("--out", type=Path, help="write the rows and the machine as JSON here")
    ap.add_argument("--budget-s", type=float, help="overall time limit (default 450 s, tiny 50 s)")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    tiny = args.tiny or not cuda
    params = dict(TINY if tiny else FULL)
    if args.budget_s is not None:
        params["budget_s"] = args.budget_s
    device = "cpu" if tiny else "cuda"
    info = machine_info()
    print(f"# gpu-check on {machine_line(info)}; torch {info['torch']}; device {device}"
          f"{' (tiny sizes' + ('' if args.tiny else ', no CUDA') + ')' if tiny else ''}", flush=True)
    started = time.perf_counter()
    rows = run_checks(params, device)
    table = render_table(rows)
    print("\n" + table + f"\n\n# {time.perf_counter() - started:.0f} s; "
          f"{sum('error' in r for r in rows)} cells failed or skipped", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"machine": info, "device": device, "tiny": tiny, "params": params,
                                        "rows": rows, "table": table}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
