"""Turn a sampler's per-query distribution over its candidates into one over the known items.

``Sampler.proposal_log_probs`` must return (B, N) log-probabilities over the rows of
``inp.known_items``. Batch-, bank- and cache-based samplers draw from candidate lists that may
repeat items; this module sums the mass of repeated items and maps it onto known-item columns.
Only the bias probe calls these (every few hundred steps), so clarity beats speed here.
"""

from __future__ import annotations

import math

import torch

__all__ = ["candidates_to_known", "uniform_log_probs"]


def candidates_to_known(cand_rows: torch.Tensor, probs: torch.Tensor, known_items: torch.Tensor) -> torch.Tensor:
    """(B, N) log-probabilities from ``probs`` (B, n) over candidate item rows ``cand_rows``
    ((n,) shared or (B, n) per query). Mass on rows outside ``known_items`` is dropped and each
    row renormalised; items no candidate reaches get −inf (outside the sampler's support)."""
    batch, n = probs.shape
    total = known_items.numel()
    if cand_rows.dim() == 1:
        cand_rows = cand_rows.unsqueeze(0).expand(batch, n)  # (B, n)
    sorted_known, order = known_items.sort()  # (N,), (N,)
    at = torch.searchsorted(sorted_known, cand_rows.contiguous()).clamp_(max=max(total - 1, 0))  # (B, n)
    found = sorted_known[at] == cand_rows  # (B, n)
    cols = order[at]  # (B, n) columns of known_items
    mass = torch.zeros(batch, total, dtype=torch.float64, device=probs.device)  # (B, N)
    mass.scatter_add_(1, cols, torch.where(found, probs.double(), torch.zeros_like(probs, dtype=torch.float64)))
    mass = mass / mass.sum(dim=1, keepdim=True).clamp_min(1e-300)
    return mass.log().float()  # (B, N)


def uniform_log_probs(batch: int, known_items: torch.Tensor) -> torch.Tensor:
    """(B, N) log(1/N): every known item equally likely."""
    n = known_items.numel()
    return torch.full((batch, n), -math.log(max(n, 1)), device=known_items.device)
