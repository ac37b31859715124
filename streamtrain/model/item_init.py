"""A new item's row starts from the queries that led to it, not from noise.

When the vocabulary hands a row to a new item, the row gets a random vector (``init_std``): until it
has trained, that item scores at random against every query, and a few hundred young items with
random rows crowd the top of rankings they do not belong in. The events of the step that admitted
the item say better where it belongs: the queries of the users who just took it. So, after the
step's progressive evaluation (test-then-train: the batch was ranked with the random row) and
before its loss, each new item row is set to the mean of those events' queries (detached), scaled
to the norm a random row would have had (``init_std * sqrt(D)``) so the optimizer's step size
relative to the row is unchanged. An id-only model does this too (its queries are user rows).

Device-only and sync-free: which events hit a new row is found by sort + binary search over the
step's assigned rows (sizes known up front); the means are ``index_add_`` sums.
"""

from __future__ import annotations

import math

import torch

from streamtrain.model.two_tower import TwoTowerModel

__all__ = ["init_new_items_from_queries"]


@torch.no_grad()
def init_new_items_from_queries(
    model: TwoTowerModel, new_rows: torch.Tensor, item_rows: torch.Tensor, queries: torch.Tensor
) -> None:
    """Set each of ``new_rows`` (n,) to the scaled mean of ``queries`` (B, D) over the events whose
    item row (``item_rows`` (B,)) it is; rows with no such event keep their values."""
    if new_rows.numel() == 0 or item_rows.numel() == 0:
        return
    weight = model.item.embedding.weight
    ordered = new_rows.to(weight.device).sort().values  # (n,)
    at = torch.searchsorted(ordered, item_rows).clamp_(max=ordered.numel() - 1)  # (B,)
    hit = (ordered[at] == item_rows).to(weight.dtype)  # (B,)
    q = queries.detach().to(weight.dtype)
    q = q / q.norm(dim=1, keepdim=True).clamp(min=1e-12)  # (B, D) directions only
    sums = torch.zeros(ordered.numel(), weight.shape[1], device=weight.device, dtype=weight.dtype)
    sums.index_add_(0, at, q * hit.unsqueeze(1))  # (n, D)
    count = torch.zeros(ordered.numel(), device=weight.device, dtype=weight.dtype).index_add_(0, at, hit)  # (n,)
    mean = sums / count.clamp(min=1).unsqueeze(1)
    norm = mean.norm(dim=1, keepdim=True)  # (n, 1); 0 for a row no event hit (or opposite queries)
    scaled = mean / norm.clamp(min=1e-12) * (model.init_std * math.sqrt(weight.shape[1]))
    keep = (norm > 1e-6) & (count > 0).unsqueeze(1)
    weight.index_copy_(0, ordered, torch.where(keep, scaled, weight.index_select(0, ordered)))
