"""Where the model's Recall@20 is lost on the sequential synthetic stream (issue 16), by kind of event.

One single pass as in ``bench/stream_quality.py`` (test-then-train, B 256, every event a query, second
half), with each query's rank recorded. The second half is then split by what the generator did, and
each kind of event gets the model's Recall@20 beside the generator's own Bayes-optimal one (its true
logits, ``SyntheticStream.oracle_rank``), and what the model would read if the items taken earlier in
the session were not candidates (the generator never draws them again in that session; a diagnosis,
not a serving rule). Two more columns bound what a learner can reach, between the model and the
oracle (:func:`informed_hits`): rankers that know the generator's *item* side exactly (each item's
latent vector, popularity and age) but not the user, whose taste they estimate from the user's last
H items as the model does; the second also counts the item-to-item transitions seen so far:

* session start, of a user seen before / of a new user;
* later in a session, the item one of the previous item's ground-truth successors;
* later in a session, any other item.

    python bench/seq_breakdown.py                                # the defaults
    python bench/seq_breakdown.py --set model.embedding_dim=256  # one variant
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stream_quality import K, SEQ_SKEW, SEQ_TRANSITION  # noqa: E402

from streamtrain.config import load_config  # noqa: E402
from streamtrain.data.synthetic import SyntheticSpec, SyntheticStream, generate_stream, true_logits  # noqa: E402
from streamtrain.evaluation.progressive import ProgressiveEvaluator  # noqa: E402
from streamtrain.training.trainer import Trainer  # noqa: E402


class RankRecorder(ProgressiveEvaluator):
    """The progressive evaluator, also keeping each query's rank (items scored above its positive;
    −1 for a positive without a row) in event order, and the rank it would have if the items taken
    earlier in its session were not candidates (the generator never repeats an item in a session).

    ``earlier`` (n, L): for each event, the stream positions of the earlier events of its session (−1 pad).
    Assumes every event is a query (evaluation fraction 1, max queries = B) and no evaluation exclusions."""

    def __init__(self, *args: Any, earlier: np.ndarray, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.earlier = earlier
        self.event_rows = np.full(len(earlier), -1, dtype=np.int64)  # each event's item row, as seen
        self.ranks_seen: list[np.ndarray] = []
        self.session_ranks: list[np.ndarray] = []

    @torch.no_grad()
    def ranks(self, model: Any, queries: torch.Tensor, item_rows: torch.Tensor, known_items: torch.Tensor,
              exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        rank, counted = super().ranks(model, queries, item_rows, known_items, exclude)  # (b,), (b,)
        rows = item_rows[: self.max_queries]
        q = queries[: self.max_queries].float()  # (b, D)
        positive = (q * model.item_tower(rows).float()).sum(1)  # (b,)
        start = sum(len(r) for r in self.ranks_seen)
        self.event_rows[start : start + rows.numel()] = rows.cpu().numpy()
        before = self.earlier[start : start + rows.numel()]  # (b, L) stream positions
        before_rows = torch.as_tensor(np.where(before >= 0, self.event_rows[before.clip(0)], -1), device=rows.device)
        before_scores = (q.unsqueeze(1) * model.item_tower(before_rows.clamp(min=0)).float()).sum(2)  # (b, L)
        above = (before_scores > positive.unsqueeze(1)) & (before_rows >= 0) & (before_rows != rows.unsqueeze(1))
        recorded = torch.where(counted, rank, -1)  # (b,) −1: not rankable
        self.ranks_seen.append(recorded.cpu().numpy())
        self.session_ranks.append(torch.where(counted, rank - above.sum(1), -1).cpu().numpy())
        return rank, counted


def earlier_in_session(stream: SyntheticStream) -> np.ndarray:
    """(n, L) int64: for each event, the stream positions of the earlier events of its session, −1 padded."""
    assert stream.session_of is not None
    out = np.full((len(stream), stream.spec.max_session_events), -1, dtype=np.int64)
    seen: dict[int, list[int]] = {}
    for i, session in enumerate(stream.session_of.tolist()):
        before = seen.setdefault(session, [])
        out[i, : len(before)] = before
        before.append(i)
    return out


def previous_in_session(stream: SyntheticStream) -> np.ndarray:
    """(n,) int64: for each event, the item of the event before it in its session, −1 at a session start."""
    assert stream.session_of is not None
    previous = np.full(len(stream), -1, dtype=np.int64)
    last_item: dict[int, int] = {}
    for i, (session, item) in enumerate(zip(stream.session_of.tolist(), stream.items.tolist())):
        previous[i] = last_item.get(session, -1)
        last_item[session] = item
    return previous


def event_kinds(stream: SyntheticStream) -> dict[str, np.ndarray]:
    """(n,) bool masks of the kinds of event listed in the module docstring."""
    assert stream.session_of is not None and stream.successors is not None
    n = len(stream)
    first_session: dict[int, int] = {}
    returning = np.zeros(n, dtype=bool)
    for i, (session, user) in enumerate(zip(stream.session_of.tolist(), stream.users.tolist())):
        returning[i] = first_session.setdefault(user, session) != session
    previous = previous_in_session(stream)
    later = previous >= 0  # item ids are >= 0: only a session's first event has none before it
    successor = np.zeros(n, dtype=bool)
    successor[later] = (stream.successors[previous[later]] == stream.items[later, None]).any(1)
    start = ~later
    return {
        "all": np.ones(n, dtype=bool),
        "session start, returning user": start & returning,
        "session start, new user": start & ~returning,
        "later, a successor of the previous item": later & successor,
        "later, any other item": later & ~successor,
    }


def informed_hits(
    stream: SyntheticStream, start: int, length: int, decay: float, k: int, transition_weight: float = 2.0,
) -> dict[str, np.ndarray]:
    """(n - start,) bool Recall@k hits of two rankers that know the item side of the generator, for
    events ``start:``. Both score item j by ``log popularity_j − age_j / lifetime + taste_strength ·
    <t, v_j>`` (the generator's logits with the session's taste replaced by ``t``, the unit decay^age
    weighted mean of the true vectors of the user's last ``length`` earlier items); "+ transitions seen"
    adds ``transition_weight · log(1 + c)``, c = how often j came straight after the session's previous
    item anywhere earlier in the stream. Every earlier event counts, those of the same micro-batch included."""
    assert stream.session_of is not None and stream.session_start is not None and stream.item_log_popularity is not None
    spec, vectors = stream.spec, stream.item_vectors
    n, dim = len(stream), vectors.shape[1]
    taste = np.zeros((n - start, dim))  # (m, d); 0 = no history: popularity and age only
    transitions: dict[int, dict[int, int]] = {}  # previous item -> {next item: count}
    bonus: list[tuple[np.ndarray, np.ndarray]] = []  # per event: (items, log1p counts) after its previous item
    history: dict[int, list[int]] = {}
    previous_items = previous_in_session(stream).tolist()
    for i, (user, item, previous) in enumerate(zip(stream.users.tolist(), stream.items.tolist(), previous_items)):
        mine = history.setdefault(user, [])
        if i >= start:
            if mine:
                weight = decay ** np.arange(len(mine) - 1, -1, -1)  # (h,) newest last
                mean = weight @ vectors[mine]
                taste[i - start] = mean / np.linalg.norm(mean)
            seen = transitions.get(previous, {})
            bonus.append((np.fromiter(seen, np.int64, len(seen)), np.log1p(np.fromiter(seen.values(), float, len(seen)))))
        if previous >= 0:
            row = transitions.setdefault(previous, {})
            row[item] = row.get(item, 0) + 1
        mine.append(item)
        del mine[:-length]
    arrival = stream.item_arrival - spec.start_time
    hits = {"true vectors + history": np.zeros(n - start, bool), "+ transitions seen": np.zeros(n - start, bool)}
    for lo in range(0, n - start, 2048):
        hi = min(lo + 2048, n - start)
        t0 = stream.session_start[stream.session_of[start + lo : start + hi]]
        logits = true_logits(spec, stream.item_log_popularity, vectors, arrival, taste[lo:hi], t0)  # (c, I)
        rows, positive = np.arange(hi - lo), stream.items[start + lo : start + hi]
        hits["true vectors + history"][lo:hi] = logits[rows, positive] >= np.partition(logits, -k, axis=1)[:, -k]
        for r, (items, counts) in enumerate(bonus[lo:hi]):
            logits[r, items] += transition_weight * counts
        hits["+ transitions seen"][lo:hi] = logits[rows, positive] >= np.partition(logits, -k, axis=1)[:, -k]
    return hits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeat)")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    spec = SyntheticSpec(num_events=args.events, zipf_skew=SEQ_SKEW, seed=args.seed, transition_strength=SEQ_TRANSITION)
    stream = generate_stream(spec)
    b = args.batch_size
    config = load_config(overrides=[
        f"run.seed={args.seed}", f"run.device={args.device}",
        f"model.user_capacity={len(np.unique(stream.users)) + 1}", f"model.item_capacity={spec.num_items + 1}",
        f"trainer.batch_size={b}", "trainer.progressive_eval_fraction=1.0", f"trainer.progressive_eval_max_queries={b}",
        "trainer.covisit_neighbours=0", *args.set,
    ], environ={})
    trainer = Trainer(config)
    old = trainer.state.progressive
    if config.trainer.exclude_history_items:
        parser.error("trainer.exclude_history_items is not supported here (the session column would count an excluded item twice)")
    recorder = RankRecorder(old.k_list, window=old.window, max_queries=old.max_queries, item_chunk=old.item_chunk,
                            earlier=earlier_in_session(stream))
    trainer.state.progressive = recorder
    for batch in stream.batches(b):
        trainer.train_step(batch)
    rank = np.concatenate(recorder.ranks_seen)
    assert rank.shape == (len(stream),), "every event must be a query (eval fraction 1, max queries = B)"
    half = (len(stream) // b) // 2 * b  # bench/stream_quality.py's second half: whole batches
    assert stream.oracle_rank is not None
    hit = (rank >= 0) & (rank < K)
    session_rank = np.concatenate(recorder.session_ranks)
    hit_new = (session_rank >= 0) & (session_rank < K)
    oracle = stream.oracle_rank < K
    informed = informed_hits(stream, half, config.model.history_length, config.model.history_decay, K)
    print(f"# synthetic-seq, {len(stream)} events, B {b}, overrides {args.set or '(defaults)'}; second half, Recall@{K}")
    print(f"{'events':42s} {'share':>6s} {'model':>7s} {'oracle':>7s} {'lost (share x gap)':>19s} "
          f"{'model, session items not ranked':>32s} " + " ".join(f"{name:>22s}" for name in informed))
    for name, mask in event_kinds(stream).items():
        m = mask[half:]
        model_r, oracle_r, new_r = hit[half:][m].mean(), oracle[half:][m].mean(), hit_new[half:][m].mean()
        print(f"{name:42s} {m.mean():6.3f} {model_r:7.4f} {oracle_r:7.4f} {m.mean() * (oracle_r - model_r):19.4f} "
              f"{new_r:32.4f} " + " ".join(f"{h[m].mean():22.4f}" for h in informed.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
