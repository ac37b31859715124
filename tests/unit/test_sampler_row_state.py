"""Per-row sampler state in a stream: XIR's occurrence vector decays with a half-life (exactly, and
the new cache follows the decayed o), old integer states load, and forgetting a row resets o and
masks cache and CBNS bank entries."""

from __future__ import annotations

import numpy as np
import torch

from streamtrain.sampling.cbns import CrossBatchSampler
from streamtrain.sampling.xir import CacheImportanceResampler
from test_sampler_contract import World, _through_bytes  # noqa: I001 (shared synthetic world)
from test_sampler_statistics import chi2, chi2_quantile_999


def _xir(half_life: float | None, cache_size: int = 8) -> CacheImportanceResampler:
    return CacheImportanceResampler(cache_size, 4, 4, occurrence_half_life_steps=half_life, seed=0)


def test_occurrence_halves_every_half_life_exactly_across_rescales() -> None:
    """o = 1 + Σ_s 2^(−(t−s)/h) · draws_s, checked against the closed form over 150 steps with
    h = 2 (the stored counts are rescaled at age 128, inside the run) and through a state round trip."""
    xir, h = _xir(2.0), 2.0
    expected = np.zeros(16)
    for step in range(150):
        rows = torch.tensor([3, 5 if step % 3 else 7])
        xir._update_cache(rows, torch.tensor([2, 1]), xir.generator)
        expected *= 0.5 ** (1 / h)
        expected[3] += 2  # added this step, decays from the next one
        expected[5 if step % 3 else 7] += 1
        expected_now = 1 + expected * 0.5 ** (1 / h)  # ... one step older once the step is over
        np.testing.assert_allclose(xir.occurrence[:16].numpy(), expected_now, rtol=1e-9)
    assert xir._age < 128  # the rescale happened
    restored = _xir(2.0)
    restored.load_state_dict(_through_bytes(xir.state_dict()))
    assert torch.equal(restored.occurrence, xir.occurrence)
    for sampler in (xir, restored):
        sampler._update_cache(torch.tensor([3, 9]), torch.tensor([1, 1]), sampler.generator)
    assert torch.equal(restored.occurrence, xir.occurrence) and torch.equal(restored.cache_rows, xir.cache_rows)


def test_new_cache_follows_the_decayed_occurrence() -> None:
    """h = 10: row 5 drawn 40 times 21 steps ago, row 7 10 times one step ago, both once now:
    o₅ = 1 + 40·2^(−2.1) + 1 = o₇ = 1 + 10·2^(−0.1) + 1 ≈ 11.3, so the cache holds them equally;
    without decay 5 dominates 42 : 12."""
    for half_life, target in ((10.0, [12.0, 12.0]), (None, [42.0, 12.0])):
        xir = CacheImportanceResampler(20_000, 1, 1, occurrence_half_life_steps=half_life, seed=0)
        xir._update_cache(torch.tensor([5]), torch.tensor([40]), xir.generator)
        for _ in range(19):
            xir._update_cache(torch.tensor([9]), torch.tensor([1]), xir.generator)
        xir._update_cache(torch.tensor([7]), torch.tensor([10]), xir.generator)
        xir._update_cache(torch.tensor([5, 7]), torch.tensor([1, 1]), xir.generator)
        picked = torch.bincount(xir.cache_rows, minlength=16)[[5, 7]]
        stat, df = chi2(picked, torch.tensor(target))
        assert stat < chi2_quantile_999(df), (half_life, picked)


def test_integer_occurrence_state_of_older_versions_loads() -> None:
    xir = _xir(None)
    state = xir.state_dict()
    del state["occurrence_excess"], state["occurrence_age"]
    state["occurrence"] = np.array([1, 4, 1, 9], dtype=np.int64)
    state["cache_rows"] = np.array([1, 3], dtype=np.int64)
    fresh = _xir(100.0)
    fresh.load_state_dict(state)
    assert fresh.occurrence.tolist() == [1.0, 4.0, 1.0, 9.0] and fresh.cache_rows.tolist() == [1, 3]


def test_xir_forget_resets_occurrence_and_masks_cache_entries() -> None:
    world = World()
    xir = _xir(50.0, cache_size=32)
    for step in range(3):
        xir.loss(world.batch(step))
    cached = xir.cache_rows[:2].clone()
    assert (xir.occurrence[cached] > 1).all()
    xir.forget_rows(torch.cat([cached, torch.tensor([10**6])]))  # a row beyond o: already at 1
    assert (xir.occurrence[cached] == 1).all() and not torch.isin(xir.cache_rows, cached).any()
    assert (xir.cache_rows == -1).sum() >= 2
    xir.loss(world.batch(3))  # the next update redraws the cache from this step's draws
    assert (xir.cache_rows >= 0).all()


def test_cbns_forgotten_bank_entries_are_masked() -> None:
    """After forgetting, whatever the bank held for the row has no effect on the loss."""
    world = World()
    cbns = CrossBatchSampler(bank_size=64, warmup_steps=0)
    for step in range(2):
        cbns.loss(world.batch(step))
    row = int(cbns._rows[0])
    cbns.forget_rows(torch.tensor([row]))
    stale = cbns._rows == -1
    assert stale.any() and cbns._emb is not None and (cbns._emb[stale] == 0).all()
    inp = world.batch(2)
    base = cbns.loss(inp, update_state=False).loss
    cbns._emb[stale] = 1e4  # were the entries used, this would dominate the loss
    assert torch.equal(cbns.loss(inp, update_state=False).loss, base)
