"""Item-to-item co-visitation baseline for progressive evaluation: does the model beat counting pairs?

The first thing a team ships for "what next?" (item-kNN over the user's recent items; ALGORITHMS.md,
"Streaming baselines"), scored on exactly the events the model's progressive evaluation scores:

* **counts**: when a user takes item ``i``, each of the user's last ``H`` items ``h`` at distance
  ``d = 1..H`` back adds ``decay^(d-1)`` to ``c[h, i]`` and to ``c[i, h]``; ``n`` counts events per item;
* **query**: an event scores item ``j`` by ``Σ_h decay^age(h) · c[h, j] / sqrt(n_h · n_j)`` over the
  user's items before it (newest first, age ``0..H-1``, earlier events of the same batch included),
  with ``c`` and ``n`` frozen at the batch start; ties broken by ``n`` (popularity);
* **rank**: every known item is a candidate; rank = items scored strictly above the positive (the
  model's rule), Recall@K = [rank < K], NDCG@K = [rank < K] / log2(rank + 2). With
  ``trainer.exclude_history_items`` the query's own last ``H`` items are not candidates (a positive
  among them is a miss), as for the model and the popularity baselines.

Scale: each item row stores its top-``M`` neighbours (row + 1, 0 = empty; float32 weights), how
production item-to-item tables are stored, so memory is ``8·M`` bytes per item row plus ``4·H`` per
user row (its own history, so the baseline does not depend on the query tower). The arrays are
``np.zeros`` (calloc): pages are committed on first touch, and the vocabulary hands rows out in order,
so a large, mostly unused capacity costs address space, not memory. A full row takes a new neighbour only if it is heavier than the row's
lightest (weights merged exactly: the ``r``-th heaviest newcomer replaces the ``r``-th lightest entry
iff heavier, which is the top-``M`` of the union). With ``M`` at least the number of co-visited
items the counts are exact.

It runs on the host (numpy) on the host copies of the batch's rows: no device memory and no host
sync in the training step, the GPU trains while it counts. Rows follow the vocabulary: a row handed
to a new id is cleared (:meth:`CovisitBaseline.forget_items`) and removed from its neighbours' lists
(co-visitation is symmetric, so the rows that list ``x`` are ``x``'s own neighbours; after a
truncation, an entry whose reverse was dropped can outlive it — it is among the lightest of its row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from streamtrain.config import Config
from streamtrain.evaluation.progressive import ProgressiveEvaluator
from streamtrain.model.history import BatchOrder
from streamtrain.vocab.vocabulary import FALLBACK_ROW

__all__ = ["COVISIT", "CovisitBaseline"]

COVISIT = "covisit"
_STATE_FORMAT = 1
# A dense (query, item) score block (one bincount, then comparisons over b * N cells) is used when it
# has at most DENSE_CELLS cells and at most DENSE_PER_PAIR cells per scored pair; otherwise the ranks
# come from the scored pairs alone (a sort of them). Measured on ml-latest-small (full rows: dense
# 3x faster) and on sparse synthetic rows (pairs 8x faster), bench/bench_covisit.py.
DENSE_CELLS = 1 << 23
DENSE_PER_PAIR = 4


class CovisitBaseline:
    """Top-``M`` co-visitation lists per item row, user histories, and the rolling metrics of ranking by them.

    Per step the trainer calls :meth:`forget_items` / :meth:`forget_users` for rows (re)assigned, then
    :meth:`step` once with the batch's host rows (scores it first when the step is evaluated, then counts
    it), and :meth:`update` with the sums :meth:`step` returned once the model's sums are read.
    """

    def __init__(
        self,
        item_rows: int,
        user_rows: int,
        k_list: Sequence[int],
        *,
        history_length: int,
        decay: float,
        neighbours: int,
        window: int = 50,
        max_queries: int = 256,
        exclude_history: bool = False,
    ) -> None:
        if neighbours < 1 or history_length < 1 or not 0.0 < decay <= 1.0:
            raise ValueError(f"need neighbours >= 1, history_length >= 1, 0 < decay <= 1; got "
                             f"{neighbours}, {history_length}, {decay}")
        self.k_list = tuple(int(k) for k in k_list)
        self.neighbours = neighbours
        self.history_length = history_length
        self.decay = float(decay)
        self.max_queries = max_queries
        self.exclude_history = exclude_history  # leave each query's own history out of its ranking
        self.capacity = item_rows
        self.nbr = np.zeros((item_rows, neighbours), dtype=np.int32)  # (R, M) neighbour row + 1, 0 = empty
        self.wts = np.zeros((item_rows, neighbours), dtype=np.float32)  # (R, M) c[row, neighbour]
        self.counts = np.zeros(item_rows, dtype=np.int64)  # (R,) n: events per item row
        self.history = np.zeros((user_rows, history_length), dtype=np.int32)  # (U, H) item row + 1, newest last
        # Column c of a right-aligned history is d = H - c events back: weight decay^(d-1).
        self._col_weight = self.decay ** np.arange(history_length - 1, -1, -1, dtype=np.float64)  # (H,)
        self.rolling = ProgressiveEvaluator(self.k_list, window=window)
        self.last_dense = False  # whether the last scored step ranked from a dense score block

    @classmethod
    def from_config(cls, config: Config) -> CovisitBaseline:
        """H and decay are the history tower's (``model.history_length`` / ``history_decay``)."""
        mc, tc = config.model, config.trainer
        return cls(
            mc.item_capacity, mc.user_capacity, tc.eval_k, history_length=mc.history_length, decay=mc.history_decay,
            neighbours=tc.covisit_neighbours, window=tc.progressive_eval_window,
            max_queries=tc.progressive_eval_max_queries, exclude_history=tc.exclude_history_items,
        )

    @property
    def width(self) -> int:
        """Length of the sums :meth:`step` returns: Recall@K and NDCG@K sums, then the count."""
        return 2 * len(self.k_list) + 1

    def nbytes(self) -> int:
        """Bytes allocated (address space; committed only where touched)."""
        return sum(a.nbytes for a in (self.nbr, self.wts, self.counts, self.history))

    # ------------------------------------------------------------------ rows follow the vocabularies
    def forget_users(self, rows: np.ndarray) -> None:
        """Clear the histories of user rows handed to new ids."""
        self.history[np.asarray(rows, dtype=np.int64)] = 0

    def forget_items(self, rows: np.ndarray, *, evicted: bool = True) -> None:
        """Clear item ``rows`` (handed to new ids): their lists and counts, their entries in their
        neighbours' lists and, when ``evicted`` (a reused row may sit in histories), in every history."""
        rows = np.asarray(rows, dtype=np.int64)
        if not rows.size:
            return
        gone = np.zeros(self.capacity + 1, dtype=bool)  # by stored value (row + 1): a gather, not a sort
        gone[rows + 1] = True
        lists = self.nbr[rows]  # (n, M)
        refs = lists[lists > 0].astype(np.int64) - 1  # rows listing one of ``rows``
        if refs.size:
            refs = np.unique(refs)
            stale = gone[self.nbr[refs]]  # (m, M)
            sub_n, sub_w = self.nbr[refs], self.wts[refs]
            sub_n[stale], sub_w[stale] = 0, 0.0
            packed = np.argsort(sub_n == 0, axis=1, kind="stable")  # keep the rows packed: entries first
            self.nbr[refs] = np.take_along_axis(sub_n, packed, axis=1)
            self.wts[refs] = np.take_along_axis(sub_w, packed, axis=1)
        self.nbr[rows], self.wts[rows], self.counts[rows] = 0, 0.0, 0
        if evicted:  # a full scan of the histories, as UserHistory.forget_items (O(users * H) per evicting step)
            self.history[gone[self.history]] = 0

    # ------------------------------------------------------------------ histories
    def _window(self, users: np.ndarray, sorted_items: np.ndarray, index: np.ndarray, before: np.ndarray) -> np.ndarray:
        """Last H of (stored history of ``users``, then the batch items at sorted positions
        ``index - before .. index - 1``): (n, H) int64 item rows, -1 empty (as UserHistory._window)."""
        h = self.history_length
        col = np.arange(h)
        pos = before[:, None] + col  # (n, H) index into [stored (H) ++ batch part (before)]
        stored = np.take_along_axis(self.history[users].astype(np.int64) - 1, np.minimum(pos, h - 1), axis=1)
        batch_at = np.maximum(index[:, None] + col - h, 0)  # (n, H)
        return np.where(pos < h, stored, sorted_items[batch_at])

    def causal(self, order: BatchOrder, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """(B, H) int64 items each event's user took before it (-1 empty), in batch order."""
        sorted_items = item_rows[order.order]
        window = self._window(user_rows[order.order], sorted_items, np.arange(len(item_rows)), order.rank)
        out = np.empty_like(window)
        out[order.order] = window
        return out

    def _append(self, order: BatchOrder, item_rows: np.ndarray) -> None:
        sorted_items = item_rows[order.order]
        window = self._window(order.users, sorted_items, order.last + 1, order.count)  # (U, H)
        self.history[order.users] = (window + 1).astype(np.int32)

    # ------------------------------------------------------------------ one step
    def step(
        self, user_rows: np.ndarray, item_rows: np.ndarray, event_time: np.ndarray | None,
        known: np.ndarray | None,
    ) -> np.ndarray | None:
        """One batch (host rows, (B,) each): score it when ``known`` (N,) candidate rows is given
        (an evaluated step; returns the sums), then count it and fold it into the histories."""
        user_rows = np.asarray(user_rows, dtype=np.int64)
        item_rows = np.asarray(item_rows, dtype=np.int64)
        order = BatchOrder(user_rows, event_time)
        hist = self.causal(order, user_rows, item_rows)  # (B, H)
        sums = None
        if known is not None and np.size(known):
            sums = self.score(hist[: self.max_queries], item_rows[: self.max_queries], np.asarray(known))
        self.observe(hist, item_rows)
        self._append(order, item_rows)
        return sums

    def observe(self, hist: np.ndarray, item_rows: np.ndarray) -> None:
        """Count one batch: ``hist`` (B, H) each event's causal history, ``item_rows`` (B,)."""
        ok = (hist > FALLBACK_ROW) & (item_rows[:, None] > FALLBACK_ROW)  # (B, H)
        b_idx, c_idx = np.nonzero(ok)
        h, i, w = hist[b_idx, c_idx], item_rows[b_idx], self._col_weight[c_idx]
        if h.size:
            self._merge(np.concatenate([h, i]), np.concatenate([i, h]), np.concatenate([w, w]))
        taken = item_rows[item_rows > FALLBACK_ROW]
        np.add.at(self.counts, taken, 1)

    def _merge(self, src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> None:
        """Add weights ``w`` to ``c[src, dst]`` (P,) each, keeping each row's top-M."""
        m = self.neighbours
        keys, inverse = np.unique(src * self.capacity + dst, return_inverse=True)
        wsum = np.bincount(inverse.reshape(-1), weights=w)  # (U,) float64
        s, d = keys // self.capacity, keys % self.capacity
        match = self.nbr[s] == (d + 1)[:, None]  # (U, M)
        found = match.any(1)
        slot = match.argmax(1)
        self.wts[s[found], slot[found]] += wsum[found].astype(np.float32)
        new = ~found
        if not new.any():
            return
        s, d, wsum = s[new], d[new], wsum[new]
        by_row = np.lexsort((-wsum, s))  # each row's newcomers, heaviest first
        s, d, wsum = s[by_row], d[by_row], wsum[by_row]
        rows, start, k_new = np.unique(s, return_index=True, return_counts=True)
        rank = np.arange(s.size) - np.repeat(start, k_new)  # newcomer's place in its row
        group = np.repeat(np.arange(rows.size), k_new)
        # Rows are packed (entries first, then empty slots): where the newcomers fit, they take the
        # next free slots, no sort; only rows they overflow are merged by weight.
        fill = np.count_nonzero(self.nbr[rows], axis=1)  # (G,)
        overflow = k_new > m - fill  # (G,)
        fits = ~overflow[group]
        at = fill[group[fits]] + rank[fits]
        self.nbr[s[fits], at] = (d[fits] + 1).astype(np.int32)
        self.wts[s[fits], at] = wsum[fits].astype(np.float32)
        if not overflow.any():
            return
        full = rows[overflow]
        sub = np.cumsum(overflow) - 1  # group -> index among the overflowing rows
        s, d, wsum, rank, group = s[~fits], d[~fits], wsum[~fits], rank[~fits], sub[group[~fits]]
        current = self.wts[full]  # (F, M); empty slots weigh 0 and sort first
        ascending = np.argsort(current, axis=1, kind="stable")  # (F, M)
        slot = ascending[group, np.minimum(rank, m - 1)]
        # The r-th heaviest newcomer enters iff heavier than the r-th lightest entry: a prefix per row
        # (the empty slots first, so the row stays packed).
        enter = (rank < m) & (wsum > current[group, slot])
        self.nbr[s[enter], slot[enter]] = (d[enter] + 1).astype(np.int32)
        self.wts[s[enter], slot[enter]] = wsum[enter].astype(np.float32)

    def score(self, hist: np.ndarray, pos: np.ndarray, known: np.ndarray) -> np.ndarray:
        """Sums of Recall@K, NDCG@K and the count over the queries ``hist`` (b, H) with positives
        ``pos`` (b,) among the candidates ``known`` (N,, sorted); a (2K+1,) float64 array."""
        b, r, n = pos.size, self.capacity, self.counts
        valid = hist > FALLBACK_ROW
        valid[valid] = n[hist[valid]] > 0  # an item new in this batch has no counts yet
        qi, ci = np.nonzero(valid)
        hrows = hist[qi, ci]  # (V,) the queries' history items
        coef = self._col_weight[ci] / np.sqrt(n[hrows])  # (V,) decay^age / sqrt(n_h)
        lists = self.nbr[hrows].astype(np.int64) - 1  # (V, M) their neighbours, -1 empty
        terms = coef[:, None] * self.wts[hrows]  # (V, M) decay^age c[h, j] / sqrt(n_h)
        known_mask = np.zeros(r, dtype=bool)
        known_mask[known] = True
        own = np.zeros(0, dtype=np.int64)  # (query, item) keys of each query's own history, when excluded
        if self.exclude_history:
            held = hist > FALLBACK_ROW
            held[held] = known_mask[hist[held]]
            own = np.unique(np.nonzero(held)[0] * r + hist[held])
        # Both paths sum a query's terms per item in the same order, so they agree to the bit.
        cells = b * (r + 1)
        dense = cells <= DENSE_CELLS and cells <= DENSE_PER_PAIR * int(np.count_nonzero(lists >= 0))
        self.last_dense = dense  # for bench/bench_covisit.py
        ranks = self._ranks_dense if dense else self._ranks_sparse
        rank = ranks(qi, lists, terms, pos, known, known_mask, own)  # (b,)
        keep = (pos != FALLBACK_ROW) & known_mask[pos]
        hittable = keep & ~np.isin(np.arange(b) * r + pos, own)  # a positive in its own history misses
        hit = (rank[:, None] < np.asarray(self.k_list)) & hittable[:, None]  # (b, K)
        gain = hit / np.log2(rank + 2)[:, None]
        return np.concatenate([hit.sum(0), gain.sum(0), [keep.sum()]]).astype(np.float64)

    def _ranks_dense(
        self, qi: np.ndarray, lists: np.ndarray, terms: np.ndarray, pos: np.ndarray, known: np.ndarray,
        known_mask: np.ndarray, own: np.ndarray,
    ) -> np.ndarray:
        """Ranks from a (b, R) score block (small catalogues: one bincount, no sort)."""
        b, r, n = pos.size, self.capacity, self.counts
        col = np.where(lists >= 0, lists, r)  # empty slots into a spare column
        flat = (qi[:, None] * (r + 1) + col).reshape(-1)
        total = np.bincount(flat, weights=terms.reshape(-1), minlength=b * (r + 1)).reshape(b, r + 1)
        root = np.sqrt(np.maximum(n, 1))
        lo, hi = int(known[0]), int(known[-1])
        cols = slice(lo, hi + 1) if hi - lo + 1 == known.size else known  # no holes: a view, not a gather
        s = total[:, cols] / root[cols]  # (b, N)
        s_pos = total[np.arange(b), pos] / root[pos]  # (b,) the same expression as its column of s
        if own.size:  # not candidates
            s[own // r, np.searchsorted(known, own % r)] = -np.inf
        n_known, n_pos = n[known], n[pos]
        above = (s > s_pos[:, None]) | ((s == s_pos[:, None]) & (n_known > n_pos[:, None]))  # the positive: False
        return above.sum(1)

    def _ranks_sparse(
        self, qi: np.ndarray, lists: np.ndarray, terms: np.ndarray, pos: np.ndarray, known: np.ndarray,
        known_mask: np.ndarray, own: np.ndarray,
    ) -> np.ndarray:
        """Ranks from the scored (query, item) pairs only (large catalogues: at most b * H * M of them)."""
        b, r, n = pos.size, self.capacity, self.counts
        vi, mi = np.nonzero((lists >= 0) & known_mask[np.maximum(lists, 0)])
        keys, inverse = np.unique(qi[vi] * r + lists[vi, mi], return_inverse=True)
        total = np.bincount(inverse.reshape(-1), weights=terms[vi, mi], minlength=keys.size)
        if own.size:
            kept = ~np.isin(keys, own)
            keys, total = keys[kept], total[kept]
        sq, sj = keys // r, keys % r
        s = total / np.sqrt(np.maximum(n[sj], 1))  # (S,) score per scored (query, item)
        # The positive's own score (0 when no history item lists it).
        at = np.minimum(np.searchsorted(keys, np.arange(b) * r + pos), max(keys.size - 1, 0))
        has = keys[at] == np.arange(b) * r + pos if keys.size else np.zeros(b, dtype=bool)
        s_pos = np.where(has, s[at] if keys.size else 0.0, 0.0)  # (b,)
        n_pos = n[pos]
        nj, sp, npq = n[sj], s_pos[sq], n_pos[sq]
        above = (sj != pos[sq]) & ((s > sp) | ((s == sp) & (nj > npq)))
        rank = np.bincount(sq, weights=above, minlength=b)  # (b,)
        # A positive nobody listed scores 0: every scored item is above it, and so is every unscored
        # known item with more events (the popularity tie-break) that is not one of its own items.
        known_counts = np.sort(n[known])
        more = known_counts.size - np.searchsorted(known_counts, n_pos, side="right")  # (b,)
        scored_more = np.bincount(sq, weights=nj > npq, minlength=b)
        oq, oj = own // r, own % r
        own_more = np.bincount(oq, weights=(oj != pos[oq]) & (n[oj] > n_pos[oq]), minlength=b)
        return rank + np.where(has, 0, more - scored_more - own_more)

    # ------------------------------------------------------------------ rolling metrics, persistence
    def update(self, sums: Sequence[float]) -> dict[str, float]:
        """Add one evaluated step (the sums of :meth:`step`); returns the rolling averages."""
        return self.rolling.update(list(sums))

    def averages(self) -> dict[str, float]:
        return self.rolling.averages()

    def reset_rolling(self) -> None:
        self.rolling.load_state_dict({"history": []})

    def state_dict(self) -> dict[str, Any]:
        """The rows with events and users with a history (sparse; copies), rolling window;
        ``torch.load(weights_only=True)``-safe."""
        rows = np.flatnonzero(self.counts)
        users = np.flatnonzero(self.history[:, -1])
        return {
            "format": _STATE_FORMAT,
            "shape": [self.capacity, self.neighbours, self.history.shape[0], self.history_length],
            "rows": torch.from_numpy(rows),
            "nbr": torch.from_numpy(self.nbr[rows]),
            "wts": torch.from_numpy(self.wts[rows]),
            "counts": torch.from_numpy(self.counts[rows]),
            "users": torch.from_numpy(users),
            "history": torch.from_numpy(self.history[users]),
            "rolling": self.rolling.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: another format, or a state for other capacities / M / H.
        """
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"covisit baseline state format {state.get('format')!r} is not {_STATE_FORMAT}")
        shape = [self.capacity, self.neighbours, self.history.shape[0], self.history_length]
        if list(state["shape"]) != shape:
            raise ValueError(
                f"covisit state has (item rows, neighbours, user rows, history) {list(state['shape'])}, "
                f"configured {shape}; restore with the model capacities, model.history_length and "
                "trainer.covisit_neighbours the checkpoint was written with"
            )
        # Fresh calloc'd arrays rather than zero-filling: untouched pages stay uncommitted.
        self.nbr, self.wts = (np.zeros(a.shape, a.dtype) for a in (self.nbr, self.wts))
        self.counts, self.history = (np.zeros(a.shape, a.dtype) for a in (self.counts, self.history))
        rows, users = state["rows"].numpy(), state["users"].numpy()
        self.nbr[rows], self.wts[rows], self.counts[rows] = state["nbr"].numpy(), state["wts"].numpy(), state["counts"].numpy()
        self.history[users] = state["history"].numpy()
        self.rolling.load_state_dict(state["rolling"])
