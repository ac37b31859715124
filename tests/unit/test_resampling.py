"""The multinomial resampler's index form (Draws): counts, per-column totals, edge cases of the search."""

from __future__ import annotations

import math

import pytest
import torch

from streamtrain.sampling import resampling
from streamtrain.sampling.resampling import draw_counts, draw_multinomial


def _world(rows: int = 6, cols: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    log_w = torch.randn(rows, cols, generator=gen) * 3.0
    drop = torch.zeros(rows, cols, dtype=torch.bool)
    drop[torch.arange(rows), torch.arange(rows)] = True  # each row's own column, as in the batch block
    drop[2] = True  # a dead row: nothing kept
    return log_w, drop


def test_per_column_equals_the_dense_counts_and_dead_rows_draw_nothing() -> None:
    log_w, drop = _world()
    draws, ess = draw_multinomial(log_w, drop, 500, torch.Generator().manual_seed(1))
    counts = draws.counts()
    assert counts.shape == log_w.shape
    assert counts[2].sum() == 0 and ess[2] == 0  # the dead row
    alive_rows = [r for r in range(log_w.shape[0]) if r != 2]
    assert torch.equal(counts[alive_rows].sum(dim=1), torch.full((len(alive_rows),), 500.0))
    assert counts[drop].sum() == 0  # dropped columns are never drawn
    assert torch.equal(draws.per_column(), counts.sum(dim=0).long())
    assert draws.index is not None and torch.equal(draws.index, draws.index.sort(dim=1).values)  # sorted rows


def test_dense_and_index_forms_draw_the_same_for_the_same_generator_state() -> None:
    log_w, drop = _world(seed=3)
    draws, ess_a = draw_multinomial(log_w, drop, 64, torch.Generator().manual_seed(9))
    counts, ess_b = draw_counts(log_w, drop, 64, torch.Generator().manual_seed(9))
    assert torch.equal(draws.counts(), counts) and torch.equal(ess_a, ess_b)


def test_a_uniform_that_rounds_up_to_the_total_lands_on_the_last_kept_column(monkeypatch: pytest.MonkeyPatch) -> None:
    """u = total (float rounding of U·total) must not fall through to a dropped trailing column."""
    log_w = torch.zeros(2, 5)
    drop = torch.zeros(2, 5, dtype=torch.bool)
    drop[:, 3:] = True  # the last two columns are dropped (e.g. the query's own positive)
    monkeypatch.setattr(resampling, "_sorted_uniforms", lambda rows, r, gen, device: torch.ones(rows, r))
    draws, _ = draw_multinomial(log_w, drop, 4, torch.Generator().manual_seed(0))
    assert draws.index is not None and (draws.index == 2).all()


def test_sorted_uniforms_are_uniform_order_statistics() -> None:
    """Every position k of the sorted vector has mean (k+1)/(R+1); the pooled values are U(0, 1)."""
    rows, r = 20_000, 4
    u = resampling._sorted_uniforms(rows, r, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(u, u.sort(dim=1).values) and u.min() >= 0 and u.max() <= 1
    means = u.double().mean(dim=0)
    expected = torch.arange(1, r + 1, dtype=torch.float64) / (r + 1)
    # Var of the k-th order statistic of R uniforms: k(R+1-k) / ((R+1)^2 (R+2))
    k = torch.arange(1, r + 1, dtype=torch.float64)
    stderr = (k * (r + 1 - k) / ((r + 1) ** 2 * (r + 2)) / rows).sqrt()
    assert ((means - expected).abs() < 4 * stderr).all()
    deciles = torch.histc(u.double().flatten(), bins=10, min=0.0, max=1.0)
    n = rows * r
    chi2 = float(((deciles - n / 10) ** 2 / (n / 10)).sum())
    assert chi2 < 27.9  # chi-square 9 d.o.f., p = 0.999
    assert not math.isnan(chi2)
