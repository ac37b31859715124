"""Vectorised importance resampling: R draws with replacement per query from (B, n) log-weights.

Used by BIR and XIR (Chen et al., NeurIPS 2022). Batched over queries (no Python loop), on the
log-weights' device, through a caller-owned ``torch.Generator``, and free of host syncs.

Draws use the inverse CDF: per row ``w = exp(lw − max lw)`` over the kept entries,
``cdf = cumsum(w)``, ``u ~ U(0, cdf[-1])``, and the draw is the first index with ``cdf > u``.
Dropped entries (accidental hits) have weight exactly 0 and are never drawn. Kept weights below
e⁻⁸⁰ of the row's largest are raised to e⁻⁸⁰ (keeps ``exp`` on its fast CPU path; changes any
probability by < n·2e-35). A row with nothing kept ("dead", e.g. every candidate is the query's
positive) gets no draws: its counts are all zero.

:func:`systematic_counts` is an opt-in, cheaper alternative (not the algorithm the spec names):
systematic resampling puts R evenly spaced points with one random offset per row on the CDF.
Each count is ⌊R·w_j⌋ or ⌊R·w_j⌋+1 with E[count_j] = R·w_j (so the resampled loss has the same
expectation, with less variance), but the R draws are not independent. It needs no search:
a few dense passes over (B, n) instead of R binary searches per row.
"""

from __future__ import annotations

import torch

from streamtrain.sampling.softmax_loss import UNDERFLOW_MARGIN

__all__ = ["RESAMPLERS", "draw_counts", "draw_indices", "systematic_counts"]


def _weights(log_weights: torch.Tensor, drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised weights (B, n), 0 where ``drop``, and the (B, 1) bool mask of dead rows."""
    kept = log_weights.detach().float().masked_fill(drop, float("-inf"))  # (B, n)
    row_max = kept.amax(dim=1, keepdim=True)  # (B, 1)
    dead = torch.isneginf(row_max)  # (B, 1)
    weights = kept.sub_(row_max.masked_fill(dead, 0.0)).clamp_min_(-UNDERFLOW_MARGIN).exp_()
    return weights.masked_fill_(drop, 0.0), dead


def _search(cdf: torch.Tensor, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(cdf.shape[0], num_samples, generator=generator, device=cdf.device)  # (B, R)
    u.mul_(cdf[:, -1:])
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)  # (B, R)


def _check(log_weights: torch.Tensor, drop: torch.Tensor) -> None:
    if log_weights.dim() != 2 or log_weights.shape[1] == 0 or drop.shape != log_weights.shape:
        raise ValueError(
            f"log_weights must be (B, n) with n >= 1 and drop the same shape, got "
            f"{tuple(log_weights.shape)} and {tuple(drop.shape)}"
        )


@torch.no_grad()
def draw_indices(
    log_weights: torch.Tensor, drop: torch.Tensor, num_samples: int, generator: torch.Generator
) -> torch.Tensor:
    """(B, R) int64 column indices drawn i.i.d. with replacement, P(k) ∝ exp(log_weights[b, k])
    over the entries not in ``drop``. Dead rows return arbitrary indices (callers must mask)."""
    _check(log_weights, drop)
    weights, _ = _weights(log_weights, drop)
    return _search(weights.cumsum_(dim=1), num_samples, generator)


@torch.no_grad()
def draw_counts(
    log_weights: torch.Tensor,
    drop: torch.Tensor,
    num_samples: int,
    generator: torch.Generator,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multiplicities (B, n) float32 of R i.i.d. draws per row (rows sum to R, dead rows to 0) and
    the per-row effective sample size (Σw)²/Σw² (B,) of the weights (0 for dead rows).

    The resampled loss only depends on how often each column was drawn, so samplers keep counts
    rather than (B, R) indices: the loss stays a dense (B, n) operation. ``out`` (B, n), if
    given, must be zero and receives the counts (it may be a column slice of a larger matrix).
    """
    _check(log_weights, drop)
    weights, dead = _weights(log_weights, drop)  # (B, n), (B, 1)
    cdf = weights.cumsum(dim=1)  # (B, n)
    idx = _search(cdf, num_samples, generator)  # (B, R)
    alive = (~dead).float().expand(idx.shape)  # (B, R): dead rows add zeros
    if out is None:
        out = torch.zeros(log_weights.shape, dtype=torch.float32, device=log_weights.device)
    out.scatter_add_(1, idx, alive)
    ess = cdf[:, -1].square() / torch.linalg.vecdot(weights, weights)  # (B,) (Σw)² / Σw²
    return out, ess.masked_fill(dead.squeeze(1), 0.0)


@torch.no_grad()
def systematic_counts(
    log_weights: torch.Tensor,
    drop: torch.Tensor,
    num_samples: int,
    generator: torch.Generator,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`draw_counts`, but by systematic resampling: points (k + v)/R, k = 0..R−1, one
    v ~ U(0, 1) per row; count_j = #points in [C_{j−1}, C_j) = ⌈R·C_j − v⌉ − ⌈R·C_{j−1} − v⌉."""
    _check(log_weights, drop)
    weights, dead = _weights(log_weights, drop)  # (B, n), (B, 1)
    cdf = weights.cumsum(dim=1)  # (B, n)
    total = cdf[:, -1:].clone()  # (B, 1)
    ess = total.squeeze(1).square() / torch.linalg.vecdot(weights, weights)  # (B,)
    offset = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device)  # (B, 1)
    points = cdf.mul_(num_samples / total).sub_(offset).ceil_().clamp_(0, num_samples)  # (B, n)
    counts = torch.diff(points, dim=1, prepend=torch.zeros_like(points[:, :1])).masked_fill_(dead, 0.0)
    if out is not None:
        out.copy_(counts)
        counts = out
    return counts, ess.masked_fill(dead.squeeze(1), 0.0)


RESAMPLERS = {"multinomial": draw_counts, "systematic": systematic_counts}
