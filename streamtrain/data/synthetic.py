"""A seeded synthetic interaction stream with the shape of real logs, for the demo, benches and tests.

What real streams have and a uniform random stream lacks, each a parameter of :class:`SyntheticSpec`:

* **tastes**: user u and item j have unit latent vectors (``taste_dim``); an event's item is drawn
  with logit ``log popularity_j + taste_strength * <taste_u(t), v_j>``, so history predicts the future;
* **Zipf popularity**: item j's base popularity is ``rank_j ** -zipf_skew`` (ranks a random permutation);
* **sessions**: a user arrives in bursts of ``1 + Geometric`` events (mean ``session_events``) a
  few seconds apart (``event_gap_s``), drawn without replacement from one distribution, while
  sessions start uniformly over ``duration_s``: with B events per micro-batch, most of a session
  falls in one batch, as in real logs (see :func:`stream_stats`);
* **arrivals and fading**: a ``new_item_fraction`` of the items appears at a uniform time after the
  start (never drawn before), and, with ``item_lifetime_s``, every item's popularity decays
  as ``exp(-age / item_lifetime_s)`` after it arrives;
* **drift**: each user's taste moves from one random vector towards another, reaching a blend of
  ``drift`` (0 = static, 1 = the second vector) at the end of the span;
* **sequences** (``transition_strength`` > 0; off by default): each item has ``transition_fanout``
  ground-truth successors, and inside a session the item after ``i`` gets ``transition_strength``
  added to the logits of ``i``'s successors (:mod:`streamtrain.data.synthetic_sequence`); the
  generator then records each event's rank under its true logits (the exact Bayes ceiling).

Users are drawn per session with Zipf(``user_activity_skew``) weights, so a few users are heavy and
most have one or two sessions. The result is time ordered; ids are ints (users and items in their own
ranges), written as EventBatch columns (:meth:`SyntheticStream.batches`) or as JSONL events for
``streamtrain replay`` (:meth:`SyntheticStream.write_jsonl`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamtrain.events.batch import EventBatch
from streamtrain.data.synthetic_sequence import draw_sequential_sessions, successor_table
from streamtrain.events.decoder import encode_event

__all__ = ["SyntheticSpec", "SyntheticStream", "generate_stream", "oracle_recall", "stream_stats", "true_logits"]

_SESSION_CHUNK = 256  # sessions whose item distributions are built at once: (chunk, num_items) floats


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of :func:`generate_stream` (see the module docstring for what each shapes)."""

    num_users: int = 5000
    num_items: int = 3000
    num_events: int = 100_000
    zipf_skew: float = 1.0
    taste_dim: int = 8
    taste_strength: float = 4.0
    session_events: float = 10.0
    max_session_events: int = 64
    event_gap_s: float = 20.0
    duration_s: float = 30 * 86400.0
    user_activity_skew: float = 0.8
    new_item_fraction: float = 0.3
    item_lifetime_s: float | None = 10 * 86400.0
    drift: float = 0.5
    transition_strength: float = 0.0
    transition_fanout: int = 4
    start_time: float = 1_700_000_000.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "num_users": self.num_users >= 1,
            "num_items": self.num_items >= 2,
            "num_events": self.num_events >= 1,
            "zipf_skew": self.zipf_skew >= 0,
            "taste_dim": self.taste_dim >= 1,
            "session_events": self.session_events >= 1,
            "max_session_events": 1 <= self.max_session_events <= self.num_items * (1 - self.new_item_fraction),
            "event_gap_s": self.event_gap_s >= 0,
            "duration_s": self.duration_s > 0,
            "new_item_fraction": 0 <= self.new_item_fraction < 1,
            "item_lifetime_s": self.item_lifetime_s is None or self.item_lifetime_s > 0,
            "drift": 0 <= self.drift <= 1,
            "transition_strength": self.transition_strength >= 0,
            "transition_fanout": 1 <= self.transition_fanout < self.num_items,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"SyntheticSpec: invalid {', '.join(bad)} ({self})")


@dataclass(frozen=True)
class SyntheticStream:
    """Time-ordered events (n,) plus the ground truth that made them."""

    users: np.ndarray  # (n,) int64
    items: np.ndarray  # (n,) int64
    times: np.ndarray  # (n,) float64 seconds since the epoch, non-decreasing
    item_arrival: np.ndarray  # (num_items,) float64 time each item becomes available
    item_vectors: np.ndarray  # (num_items, taste_dim) float64 unit latent vectors
    spec: SyntheticSpec
    # Ground truth per session, for the Bayes ceiling (:func:`oracle_recall`):
    item_log_popularity: np.ndarray | None = None  # (num_items,) Zipf log-weights
    session_of: np.ndarray | None = None  # (n,) int64 session of each event
    session_taste: np.ndarray | None = None  # (S, taste_dim) the user's taste during the session
    session_start: np.ndarray | None = None  # (S,) seconds after the start
    # Sequential streams only: each item's successors (I, F) and each event's rank under its true logits (n,).
    successors: np.ndarray | None = None
    oracle_rank: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.users)

    def batches(self, batch_size: int) -> Iterator[EventBatch]:
        """Consecutive micro-batches of ``batch_size`` events (the last may be shorter), in time order."""
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield EventBatch.from_ids(self.users[start:stop], self.items[start:stop], self.times[start:stop])

    def write_jsonl(self, path: str | Path) -> int:
        """Write one version-1 JSON event per line (what ``streamtrain replay`` reads); returns the count."""
        with open(path, "wb") as out:
            for user, item, t in zip(self.users.tolist(), self.items.tolist(), self.times.tolist()):
                out.write(encode_event(user, item, t) + b"\n")
        return len(self)


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.normal(size=(n, dim))  # (n, dim)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _zipf_weights(rng: np.random.Generator, n: int, skew: float) -> np.ndarray:
    """(n,) log-weights ``-skew * log(rank)`` with ranks a random permutation of 1..n."""
    return -skew * np.log(rng.permutation(n) + 1.0)


def generate_stream(spec: SyntheticSpec) -> SyntheticStream:
    """Draw the stream ``spec`` describes; the same spec (seed included) gives the same arrays."""
    rng = np.random.default_rng(spec.seed)
    n_items, dim = spec.num_items, spec.taste_dim
    item_vec = _unit_rows(rng, n_items, dim)  # (I, d)
    item_logpop = _zipf_weights(rng, n_items, spec.zipf_skew)  # (I,)
    arrival = np.zeros(n_items)  # (I,) seconds after the start
    late = rng.random(n_items) < spec.new_item_fraction
    arrival[late] = rng.uniform(0, spec.duration_s, size=int(late.sum()))
    taste_from = _unit_rows(rng, spec.num_users, dim)  # (U, d)
    taste_to = _unit_rows(rng, spec.num_users, dim)  # (U, d)

    # Sessions: lengths until the event budget is met (the last one cut), then user and start time.
    lengths = np.minimum(rng.geometric(1.0 / spec.session_events, size=spec.num_events), spec.max_session_events)
    n_sessions = int(np.searchsorted(np.cumsum(lengths), spec.num_events)) + 1
    lengths = lengths[:n_sessions]
    lengths[-1] -= int(lengths.sum()) - spec.num_events
    user_p = np.exp(_zipf_weights(rng, spec.num_users, spec.user_activity_skew))
    session_user = rng.choice(spec.num_users, size=n_sessions, p=user_p / user_p.sum())  # (S,)
    session_start = rng.uniform(0, spec.duration_s, size=n_sessions)  # (S,)

    sequential = spec.transition_strength > 0
    # Its own generator, so the non-sequential stream draws exactly what it always drew.
    seq_rng = np.random.default_rng([spec.seed, 1]) if sequential else None
    successors = successor_table(seq_rng, n_items, spec.transition_fanout) if seq_rng is not None else None
    users, items, times, sessions, session_taste, ranks = [], [], [], [], [], []
    for lo in range(0, n_sessions, _SESSION_CHUNK):
        hi = min(lo + _SESSION_CHUNK, n_sessions)
        u, t0, n_ev = session_user[lo:hi], session_start[lo:hi], lengths[lo:hi]  # (s,)
        blend = (spec.drift * t0 / spec.duration_s)[:, None]  # (s, 1)
        taste = (1 - blend) * taste_from[u] + blend * taste_to[u]  # (s, d)
        taste /= np.linalg.norm(taste, axis=1, keepdims=True)
        session_taste.append(taste)
        logits = true_logits(spec, item_logpop, item_vec, arrival, taste, t0)  # (s, I)
        # Gumbel top-k: the first n_ev of each row are a draw without replacement (a user does not
        # rate the same movie twice in a session); at least (1 - new_item_fraction) I items are alive.
        if seq_rng is not None and successors is not None:
            top, rank = draw_sequential_sessions(seq_rng, logits, n_ev, successors, spec.transition_strength)
            ranks.append(rank[np.arange(top.shape[1]) < n_ev[:, None]])
        else:
            keys = logits + rng.gumbel(size=logits.shape)  # (s, I)
            top = np.argsort(-keys, axis=1)[:, : int(n_ev.max())]  # (s, L)
        take = np.arange(top.shape[1]) < n_ev[:, None]  # (s, L)
        gaps = rng.exponential(spec.event_gap_s, size=top.shape)  # (s, L)
        gaps[:, 0] = 0.0
        users.append(np.broadcast_to(u[:, None], top.shape)[take])
        items.append(top[take])
        times.append((t0[:, None] + np.cumsum(gaps, axis=1))[take])
        sessions.append(np.broadcast_to(np.arange(lo, hi)[:, None], top.shape)[take])
    user_arr, item_arr, time_arr, session_arr = (np.concatenate(x) for x in (users, items, times, sessions))
    order = np.argsort(time_arr, kind="stable")
    return SyntheticStream(
        users=user_arr[order].astype(np.int64),
        items=item_arr[order].astype(np.int64),
        times=spec.start_time + time_arr[order],
        item_arrival=spec.start_time + arrival,
        item_vectors=item_vec,
        spec=spec,
        item_log_popularity=item_logpop,
        session_of=session_arr[order].astype(np.int64),
        session_taste=np.concatenate(session_taste),
        session_start=session_start,
        successors=successors,
        oracle_rank=np.concatenate(ranks)[order] if ranks else None,
    )


def true_logits(
    spec: SyntheticSpec, item_logpop: np.ndarray, item_vec: np.ndarray, arrival: np.ndarray,
    taste: np.ndarray, t0: np.ndarray,
) -> np.ndarray:
    """(s, I) the logits sessions starting at ``t0`` (s,) with ``taste`` (s, d) draw their items from."""
    logits = item_logpop + spec.taste_strength * (taste @ item_vec.T)  # (s, I)
    age = t0[:, None] - arrival  # (s, I)
    if spec.item_lifetime_s is not None:
        logits = logits - np.maximum(age, 0) / spec.item_lifetime_s
    logits[age < 0] = -np.inf  # not arrived yet
    return logits


def oracle_recall(stream: SyntheticStream, k: int, start: int = 0) -> dict[str, float]:
    """Recall@``k`` of two rankers that know the generator, over events ``start:``: ``oracle`` ranks
    by each event's true logits (taste, popularity, age: the Bayes-optimal ranking, a ceiling no
    learner can beat on average), ``true_popularity`` by popularity and age alone (the best any
    counting baseline can do). Benches report a model's and a baseline's share of this ceiling."""
    assert stream.session_of is not None and stream.session_taste is not None and stream.session_start is not None
    spec = stream.spec
    arrival = stream.item_arrival - spec.start_time
    no_taste = np.zeros_like(stream.session_taste[:1])
    hits = {"oracle": 0, "true_popularity": 0}
    sessions, items = stream.session_of[start:], stream.items[start:]
    rankers = [("true_popularity", None)]
    if stream.oracle_rank is None:
        rankers.insert(0, ("oracle", stream.session_taste))
    else:  # sequential: the generator recorded each event's rank under the logits it was drawn from
        hits["oracle"] = int((stream.oracle_rank[start:] < k).sum())
    for lo in range(0, len(sessions), 4096):
        sess, item = sessions[lo : lo + 4096], items[lo : lo + 4096]
        t0 = stream.session_start[sess]
        for name, tastes in rankers:
            taste = no_taste if tastes is None else tastes[sess]
            logits = true_logits(spec, stream.item_log_popularity, stream.item_vectors, arrival, taste, t0)
            kth = np.partition(logits, -k, axis=1)[:, -k]  # (s,) k-th largest logit
            hits[name] += int((logits[np.arange(len(item)), item] >= kth).sum())
    n = max(len(items), 1)
    return {name: value / n for name, value in hits.items()}


def stream_stats(users: np.ndarray, items: np.ndarray, batch_size: int) -> dict[str, float]:
    """How bursty and skewed a time-ordered stream is when cut into micro-batches of ``batch_size``.

    ``first_batch_share``: mean over users of the share of their events that fall in the first
    micro-batch they appear in (1 = a user is never seen again after one batch);
    ``median_batches_per_user``: distinct micro-batches a user appears in, median;
    ``top1pct_item_share``: share of events on the 1% most frequent items.
    """
    n = len(users)
    batch = np.arange(n) // batch_size  # (n,)
    _, first, inverse = np.unique(users, return_index=True, return_inverse=True)
    per_user = np.bincount(inverse)  # (U,)
    in_first = batch == batch[first][inverse]  # (n,)
    share = np.bincount(inverse, weights=in_first) / per_user  # (U,)
    user_batches = np.unique(inverse * (int(batch[-1]) + 1) + batch) // (int(batch[-1]) + 1)  # user per (user, batch)
    item_counts = np.sort(np.unique(items, return_counts=True)[1])[::-1]
    top = max(1, math.ceil(0.01 * len(item_counts)))
    return {
        "events": float(n),
        "users": float(len(per_user)),
        "items": float(len(item_counts)),
        "first_batch_share": float(share.mean()),
        "median_batches_per_user": float(np.median(np.bincount(user_batches))),
        "top1pct_item_share": float(item_counts[:top].sum() / n),
    }
