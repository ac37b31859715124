"""Scores, the accidental-hit mask and the one sampled-softmax loss every sampler feeds.

Per query ``b`` with corrected positive logit ``p_b`` and corrected negative logits ``n_bk``:

    L_b = log( exp(p_b) + Σ_k c_bk · exp(n_bk) ) − p_b

where ``c_bk`` is a draw multiplicity (1 unless a resampling sampler says otherwise; it enters as
``n_bk + log c_bk``) and accidental hits are masked with −inf (:data:`MASKED_LOGIT`).

Speed matters here (these run on (B, n) matrices every step), so the temperature is applied to
the (B, D) queries, a log-q correction rides along the matmul as an extra embedding column
instead of an extra pass over (B, n), and the loss is ``cross_entropy`` (a fused log-softmax,
several times faster than ``logsumexp`` on CPU). The positive is always part of each row, so a
row whose negatives are all masked still has a finite loss (0) and finite gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "MASKED_LOGIT",
    "hits",
    "loss_positive_at",
    "loss_positive_on_diagonal",
    "loss_separate_positive",
    "positive_scores",
    "scores",
]

MASKED_LOGIT = float("-inf")  # accidental hits and undrawn candidates
# On CPU, exp() of finite inputs below about -88 leaves its vectorised path (10-20x slower);
# resampling weights are clamped at -80 relative to the row maximum, a change below 2e-35.
UNDERFLOW_MARGIN = 80.0


def scores(
    queries: torch.Tensor, items: torch.Tensor, temperature: float, log_q: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, n) float32 corrected scores <q_b, v_k>/τ − log_q[k] (no correction when ``log_q`` is None).

    Computed in float32 with autocast off: the corrections and the log-sum-exp need the precision
    and the matmul is a small part of a sampler's step. Gradients flow to queries and items.
    """
    with torch.autocast(device_type=queries.device.type, enabled=False):
        q = queries.float() / temperature  # (B, D)
        v = items.float()  # (n, D)
        if log_q is None:
            return q @ v.T  # (B, n)
        ones = torch.ones(q.shape[0], 1, dtype=q.dtype, device=q.device)
        # [q/τ, 1] · [v, −log q] = s − log q: the correction costs one extra column, not a (B, n) pass
        return torch.cat([q, ones], dim=1) @ torch.cat([v, -log_q.detach().float().unsqueeze(1)], dim=1).T


def positive_scores(
    queries: torch.Tensor, pos_emb: torch.Tensor, temperature: float, log_q: torch.Tensor | None = None
) -> torch.Tensor:
    """(B,) float32 <q_b, v⁺_b>/τ − log_q[b], row by row (the positives' own scores)."""
    with torch.autocast(device_type=queries.device.type, enabled=False):
        out = (queries.float() * pos_emb.float()).sum(dim=1) / temperature  # (B,)
        return out if log_q is None else out - log_q.detach().float()


def hits(pos_items: torch.Tensor, cand_items: torch.Tensor) -> torch.Tensor:
    """(B, n) bool, True where candidate ``k`` *is* query ``b``'s positive item (an accidental hit).

    ``cand_items`` is (n,) shared by all queries. Comparing item rows (not batch positions)
    catches the query's own column and every duplicate of its positive.
    """
    return cand_items.unsqueeze(0) == pos_items.unsqueeze(1)  # (B, n)


def loss_positive_on_diagonal(logits: torch.Tensor) -> torch.Tensor:
    """(B,) loss when column ``b`` of ``logits`` (B, n ≥ B) is query ``b``'s positive and every
    other column a (masked or count-offset) negative: ``logsumexp(row) − logits[b, b]``."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target, reduction="none")


def loss_positive_at(logits: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
    """(B,) loss when column ``cols[b]`` of ``logits`` (B, n) is query ``b``'s positive (the split
    step: positives at their global-batch columns); ``cols`` None is the diagonal."""
    if cols is None:
        return loss_positive_on_diagonal(logits)
    return F.cross_entropy(logits, cols, reduction="none")


def loss_separate_positive(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """(B,) loss from positive logits (B,) and already-masked negative logits (B, K)."""
    logits = torch.cat([pos_logits.unsqueeze(1), neg_logits], dim=1)  # (B, 1+K), positive first
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target, reduction="none")


def reduce_loss(per_example: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Scalar batch loss from (B,) per-example losses: the mean, or the weight-normalised mean when
    events carry weights (B,), so a batch of weight-2 events trains like the same batch at weight 1
    and a weight-0 event contributes no gradient."""
    if weights is None:
        return per_example.mean()
    w = weights.to(per_example.dtype)
    return (per_example * w).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)
