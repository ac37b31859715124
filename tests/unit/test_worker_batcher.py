"""Batcher: count cuts are deterministic, latency cuts only close the open batch, offsets add up."""

from __future__ import annotations

import numpy as np
import pytest

from streamtrain.events import EventBatch
from streamtrain.ingest.batcher import Batcher
from streamtrain.events.records import MicroBatch

TP = ("t", 0)


def chunk(first: int, n: int, bad: set[int] = frozenset()) -> tuple[np.ndarray, EventBatch, np.ndarray]:
    """Messages first..first+n-1; offsets in ``bad`` are rejects. Item id = offset, so events are traceable."""
    offsets = np.arange(first, first + n, dtype=np.int64)
    good = np.array([i for i, o in enumerate(offsets) if int(o) not in bad], dtype=np.int64)
    events = EventBatch.from_ids(
        [f"u{o}" for o in offsets[good]], [str(o) for o in offsets[good]], offsets[good].astype(float)
    )
    return offsets, events, good


def items(batch: MicroBatch) -> list[int]:
    return [int(i) for i in batch.events.item_ids]


def feed(batcher: Batcher, pieces: list[tuple[int, int]], bad: set[int] = frozenset()) -> list[MicroBatch]:
    out: list[MicroBatch] = []
    for first, n in pieces:
        offsets, events, good = chunk(first, n, bad)
        out += batcher.add(TP, offsets, events, good, now=0.0)
    return out


def test_count_cuts_do_not_depend_on_poll_sizes() -> None:
    rng = np.random.default_rng(0)
    B, total = 7, 200
    reference = [items(b) for b in feed(Batcher(B, 1.0), [(0, total)])]
    for _ in range(20):
        cuts = sorted(set(rng.integers(1, total, size=15).tolist()))
        bounds = [0, *cuts, total]
        pieces = [(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]
        assert [items(b) for b in feed(Batcher(B, 1.0), pieces)] == reference
    assert reference[0] == list(range(7)) and all(len(r) == B for r in reference)
    assert len(reference) == total // B


def test_resume_at_a_batch_boundary_reproduces_later_batches() -> None:
    B = 5
    full = feed(Batcher(B, 1.0), [(0, 60)], bad={3, 11, 12, 40})
    k = 4
    resume_at = full[k - 1].ranges[TP].next_offset
    resumed = feed(Batcher(B, 1.0), [(resume_at, 60 - resume_at)], bad={3, 11, 12, 40})
    assert [items(b) for b in resumed] == [items(b) for b in full[k:]]
    assert [b.ranges[TP] for b in resumed] == [b.ranges[TP] for b in full[k:]]


def test_ranges_tile_the_offsets_and_rejects_advance_them() -> None:
    bad = {0, 1, 9, 10, 11, 25, 29}
    batcher = Batcher(4, 1.0)
    batches = feed(batcher, [(0, 13), (13, 17)], bad=bad)
    tail = batcher.flush()
    assert tail is not None and tail.closed_by == "flush"
    batches.append(tail)
    position = 0
    for b in batches:
        r = b.ranges[TP]
        assert r.first_offset == position
        assert r.events == len(b.events)
        position = r.next_offset
    assert position == 30
    trained = [i for b in batches for i in items(b)]
    assert trained == [o for o in range(30) if o not in bad]
    # Rejects 9..11 sit between events of one batch; a count cut ends right after the B-th event
    # (24), so reject 25 opens the next batch.
    assert batches[1].ranges[TP].next_offset == 13
    assert batches[4].ranges[TP].next_offset == 25 and batches[5].ranges[TP].first_offset == 25


def test_only_rejects_still_move_the_offsets() -> None:
    batcher = Batcher(4, 0.5)
    offsets, events, good = chunk(100, 3, bad={100, 101, 102})
    assert batcher.add(TP, offsets, events, good, now=10.0) == []
    assert batcher.poll_due(10.4) is None
    batch = batcher.poll_due(10.5)
    assert batch is not None and batch.closed_by == "latency"
    assert len(batch.events) == 0 and batch.ranges[TP].next_offset == 103 and batch.messages == 3


def test_latency_clock_starts_with_the_first_message_of_a_batch() -> None:
    batcher = Batcher(10, 1.0)
    assert batcher.deadline() is None
    offsets, events, good = chunk(0, 3)
    batcher.add(TP, offsets, events, good, now=5.0)
    offsets, events, good = chunk(3, 3)
    batcher.add(TP, offsets, events, good, now=5.8)
    assert batcher.deadline() == pytest.approx(6.0)
    batch = batcher.poll_due(6.0)
    assert batch is not None and items(batch) == list(range(6))
    assert batcher.deadline() is None and batcher.poll_due(100.0) is None


def test_partitions_keep_their_own_ranges_and_last_event_time() -> None:
    batcher = Batcher(10, 1.0)
    for key, first in ((("t", 0), 0), (("t", 1), 50), (("t", 0), 3)):
        offsets, events, good = chunk(first, 3)
        out = batcher.add(key, offsets, events, good, now=0.0)
    assert len(out) == 0
    batch = batcher.flush()
    assert batch is not None
    assert batch.ranges[("t", 0)].first_offset == 0 and batch.ranges[("t", 0)].next_offset == 6
    assert batch.ranges[("t", 0)].events == 6 and batch.ranges[("t", 0)].last_event_time == 5.0
    assert batch.ranges[("t", 1)].next_offset == 53 and batch.ranges[("t", 1)].last_event_time == 52.0


def test_reset_drops_the_open_batch() -> None:
    batcher = Batcher(10, 1.0)
    offsets, events, good = chunk(0, 4)
    batcher.add(TP, offsets, events, good, now=0.0)
    batcher.reset()
    assert batcher.flush() is None and batcher.pending_events == 0


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        Batcher(0, 1.0)
    with pytest.raises(ValueError):
        Batcher(4, 0.0)
