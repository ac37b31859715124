"""The sampling-bias probe: how far a sampler's loss, gradient and negatives are from the exact
softmax over all known items, on one probe batch (overview: docs/algorithms.md, section 4).
The trainer calls :func:`probe_sampler` every
``trainer.probe_interval_steps`` steps and exports the numbers as metrics.

What it reports (plain floats):

- ``full_loss``: exact sampled-softmax reference, mean over queries of
  ``log(exp(s⁺) + Σ_{j≠i⁺} exp(s_j)) − s⁺`` over the known items (chunked);
- ``sampled_loss``: ``sampler.loss(inp, update_state=False)``; ``loss_bias`` = sampled − full;
- ``gradient_alignment``: cosine between d(sampled loss)/d(queries) and d(full loss)/d(queries),
  both (B, D) flattened into one vector (the direction the optimiser sees for the batch);
  1.0 = unbiased direction. The full gradient is computed analytically, chunk by chunk:
  ``(1 − p⁺_b) · (E_{p_b}[v_j] − v⁺_b) / (τ·B)`` for query b;
- ``kl``: mean over queries of KL(p ‖ q), p the full softmax over the negatives (known items
  except the positive), q the sampler's ``proposal_log_probs`` renormalised off the positive.
  Batch/cache/bank samplers only reach the items they hold, so KL(p ‖ q) would be +inf; ``kl`` is
  KL(p_S ‖ q) with p_S = p restricted and renormalised to q's support S, and
  ``proposal_coverage`` = p(S), the softmax mass the proposal can reach at all (1 = full support;
  then ``kl`` is the ordinary KL);
- the sampler's own stats (``ess``, ``cache_hit_ratio``, ...) from the same loss call.

Huge catalogues (N > ``max_items``): the reference uses a uniform subset of ``subset_size``
known items drawn without replacement (seeded), each negative's exp-score weighted by
N / subset_size (importance correction of the normaliser and of E_p[v]); KL and coverage are
then measured on that subset. The sampled loss still sees the whole input.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from streamtrain.sampling.base import Sampler, SamplerInput

__all__ = ["probe_sampler"]


def _candidates(inp: SamplerInput, max_items: int, subset_size: int, seed: int) -> tuple[torch.Tensor, float]:
    """Rows the reference softmax runs over and the log importance weight of each negative."""
    known = inp.known_items
    n = known.numel()
    if n <= max_items:
        return known, 0.0
    gen = torch.Generator(device=known.device)
    gen.manual_seed(seed)
    picks = torch.randperm(n, generator=gen, device=known.device)[:subset_size]
    return known[picks], math.log(n / subset_size)


@torch.no_grad()
def _reference(
    inp: SamplerInput, q: torch.Tensor, cand: torch.Tensor, log_weight: float, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact (or subset-estimated) full softmax: per-query loss (B,), gradient w.r.t. q (B, D),
    and the negatives' log-normaliser (B,) for the KL pass."""
    tau = inp.temperature
    pos_emb = inp.pos_emb.detach().float()  # (B, D)
    pos = (q * pos_emb).sum(dim=1) / tau  # (B,)
    run_max = torch.full_like(pos, float("-inf"))  # (B,)
    run_sum = torch.zeros_like(pos)  # (B,) Σ exp(s − run_max)
    run_vec = torch.zeros_like(q)  # (B, D) Σ exp(s − run_max) · v
    for start in range(0, cand.numel(), chunk_size):
        rows = cand[start : start + chunk_size]  # (c,)
        emb = inp.embed_items(rows).detach().float()  # (c, D)
        s = (q @ emb.T) / tau + log_weight  # (B, c)
        s = s.masked_fill(rows.unsqueeze(0) == inp.pos_items.unsqueeze(1), float("-inf"))
        new_max = torch.maximum(run_max, s.amax(dim=1))  # (B,)
        safe_max = torch.where(torch.isneginf(new_max), torch.zeros_like(new_max), new_max)
        scale = torch.exp(run_max - safe_max)  # (B,) rescales what was summed so far
        w = torch.exp(s - safe_max.unsqueeze(1))  # (B, c)
        run_sum = run_sum * scale + w.sum(dim=1)
        run_vec = run_vec * scale.unsqueeze(1) + w @ emb
        run_max = new_max
    safe_max = torch.where(torch.isneginf(run_max), torch.zeros_like(run_max), run_max)
    lse_neg = safe_max + torch.log(run_sum)  # (B,), −inf when there is no negative
    mean_neg = run_vec / run_sum.clamp_min(1e-30).unsqueeze(1)  # (B, D) E_p[v]
    lse_all = torch.logaddexp(pos, lse_neg)  # (B,)
    loss = lse_all - pos  # (B,)
    p_pos = torch.exp(pos - lse_all)  # (B,)
    grad = (1.0 - p_pos).unsqueeze(1) * (mean_neg - pos_emb) / (tau * q.shape[0])  # (B, D)
    return loss, grad, lse_neg


@torch.no_grad()
def _kl(
    inp: SamplerInput, q: torch.Tensor, cand: torch.Tensor, log_q: torch.Tensor, lse_neg: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query support-restricted KL(p_S ‖ q) and coverage p(S); see the module docstring."""
    hit = cand.unsqueeze(0) == inp.pos_items.unsqueeze(1)  # (B, N')
    log_q = log_q.float().masked_fill(hit, float("-inf"))
    log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)  # renormalised off the positive
    cover = torch.zeros_like(lse_neg)
    cross = torch.zeros_like(lse_neg)  # Σ_S p (log p − log q)
    for start in range(0, cand.numel(), chunk_size):
        rows = cand[start : start + chunk_size]
        emb = inp.embed_items(rows).detach().float()
        log_p = (q @ emb.T) / inp.temperature - lse_neg.unsqueeze(1)  # (B, c)
        lq = log_q[:, start : start + chunk_size]
        inside = torch.isfinite(lq) & ~hit[:, start : start + chunk_size]
        p = torch.where(inside, log_p.exp(), torch.zeros_like(log_p))
        cover += p.sum(dim=1)
        cross += torch.where(inside, p * (log_p - lq), torch.zeros_like(p)).sum(dim=1)
    kl = cross / cover - torch.log(cover)  # (B,), nan where the proposal reaches nothing
    return kl, cover


def probe_sampler(
    sampler: Sampler,
    inp: SamplerInput,
    *,
    chunk_size: int = 8192,
    max_items: int = 50_000,
    subset_size: int = 20_000,
    seed: int = 0,
) -> dict[str, float]:
    """Bias numbers of ``sampler`` on the probe batch ``inp`` (see the module docstring).

    Leaves the sampler's state untouched (``update_state=False``) and accumulates no ``.grad``
    anywhere (gradients are taken with ``torch.autograd.grad`` w.r.t. a detached copy of the
    queries). Raises whatever the sampler raises; returns NaN for a quantity that is undefined
    on this batch (e.g. alignment when a gradient is exactly zero).
    """
    if inp.known_items.numel() == 0:
        raise ValueError("the bias probe needs at least one known item")
    q = inp.queries.detach().float().requires_grad_(True)  # (B, D)
    probe_inp = replace(inp, queries=q, pos_emb=inp.pos_emb.detach().float())
    with torch.enable_grad():
        out = sampler.loss(probe_inp, update_state=False)
        (grad_sampled,) = torch.autograd.grad(out.loss, q, allow_unused=True)
    if grad_sampled is None:
        grad_sampled = torch.zeros_like(q)

    qd = q.detach()
    cand, log_weight = _candidates(inp, max_items, subset_size, seed)
    full_loss, grad_full, lse_neg = _reference(probe_inp, qd, cand, log_weight, chunk_size)
    log_q = sampler.proposal_log_probs(replace(probe_inp, queries=qd, known_items=cand))  # (B, N')
    kl, cover = _kl(probe_inp, qd, cand, log_q, lse_neg - log_weight, chunk_size)

    g_s, g_f = grad_sampled.reshape(-1).float(), grad_full.reshape(-1)
    denom = g_s.norm() * g_f.norm()
    result = {
        "full_loss": full_loss.mean(),
        "sampled_loss": out.loss.detach().float(),
        "gradient_alignment": (g_s @ g_f) / denom if denom > 0 else torch.tensor(float("nan")),
        "kl": kl.nanmean(),
        "proposal_coverage": cover.mean(),
    }
    values = {k: float(v) for k, v in result.items()}
    values["loss_bias"] = values["sampled_loss"] - values["full_loss"]
    values.update({k: float(v.detach().float()) for k, v in out.stats.items()})
    return values
