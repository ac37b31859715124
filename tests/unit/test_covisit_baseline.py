"""Co-visitation baseline: counts, scores, causal order within a batch and forget_items checked against
a brute-force dense reference on a small catalogue; top-M truncation; the memory bound at 1M items;
checkpoint state round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamtrain.evaluation import covisit as covisit_baseline
from streamtrain.evaluation.covisit import CovisitBaseline
from streamtrain.model.history import BatchOrder
from streamtrain.vocab.vocabulary import FALLBACK_ROW


class DenseReference:
    """The rule of ALGORITHMS.md "Streaming baselines", one event at a time, dense matrices."""

    def __init__(self, items: int, users: int, h: int, decay: float, exclude: bool = False) -> None:
        self.exclude = exclude  # leave the user's last h items out of the ranking; a positive among them misses
        self.repeats = 0  # positives among their own excluded items
        self.c = np.zeros((items, items))
        self.n = np.zeros(items, dtype=np.int64)
        self.hist: list[list[int]] = [[] for _ in range(users)]
        self.h, self.decay = h, decay

    def scores(self, user: int, known: np.ndarray, c: np.ndarray, n: np.ndarray, hist: list[int]) -> np.ndarray:
        s = np.zeros(len(self.n))
        last = hist[-self.h:]
        for col, h in enumerate([-1] * (self.h - len(last)) + last):  # oldest column first
            if h <= FALLBACK_ROW or n[h] == 0:
                continue
            s += self.decay ** (self.h - 1 - col) / math.sqrt(n[h]) * c[h]
        return s / np.sqrt(np.maximum(n, 1))

    def rank(self, s: np.ndarray, n: np.ndarray, pos: int, known: np.ndarray, own: list[int]) -> int:
        if self.exclude and pos in own:
            self.repeats += 1
            return 10**9  # a miss at every K
        other = known[(known != pos) & ~np.isin(known, own if self.exclude else [])]
        return int(np.sum((s[other] > s[pos]) | ((s[other] == s[pos]) & (n[other] > n[pos]))))

    def batch(self, users: np.ndarray, items: np.ndarray, known: np.ndarray, times: np.ndarray) -> list[int]:
        """Ranks of the batch's positives (counts frozen at the start, histories causal in time order)."""
        c0, n0 = self.c.copy(), self.n.copy()
        order = np.lexsort((np.arange(len(users)), times, users))
        ranks = [0] * len(users)
        for e in order:  # every event in (user, time) order: the same as global time order per user
            u, i = int(users[e]), int(items[e])
            s = self.scores(u, known, c0, n0, self.hist[u])
            ranks[e] = self.rank(s, n0, i, known, self.hist[u][-self.h:])
            last = self.hist[u][-self.h:]
            for d, h in enumerate(reversed(last), start=1):
                if h > FALLBACK_ROW and i > FALLBACK_ROW:
                    self.c[h, i] += self.decay ** (d - 1)
                    self.c[i, h] += self.decay ** (d - 1)
            self.hist[u].append(i)
        for i in items:
            if i > FALLBACK_ROW:
                self.n[i] += 1
        return ranks

    def forget(self, rows: np.ndarray) -> None:
        self.c[rows, :] = 0
        self.c[:, rows] = 0
        self.n[rows] = 0
        # As UserHistory.forget_items: the slot empties, the other items keep their ages.
        self.hist = [[-1 if h in set(rows.tolist()) else h for h in hist] for hist in self.hist]


def _dense_of(cv: CovisitBaseline) -> np.ndarray:
    dense = np.zeros((cv.capacity, cv.capacity))
    rows, slots = np.nonzero(cv.nbr)
    dense[rows, cv.nbr[rows, slots] - 1] = cv.wts[rows, slots]
    return dense


def _packed(cv: CovisitBaseline) -> bool:
    """Every row's entries come first, then its empty slots (what the merge's fast path relies on)."""
    return bool((np.diff((cv.nbr != 0).astype(np.int8), axis=1) <= 0).all())


def _recall_sums(ranks: list[int], items: np.ndarray, k_list: tuple[int, ...]) -> np.ndarray:
    keep = items != FALLBACK_ROW
    r = np.asarray(ranks, dtype=np.float64)
    hit = (r[:, None] < np.asarray(k_list)) & keep[:, None]
    return np.concatenate([hit.sum(0), (hit / np.log2(r + 2)[:, None]).sum(0), [keep.sum()]])


@pytest.fixture(params=["dense", "sparse"])
def ranking_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of ranking (a dense score block, the scored pairs alone) must give the reference's ranks."""
    monkeypatch.setattr(covisit_baseline, "DENSE_CELLS", 1 << 30 if request.param == "dense" else 0)
    monkeypatch.setattr(covisit_baseline, "DENSE_PER_PAIR", 1 << 30)
    return str(request.param)


@pytest.mark.parametrize("exclude", [False, True], ids=["all-candidates", "own-items-excluded"])
def test_counts_scores_and_ranks_match_the_dense_reference(ranking_path: str, exclude: bool) -> None:
    rng = np.random.default_rng(3)
    items, users, h, k_list = 30, 12, 4, (1, 3, 10)
    # decay 0.5: every weight and sum is a dyadic rational, exact in float32, so ties are real ties.
    cv = CovisitBaseline(items, users, k_list, history_length=h, decay=0.5, neighbours=items, max_queries=1000,
                         exclude_history=exclude)
    ref = DenseReference(items, users, h, 0.5, exclude)
    known = np.arange(1, items)
    for step in range(25):
        b = 16
        u = rng.integers(0, users, b)
        # Skewed items (ties by popularity matter) and a few fallback rows (never counted, never ranked).
        it = np.minimum(rng.zipf(1.5, b), items - 1)
        it[rng.random(b) < 0.1] = FALLBACK_ROW
        t = rng.integers(0, 4, b).astype(np.float64)  # time ties: position in the batch decides
        ref_ranks = ref.batch(u, it, known, t)
        sums = cv.step(u, it, t, known)
        assert sums is not None
        np.testing.assert_allclose(sums, _recall_sums(ref_ranks, it, k_list), rtol=1e-12, err_msg=f"step {step}")
        np.testing.assert_array_equal(cv.counts, ref.n)
        np.testing.assert_array_equal(_dense_of(cv), ref.c)
        assert _packed(cv)
    assert ref.c.sum() > 100  # the stream co-visits (the test is not vacuous)
    assert not exclude or ref.repeats > 10  # and users come back to their items


def test_earlier_events_of_the_same_batch_count_in_order() -> None:
    """A user's first event of a batch is scored from the stored history only; its second from the
    first; the positive itself and later events are never in its history."""
    cv = CovisitBaseline(10, 4, (1,), history_length=3, decay=0.8, neighbours=10)
    cv.step(np.array([1, 1]), np.array([2, 3]), None, None)  # c[2,3] = c[3,2] = 1
    # Times out of batch order: the event at t=0 (item 2) comes first for user 2, then item 3 at t=1.
    hist = cv.causal(*_order(np.array([2, 2]), np.array([5.0, 0.0])), np.array([3, 2]))
    assert hist.tolist() == [[-1, -1, 2], [-1, -1, -1]]
    # User 2 takes 4 (t=0, never seen: rank 2, below the counted 2 and 3) and then 3 (t=1): 3 is
    # ranked from 4 alone, which lists nothing, so 3 ties with 2 on score and count: rank 0.
    sums = cv.step(np.array([2, 2]), np.array([3, 4]), np.array([1.0, 0.0]), np.arange(1, 10))
    assert sums is not None and sums.tolist() == [1.0, 1.0, 2.0]
    # User 1 (history 2, 3) takes 4: 4 is listed by nobody yet (counts frozen), 2 and 3 score above it.
    cv.step(np.array([3, 3]), np.array([5, 6]), None, None)
    sums = cv.step(np.array([1]), np.array([2]), None, np.arange(1, 10))
    assert sums is not None and sums.tolist() == [1.0, 1.0, 1.0]  # 2 co-visited with 3 (newest): first
    assert cv.history[2].tolist() == [0, 5, 4]  # rows + 1, newest last: 4 then 3


def _order(users: np.ndarray, times: np.ndarray) -> tuple[BatchOrder, np.ndarray]:
    return BatchOrder(users, times), users


def test_forget_items_matches_the_dense_reference(ranking_path: str) -> None:
    rng = np.random.default_rng(5)
    items, users = 20, 6
    cv = CovisitBaseline(items, users, (5,), history_length=3, decay=0.5, neighbours=items)
    ref = DenseReference(items, users, 3, 0.5)
    known = np.arange(1, items)
    for step in range(12):
        u, it, t = rng.integers(0, users, 10), rng.integers(1, items, 10), np.zeros(10)
        if step in (4, 8):
            gone = rng.choice(np.arange(1, items), 3, replace=False)
            cv.forget_items(gone)
            ref.forget(gone)
            assert not np.isin(cv.nbr, gone + 1).any() and not np.isin(cv.history, gone + 1).any()
        ref_ranks = ref.batch(u, it, known, t)
        np.testing.assert_allclose(cv.step(u, it, t, known), _recall_sums(ref_ranks, it, (5,)))
        np.testing.assert_array_equal(_dense_of(cv), ref.c)
        assert _packed(cv)


def test_forget_users_clears_their_history() -> None:
    cv = CovisitBaseline(8, 4, (1,), history_length=2, decay=1.0, neighbours=4)
    cv.step(np.array([1, 2]), np.array([3, 4]), None, None)
    cv.forget_users(np.array([1]))
    assert cv.history[1].tolist() == [0, 0] and cv.history[2].tolist() == [0, 5]


def test_a_full_row_keeps_its_heaviest_neighbours() -> None:
    """M = 2: item 1 co-visited with 2 (x3), 3 (x2), 4 (x1) in that order, then 5 (x5) in one batch."""
    cv = CovisitBaseline(8, 200, (1,), history_length=1, decay=1.0, neighbours=2)
    user = 0
    for other, times in ((2, 3), (3, 2), (4, 1)):
        for _ in range(times):
            user += 1
            cv.step(np.array([user, user]), np.array([1, other]), np.array([0.0, 1.0]), None)
    listed = {int(r) - 1: float(w) for r, w in zip(cv.nbr[1], cv.wts[1]) if r}
    assert listed == {2: 3.0, 3: 2.0}  # 4 (weight 1) never beat the lightest entry
    users = np.arange(100, 105)
    cv.step(np.repeat(users, 2), np.tile([5, 1], 5), np.tile([0.0, 1.0], 5), None)
    listed = {int(r) - 1: float(w) for r, w in zip(cv.nbr[1], cv.wts[1]) if r}
    assert listed == {5: 5.0, 2: 3.0} and _packed(cv)


def test_memory_is_rows_times_m_at_a_million_items() -> None:
    rows, users, m, h = 1_000_000, 1_000_000, 200, 20
    cv = CovisitBaseline(rows, users, (1,), history_length=h, decay=0.8, neighbours=m)
    assert cv.nbytes() == rows * m * 8 + rows * 8 + users * h * 4  # ~1.7 GB of address space, not rows^2
    # It works there: a few events on high rows, scored among every row.
    u = np.array([7, 7, 9, 9, 1, 2, 3])
    it = np.array([999_990, 999_991, 999_990, 999_991, 999_992, 999_992, 999_992])
    cv.step(u, it, None, None)
    sums = cv.step(np.array([11, 11]), np.array([999_990, 999_991]), None, np.arange(1, rows))
    # 999_990 with no history: below the more popular 999_992 (a miss at K=1); 999_991 after it: first.
    assert sums is not None and sums.tolist() == [1.0, 1.0, 2.0]


def test_state_round_trip_continues_identically() -> None:
    rng = np.random.default_rng(9)
    a = CovisitBaseline(40, 10, (5, 10), history_length=4, decay=0.8, neighbours=6)
    batches = [(rng.integers(0, 10, 20), rng.integers(1, 40, 20), rng.random(20)) for _ in range(8)]
    for u, it, t in batches[:4]:
        a.update(a.step(u, it, t, np.arange(1, 40)))
    b = CovisitBaseline(40, 10, (5, 10), history_length=4, decay=0.8, neighbours=6)
    b.load_state_dict(a.state_dict())
    for u, it, t in batches[4:]:
        assert a.update(a.step(u, it, t, np.arange(1, 40))) == b.update(b.step(u, it, t, np.arange(1, 40)))
    for name in ("nbr", "wts", "counts", "history"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    with pytest.raises(ValueError, match="covisit_neighbours"):
        CovisitBaseline(40, 10, (5, 10), history_length=4, decay=0.8, neighbours=7).load_state_dict(a.state_dict())
