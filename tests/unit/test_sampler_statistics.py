"""Statistical checks of the samplers' draws against their target distributions (fixed seeds,
explicit bounds). Chi-square statistics are compared with the 0.999 quantile (Wilson–Hilferty),
and each test also shows the statistic rejects a plausible wrong target."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from streamtrain.sampling import SamplerInput
from streamtrain.sampling.bir import BatchImportanceResampler
from streamtrain.sampling.mns import MixedNegativeSampler
from streamtrain.sampling.resampling import systematic_counts
from streamtrain.sampling.uniform import UniformSampler
from streamtrain.sampling.xir import CacheImportanceResampler

N_ITEMS, BATCH, DIM, TAU = 200, 32, 16, 0.2
Z_999 = 3.090232


def chi2_quantile_999(df: int) -> float:
    """Wilson–Hilferty approximation of the chi-square 0.999 quantile."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + Z_999 * math.sqrt(h)) ** 3


def chi2(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson statistic and degrees of freedom of ``counts`` (K,) against ``probs`` (K,);
    bins expected below ``min_expected`` are pooled into one."""
    counts, probs = counts.double(), probs.double()
    total = counts.sum()
    expected = probs / probs.sum() * total
    big = expected >= min_expected
    obs = torch.cat([counts[big], counts[~big].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    keep = exp > 0
    assert (obs[~keep] == 0).all(), "draws landed where the target has no mass"
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    return stat, int(keep.sum()) - 1


def summed_chi2(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Row-wise statistics of (B, K) counts summed over rows (independent rows add up)."""
    stat, df = 0.0, 0
    for c, p in zip(counts, probs):
        s, d = chi2(c, p)
        stat, df = stat + s, df + d
    return stat, df


def world(seed: int = 0) -> tuple[SamplerInput, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    items = F.normalize(torch.randn(N_ITEMS, DIM, generator=gen), dim=1)
    pop = 1.0 / torch.arange(1, N_ITEMS + 1, dtype=torch.float64)
    pop = pop / pop.sum()
    log_q = torch.log1p(-((1 - pop) ** BATCH)).float()
    pos = torch.multinomial(pop, BATCH, replacement=True, generator=gen)
    inp = SamplerInput(
        queries=F.normalize(torch.randn(BATCH, DIM, generator=gen), dim=1),
        pos_items=pos,
        pos_emb=items[pos],
        embed_items=lambda rows: items[rows],
        log_q=lambda rows: log_q[rows],
        known_items=torch.arange(N_ITEMS),
        temperature=TAU,
    )
    return inp, log_q


def resampling_target(inp: SamplerInput, cand_rows: torch.Tensor, log_q: torch.Tensor, use_log_q: bool = True):
    """(B, n) w(j|u) ∝ exp(s(u,j) − log p̂_j), zero on the query's own positive."""
    scores = inp.queries @ inp.embed_items(cand_rows).T / inp.temperature
    if use_log_q:
        scores = scores - log_q[cand_rows]
    scores = scores.masked_fill(cand_rows.unsqueeze(0) == inp.pos_items.unsqueeze(1), float("-inf"))
    return torch.softmax(scores.double(), dim=1)


def test_bir_draws_follow_importance_weights() -> None:
    inp, log_q = world()
    sampler = BatchImportanceResampler(20_000, seed=0)
    sampler.loss(inp)
    counts = sampler.last_counts  # (B, B) draws per batch position
    assert counts is not None and torch.equal(counts.sum(dim=1), torch.full((BATCH,), 20_000.0))
    stat, df = summed_chi2(counts, resampling_target(inp, inp.pos_items, log_q))
    assert stat < chi2_quantile_999(df)
    wrong, wrong_df = summed_chi2(counts, resampling_target(inp, inp.pos_items, log_q, use_log_q=False))
    assert wrong > chi2_quantile_999(wrong_df)  # the test can tell a missing logQ term


def test_xir_cache_draws_follow_cache_weights() -> None:
    inp, log_q = world()
    sampler = CacheImportanceResampler(cache_size=BATCH, cache_draws=20_000, batch_draws=BATCH // 2, seed=0)
    sampler.loss(inp)  # fills the cache
    next_inp, _ = world(seed=1)
    sampler.loss(next_inp, update_state=False)
    counts = sampler.last_counts["cache"]  # (B, C) draws per cache position
    assert counts is not None
    target = resampling_target(next_inp, sampler.cache_rows, log_q)
    stat, df = summed_chi2(counts, target)
    assert stat < chi2_quantile_999(df)
    wrong, wrong_df = summed_chi2(counts, resampling_target(next_inp, sampler.cache_rows, log_q, use_log_q=False))
    assert wrong > chi2_quantile_999(wrong_df)


def test_uniform_sampler_is_uniform_over_known_items() -> None:
    inp, _ = world()
    known = torch.arange(1, N_ITEMS, 2)  # odd rows only: the sampler must not invent rows
    seen: list[torch.Tensor] = []

    def embed(rows: torch.Tensor) -> torch.Tensor:
        seen.append(rows)
        return inp.embed_items(rows)

    sampler = UniformSampler(20_000, seed=0)
    sampler.loss(replace(inp, embed_items=embed, known_items=known))
    drawn = torch.cat(seen)
    assert torch.isin(drawn, known).all()
    counts = torch.bincount(drawn, minlength=N_ITEMS)[known]
    stat, df = chi2(counts, torch.ones(known.numel()))
    assert stat < chi2_quantile_999(df)
    tilted = torch.linspace(0.5, 1.5, known.numel())
    wrong, wrong_df = chi2(counts, tilted)
    assert wrong > chi2_quantile_999(wrong_df)


def test_mns_mixture_correction_gives_the_expected_normaliser() -> None:
    """Over many batches, Σ_k exp(s'(u,k)) for a fixed query has the expectation
    Σ_{j≠i⁺} exp(s_j) · ((B−1)·p_j + B'/N) / Q_j with Q_j = r·p_j + (1−r)/N (B−1 free batch slots
    drawn ∝ p, B' uniform draws) when log p̂ = log(B·p_j), i.e. p̂/B is the per-draw probability."""
    gen = torch.Generator().manual_seed(0)
    b, b_uni, steps = 32, 32, 600
    items = F.normalize(torch.randn(N_ITEMS, DIM, generator=gen), dim=1)
    pop = 1.0 / (torch.arange(N_ITEMS, dtype=torch.float64) + 20.0)
    pop[0] = 0.0  # the query's positive never shows up as a batch negative
    pop = pop / pop.sum()
    log_q = torch.log(b * pop).float()
    query = F.normalize(torch.randn(1, DIM, generator=gen), dim=1)
    sampler = MixedNegativeSampler(b_uni, seed=0)
    sums = []
    for _ in range(steps):
        pos = torch.cat([torch.zeros(1, dtype=torch.long), torch.multinomial(pop, b - 1, True, generator=gen)])
        inp = SamplerInput(
            queries=query.expand(b, DIM),
            pos_items=pos,
            pos_emb=items[pos],
            embed_items=lambda rows: items[rows],
            log_q=lambda rows: log_q[rows],
            known_items=torch.arange(N_ITEMS),
            temperature=0.5,
        )
        logits = sampler.corrected_logits(inp, sampler.generator)  # (B, B+B'), column 0: the positive
        sums.append(float(logits[0, 1:].double().exp().sum()))  # masked hits contribute exp(-1e5) = 0
    s = (query @ items.T / 0.5).squeeze(0).double()[1:]  # items j ≠ positive
    p, r = pop[1:], b / (b + b_uni)
    q_mix = r * p + (1 - r) / N_ITEMS
    expected = float((s.exp() * ((b - 1) * p + b_uni / N_ITEMS) / q_mix).sum())
    mean = sum(sums) / steps
    stderr = (sum((x - mean) ** 2 for x in sums) / (steps - 1) / steps) ** 0.5
    assert abs(mean - expected) < 4 * stderr + 1e-3 * expected
    assert stderr < 0.02 * expected  # the bound above is tight enough to mean something
    q_wrong = r * b * p + (1 - r) / N_ITEMS  # p̂ used without the 1/B scale
    wrong = float((s.exp() * ((b - 1) * p + b_uni / N_ITEMS) / q_wrong).sum())
    assert abs(mean - wrong) > 10 * stderr


def test_xir_occurrence_accumulates_exact_draw_counts() -> None:
    inp, _ = world()
    sampler = CacheImportanceResampler(cache_size=BATCH, cache_draws=16, batch_draws=16, seed=0)
    sampler.loss(inp)
    old_cache = sampler.cache_rows.clone()
    before = sampler.occurrence.clone()
    next_inp, _ = world(seed=1)
    sampler.loss(next_inp)
    counts_b, counts_c = sampler.last_counts["batch"], sampler.last_counts["cache"]
    assert counts_c is not None
    expected = before.clone()
    expected.index_add_(0, next_inp.pos_items, counts_b.sum(0).double())
    expected.index_add_(0, old_cache, counts_c.sum(0).double())
    assert torch.equal(sampler.occurrence, expected)
    drawn = torch.cat([next_inp.pos_items[counts_b.sum(0) > 0], old_cache[counts_c.sum(0) > 0]])
    assert torch.isin(sampler.cache_rows, drawn).all()


def test_xir_new_cache_is_drawn_proportional_to_occurrence() -> None:
    """Candidates: row 5 at two positions (both drawn), 7, 11, 13 drawn, 9 not drawn (though it
    has the largest o). New cache ∝ o over the distinct drawn rows {5, 7, 11, 13}."""
    sampler = CacheImportanceResampler(cache_size=20_000, cache_draws=1, batch_draws=1, seed=0)
    occ = torch.ones(32, dtype=torch.long)
    occ[5], occ[7], occ[9], occ[11], occ[13] = 10, 3, 50, 1, 6
    sampler.occurrence = occ.clone()
    rows = torch.tensor([5, 5, 7, 9, 11, 13])
    counts = torch.tensor([1, 2, 3, 0, 2, 1])  # int64, as Draws.per_column gives them
    sampler._update_cache(rows, counts, sampler.generator)
    assert sampler.occurrence[[5, 7, 9, 11, 13]].tolist() == [13, 6, 50, 3, 7]
    cache_counts = torch.bincount(sampler.cache_rows, minlength=32)
    assert cache_counts[9] == 0 and cache_counts.sum() == 20_000
    picked = cache_counts[[5, 7, 11, 13]]
    stat, df = chi2(picked, torch.tensor([13.0, 6.0, 3.0, 7.0]))
    assert stat < chi2_quantile_999(df)
    doubled, ddf = chi2(picked, torch.tensor([26.0, 6.0, 3.0, 7.0]))  # row 5 counted per position
    assert doubled > chi2_quantile_999(ddf)


def test_systematic_resampling_is_unbiased_and_within_one_of_its_target() -> None:
    """The opt-in systematic resampler: counts ∈ {⌊R·w⌋, ⌊R·w⌋+1}, E[count] = R·w, hits never."""
    gen = torch.Generator().manual_seed(0)
    rows, n, draws = 4000, 50, 37
    log_w = (torch.randn(n, generator=gen) * 2).expand(rows, n).contiguous()
    drop = torch.zeros(rows, n, dtype=torch.bool)
    drop[:, 3] = True
    counts, ess = systematic_counts(log_w, drop, draws, gen)
    target = draws * torch.softmax(log_w[0].masked_fill(drop[0], float("-inf")), dim=0)  # (n,)
    assert torch.equal(counts.sum(dim=1), torch.full((rows,), float(draws)))
    assert (counts[:, 3] == 0).all()
    assert ((counts - target).abs() < 1.0 + 1e-4).all()
    assert ((counts.mean(dim=0) - target).abs() < 0.05).all()  # 0.5 / sqrt(4000) ≈ 0.008 per entry
    assert torch.allclose(ess, ess[0].expand(rows)) and 1.0 <= float(ess[0]) <= n


def test_systematic_option_trains_like_the_default() -> None:
    inp, _ = world()
    xir = CacheImportanceResampler(BATCH, BATCH // 2, BATCH // 2, resampling="systematic", seed=0)
    for step in range(3):  # the second and third steps use the cache
        assert torch.isfinite(xir.loss(world(seed=step)[0]).loss)
    systematic = BatchImportanceResampler(4 * BATCH, resampling="systematic", seed=0).loss(inp).loss
    multinomial = BatchImportanceResampler(4 * BATCH, seed=0).loss(inp).loss
    assert abs(float(systematic) - float(multinomial)) < 0.1  # same expectation, both close to it
