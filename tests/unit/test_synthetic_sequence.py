"""The synthetic stream's sequential structure: transitions to ground-truth successors happen at the
rate the true logits imply, the default stream is unchanged, and the recorded Bayes ranks are exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from streamtrain.data.synthetic import SyntheticSpec, true_logits, generate_stream, oracle_recall

SEQ = SyntheticSpec(num_users=800, num_items=600, num_events=12_000, seed=3, transition_strength=5.0)


def _session_events(stream):
    """Per event: its session's previous item (-1 first) and the items taken before it in the session."""
    prev = np.full(len(stream), -1, dtype=np.int64)
    before: list[list[int]] = []
    last: dict[int, list[int]] = {}
    for e, (s, item) in enumerate(zip(stream.session_of.tolist(), stream.items.tolist())):
        seen = last.setdefault(s, [])
        prev[e] = seen[-1] if seen else -1
        before.append(list(seen))
        seen.append(item)
    return prev, before


def _true_probabilities(stream, e, prev, before):
    """The next-item distribution of event ``e``, recomputed independently of the generator's draw loop."""
    spec = stream.spec
    s = stream.session_of[e]
    logits = true_logits(spec, stream.item_log_popularity, stream.item_vectors, stream.item_arrival - spec.start_time,
                          stream.session_taste[s : s + 1], stream.session_start[s : s + 1])[0]
    if prev[e] >= 0:
        logits[stream.successors[prev[e]]] += spec.transition_strength
    logits[before[e]] = -np.inf
    p = np.exp(logits - logits.max())
    return p / p.sum(), logits


def test_transitions_to_successors_match_the_true_rate() -> None:
    stream = generate_stream(SEQ)
    prev, before = _session_events(stream)
    follows = np.flatnonzero(prev >= 0)
    rng = np.random.default_rng(0)
    sample = rng.choice(follows, size=1500, replace=False)
    expected = np.zeros(len(sample))
    observed = np.zeros(len(sample))
    for n, e in enumerate(sample):
        p, _ = _true_probabilities(stream, e, prev, before)
        expected[n] = p[stream.successors[prev[e]]].sum()
        observed[n] = stream.items[e] in set(stream.successors[prev[e]].tolist())
    # Sum of independent Bernoullis: mean within 4 standard errors of the expected rate.
    se = np.sqrt((expected * (1 - expected)).sum()) / len(sample)
    assert abs(observed.mean() - expected.mean()) < 4 * se
    # And the structure is real: far above the rate without transitions (fanout / catalogue).
    assert observed.mean() > 10 * SEQ.transition_fanout / SEQ.num_items


def test_recorded_oracle_rank_is_the_rank_under_the_true_logits() -> None:
    stream = generate_stream(SEQ)
    prev, before = _session_events(stream)
    for e in np.random.default_rng(1).choice(len(stream), size=200, replace=False):
        _, logits = _true_probabilities(stream, e, prev, before)
        assert stream.oracle_rank[e] == int((logits > logits[stream.items[e]]).sum())
    ceiling = oracle_recall(stream, 20, start=len(stream) // 2)
    assert ceiling["oracle"] == pytest.approx(float((stream.oracle_rank[len(stream) // 2 :] < 20).mean()))
    assert ceiling["oracle"] > ceiling["true_popularity"]


def test_successors_are_distinct_and_never_the_item_itself() -> None:
    stream = generate_stream(SEQ)
    succ = stream.successors
    assert succ.shape == (SEQ.num_items, SEQ.transition_fanout)
    assert not np.any(succ == np.arange(SEQ.num_items)[:, None])
    assert all(len(set(row)) == SEQ.transition_fanout for row in succ.tolist())


def test_strength_zero_draws_the_stream_it_always_drew() -> None:
    base = dataclasses.replace(SEQ, transition_strength=0.0)
    a = generate_stream(base)
    assert a.successors is None and a.oracle_rank is None
    b = generate_stream(dataclasses.replace(base, transition_fanout=7))  # unused without transitions
    np.testing.assert_array_equal(a.items, b.items)
    seq = generate_stream(SEQ)
    assert not np.array_equal(a.items, seq.items)


def test_sessions_never_repeat_an_item() -> None:
    stream = generate_stream(SEQ)
    pairs = stream.session_of * SEQ.num_items + stream.items
    assert len(np.unique(pairs)) == len(pairs)
