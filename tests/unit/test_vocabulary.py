"""IdVocabulary: admission, fallback, capacity, LRU eviction, stable keys, state round-trip."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from streamtrain.vocab.vocabulary import (
    FALLBACK_ROW,
    IdVocabulary,
    VocabularyStateError,
    stable_key,
)


def ids(*names: str) -> np.ndarray:
    out = np.empty(len(names), dtype=object)
    out[:] = names
    return out


def test_new_ids_get_distinct_rows_and_are_reported_once() -> None:
    v = IdVocabulary(10)
    first = v.lookup(ids("a", "b", "a", "c"))
    assert first.rows[0] == first.rows[2]
    assert len({int(r) for r in first.rows}) == 3
    assert FALLBACK_ROW not in first.rows
    assert sorted(first.assigned.tolist()) == sorted({int(r) for r in first.rows})
    again = v.lookup(ids("c", "a"))
    assert again.rows.tolist() == [first.rows[3], first.rows[0]]
    assert again.assigned.size == 0
    assert len(v) == 3
    assert sorted(v.known_rows().tolist()) == sorted(first.assigned.tolist())
    assert v.ids_of(first.rows[:2]) == ["a", "b"]
    v.lookup(ids("d", "e"))
    assert v.known_rows().tolist() == [1, 2, 3, 4, 5]  # the cached view follows growth


def test_admission_threshold_uses_fallback_until_enough_sightings() -> None:
    v = IdVocabulary(10, admission_threshold=3)
    assert v.lookup(ids("x")).rows.tolist() == [FALLBACK_ROW]
    assert v.lookup(ids("x", "y")).rows.tolist() == [FALLBACK_ROW, FALLBACK_ROW]
    third = v.lookup(ids("x"))
    assert third.rows[0] != FALLBACK_ROW
    assert third.assigned.tolist() == third.rows.tolist()
    assert v.stats()["fallback_total"] == 3
    assert "y" not in v and "x" in v


def test_query_time_lookup_is_read_only_and_maps_unknown_to_fallback() -> None:
    v = IdVocabulary(10, admission_threshold=2)
    v.lookup(ids("a", "a", "b"))
    before = v.state_dict()
    out = v.lookup(ids("a", "b", "zzz"), admit=False)
    assert out.rows[0] != FALLBACK_ROW
    assert out.rows[1:].tolist() == [FALLBACK_ROW, FALLBACK_ROW]
    after = v.state_dict()
    assert before["ids"] == after["ids"] and before["pending_ids"] == after["pending_ids"]
    np.testing.assert_array_equal(before["last_seen"], after["last_seen"])
    assert v.lookup(ids("b")).rows[0] != FALLBACK_ROW  # b's earlier sighting still counts


def test_full_table_without_eviction_maps_new_ids_to_fallback_and_counts_them() -> None:
    v = IdVocabulary(3)  # rows 1 and 2
    v.lookup(ids("a", "b"))
    out = v.lookup(ids("c", "a", "d"))
    assert out.rows[0] == FALLBACK_ROW and out.rows[2] == FALLBACK_ROW and out.rows[1] != FALLBACK_ROW
    assert v.stats()["fallback_total"] == 2 and len(v) == 2


def test_eviction_reuses_the_least_recently_seen_stale_row() -> None:
    v = IdVocabulary(3, eviction_after_s=10.0)
    rows = v.lookup(ids("a", "b"), event_time=np.array([0.0, 5.0])).rows
    row_a, row_b = int(rows[0]), int(rows[1])
    v.lookup(ids("a"), event_time=np.array([6.0]))  # a is now more recent than b
    out = v.lookup(ids("c"), event_time=np.array([16.0]))  # b unseen 11 s > 10 s: evicted
    assert out.rows.tolist() == [row_b] and out.assigned.tolist() == [row_b]
    assert "b" not in v and v.id_of(row_b) == "c"
    assert v.row_keys[row_b] == stable_key("c")
    second = v.lookup(ids("d"), event_time=np.array([16.5]))  # a unseen 10.5 s: evicted next
    assert second.rows.tolist() == [row_a]
    late = v.lookup(ids("e"), event_time=np.array([20.0]))  # nothing stale: c seen 4 s ago, d 3.5 s
    assert late.rows.tolist() == [FALLBACK_ROW]
    assert v.stats()["evictions_total"] == 2


def test_eviction_never_evicts_an_id_of_the_same_batch() -> None:
    v = IdVocabulary(3, eviction_after_s=1.0)
    v.lookup(ids("a", "b"), event_time=np.array([0.0, 0.0]))
    out = v.lookup(ids("c", "d", "e"), event_time=np.array([100.0, 100.0, 100.0]))
    assert out.rows[2] == FALLBACK_ROW  # both stale rows went to c and d
    assert len(set(out.rows[:2].tolist())) == 2


def test_clock_drives_eviction_when_batch_has_no_event_time() -> None:
    now = [0.0]
    v = IdVocabulary(2, eviction_after_s=5.0, clock=lambda: now[0])
    row = v.lookup(ids("a")).rows[0]
    now[0] = 3.0
    assert v.lookup(ids("b")).rows[0] == FALLBACK_ROW
    now[0] = 9.0
    assert v.lookup(ids("b")).rows[0] == row


def test_stable_key_is_deterministic_and_spreads() -> None:
    keys = {stable_key(f"item-{i}") for i in range(10_000)}
    assert len(keys) == 10_000
    assert stable_key("abc") == stable_key("abc")
    v1, v2 = IdVocabulary(5), IdVocabulary(5)
    r1 = v1.lookup(ids("p", "q")).rows
    r2 = v2.lookup(ids("q", "p")).rows
    assert v1.row_keys[r1[0]] == v2.row_keys[r2[1]] == stable_key("p")


def test_state_round_trip_maps_ids_identically_and_continues_identically() -> None:
    rng = np.random.default_rng(0)
    kw: dict[str, Any] = {"admission_threshold": 2, "eviction_after_s": 3.0}
    v = IdVocabulary(50, **kw)
    for t in range(20):
        batch = ids(*[f"i{k}" for k in rng.integers(0, 80, size=16)])
        v.lookup(batch, event_time=np.full(len(batch), float(t)))
    restored = IdVocabulary(50, **kw)
    restored.load_state_dict(v.state_dict())
    probe = ids(*[f"i{k}" for k in range(80)])
    np.testing.assert_array_equal(v.lookup(probe, admit=False).rows, restored.lookup(probe, admit=False).rows)
    for t in range(20, 30):
        batch = ids(*[f"i{k}" for k in rng.integers(0, 120, size=16)])
        a = v.lookup(batch, event_time=np.full(len(batch), float(t)))
        b = restored.lookup(batch, event_time=np.full(len(batch), float(t)))
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.assigned, b.assigned)
    assert v.stats() == restored.stats()
    assert v.stats()["evictions_total"] > 0  # the scenario did exercise eviction


def test_load_state_rejects_other_capacity() -> None:
    v = IdVocabulary(10)
    v.lookup(ids("a"))
    with pytest.raises(VocabularyStateError):
        IdVocabulary(11).load_state_dict(v.state_dict())


def test_pending_sightings_are_bounded() -> None:
    v = IdVocabulary(10, admission_threshold=5, max_pending=100)
    v.lookup(ids(*[f"once-{i}" for i in range(1000)]))
    assert v.stats()["pending"] <= 100
