"""bench/stream_quality.py at toy size: variants are override lists, baselines are scored on the same
batches for every variant, the second half is what is reported, a missing dataset is skipped."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("stream_quality", REPO / "bench/stream_quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_variants_rows_and_json(bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "r.json"
    code = bench.main([
        "--quick", "--streams", "synthetic-zipf1.2", "movielens", "--synthetic-events", "2000", "--batch-size", "128",
        "--movielens", str(tmp_path / "absent"),
        "--variant", "sampler.name=inbatch_logq", "--variant", "sampler.name=xir model.embedding_dim=16", "--out", str(out),
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "movielens" in printed and "skipped" in printed
    result = json.loads(out.read_text())
    assert list(result["streams"]) == ["synthetic-zipf1.2"]
    rows = result["streams"]["synthetic-zipf1.2"]["rows"]
    assert [r["variant"] for r in rows] == ["sampler.name=inbatch_logq", "sampler.name=xir model.embedding_dim=16"]
    for row in rows:
        assert row["steps"] == math.ceil(2000 / 128)
        best = max(row["popular_all"]["recall@20"], row["popular_recent"]["recall@20"])
        assert row["model_over_best_baseline"] == pytest.approx(row["model"]["recall@20"] / best)
        for ranker in ("model", "popular_all", "popular_recent", "covisit"):
            assert 0 <= row[ranker]["ndcg@20"] <= row[ranker]["recall@20"] <= 1
        assert row["model_over_covisit"] == pytest.approx(row["model"]["recall@20"] / row["covisit"]["recall@20"])
        assert row["covisit_ms"] > 0
    # Popularity and co-visitation do not depend on the model: the same numbers for every variant.
    assert rows[0]["popular_all"] == rows[1]["popular_all"]
    assert rows[0]["covisit"] == rows[1]["covisit"]
    assert rows[0]["popular_all"]["recall@20"] > 0.1  # Zipf 1.2: the head is easy to count
    assert "model / best pop" in printed and "model / covisit" in printed


def test_only_the_second_half_is_reported(bench) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from streamtrain.events.batch import object_array

    # First half: one item over and over (popularity is right every time after the first batch).
    # Second half: every event a new item, which no count can rank (only the first of those batches
    # has a few chance hits among zero-count ties). A whole-run average would read ~0.5.
    n = 2048
    users = object_array([f"u{i % 300}" for i in range(n)])
    items = object_array(["a" if i < n // 2 else f"b{i}" for i in range(n)])
    stream = bench.Stream("toy", users, items, np.arange(n, dtype=np.float64), "toy")
    row = bench.run_variant(stream, 128, ["sampler.name=inbatch"], seed=0, device="cpu")
    assert row["steps"] == 16
    assert row["popular_all"]["recall@20"] < 0.05 and row["popular_recent"]["recall@20"] < 0.05


@pytest.fixture(scope="module")
def breakdown(bench):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("seq_breakdown", REPO / "bench/seq_breakdown.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seq_breakdown_splits_the_stream_into_the_generators_kinds_of_event(breakdown) -> None:  # type: ignore[no-untyped-def]
    from streamtrain.data.synthetic import SyntheticSpec, generate_stream

    stream = generate_stream(SyntheticSpec(num_events=4000, zipf_skew=0.8, transition_strength=5.0, seed=3))
    kinds = breakdown.event_kinds(stream)
    parts = [m for name, m in kinds.items() if name != "all"]
    assert (sum(m.astype(int) for m in parts) == 1).all()  # every event is exactly one kind
    starts = kinds["session start, returning user"] | kinds["session start, new user"]
    assert starts.sum() == len(np.unique(stream.session_of))
    assert kinds["session start, new user"].sum() == len(np.unique(stream.users))  # a user is new once
    # +5 logits on four successors: the generator's own ranking finds those items far more often
    oracle = stream.oracle_rank < 20
    successor = kinds["later, a successor of the previous item"]
    assert successor.mean() > 0.05 and oracle[successor].mean() > oracle[kinds["later, any other item"]].mean() + 0.3


def test_informed_rankers_match_a_per_event_reference(breakdown) -> None:  # type: ignore[no-untyped-def]
    from streamtrain.data.synthetic import SyntheticSpec, generate_stream, true_logits

    stream = generate_stream(SyntheticSpec(num_events=3000, num_items=400, zipf_skew=0.8, transition_strength=5.0, seed=4))
    start, length, decay, k, weight = 1500, 5, 0.7, 20, 2.0
    hits = breakdown.informed_hits(stream, start, length, decay, k, transition_weight=weight)
    users, items, sessions = stream.users, stream.items, stream.session_of
    previous = np.array([items[:i][sessions[:i] == sessions[i]][-1] if (sessions[:i] == sessions[i]).any() else -1
                         for i in range(len(stream))])
    arrival = stream.item_arrival - stream.spec.start_time
    for i in range(start, len(stream)):
        mine = items[:i][users[:i] == users[i]][-length:]
        taste = np.zeros(stream.item_vectors.shape[1])
        if len(mine):
            taste = sum(decay ** (len(mine) - 1 - a) * stream.item_vectors[h] for a, h in enumerate(mine))
            taste /= np.linalg.norm(taste)
        logits = true_logits(stream.spec, stream.item_log_popularity, stream.item_vectors, arrival, taste[None],
                             stream.session_start[sessions[i : i + 1]])[0]
        assert hits["true vectors + history"][i - start] == (logits[items[i]] >= np.sort(logits)[-k])
        followed = items[:i][(previous[:i] == previous[i]) & (previous[i] >= 0)]  # earlier items after the same item
        logits[np.unique(followed)] += weight * np.log1p(np.unique(followed, return_counts=True)[1])
        assert hits["+ transitions seen"][i - start] == (logits[items[i]] >= np.sort(logits)[-k])
    # the transitions are what find successors: counting them must beat the vectors alone on those events
    successor = breakdown.event_kinds(stream)["later, a successor of the previous item"][start:]
    assert hits["+ transitions seen"][successor].mean() > hits["true vectors + history"][successor].mean() + 0.1
