"""The synthetic stream: seeded determinism, Zipf skew of item counts, bursty sessions, late items,
fading, taste drift, and its two outputs (EventBatch columns, JSONL for replay)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from streamtrain.data.synthetic import SyntheticSpec, SyntheticStream, generate_stream, stream_stats
from streamtrain.replay import read_log

SMALL = SyntheticSpec(num_users=1500, num_items=1000, num_events=30_000, seed=5)
STATIC = dataclasses.replace(SMALL, taste_strength=0.0, drift=0.0, new_item_fraction=0.0, item_lifetime_s=None)


def zipf_slope(items: np.ndarray, ranks: slice) -> float:
    counts = np.sort(np.bincount(items))[::-1].astype(float)
    r = np.arange(1, len(counts) + 1)
    return float(np.polyfit(np.log(r[ranks]), np.log(counts[ranks]), 1)[0])


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    a, b = generate_stream(SMALL), generate_stream(SMALL)
    for name in ("users", "items", "times", "item_arrival"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = generate_stream(dataclasses.replace(SMALL, seed=6))
    assert not np.array_equal(a.items, c.items)
    assert len(a) == SMALL.num_events and np.all(np.diff(a.times) >= 0)
    assert a.users.max() < SMALL.num_users and a.items.max() < SMALL.num_items


@pytest.mark.parametrize("skew", [0.7, 1.2])
def test_item_counts_follow_the_zipf_skew(skew: float) -> None:
    # Tastes off: counts follow rank^-skew. Ranks 10..300: the head is slightly flattened because a
    # session draws without replacement, the far tail is noisy.
    stream = generate_stream(dataclasses.replace(STATIC, zipf_skew=skew, num_events=60_000))
    assert zipf_slope(stream.items, slice(9, 300)) == pytest.approx(-skew, abs=0.12)


def test_tastes_keep_the_skew_ordering() -> None:
    low = generate_stream(dataclasses.replace(SMALL, zipf_skew=0.6))
    high = generate_stream(dataclasses.replace(SMALL, zipf_skew=1.2))
    low_stats, high_stats = stream_stats(low.users, low.items, 256), stream_stats(high.users, high.items, 256)
    assert high_stats["top1pct_item_share"] > 1.5 * low_stats["top1pct_item_share"]


def test_sessions_put_most_of_a_users_events_in_their_first_micro_batch() -> None:
    stream = generate_stream(SMALL)
    bursty = stream_stats(stream.users, stream.items, 256)
    perm = np.random.default_rng(0).permutation(len(stream))
    shuffled = stream_stats(stream.users[perm], stream.items[perm], 256)
    single = generate_stream(dataclasses.replace(SMALL, session_events=1.0))
    no_sessions = stream_stats(single.users, single.items, 256)
    # Real logs (MovieLens at B=256): 71% of a user's events in their first micro-batch.
    assert bursty["first_batch_share"] > 0.5
    assert bursty["first_batch_share"] > 3 * shuffled["first_batch_share"]
    assert bursty["first_batch_share"] > no_sessions["first_batch_share"] + 0.2
    assert bursty["median_batches_per_user"] <= 3


def _share_first_seen_late(items: np.ndarray, n_items: int) -> float:
    """Among items with at least 20 events (not rare), the share first seen after the first quarter."""
    first_seen = np.full(n_items, np.inf)
    np.minimum.at(first_seen, items, np.arange(len(items)))
    frequent = np.bincount(items, minlength=n_items) >= 20
    return float((first_seen[frequent] > 0.25 * len(items)).mean())


def test_late_items_appear_only_after_they_arrive_and_fade_with_age() -> None:
    stream = generate_stream(SMALL)
    assert np.all(stream.times >= stream.item_arrival[stream.items])
    static = generate_stream(dataclasses.replace(SMALL, new_item_fraction=0.0))
    late = _share_first_seen_late(stream.items, SMALL.num_items)
    # ~30% arrive uniformly over the span, so ~22% of items arrive after the first quarter; without
    # arrivals an item with 20+ events is essentially always seen in the first quarter.
    assert 0.12 < late < 0.4
    assert _share_first_seen_late(static.items, SMALL.num_items) < 0.03
    # Fading: the catalogue's first items lose their audience, so by the last quarter of the stream
    # most events go to items that arrived later (~0.6), far more than without fading (~0.3).
    no_fade = generate_stream(dataclasses.replace(SMALL, item_lifetime_s=None))

    def late_share_at_end(s: SyntheticStream) -> float:
        return float((s.item_arrival[s.items] > SMALL.start_time)[-len(s) // 4 :].mean())

    assert late_share_at_end(stream) > late_share_at_end(no_fade) + 0.2


def _early_late_taste_agreement(drift: float) -> float:
    stream = generate_stream(dataclasses.replace(SMALL, drift=drift, taste_strength=6.0, zipf_skew=0.5))
    out = []
    for user in np.unique(stream.users):
        idx = np.flatnonzero(stream.users == user)
        if len(idx) < 40:
            continue
        early = stream.item_vectors[stream.items[idx[: len(idx) // 4]]].mean(0)
        late = stream.item_vectors[stream.items[idx[-len(idx) // 4 :]]].mean(0)
        out.append(early @ late / np.linalg.norm(early) / np.linalg.norm(late))
    assert len(out) >= 20
    return float(np.mean(out))


def test_drift_moves_tastes_over_the_span() -> None:
    assert _early_late_taste_agreement(1.0) < _early_late_taste_agreement(0.0) - 0.2


def test_batches_and_jsonl_carry_the_same_events(tmp_path: Path) -> None:
    stream = generate_stream(dataclasses.replace(SMALL, num_events=1000))
    batches = list(stream.batches(300))
    assert [len(b) for b in batches] == [300, 300, 300, 100]
    assert batches[1].user_ids[0] == str(stream.users[300]) and batches[3].item_ids[-1] == str(stream.items[-1])
    np.testing.assert_array_equal(np.concatenate([b.event_time for b in batches]), stream.times)
    path = tmp_path / "events.jsonl"
    assert stream.write_jsonl(path) == 1000
    log, report = read_log([path])
    assert report.bad_total == 0 and log.timed
    assert log.users == stream.users.astype(str).tolist() and log.items == stream.items.astype(str).tolist()
    np.testing.assert_allclose(np.frombuffer(log.times, dtype=np.float64), stream.times)


def test_invalid_spec_names_the_field() -> None:
    with pytest.raises(ValueError, match="new_item_fraction"):
        SyntheticSpec(new_item_fraction=1.0)
    with pytest.raises(ValueError, match="drift"):
        SyntheticSpec(drift=2.0)
