"""``bench/gpu-check``'s ``sync`` section: the training step never makes the host wait for the GPU.

Per sampler and ``user_features`` mode, steady-state steps go through the one-step-late path
(``Trainer.submit_step``) under CUDA's sync debug mode "error" (:func:`no_host_sync`): any host
sync inside a step fails the cell. One batch of each timed run has NaN weights: its update must be
the one reported skipped (decided on the device). The rate is examples/s of that path; the note
gives it against the synchronous ``train_step`` (a host wait per step), measured right after. On
CPU the same steps run and the sync check says it does not apply.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["sync_section"]


def sync_section(
    p: dict[str, Any], device: str, budget: Any, rows: list[dict[str, Any]], samplers: list[str],
    guarded: Callable[..., None], peak_start: Callable[[torch.device], None], peak: Callable[[torch.device], float],
) -> None:
    """One row per sampler and ``user_features`` mode (id, history); see the module docstring."""
    from bench_train_scaling import _batch, _prefill, sampler_for

    from streamtrain.config import Config
    from streamtrain.training.sync_check import no_host_sync
    from streamtrain.training.trainer import Trainer

    batch, catalogue, steps = p["sync_batch"], p["sync_catalogue"], p["sync_steps"]
    rng = np.random.default_rng(3)
    for features in ("id", "history"):
        config = Config.model_validate({
            "run": {"device": device, "seed": 0}, "sampler": {"name": "inbatch"},
            "model": {"embedding_dim": p["dim"], "user_capacity": catalogue, "item_capacity": catalogue,
                      "user_features": features},
            "trainer": {"batch_size": batch, "progressive_eval_fraction": 0.25},
        })
        trainer = Trainer(config)
        _prefill(trainer, "item", catalogue // 2)  # the batches below also bring new ids
        _prefill(trainer, "user", catalogue // 2)
        for name in samplers:
            if budget.left() < 10:
                rows.append({"section": "sync", "case": f"{name} {features}", "error": "skipped: time budget"})
                continue

            def cell(name: str = name) -> dict[str, Any]:
                trainer.state.sampler = sampler_for(trainer, name, batch)
                make = lambda: [_batch(rng, batch, catalogue, catalogue, float(trainer.step)) for _ in range(steps)]  # noqa: E731
                for b in make():  # warm-up: lazy state, pinned buffers
                    trainer.submit_step(b)
                trainer.flush_stats()
                timed = make()
                timed[steps // 2] = dataclasses.replace(timed[steps // 2], weight=np.full(batch, np.nan, np.float32))
                peak_start(trainer.device)
                t0 = time.perf_counter()
                with no_host_sync(trainer.device) as active:
                    reported = [trainer.submit_step(b) for b in timed]
                reported.append(trainer.flush_stats())
                late_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                for b in make():
                    trainer.train_step(b)
                sync_s = time.perf_counter() - t0
                skipped = sum(1 for s in reported if s is not None and not s.applied)
                if skipped != 1:
                    raise RuntimeError(f"expected the NaN batch to be the one skipped update, got {skipped}")
                check = f"no host sync in {steps} steps" if active else "cpu: no CUDA sync to check"
                return {"rate": batch * steps / late_s, "unit": "examples/s", "peak_bytes": peak(trainer.device),
                        "sync_rate": batch * steps / sync_s,
                        "note": f"{check}; NaN batch skipped on the device; {sync_s / late_s:.2f}x the "
                                "synchronous step's rate"}

            guarded(rows, "sync", f"{name} {features} N={catalogue:,} B={batch}", cell)
        del trainer
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
