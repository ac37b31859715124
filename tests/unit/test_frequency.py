"""The default frequency estimator (``frequency.method=occurrences``) against exact counts on seeded
streams: a stationary Zipf head and tail, a late new item, a fading item and a popularity swap;
its update against a sequential reference; restart, migration and the device contract.

Truth is the per-event share q_j of each item's draws (the stream's generating probabilities);
the estimator returns log q̂_j. The presence method is compared where the issue measured it.
"""

from __future__ import annotations

import io
import logging
import math

import numpy as np
import pytest
import torch

from streamtrain.config import FrequencyConfig
from streamtrain.frequency import (
    PresenceFrequencyEstimator,
    StreamingFrequencyEstimator,
    build_frequency_estimator,
)

ITEMS, BATCH, ALPHA = 1000, 256, 0.01


def zipf(n: int = ITEMS) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1)
    return p / p.sum()


def draw(rng: np.random.Generator, probs: np.ndarray, steps: int, batch: int = BATCH) -> np.ndarray:
    """(steps, batch) i.i.d. item indices with probabilities ``probs`` (inverse-CDF, fast)."""
    cdf = np.cumsum(probs)
    return np.searchsorted(cdf / cdf[-1], rng.random((steps, batch)), side="right")


def feed(est, batches: np.ndarray) -> None:
    for batch in batches:
        est.update(torch.as_tensor(batch))


def log_error(est, keys: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """log q̂ − log q per key."""
    return est.log_prob(torch.as_tensor(keys)).double().numpy() - np.log(truth)


def test_stationary_zipf_head_and_tail_against_exact_shares() -> None:
    rng = np.random.default_rng(0)
    probs = zipf()
    est = StreamingFrequencyEstimator(1 << 16, 2, ALPHA, seed=0)
    old = PresenceFrequencyEstimator(1 << 16, 2, ALPHA, 100.0, seed=0)
    for batch in draw(rng, probs, 2000):
        est.update(torch.as_tensor(batch))
        old.update(torch.as_tensor(batch))
    keys = np.arange(ITEMS)
    err = log_error(est, keys, probs)
    head = np.abs(np.expm1(err[:50]))  # relative errors of the 50 most popular items
    assert head.mean() < 0.10 and head.max() < 0.35, (head.mean(), head.max())
    tail = np.abs(err[300:])  # items with 4-18 expected sightings per 100 batches
    assert np.median(tail) < 0.15 and np.quantile(tail, 0.95) < 0.5
    # Ordering: any two top-50 items whose true shares differ by ≥ 1.3x are never inverted, and
    # the top-10 ranking is nearly exact (neighbours 9 vs 10 differ by only 11%).
    est_log = err[:50] + np.log(probs[:50])
    ratio = probs[:50, None] / probs[None, :50]
    assert (est_log[:, None] > est_log[None, :])[ratio >= 1.3].all()
    ranks = np.argsort(np.argsort(-est_log[:10]))
    assert np.corrcoef(ranks, np.arange(10))[0, 1] > 0.95
    # The presence method reads ≈ 0 for the whole top 10 although their shares span log 10.
    old_top = old.log_prob(torch.arange(10)).numpy()
    assert np.ptp(old_top) < 0.1 and np.ptp(est_log[:10]) > 2.0


def test_late_new_items_are_right_within_five_sightings() -> None:
    """After 20k batches' worth of events (B = 64 to keep the test fast, fed in 20 large updates: a
    slot never seen depends only on positions), four new items arrive at 1, 2, 0.5 and 4
    occurrences per batch. Each reads within 2x of its true share by its 5th sighting. Before a
    second sighting an item is taken for an average one: its gap is the number of distinct items
    seen (not the estimator's whole age, the published defect, nor "one per batch", which reads
    every one-off tail item as a head item)."""
    rng = np.random.default_rng(1)
    probs = zipf()
    batch_size = 64
    est = StreamingFrequencyEstimator(1 << 16, 2, ALPHA, seed=0)
    past = draw(rng, probs, 20, 1000 * batch_size)
    feed(est, past)
    assert est.events == 20_000 * batch_size
    distinct = len(np.unique(np.concatenate(past)))
    once = torch.tensor([10**6 + 7])
    est.update(torch.cat([torch.as_tensor(draw(rng, probs, 1, batch_size - 1)[0]), once]))
    # Hash collisions can only merge slots: the count reads at most the truth, and barely less.
    assert 0.95 * distinct <= est.mean_gap(once).item() <= distinct + batch_size
    new = np.array([10**6, 10**6 + 1, 10**6 + 2, 10**6 + 3])
    per_batch = [1, 2, 0.5, 4]
    truth = np.array(per_batch) / batch_size
    sightings = np.zeros(4)
    within = {i: [] for i in range(4)}
    for step in range(10):
        batch = draw(rng, probs, 1, batch_size)[0]
        put = [new[0]] + [new[1]] * 2 + ([new[2]] if step % 2 == 0 else []) + [new[3]] * 4
        batch[rng.choice(batch_size, len(put), replace=False)] = put
        est.update(torch.as_tensor(batch))
        sightings += [1, 2, step % 2 == 0, 4]
        err = np.abs(log_error(est, new, truth))
        for i in range(4):
            within[i].append((sightings[i], err[i]))
    for i in range(4):
        at_five = [e for s, e in within[i] if s >= 5][0]
        assert at_five < math.log(2), (i, within[i])


def test_presence_method_reproduces_the_first_sighting_defect() -> None:
    """The issue's number: after 20k steps an item then seen every step reads log p̂ ≈ −5.7 (truth 0)."""
    old = PresenceFrequencyEstimator(4096, 2, 0.01, 100.0, seed=0)
    for _ in range(20_000):
        old.update(torch.zeros(0, dtype=torch.long))  # steps without this item
    reads = []
    for _ in range(10):
        old.update(torch.tensor([42]))
        reads.append(old.log_prob(torch.tensor([42])).item())
    assert reads[0] == pytest.approx(-5.70, abs=0.01) and reads[9] < -5.6


def test_fading_item_and_popularity_swap_follow_the_truth() -> None:
    rng = np.random.default_rng(2)
    base = zipf() * 0.925

    def mix(a: float, b: float, fading: float) -> np.ndarray:
        return np.concatenate([base, [a, b, fading]])

    keys = np.array([ITEMS, ITEMS + 1, ITEMS + 2])  # swapped pair a, b and the fading item
    est = StreamingFrequencyEstimator(1 << 16, 2, ALPHA, seed=0)
    before = mix(0.05, 0.005, 0.02)
    feed(est, draw(rng, before, 1500))
    assert np.abs(log_error(est, keys, before[ITEMS:])).max() < 0.2
    after = mix(0.005, 0.05, 0.002)  # a and b swap, the fading item drops 10x
    feed(est, draw(rng, after, 50))
    assert abs(log_error(est, keys[1:2], after[ITEMS + 1 :][:1])[0]) < 0.15  # the riser caught up (~640 sightings)
    feed(est, draw(rng, after, 150))
    err = log_error(est, keys, after[ITEMS:])
    assert np.abs(err[:2]).max() < math.log(1.3), err
    assert abs(err[2]) < math.log(1.8), err  # ~100 sightings at 1/10 the old rate
    est_log = err + np.log(after[ITEMS:])
    assert est_log[1] > est_log[0] + 1.5  # the order swapped (truth: log 10 ≈ 2.3 apart)

    # An item that stops entirely fades through the pending gap instead of keeping its rate.
    stopped = est.log_prob(torch.as_tensor(keys[1:2])).item()
    feed(est, draw(rng, mix(0.0, 0.0, 0.0), 200))
    assert est.log_prob(torch.as_tensor(keys[1:2])).item() < stopped - math.log(10)


def _sequential_reference(stream: list[list[int]], alpha: float) -> dict[int, tuple[float, int, int]]:
    """Per key, the gap EMA folded one event at a time (event positions, first sighting no gap):
    key -> (debiased mean gap, sightings, last position)."""
    state: dict[int, list[float]] = {}  # key -> [ema, sightings, last]
    pos = 0
    for batch in stream:
        for key in batch:
            if key in state:
                ema, count, last = state[key]
                state[key] = [(1 - alpha) * ema + alpha * (pos - last), count + 1, pos]
            else:
                state[key] = [0.0, 1, pos]
            pos += 1
    return {
        k: (ema / (1 - (1 - alpha) ** (c - 1)) if c > 1 else float("nan"), c, last) for k, (ema, c, last) in state.items()
    }


def test_update_matches_the_sequential_fold_and_adam_debiasing() -> None:
    """With no collisions and at most two sightings of a key per batch the vectorised update is the
    sequential fold exactly; the bias correction makes it the weighted mean of the gaps."""
    rng = np.random.default_rng(3)
    alpha = 0.2
    keys = np.arange(40)
    est = StreamingFrequencyEstimator(1 << 20, 1, alpha, seed=0)
    assert torch.unique(est.slots(torch.as_tensor(keys))).numel() == keys.size  # no collisions
    stream = []
    for _ in range(60):
        batch = rng.choice(keys, 30, replace=True)
        batch = np.array([k for i, k in enumerate(batch) if (batch[: i + 1] == k).sum() <= 2])  # ≤ 2 each
        stream.append(batch.tolist())
        est.update(torch.as_tensor(batch))
    ref = _sequential_reference(stream, alpha)
    seen = [k for k in keys if k in ref and ref[k][1] >= 2]
    table = est.table.view(-1, 3)[est._hash.flat(torch.as_tensor(seen))[0]]
    ema_mean = table[:, 1] / (1 - (1 - alpha) ** (table[:, 2] - 1))
    np.testing.assert_allclose(ema_mean.numpy(), [ref[k][0] for k in seen], rtol=1e-12)
    np.testing.assert_array_equal(table[:, 2].numpy(), [ref[k][1] for k in seen])
    np.testing.assert_array_equal(table[:, 0].numpy(), [ref[k][2] for k in seen])


def test_repeats_in_a_batch_count_and_a_first_sighting_carries_no_gap() -> None:
    history = torch.full((10_000,), 500)  # a long history of another key
    est = StreamingFrequencyEstimator(1 << 12, 2, 0.05, seed=1)
    slots = est.slots(torch.tensor([1, 2, 7, 500]))
    assert all(torch.unique(row).numel() == 4 for row in slots)  # no collisions among these keys
    est.update(history)
    for _ in range(30):
        batch = torch.full((100,), 500)
        batch[10], batch[40], batch[70] = 1, 2, 2  # key 2 occurs twice per batch, key 1 once
        est.update(batch)
    log_q = est.log_prob(torch.tensor([1, 2]))
    assert log_q[0].item() == pytest.approx(math.log(1 / 100), abs=1e-6)  # every gap is exactly 100
    assert log_q[1].item() == pytest.approx(math.log(2 / 100), abs=0.03)  # gaps alternate 30 and 70
    fresh = StreamingFrequencyEstimator(1 << 12, 2, 0.05, seed=1)
    fresh.update(history)
    fresh.update(torch.tensor([7] + [500] * 99))
    assert fresh.log_prob(torch.tensor([7])).item() == pytest.approx(-math.log(100))  # seen once: 1 per batch
    fresh.update(torch.tensor([500] * 50 + [7] + [500] * 49))
    assert fresh.log_prob(torch.tensor([7])).item() == pytest.approx(-math.log(150))  # its one real gap


def _through_bytes(state: dict) -> dict:
    out = {}
    for key, value in state.items():  # what a Redis round trip does
        buf = io.BytesIO()
        np.save(buf, np.asarray(value), allow_pickle=False)
        buf.seek(0)
        out[key] = np.load(buf)
    return out


def test_state_round_trip_reproduces_the_next_estimates_bit_exactly() -> None:
    rng = np.random.default_rng(4)
    config = FrequencyConfig(hash_size=512, num_hashes=2)
    est = build_frequency_estimator(config, seed=1, device="cpu")
    assert isinstance(est, StreamingFrequencyEstimator)
    feed(est, rng.integers(0, 300, (50, 64)))
    saved = _through_bytes(est.state_dict())
    assert int(saved["format"]) == 2 and saved["G"].shape == (2, 512)
    restored = StreamingFrequencyEstimator(512, 2, 0.01, seed=99)
    restored.load_state_dict(saved)
    assert restored.exact_equal(est)
    for batch in rng.integers(0, 300, (3, 64)):
        est.update(torch.as_tensor(batch))
        restored.update(torch.as_tensor(batch))
        assert torch.equal(est.log_prob(torch.arange(400)), restored.log_prob(torch.arange(400)))
    assert restored.exact_equal(est)
    with pytest.raises(ValueError, match="hash_size"):
        StreamingFrequencyEstimator(1024, 2, 0.01).load_state_dict(saved)


def test_format_one_state_migrates_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    old = PresenceFrequencyEstimator(256, 2, 0.01, 100.0, seed=5)
    old.update(torch.arange(50))
    legacy = {k: v for k, v in old.state_dict().items() if k != "format"}  # as saved before formats
    est = StreamingFrequencyEstimator(256, 2, 0.01, seed=6)
    with caplog.at_level(logging.WARNING, logger="streamtrain.frequency.occurrence"):
        est.load_state_dict(legacy)
    assert "frequency.method=presence" in caplog.text
    assert est.step == 1 and est.events == 0 and not est.table.any()
    assert torch.equal(est.slots(torch.arange(50)), old.slots(torch.arange(50)))  # hash functions kept


def test_config_selects_the_method() -> None:
    assert isinstance(build_frequency_estimator(FrequencyConfig(hash_size=64), seed=0, device="cpu"), StreamingFrequencyEstimator)
    presence = build_frequency_estimator(FrequencyConfig(hash_size=64, method="presence"), seed=0, device="cpu")
    assert isinstance(presence, PresenceFrequencyEstimator)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_without_host_syncs() -> None:
    rng = np.random.default_rng(5)
    cpu = StreamingFrequencyEstimator(1 << 12, 2, ALPHA, seed=0)
    gpu = StreamingFrequencyEstimator(1 << 12, 2, ALPHA, seed=0, device="cuda")
    batches = draw(rng, zipf(), 30)
    for batch in batches[:-1]:
        cpu.update(torch.as_tensor(batch))
        gpu.update(torch.as_tensor(batch).cuda())
    last = torch.as_tensor(batches[-1]).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gpu.update(last)
        log_q = gpu.log_prob(torch.arange(ITEMS, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu.update(last.cpu())
    torch.testing.assert_close(log_q.cpu(), cpu.log_prob(torch.arange(ITEMS)), rtol=1e-6, atol=1e-6)
    restored = StreamingFrequencyEstimator(1 << 12, 2, ALPHA, seed=3, device="cuda")
    restored.load_state_dict(_through_bytes(gpu.state_dict()))
    gpu.update(last)
    restored.update(last)
    assert torch.equal(gpu.log_prob(torch.arange(ITEMS, device="cuda")), restored.log_prob(torch.arange(ITEMS, device="cuda")))
