"""Sequential structure for the synthetic stream: item-to-item transitions with a known ground truth.

Real logs are sequences: what a user takes next depends on what they just took (the next episode,
the sequel, the next shop on the street), which is exactly what item-to-item co-visitation counts
and what a taste vector alone cannot express. With ``SyntheticSpec.transition_strength`` > 0 each
item i gets ``transition_fanout`` successor items (uniform over the catalogue, fixed for the stream:
the ground truth), and inside a session every event after the first draws its item with

    logit_j = log popularity_j + taste_strength * <taste, v_j> - age_j / lifetime + transition_strength * [j in succ(prev)]

where ``prev`` is the session's previous item; items already taken in the session are excluded (a
draw without replacement, as before). The draw is exact sequential Gumbel-max sampling, and the
generator records, for every event, the rank of the drawn item under its own true logits: Recall@K
of the Bayes-optimal ranking is then ``mean(rank < K)`` (:func:`streamtrain.data.synthetic.oracle_recall`).
With ``transition_strength`` = 0 the generator does not come here and draws exactly what it always drew.
"""

from __future__ import annotations

import numpy as np

__all__ = ["draw_sequential_sessions", "successor_table"]


def successor_table(rng: np.random.Generator, num_items: int, fanout: int) -> np.ndarray:
    """(I, F) int64 successors of each item: F distinct items other than itself, uniform."""
    keys = rng.random((num_items, num_items))  # (I, I); catalogues here are small (thousands)
    np.fill_diagonal(keys, np.inf)
    return np.argpartition(keys, fanout, axis=1)[:, :fanout].astype(np.int64)


def draw_sequential_sessions(
    rng: np.random.Generator, logits: np.ndarray, lengths: np.ndarray, successors: np.ndarray, strength: float
) -> tuple[np.ndarray, np.ndarray]:
    """Draw each session's items in order. ``logits`` (s, I) the sessions' base logits (-inf: not
    available), ``lengths`` (s,) events per session. Returns (items (s, L), ranks (s, L)): the drawn
    items and each one's rank under the logits it was drawn from (items strictly above it), -1 past
    a session's end; L = max length."""
    s, n_items = logits.shape
    width = int(lengths.max())
    items = np.full((s, width), -1, dtype=np.int64)
    ranks = np.full((s, width), -1, dtype=np.int64)
    taken = np.zeros((s, n_items), dtype=bool)
    prev = np.full(s, -1, dtype=np.int64)
    for pos in range(width):
        rows = np.flatnonzero(lengths > pos)  # sessions still drawing
        cur = logits[rows].copy()  # (r, I)
        has_prev = prev[rows] >= 0
        succ = successors[prev[rows[has_prev]]]  # (r', F)
        cur[np.flatnonzero(has_prev)[:, None], succ] += strength
        cur[taken[rows]] = -np.inf
        pick = np.argmax(cur + rng.gumbel(size=cur.shape), axis=1)  # (r,)
        picked = cur[np.arange(len(rows)), pick]
        items[rows, pos] = pick
        ranks[rows, pos] = (cur > picked[:, None]).sum(1)
        taken[rows, pick] = True
        prev[rows] = pick
    return items, ranks
