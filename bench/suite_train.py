"""``train`` and ``scaling`` suites of ``bench/run``: real Trainer steps on synthetic id batches.

* ``train``: steps/s and examples/s per sampler for every batch size × catalogue, with the peak host
  RSS during a step and (on CUDA) ``torch.cuda.max_memory_allocated``. One child process per catalogue
  (so its RSS is that catalogue's alone); samplers run round robin inside it.
* ``scaling``: every catalogue lives in one child process and steps go round robin over catalogues,
  so "10M vs 100k" is measured side by side; the ratio to the smallest catalogue (target ≤ 1.3 at
  10M) and to the smallest batch size.

Batches come from bench_train_scaling (items uniform over the whole catalogue: the worst case for
locality; the vocabulary is filled to capacity first). Cells that would not fit in memory are
skipped with a row that says so; ``--cell-seconds`` caps the timed rounds of slow cells.
"""

from __future__ import annotations

import statistics
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from report import Table, fmt_rate, fmt_ratio, peak_rss, reset_peak_rss

__all__ = ["train_tables", "scaling_tables"]

# (B × columns) float32 matrices alive at a step's peak (forward + backward): the step RSS measured on
# CPU at B = 4096 (inbatch 3, xir 3.3, bir 6 matrices) plus headroom; only used to skip cells that
# cannot fit in memory.
_MATRICES = {"inbatch": 4, "inbatch_logq": 4, "uniform": 4, "mns": 5, "cbns": 4, "bir": 8, "xir": 5, "full": 4}


def _columns(sampler: str, batch: int, catalogue: int) -> int:
    return {
        "uniform": 1024 + batch, "mns": batch + 1024, "cbns": batch + 4096, "xir": 2 * batch, "full": catalogue,
    }.get(sampler, batch)


def estimate_bytes(sampler: str, batch: int, catalogue: int) -> float:
    """Transient memory of one step, from the dense (B × n) matrices the loss materialises."""
    return _MATRICES.get(sampler, 12) * batch * _columns(sampler, batch, catalogue) * 4.0


def _available_bytes(device: Any) -> float:
    import torch

    if device.type == "cuda":
        return float(torch.cuda.mem_get_info()[0])
    try:
        for text in Path("/proc/meminfo").read_text().splitlines():
            if text.startswith("MemAvailable:"):
                return int(text.split()[1]) * 1024.0
    except OSError:
        pass
    return float("inf")


def _setup(params: dict[str, Any]) -> None:
    import torch

    if params.get("threads"):
        torch.set_num_threads(params["threads"])


def _measure_catalogue(params: dict[str, Any]) -> list[dict[str, Any]]:
    """Child process: one catalogue, every (B, sampler) cell; returns one dict per cell."""
    import torch

    from bench_train_scaling import _batch, _timed_step, make_trainer, round_robin, sampler_for

    _setup(params)
    catalogue, users = params["catalogue"], params["user_capacity"]
    trainer, fill_s = make_trainer(
        catalogue, user_capacity=users, dim=params["dim"], device=params["device"],
        sampler=params["samplers"][0], batch_size=max(params["batch_sizes"]),
    )
    device = trainer.device
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for batch_size in params["batch_sizes"]:
        cells: dict[str, dict[str, Any]] = {}
        for name in params["samplers"]:
            need = estimate_bytes(name, batch_size, catalogue)
            cell = {"sampler": name, "batch": batch_size, "catalogue": catalogue, "fill_s": fill_s,
                    "device": str(device), "peak_rss": 0.0, "step_rss": None, "cuda_peak": None}
            if need > 0.7 * _available_bytes(device):
                cell["skipped"] = f"needs ~{need / 1e9:.0f} GB for the step's matrices"
            cells[name] = cell
        built = {name: sampler_for(trainer, name, batch_size) for name, c in cells.items() if "skipped" not in c}

        def step(name: str) -> float:
            cell = cells[name]
            trainer.state.sampler = built[name]
            batch = _batch(rng, batch_size, users - 1, catalogue - 1, float(trainer.step))
            resettable = reset_peak_rss()
            before = peak_rss()[0]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            elapsed = _timed_step(trainer, batch)
            after = peak_rss()[0]
            cell["peak_rss"] = max(cell["peak_rss"], after)
            if resettable:
                cell["step_rss"] = max(cell["step_rss"] or 0.0, after - before)
            if device.type == "cuda":
                cell["cuda_peak"] = max(cell["cuda_peak"] or 0.0, float(torch.cuda.max_memory_allocated()))
            return elapsed

        times = round_robin(
            {name: (lambda n=name: step(n)) for name in built},
            params["warmup"], params["steps"], params["cell_seconds"],
        )
        for name, cell in cells.items():
            if name in times:
                cell["times"] = times[name]
            rows.append(cell)
    return rows


def _measure_interleaved(params: dict[str, Any]) -> dict[tuple[str, int, int], list[float]]:
    """Child process: all catalogues at once, steps round robin over catalogues per (sampler, B)."""
    from bench_train_scaling import _batch, _timed_step, make_trainer, round_robin, set_sampler

    _setup(params)
    users = params["user_capacity"]
    trainers = {
        c: make_trainer(c, user_capacity=users, dim=params["dim"], device=params["device"],
                        sampler=params["samplers"][0], batch_size=max(params["batch_sizes"]))[0]
        for c in params["catalogues"]
    }
    rng = np.random.default_rng(0)
    out: dict[tuple[str, int, int], list[float]] = {}
    for name in params["samplers"]:
        for batch_size in params["batch_sizes"]:
            need = max(estimate_bytes(name, batch_size, c) for c in trainers)
            if need > 0.7 * _available_bytes(next(iter(trainers.values())).device):
                continue
            for trainer in trainers.values():
                set_sampler(trainer, name, batch_size)
            steps = {
                c: (lambda t=t, c=c: _timed_step(t, _batch(rng, batch_size, users - 1, c - 1, float(t.step))))
                for c, t in trainers.items()
            }
            times = round_robin(steps, params["warmup"], params["steps"], params["cell_seconds"])
            for c, values in times.items():
                out[(name, batch_size, c)] = values
    return out


def _in_child(fn: Any, params: dict[str, Any]) -> Any:
    # spawn: a fresh interpreter per measurement (CUDA-safe, and its memory is returned afterwards)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, params).result()


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e9:.2f}"


def _label(n: int) -> str:
    for div, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= div and n % div == 0:
            return f"{n // div}{suffix}"
    return str(n)


def train_tables(opts: Any) -> list[Table]:
    params = _params(opts, opts.samplers)
    rows: list[dict[str, Any]] = []
    for catalogue in opts.catalogues:
        rows += _in_child(_measure_catalogue, {**params, "catalogue": catalogue})
    base = opts.samplers[0]
    medians = {(r["sampler"], r["batch"], r["catalogue"]): statistics.median(r["times"]) for r in rows if "times" in r}
    table = Table(
        f"train: steps/s and examples/s per sampler ({rows[0]['device'] if rows else '?'})",
        ["sampler", "B", "catalogue", "timed steps", "ms/step", "steps/s", "examples/s", f"x {base}",
         "peak RSS GB", "step RSS GB", "CUDA peak GB"],
    )
    for r in rows:
        key = (r["sampler"], r["batch"], r["catalogue"])
        if "times" not in r:
            table.add(r["sampler"], r["batch"], _label(r["catalogue"]), 0, "-", "-", "-", "-", "-", "-", "-")
            table.notes.append(f"{r['sampler']} B={r['batch']} {_label(r['catalogue'])}: skipped, {r.get('skipped')}")
            continue
        med = medians[key]
        ref = medians.get((base, r["batch"], r["catalogue"]))
        table.add(
            r["sampler"], r["batch"], _label(r["catalogue"]), len(r["times"]), f"{1e3 * med:.1f}", f"{1 / med:.2f}",
            fmt_rate(r["batch"] / med), fmt_ratio(med / ref) if ref else "-",
            _gb(r["peak_rss"]), _gb(r["step_rss"]), _gb(r["cuda_peak"]),
        )
    fills = sorted({(r["catalogue"], r["fill_s"]) for r in rows})
    table.notes += [
        f"median over timed steps after {opts.warmup} warm-up round(s), samplers round robin; "
        f"D={opts.dim}, {_label(opts.user_capacity)} users, vocabularies filled to capacity "
        f"({', '.join(f'{_label(c)} in {s:.0f} s' for c, s in fills)}); ids uniform over the catalogue",
        "peak RSS: the process's VmHWM during the step (catalogue resident); step RSS: what the step added",
    ]
    return [table]


def scaling_tables(opts: Any) -> list[Table]:
    samplers = opts.scaling_samplers
    params = {**_params(opts, samplers), "batch_sizes": list(opts.scaling_batch_sizes)}
    times = _in_child(_measure_interleaved, params)
    med = {k: statistics.median(v) for k, v in times.items()}
    cats, sizes = list(opts.catalogues), list(opts.scaling_batch_sizes)
    lo = cats[0]
    by_cat = Table(
        "scaling: step time vs catalogue size (ratio to the smallest; target <= 1.3x at 10M)",
        ["sampler", "B", *(f"{_label(c)} ms" for c in cats), *(f"{_label(c)}/{_label(lo)}" for c in cats[1:])],
    )
    for name in samplers:
        for b in sizes:
            if (name, b, lo) not in med:
                continue
            by_cat.add(name, b, *(f"{1e3 * med[(name, b, c)]:.1f}" for c in cats),
                       *(fmt_ratio(med[(name, b, c)] / med[(name, b, lo)]) for c in cats[1:]))
    by_batch = Table(
        f"scaling: step time vs batch size (ratio to B={sizes[0]}; per example = ratio x {sizes[0]}/B)",
        ["sampler", "catalogue", *(f"B={b} ms" for b in sizes), *(f"B={b} x" for b in sizes[1:]),
         *(f"B={b} per ex." for b in sizes[1:])],
    )
    for name in samplers:
        for c in cats:
            if any((name, b, c) not in med for b in sizes):
                continue
            base = med[(name, sizes[0], c)]
            by_batch.add(name, _label(c), *(f"{1e3 * med[(name, b, c)]:.1f}" for b in sizes),
                         *(fmt_ratio(med[(name, b, c)] / base) for b in sizes[1:]),
                         *(fmt_ratio(med[(name, b, c)] / base * sizes[0] / b) for b in sizes[1:]))
    missing = sorted({(n, b) for n in samplers for b in sizes if (n, b, lo) not in med})
    note = f"all catalogues resident in one process, steps round robin over them; {opts.warmup} warm-up round(s)"
    by_cat.notes.append(note)
    for n, b in missing:
        by_cat.notes.append(f"{n} B={b}: skipped (the step's matrices would not fit in memory)")
    return [by_cat, by_batch]


def _params(opts: Any, samplers: list[str]) -> dict[str, Any]:
    return {
        "samplers": samplers, "batch_sizes": list(opts.batch_sizes), "catalogues": list(opts.catalogues),
        "user_capacity": opts.user_capacity, "dim": opts.dim, "device": opts.device, "steps": opts.steps,
        "warmup": opts.warmup, "cell_seconds": opts.cell_seconds, "threads": opts.threads,
    }
