"""On CUDA, the steady-state training step never makes the host wait for the device: every sampler,
every ``user_features`` mode, with new ids arriving, progressive evaluation on half the steps, event
weights and a NaN batch, under ``torch.cuda.set_sync_debug_mode("error")`` (skipped without CUDA)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from streamtrain.model.two_tower import USER_FEATURES
from streamtrain.sampling.base import SAMPLERS
from streamtrain.training.sync_check import no_host_sync
from streamtrain.training.trainer import Trainer
from test_trainer import Stream, make_config, with_new_ids  # noqa: I001 (shared stream and config)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

import streamtrain.sampling  # noqa: E402,F401  -- registers every sampler, so SAMPLERS is complete


# Issue 16's query-tower parts: context rows, attention pooling, new-item rows from queries, extra steps.
TOWER_PARTS = {"model.history_input": "both", "model.history_pooling": "attention", "model.new_item_init": "query",
               "trainer.extra_steps": 2, "trainer.replay_window_events": 256}


@pytest.mark.parametrize("parts", [False, True], ids=["plain", "tower-parts"])
@pytest.mark.parametrize("features", USER_FEATURES)
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_the_steady_state_step_never_syncs(sampler: str, features: str, parts: bool) -> None:
    config = make_config(sampler, **{
        "run.device": "cuda", "model.user_features": features, "model.hidden_dims": [16],
        "trainer.progressive_eval_fraction": 0.5, **(TOWER_PARTS if parts else {}),
    })
    trainer = Trainer(config)
    stream = Stream(seed=11)
    for _ in range(4):  # warm-up: pinned buffers, cached aranges, lazy optimizer and sampler state
        trainer.submit_step(stream.batch())
    torch.cuda.synchronize()
    batches = [stream.batch() for _ in range(6)]
    batches[2] = with_new_ids(batches[2])  # rows assigned, initial values and keys uploaded mid-run
    weight = np.ones(len(batches[4]), dtype=np.float32)
    weight[0] = np.nan
    batches[4] = dataclasses.replace(batches[4], weight=weight)  # a skipped update, decided on the device
    reported = []
    with no_host_sync(trainer.device) as active:
        assert active
        for batch in batches:
            reported.append(trainer.submit_step(batch))
    reported.append(trainer.flush_stats())
    steps = [s for s in reported if s is not None]
    assert [s.step for s in steps] == list(range(4, 11))
    applied = {s.step: s.applied for s in steps}
    assert applied[9] is False and math.isnan(steps[-2].loss)
    assert all(applied[s] for s in applied if s != 9)
    assert all(torch.isfinite(p).all() for p in trainer.state.model.parameters())
