"""A dense reference of the item-to-item co-visitation baseline, for model experiments on small catalogues.

The rule (docs ALGORITHMS.md, "Streaming baselines"): when a user takes item i, each of the user's last
``H`` items h at distance d = 1..H back adds ``decay^(d-1)`` to c[h,i] and c[i,h]. An event's query scores
item j by ``sum_h decay^age(h) * c[h,j] / sqrt(n_h * n_j)`` over the user's earlier items (newest first,
age 0..H-1, earlier events of the same batch included), n = event counts; counts frozen at the batch
start; ties broken by popularity so far; rank = candidates strictly above the positive (the model's
rank rule); candidates = every item seen up to and including the batch (the model's known items).

Dense (N x N float32): fine for ml-latest-small's ~9.7k items (0.4 GB) and the synthetic streams; the
worker's scalable version (top-M neighbours per row) is ``streamtrain``'s own. Used by
``bench/model_experiments.py`` to measure the model against it in the same run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["covisit_recall"]


def _codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    _, inverse = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return inverse.astype(np.int64), int(inverse.max()) + 1


def covisit_recall(
    users: np.ndarray, items: np.ndarray, batch_size: int, *, k: int = 20, history: int = 20,
    decay: float = 0.8, start_batch: int = 0, chunk: int = 64,
) -> dict[str, float]:
    """Recall@k and NDCG@k of the co-visitation ranking over the batches from ``start_batch`` on
    (batches of ``batch_size`` events in stream order; a last batch of one event is dropped, as in
    ``bench/stream_quality.py``)."""
    u, n_users = _codes(users)
    it, n_items = _codes(items)
    c = torch.zeros(n_items, n_items)  # (N, N) co-visitation weights
    n = torch.zeros(n_items)  # (N,) event counts
    seen = torch.zeros(n_items, dtype=torch.bool)
    hist = np.full((n_users, history), -1, dtype=np.int64)  # right-aligned, column H-1 newest
    weights = torch.tensor([decay**a for a in range(history - 1, -1, -1)])  # (H,) by column
    hits = gains = count = 0.0
    for b, start in enumerate(range(0, len(u) - 1, batch_size)):
        bu, bi = u[start : start + batch_size], it[start : start + batch_size]
        seen[torch.from_numpy(bi)] = True
        queries = np.empty((len(bu), history), dtype=np.int64)
        for e in range(len(bu)):  # causal histories, earlier events of the batch included
            queries[e] = hist[bu[e]]
            hist[bu[e], :-1] = hist[bu[e], 1:]
            hist[bu[e], -1] = bi[e]
        if b >= start_batch:
            h, p = _score(c, n, seen, queries, bi, weights, chunk)
            hits += float((h < k).sum())
            gains += float(((h < k).double() / torch.log2(h.double() + 2)).sum())
            count += p
        _update(c, n, queries, bi, decay)
    return {f"recall@{k}": hits / max(count, 1), f"ndcg@{k}": gains / max(count, 1), "queries": count}


def _score(c, n, seen, queries, pos, weights, chunk) -> tuple[torch.Tensor, int]:
    inv = torch.where(n > 0, n.rsqrt(), torch.zeros_like(n))  # (N,)
    cand = seen.clone()
    ranks = []
    q = torch.from_numpy(queries)
    p = torch.from_numpy(pos)
    for s in range(0, len(q), chunk):
        qh, pp = q[s : s + chunk], p[s : s + chunk]  # (b, H), (b,)
        w = (qh >= 0).float() * weights * inv[qh.clamp(min=0)]  # (b, H)
        score = torch.einsum("bh,bhn->bn", w, c[qh.clamp(min=0)]) * inv  # (b, N)
        pos_s = score.gather(1, pp[:, None])  # (b, 1)
        pos_n = n[pp][:, None]
        above = (score > pos_s) | ((score == pos_s) & (n[None, :] > pos_n))
        above &= cand[None, :]
        ranks.append(above.sum(1))
    return torch.cat(ranks), len(q)


def _update(c, n, queries, pos, decay) -> None:
    h = queries.shape[1]
    dist_w = np.array([decay ** (h - 1 - col) for col in range(h)])  # column H-1 is distance 1
    rows, cols = np.nonzero(queries >= 0)
    a = queries[rows, cols]
    b = pos[rows]
    w = torch.from_numpy(dist_w[cols]).float()
    c.index_put_((torch.from_numpy(a), torch.from_numpy(b)), w, accumulate=True)
    c.index_put_((torch.from_numpy(b), torch.from_numpy(a)), w, accumulate=True)
    n.index_add_(0, torch.from_numpy(pos), torch.ones(len(pos)))


def stream_covisit(users: Sequence, items: Sequence, batch_size: int, **kw) -> dict[str, float]:
    """Second half of the stream, as ``bench/stream_quality.py`` reports it."""
    steps = len(range(0, len(users) - 1, batch_size))
    return covisit_recall(np.asarray(users), np.asarray(items), batch_size, start_batch=steps // 2, **kw)
