"""The presence frequency estimator (``frequency.method=presence``, Yi et al. 2019 as published)
against exact probabilities (the paper's simulation, shortened), its drift behaviour, hashing,
duplicates, state round trip and its refusal of the occurrences method's state."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from streamtrain.config import FrequencyConfig
from streamtrain.frequency import PresenceFrequencyEstimator, StreamingFrequencyEstimator

ITEMS, BATCH = 1000, 128


def zipf_stream(rng: np.random.Generator, probs: np.ndarray, steps: int) -> np.ndarray:
    return rng.choice(ITEMS, size=(steps, BATCH), p=probs)


def in_batch_probability(probs: np.ndarray) -> np.ndarray:
    """P(item appears in a batch of BATCH i.i.d. draws): what p̂ estimates."""
    return 1.0 - (1.0 - probs) ** BATCH


def mean_relative_error(est: PresenceFrequencyEstimator, probs: np.ndarray, top: np.ndarray) -> float:
    p_hat = est.log_prob(torch.as_tensor(top)).exp().double().numpy()
    truth = in_batch_probability(probs[top])
    return float(np.mean(np.abs(p_hat - truth) / truth))


def test_converges_to_exact_probability_and_follows_a_popularity_switch() -> None:
    """Paper setup (1000 items, batch 128, Zipf, H = 5000, A₀ = 0, B₀ = 100, α = 0.01) with
    fewer steps; the estimate of the 50 most popular items must be within 10% on average."""
    rng = np.random.default_rng(0)
    probs = 1.0 / np.arange(1, ITEMS + 1)
    probs /= probs.sum()
    est = PresenceFrequencyEstimator(5000, 2, 0.01, 100.0, seed=0)
    for batch in zipf_stream(rng, probs, 3000):
        est.update(torch.as_tensor(batch))
    top = np.argsort(-probs)[:50]
    assert mean_relative_error(est, probs, top) < 0.10
    prior_only = PresenceFrequencyEstimator(5000, 2, 0.01, 100.0, seed=0)
    assert mean_relative_error(prior_only, probs, top) > 0.5  # convergence is a real effect

    switched = probs[rng.permutation(ITEMS)]  # drift: a different set of items becomes popular
    new_top = np.argsort(-switched)[:50]
    assert mean_relative_error(est, switched, new_top) > 0.3  # stale right after the switch
    for batch in zipf_stream(rng, switched, 3000):
        est.update(torch.as_tensor(batch))
    assert mean_relative_error(est, switched, new_top) < 0.10


def test_duplicates_in_a_step_update_each_slot_once() -> None:
    single, repeated = (PresenceFrequencyEstimator(64, 2, 0.1, 10.0, seed=3) for _ in range(2))
    for step in range(5):
        single.update(torch.tensor([7, 11 + step]))
        repeated.update(torch.tensor([7, 7, 7, 11 + step, 11 + step]))
    assert single.exact_equal(repeated)
    # an item seen in every batch converges to p̂ = 1 (gap 1) and never beyond
    est = PresenceFrequencyEstimator(64, 2, 0.5, 10.0, seed=3)
    for _ in range(60):
        est.update(torch.tensor([7, 7]))
    assert est.log_prob(torch.tensor([7])).item() == pytest.approx(0.0, abs=1e-6)


def test_hash_is_multiply_shift_on_64_bit_keys() -> None:
    est = PresenceFrequencyEstimator(5000, 3, 0.01, 100.0, seed=5)
    keys = np.array([0, 1, 2, -1, -(2**63), 2**63 - 1, 123456789012345], dtype=np.int64)
    state = est.state_dict()
    with np.errstate(over="ignore"):
        mixed = state["hash_mult"].astype(np.uint64)[:, None] * keys.astype(np.uint64)[None, :]
        mixed = mixed + state["hash_add"].astype(np.uint64)[:, None]
    expected = (mixed >> np.uint64(32)) % np.uint64(5000)
    np.testing.assert_array_equal(est.slots(torch.as_tensor(keys)).numpy(), expected.astype(np.int64))
    other = PresenceFrequencyEstimator(5000, 3, 0.01, 100.0, seed=6)
    assert not torch.equal(est.slots(torch.as_tensor(keys)), other.slots(torch.as_tensor(keys)))


def test_state_round_trip_continues_identically() -> None:
    rng = np.random.default_rng(1)
    est = PresenceFrequencyEstimator.from_config(FrequencyConfig(hash_size=512, num_hashes=2), seed=1, device="cpu")
    for _ in range(50):
        est.update(torch.as_tensor(rng.integers(0, 300, 64)))
    saved = {}
    for key, value in est.state_dict().items():  # through bytes, as Redis stores it
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        buf.seek(0)
        saved[key] = np.load(buf)
    assert saved["A"].shape == (2, 512) and saved["B"].shape == (2, 512) and saved["step"].shape == ()
    restored = PresenceFrequencyEstimator(512, 2, 0.01, 100.0, seed=99)
    restored.load_state_dict(saved)
    assert restored.exact_equal(est)
    nxt = torch.as_tensor(rng.integers(0, 300, 64))
    est.update(nxt)
    restored.update(nxt)
    assert restored.exact_equal(est)
    assert torch.equal(est.log_prob(torch.arange(300)), restored.log_prob(torch.arange(300)))


def test_load_refuses_other_geometry() -> None:
    state = PresenceFrequencyEstimator(512, 2, 0.01, 100.0).state_dict()
    with pytest.raises(ValueError, match="hash_size"):
        PresenceFrequencyEstimator(1024, 2, 0.01, 100.0).load_state_dict(state)


def test_legacy_state_without_format_loads_and_occurrences_state_is_refused() -> None:
    est = PresenceFrequencyEstimator(64, 2, 0.1, 10.0, seed=3)
    est.update(torch.tensor([1, 2, 3]))
    legacy = {k: v for k, v in est.state_dict().items() if k != "format"}  # saved before formats existed
    restored = PresenceFrequencyEstimator(64, 2, 0.1, 10.0, seed=9)
    restored.load_state_dict(legacy)
    assert restored.exact_equal(est)
    newer = StreamingFrequencyEstimator(64, 2, 0.1, seed=3).state_dict()
    with pytest.raises(ValueError, match="frequency.method=occurrences"):
        restored.load_state_dict(newer)
