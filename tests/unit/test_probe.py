"""The sampling-bias probe: exact against the ``full`` sampler, ordered sensibly for the others."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from streamtrain.config import SamplerConfig
from streamtrain.evaluation.probe import probe_sampler
from streamtrain.sampling import Sampler, SamplerInput, build_sampler
from streamtrain.sampling.uniform import UniformSampler

N_ITEMS, BATCH, DIM, TAU = 2000, 128, 16, 0.1


def skewed_world(seed: int = 0, table: torch.nn.Embedding | None = None) -> SamplerInput:
    """Zipf(1) positives over 2000 items; queries near their positives; exact log P(in batch)."""
    gen = torch.Generator().manual_seed(seed)
    pop = 1.0 / torch.arange(1, N_ITEMS + 1, dtype=torch.float64)
    pop = pop / pop.sum()
    if table is None:
        table = torch.nn.Embedding(N_ITEMS, DIM)
        with torch.no_grad():
            table.weight.copy_(torch.randn(N_ITEMS, DIM, generator=gen))
    embed = lambda rows: F.normalize(table(rows), dim=1)
    pos = torch.multinomial(pop, BATCH, replacement=True, generator=gen)
    queries = F.normalize(embed(pos).detach() + torch.randn(BATCH, DIM, generator=gen), dim=1)
    log_q = torch.log1p(-((1 - pop) ** BATCH)).float()
    return SamplerInput(queries, pos, embed(pos), embed, lambda rows: log_q[rows], torch.arange(N_ITEMS), TAU)


def sampler(name: str, seed: int = 0) -> Sampler:
    return build_sampler(SamplerConfig(name=name), batch_size=BATCH, seed=seed, device=torch.device("cpu"))


def test_full_sampler_has_no_bias() -> None:
    out = probe_sampler(sampler("full"), skewed_world(), chunk_size=300)  # several chunks
    assert out["loss_bias"] == pytest.approx(0.0, abs=1e-4)
    assert out["gradient_alignment"] == pytest.approx(1.0, abs=1e-5)
    assert out["kl"] == pytest.approx(0.0, abs=1e-4)
    assert out["proposal_coverage"] == pytest.approx(1.0, abs=1e-5)
    assert all(isinstance(v, float) for v in out.values())


def test_corrections_shrink_loss_bias_and_resampling_shrinks_kl() -> None:
    inp = skewed_world()
    res = {name: probe_sampler(sampler(name), inp) for name in ("inbatch", "inbatch_logq", "bir")}
    # in-batch negatives are too few and too popular: the loss is underestimated; logQ and
    # resampling each bring it closer to the full softmax loss
    assert res["inbatch"]["loss_bias"] < res["inbatch_logq"]["loss_bias"] < res["bir"]["loss_bias"] < 0
    # all three only reach the batch's items ...
    assert res["inbatch"]["proposal_coverage"] == pytest.approx(res["bir"]["proposal_coverage"])
    assert res["inbatch"]["proposal_coverage"] < 0.5
    # ... but BIR's resampling distribution is far closer to the softmax on that support
    assert res["bir"]["kl"] < 0.5 * res["inbatch"]["kl"]
    assert 1.0 <= res["bir"]["ess"] <= BATCH


def test_more_uniform_negatives_align_better() -> None:
    inp = skewed_world()
    few = probe_sampler(UniformSampler(8, seed=0), inp)
    many = probe_sampler(UniformSampler(4096, seed=0), inp)
    assert many["proposal_coverage"] == pytest.approx(1.0)
    assert many["gradient_alignment"] > 0.98 > few["gradient_alignment"]
    assert abs(many["loss_bias"] - np.log(4096 / N_ITEMS)) < 0.1  # K draws over N items: + log(K/N)


def test_xir_probe_reports_its_stats_and_changes_nothing() -> None:
    table = torch.nn.Embedding(N_ITEMS, DIM)
    xir = sampler("xir")
    xir.loss(skewed_world(1, table))  # fill the cache
    before = xir.state_dict()
    table.zero_grad()
    out = probe_sampler(xir, skewed_world(2, table))
    assert {"ess", "cache_ess", "cache_hit_ratio", "cache_draw_share"} <= set(out)
    assert 0.0 <= out["cache_hit_ratio"] <= 1.0 and out["cache_draw_share"] == pytest.approx(0.5, abs=0.01)
    after = xir.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert table.weight.grad is None  # no .grad accumulated by the probe


def test_large_catalogue_uses_an_importance_weighted_subset() -> None:
    inp = skewed_world()
    exact = probe_sampler(sampler("full"), inp)
    approx = probe_sampler(sampler("full"), inp, max_items=500, subset_size=1000, seed=3)
    assert approx["full_loss"] == pytest.approx(exact["full_loss"], rel=0.02)
    assert approx["gradient_alignment"] > 0.99
    assert approx["full_loss"] != exact["full_loss"]  # the subset path really ran
