"""The vectorised vocabulary against per-event references: keys, index, admission/eviction, states."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch

from streamtrain.events.ids import encode_ids, id_keys, reference_key
from streamtrain.vocab.key_table import KeyIndex
from streamtrain.vocab.vocabulary import FALLBACK_ROW, IdVocabulary, VocabularyStateError, stable_key
from streamtrain.training.state_tree import numpy_tree_to_torch, torch_tree_to_numpy


def ids(names: list[str]) -> np.ndarray:
    out = np.empty(len(names), dtype=object)
    out[:] = names
    return out


AWKWARD = ["a", "a\x00", "", "12345678", "123456789", "x" * 64, "héllo wörld", "日本語のID", "🙂" * 5, "tab\tnl\n"]


def test_batch_keys_equal_the_plain_python_definition() -> None:
    rng = np.random.default_rng(1)
    names = AWKWARD + [f"u{int(k)}" for k in rng.integers(0, 10**12, size=200)]
    keys = id_keys(ids(names))
    assert keys.dtype == np.int64
    assert keys.tolist() == [reference_key(n) for n in names]
    assert id_keys(names).tolist() == keys.tolist()  # a list works too
    ascii_only = [n for n in names if n.isascii() and not n.endswith("\x00") and n]
    fixed = np.array([n.encode() for n in ascii_only], dtype="S")  # a source's bytes column
    assert id_keys(fixed).tolist() == [reference_key(n) for n in ascii_only]
    assert stable_key("abc") == reference_key("abc")


def test_keys_spread_without_collisions() -> None:
    keys = id_keys(ids([f"item-{i}" for i in range(200_000)]))
    assert len(np.unique(keys)) == 200_000
    # Low bits are balanced (the index uses the high bits of a multiply, frequency the high 32).
    bit_share = ((keys[:, None] >> np.arange(0, 64, 7)) & 1).mean(axis=0)
    assert np.all(np.abs(bit_share - 0.5) < 0.01)


def test_encoded_ids_decode_back() -> None:
    enc = encode_ids(ids(AWKWARD))
    assert enc.decode() == AWKWARD
    assert enc.take(np.array([7, 0])).decode() == [AWKWARD[7], AWKWARD[0]]


def test_key_index_matches_a_dict_under_inserts_and_removals() -> None:
    rng = np.random.default_rng(2)
    index = KeyIndex(64)
    entry_keys = np.zeros(5000, dtype=np.int64)
    ref: dict[int, int] = {}
    next_entry = 0
    for _ in range(60):
        fresh = np.unique(rng.integers(-(2**63), 2**63 - 1, size=int(rng.integers(1, 80)), dtype=np.int64))
        entries = np.arange(next_entry, next_entry + len(fresh))
        next_entry += len(fresh)
        entry_keys[entries] = fresh
        index.insert(fresh, entries, entry_keys)
        ref.update(zip(fresh.tolist(), entries.tolist()))
        gone = rng.choice(np.array(list(ref)), size=len(ref) // 3, replace=False)
        index.remove(gone, entry_keys)
        for k in gone.tolist():
            del ref[k]
        probe = np.concatenate([np.array(list(ref), dtype=np.int64), gone, fresh])
        expect = [ref.get(k, -1) for k in probe.tolist()]
        assert index.find(probe, entry_keys).tolist() == expect
        assert index.live == len(ref)
    assert index.num_slots >= 2 * len(ref)


class ReferenceVocabulary:
    """The semantics, one event at a time: admission after ``threshold`` sightings, rows in
    order, then the least recently seen stale row (ties: lowest row) not referred to by the batch."""

    def __init__(self, capacity: int, threshold: int, ttl: float | None) -> None:
        self.capacity, self.threshold, self.ttl = capacity, threshold, ttl
        self.index: dict[str, int] = {}
        self.owner: dict[int, str] = {}
        self.last_seen: dict[int, float] = {}
        self.pending: dict[str, int] = {}
        self.next_row = 1
        self.fallbacks = self.evictions = 0

    def lookup(self, batch: list[str], times: list[float]) -> tuple[list[int], list[int]]:
        now = max(times)
        in_batch = {self.index[i] for i in batch if i in self.index}
        rows, assigned = [], []
        for item in batch:
            if item in self.index:
                rows.append(self.index[item])
                continue
            seen = self.pending.get(item, 0) + 1
            row = self._take(now, in_batch) if seen >= self.threshold else None
            if row is None:
                if self.threshold > 1:
                    self.pending[item] = min(seen, self.threshold - 1)
                rows.append(FALLBACK_ROW)
                self.fallbacks += 1
                continue
            self.pending.pop(item, None)
            self.index[item], self.owner[row], self.last_seen[row] = row, item, now
            rows.append(row)
            assigned.append(row)
        for row, t in zip(rows, times):
            if row != FALLBACK_ROW:
                self.last_seen[row] = max(self.last_seen[row], t)
        return rows, assigned

    def _take(self, now: float, in_batch: set[int]) -> int | None:
        if self.next_row < self.capacity:
            self.next_row += 1
            return self.next_row - 1
        if self.ttl is None:
            return None
        stale = [(t, r) for r, t in self.last_seen.items() if now - t > self.ttl and r not in in_batch]
        if not stale:
            return None
        _, row = min(stale)
        del self.index[self.owner[row]]
        self.evictions += 1
        return row


@pytest.mark.parametrize(
    ("threshold", "ttl", "lateness", "queue_limit"),
    [(1, None, 0.9, 0), (3, None, 0.9, 0), (1, 4.0, 0.9, 0), (2, 3.0, 0.9, 0), (1, 3.0, 6.0, 0), (1, 3.0, 0.9, 3),
     (2, 2.0, 4.0, 5)],
)
def test_matches_the_per_event_reference(threshold: int, ttl: float | None, lateness: float, queue_limit: int) -> None:
    rng = np.random.default_rng(threshold * 10 + int(ttl or 0) + int(lateness))
    vocab = IdVocabulary(40, admission_threshold=threshold, eviction_after_s=ttl, max_pending=10_000)
    if queue_limit:  # eviction queue shorter than the table: rebuilds and partial captures
        vocab._evictions.limit = queue_limit
    ref = ReferenceVocabulary(40, threshold, ttl)
    for step in range(60):
        batch = [f"i{k}" for k in rng.zipf(1.3, size=int(rng.integers(1, 30))) % 150]
        # Forward and ragged within a batch; with lateness 6 events arrive up to 6 s out of order.
        times = (step + rng.uniform(0, lateness, size=len(batch)) - (lateness if lateness > 1 else 0)).tolist()
        out = vocab.lookup(ids(batch), event_time=np.array(times))
        rows, assigned = ref.lookup(batch, times)
        assert out.rows.tolist() == rows, step
        assert out.assigned.tolist() == assigned, step
        assert vocab.stats()["fallback_total"] == ref.fallbacks
        assert vocab.evictions_total == ref.evictions
    assert vocab.ids_of(np.arange(1, 40)) == [ref.owner.get(r) for r in range(1, 40)]
    assert len(vocab) == len(ref.index)
    if ttl is not None:
        assert ref.evictions > 0


def test_source_keys_skip_hashing_and_still_store_the_ids() -> None:
    names = ids(["u1", "ü2", "u3", "u1"])
    a, b = IdVocabulary(10), IdVocabulary(10)
    plain = a.lookup(names)
    keyed = b.lookup(names, keys=id_keys(names))
    np.testing.assert_array_equal(plain.rows, keyed.rows)
    assert b.ids_of(keyed.rows) == ["u1", "ü2", "u3", "u1"]
    assert b.row_of("ü2") == keyed.rows[1] and "u3" in b and "nope" not in b
    with pytest.raises(ValueError):
        b.lookup(names, keys=np.zeros(3, dtype=np.int64))


def test_ids_survive_heavy_churn_and_the_arena_stays_bounded() -> None:
    vocab = IdVocabulary(50, eviction_after_s=0.5)
    for t in range(400):
        vocab.lookup(ids([f"churn-{t}-{j}-" + "p" * (t % 17) for j in range(20)]), event_time=np.full(20, float(t)))
    rows = vocab.known_rows().numpy()
    got = vocab.ids_of(rows)
    # 49 rows: the 20 ids of t=399, 398 and the 9 most recent of 397 (least recently seen go first).
    assert sorted(g.split("-")[1] for g in got) == ["397"] * 9 + ["398"] * 20 + ["399"] * 20
    assert [vocab.row_of(g) for g in got] == rows.tolist()
    assert vocab.evictions_total > 7000
    assert vocab._ids.nbytes < 50 * 12 + 4 * 50 * 60 + 1024  # compaction keeps garbage bounded


def checkpoint_round_trip(state: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint file does to a state: tensors, torch.save, weights_only load, numpy."""
    buf = io.BytesIO()
    torch.save(numpy_tree_to_torch(state), buf)
    buf.seek(0)
    return torch_tree_to_numpy(torch.load(buf, weights_only=True))


def test_state_survives_a_checkpoint_file_even_when_empty() -> None:
    empty = IdVocabulary(8, admission_threshold=2)
    IdVocabulary(8, admission_threshold=2).load_state_dict(checkpoint_round_trip(empty.state_dict()))
    v = IdVocabulary(8, admission_threshold=2, eviction_after_s=1.0)
    v.lookup(ids(["a", "a", "b", "日本"] * 2), event_time=np.arange(8.0))
    restored = IdVocabulary(8, admission_threshold=2, eviction_after_s=1.0)
    restored.load_state_dict(checkpoint_round_trip(v.state_dict()))
    assert restored.ids_of(v.known_rows().numpy()) == v.ids_of(v.known_rows().numpy())
    assert restored.stats() == v.stats() and not restored.keys_migrated


def format1_state() -> dict[str, Any]:
    """A vocabulary state as format 1 (before the vectorised vocabulary) saved it."""
    row_keys = np.zeros(6, dtype=np.int64)
    row_keys[1:4] = [111, 222, 333]  # blake2b keys, dropped by the migration
    last_seen = np.full(6, -np.inf)
    last_seen[1:4] = [5.0, 1.0, 3.0]
    return {
        "capacity": 6, "ids": ["old-b", "old-c", "old-a"], "rows": np.array([2, 3, 1]),
        "row_keys": row_keys, "last_seen": last_seen, "next_row": 4, "free": np.zeros(0, dtype=np.int64),
        "pending_ids": ["wait"], "pending_counts": np.array([1]),
        "counters": {"fallback_total": 4, "evictions_total": 0, "admissions_total": 3},
    }


def test_format1_state_is_migrated_with_new_keys() -> None:
    v = IdVocabulary(6, admission_threshold=2, eviction_after_s=2.0)
    v.load_state_dict(checkpoint_round_trip(format1_state()))
    assert v.keys_migrated
    assert [v.row_of(n) for n in ("old-a", "old-b", "old-c")] == [1, 2, 3]
    assert v.row_keys[1:4].tolist() == [stable_key("old-a"), stable_key("old-b"), stable_key("old-c")]
    assert v.stats()["pending"] == 1 and v.admissions_total == 3
    second = v.lookup(ids(["wait", "new"]), event_time=np.array([6.0, 6.0]))
    assert second.rows.tolist() == [4, FALLBACK_ROW]  # 'wait' had one sighting already
    out = v.lookup(ids(["x", "x", "y", "y", "z", "z"]), event_time=np.full(6, 6.5))
    # Row 5 is fresh, then the least recently seen stale rows: old-b (1.0), old-c (3.0).
    assert out.assigned.tolist() == [5, 2, 3] and "old-b" not in v and "old-a" in v


def test_unreadable_states_fail_with_a_clear_message() -> None:
    bad = format1_state()
    del bad["rows"]
    with pytest.raises(VocabularyStateError, match="neither format 2 nor format 1"):
        IdVocabulary(6).load_state_dict(bad)
    future = IdVocabulary(6).state_dict()
    future["format"] = 3
    with pytest.raises(VocabularyStateError, match="format 3"):
        IdVocabulary(6).load_state_dict(future)
    other_keys = IdVocabulary(6).state_dict()
    other_keys["key_function"] = "blake2b"
    with pytest.raises(VocabularyStateError, match="blake2b"):
        IdVocabulary(6).load_state_dict(other_keys)


def test_memory_per_id_is_a_few_dozen_bytes() -> None:
    n = 100_000
    v = IdVocabulary(n + 1)
    for start in range(0, n, 25_000):
        v.lookup(ids([f"item-{i:07d}" for i in range(start, start + 25_000)]))
    assert len(v) == n
    per_id = v.memory_bytes() / n
    assert per_id < 45 + 2 * 12  # arrays + index + 12 id bytes (the arena may hold 2x while growing)


def test_trainer_resuming_a_format1_checkpoint_restarts_frequency_statistics(caplog: pytest.LogCaptureFixture) -> None:
    from streamtrain.config import Config
    from streamtrain.events.batch import EventBatch
    from streamtrain.training.trainer import Trainer

    config = Config.model_validate({"run": {"device": "cpu"}, "model": {"user_capacity": 50, "item_capacity": 50,
                                                                         "embedding_dim": 8},
                                    "trainer": {"batch_size": 16, "progressive_eval_fraction": 0.0}})
    original = Trainer(config)
    rng = np.random.default_rng(4)
    for _ in range(4):
        original.train_step(EventBatch.from_ids(rng.integers(0, 30, 16), rng.integers(0, 30, 16)))
    state = original.file_state()
    for tower in ("user", "item"):  # what a checkpoint of the previous version held
        vocab = getattr(original.state, f"{tower}_vocab")
        rows = vocab.known_rows().numpy()
        state["vocab"][tower] = {
            "capacity": 50, "ids": vocab.ids_of(rows), "rows": torch.from_numpy(rows),
            "row_keys": torch.zeros(50, dtype=torch.int64), "last_seen": torch.from_numpy(vocab.last_seen.copy()),
            "next_row": int(rows.max()) + 1, "free": torch.zeros(0, dtype=torch.int64), "pending_ids": [],
            "pending_counts": torch.zeros(0, dtype=torch.int64),
            "counters": {"fallback_total": 0, "evictions_total": 0, "admissions_total": len(rows)},
        }
    resumed = Trainer(config)
    buffer = io.BytesIO()
    torch.save(state, buffer)  # the checkpoint file, read back as the worker does
    buffer.seek(0)
    resumed.load_file_state(torch.load(buffer, weights_only=True))
    fresh_frequency = {k: v.copy() for k, v in resumed.shared_state().items() if k.startswith("frequency.")}
    with caplog.at_level("WARNING"):
        resumed.load_shared_state(original.shared_state())
    assert "frequency statistics start afresh" in caplog.text
    for name, value in fresh_frequency.items():
        np.testing.assert_array_equal(resumed.shared_state()[name], value, err_msg=name)
    np.testing.assert_array_equal(resumed.state.item_vocab.row_keys, original.state.item_vocab.row_keys)
    np.testing.assert_array_equal(resumed.state.item_keys.numpy(), original.state.item_keys.numpy())
    assert resumed.state.item_vocab.ids_of(rows) == original.state.item_vocab.ids_of(rows)
