"""Set membership on the device without a host sync: ``torch.isin`` may sort through
``torch.unique``, whose data-dependent output size makes the host wait for the device."""

from __future__ import annotations

import torch

__all__ = ["member"]


def member(values: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Bool tensor shaped like ``values``: is each element in ``pool`` (m,)? Sort + binary search,
    every size known up front. An empty pool gives all False."""
    if pool.numel() == 0:
        return torch.zeros_like(values, dtype=torch.bool)
    ordered = pool.reshape(-1).to(values.dtype).sort().values  # (m,)
    at = torch.searchsorted(ordered, values.reshape(-1)).clamp_(max=ordered.numel() - 1)  # (n,)
    return (ordered[at] == values.reshape(-1)).reshape(values.shape)
