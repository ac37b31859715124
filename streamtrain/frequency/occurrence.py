"""``frequency.method=occurrences`` (the default): the streaming per-event frequency q̂_j for logQ.

The in-batch logits are corrected by log of how often item j is expected among the batch's
columns, log(B·q_j); the constant log B cancels in the softmax, so this estimator returns
log q̂_j, q_j being j's share of events. It is Yi et al.'s gap estimator (RecSys 2019, Alg. 2-3)
with positions counted in *events* rather than steps, plus the two fixes of
../shared/ALGORITHMS.md, "Streaming frequency estimation":

- **Every occurrence counts.** The events of a batch take consecutive positions t, t+1, ...; an
  item that occurs k times in a batch contributes k sightings. q̂ = 1 / (mean gap) is not
  clamped, so head items keep their differences (the presence method reads ≈ 1 for all of them).
- **A first sighting carries no gap**, and the EMA's start-up bias is removed as in Adam: per
  slot, ``G`` is the EMA of gaps started from 0 and ``c`` counts sightings; after n = c − 1
  gaps the mean gap is G / (1 − (1 − α)^n). Two sightings of a new item give its exact gap.

Per slot (m hash functions × H slots): ``A`` the position of the last sighting, ``G`` and ``c``.
For each slot hit this step by k sightings at positions p_1 < ... < p_k:

    G ← (1−α)^k' · G + [c > 0] · α(1−α)^(k−1) · (p_1 − A) + (1 − (1−α)^(k−1)) · (p_k − p_1)/(k − 1)
    A ← p_k;   c ← c + k                          (k' = k − 1 + [c > 0], the gaps folded)

The middle term is the first gap with the weight the sequential fold gives it. The last folds
the k − 1 gaps inside the batch as if evenly spaced: their sum p_k − p_1 is exact, and for
Poisson arrivals the gaps between the first and last of k points are exchangeable, so this is
the conditional expectation of the sequential fold given that sum. It is exact for k ≤ 2, needs
no float reduction (CUDA float scans and atomics are not run-to-run deterministic, and exact
restart is a requirement), and costs one sort of the m·n slot indices: one vectorised update per
step, no Python loop over events.

Reading (``log_prob``), with e = t − A the events since the slot's last sighting:

- c ≥ 2: the larger of the mean gap and the mean gap the *next* sighting would give if it came
  now, ((1−α)G + α·e) / (1 − (1−α)^(n+1)). The next gap is at least e, so this is a lower bound
  on the estimate after the next sighting; it lets an item that stopped appearing fade instead of
  keeping its last rate forever, and barely moves a stationary one (it changes the gap only when
  e exceeds it, by α·(e − gap)).
- c = 1 (seen once, no gap yet): max(g₁, e) with g₁ = ``first_sighting_gap``, by default D, the
  number of distinct items seen so far (slots in use under the first hash function, at least the
  latest batch size): the mean gap of an *average* item, since the item-averaged share of events
  is 1/D. Neither extreme works: t (the whole age, as the published algorithm does) over-corrects
  every new item by orders of magnitude; the batch's own share ("one in B") reads every one-off
  tail item as if it were in every batch, and on a time-ordered MovieLens pass that alone cut
  in-batch-logQ's progressive Recall@20 from 0.052 to 0.008 (BENCHMARKS.md). A second sighting
  replaces the prior by a measured gap.
- c = 0 (never seen): max(g₁, t) — not seen in t events.

The estimate of a key is the largest gap over its m slots (collisions only add sightings, so the
largest is the least collided, as in a count-min sketch). Memory O(mH): 24 bytes per slot.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from streamtrain.frequency.hashing import MultiplyShiftHash

__all__ = ["OCCURRENCE_FORMAT", "StreamingFrequencyEstimator"]

log = logging.getLogger(__name__)

OCCURRENCE_FORMAT = 2  # format 1: the presence method's A (steps), B (mean gap in steps), step
_A, _G, _C = 0, 1, 2  # columns of the table: last position, biased gap EMA, sightings


def _run_bounds(ordered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a sorted (M,) tensor: the index of the first and of the last element of each element's
    run of equal values, both (M,). Cumulative max/min of integers: exact and sync-free (on CPU
    several times cheaper than two ``searchsorted`` calls)."""
    size = ordered.numel()
    idx = torch.arange(size, device=ordered.device)
    starts = torch.ones(size, dtype=torch.bool, device=ordered.device)
    starts[1:] = ordered[1:] != ordered[:-1]
    ends = torch.ones_like(starts)
    ends[:-1] = starts[1:]
    first = torch.cummax(torch.where(starts, idx, 0), dim=0).values
    last = torch.cummin(torch.where(ends, idx, size).flip(0), dim=0).values.flip(0)
    return first, last


class StreamingFrequencyEstimator:
    """Estimates log q̂ (expected occurrences per event) from a stream of batches of item keys.

    Called by the trainer: :meth:`update` once per training step with the batch's item keys in
    event order (before the loss), :meth:`log_prob` whenever a sampler needs log q̂.
    """

    method = "occurrences"

    def __init__(
        self,
        hash_size: int,
        num_hashes: int,
        alpha: float,
        first_sighting_gap: float | None = None,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if hash_size < 1 or num_hashes < 1 or not 0 < alpha <= 1:
            raise ValueError(
                f"need hash_size >= 1, num_hashes >= 1, 0 < alpha <= 1; got {hash_size}, {num_hashes}, {alpha}"
            )
        if first_sighting_gap is not None and first_sighting_gap < 1:
            raise ValueError(f"first_sighting_gap must be >= 1 event or None, got {first_sighting_gap}")
        self.hash_size = hash_size
        self.num_hashes = num_hashes
        self.alpha = alpha
        self.first_sighting_gap = first_sighting_gap
        self.device = torch.device(device)
        self._hash = MultiplyShiftHash(hash_size, num_hashes, seed=seed, device=self.device)
        self.step = 0  # update calls
        self.events = 0  # t: events seen; the next event gets position t
        self.last_batch = 0  # size of the latest non-empty batch (the default first-sighting gap)
        # One (m, H, 3) float64 table [A, G, c] instead of three arrays: a lookup is one gather of
        # 24 contiguous bytes per slot, a third of the cache misses (the cost of this estimator on
        # CPU is random access into an O(mH) table). float64 holds positions and counts exactly up
        # to 2^53 (centuries of events at a million a second).
        self.table = torch.zeros(num_hashes, hash_size, 3, dtype=torch.float64, device=self.device)
        self._distinct = self._slots_in_use()  # () int64; derived from the table, so not persisted

    @classmethod
    def from_config(cls, config: Any, *, seed: int, device: torch.device | str) -> StreamingFrequencyEstimator:
        """Build from a :class:`~streamtrain.config.FrequencyConfig`."""
        return cls(
            config.hash_size, config.num_hashes, config.alpha, config.first_sighting_gap, seed=seed, device=device
        )

    def slots(self, keys: torch.Tensor) -> torch.Tensor:
        """(m, n) slot of each key under each hash function, in [0, H)."""
        return self._hash.slots(keys)

    @torch.no_grad()
    def update(self, keys: torch.Tensor) -> None:
        """Fold one batch's keys (n,), in event order, into A, G and c; called once per step."""
        self.step += 1
        n = keys.numel()
        if n == 0:
            return
        start, self.events, self.last_batch = self.events, self.events + n, n
        flat = self._hash.flat(keys).reshape(-1)  # (m·n,) hash-major
        pos = (start + torch.arange(n, device=self.device)).repeat(self.num_hashes)  # (m·n,) event positions
        slot, order = torch.sort(flat, stable=True)  # stable: positions ascend within a slot's run
        pos = pos[order]
        first, last = _run_bounds(slot)  # (m·n,) each element's run: index of its first and last element
        k = last - first + 1  # (m·n,) sightings of this slot in the batch
        p_first, p_last = pos[first], pos[last]  # (m·n,)
        table = self.table.view(-1, 3)  # (m·H, 3)
        old = table.index_select(0, slot)  # (m·n, 3) [A, G, c] before this batch
        seen = old[:, _C]
        prev = seen > 0
        inner = (k - 1).double()  # gaps inside the batch
        inner_decay = self._decay_pow(inner)  # (1−α)^(k−1)
        folded = torch.where(prev, inner_decay * (1.0 - self.alpha), inner_decay)  # weight left on the old G
        first_gap = p_first.double() - old[:, _A]  # meaningless where not prev
        first_term = torch.where(prev, self.alpha * inner_decay * first_gap, torch.zeros_like(first_gap))
        inner_term = (1.0 - inner_decay) * (p_last - p_first).double() / inner.clamp_min(1.0)
        new = torch.stack([p_last.double(), folded * old[:, _G] + first_term + inner_term, seen + k], dim=1)
        # Every element of a slot's run computed the same row from the same inputs (the old state
        # was read in full before this write), so duplicate indices write identical values.
        table.index_copy_(0, slot, new)
        # Distinct items ≈ slots in use under hash function 0 (its slots come first): count runs
        # that were empty before this batch. Stays on the device: no sync.
        fresh = (torch.arange(slot.numel(), device=self.device) == first) & (slot < self.hash_size) & ~prev
        self._distinct += fresh.sum()

    def _slots_in_use(self) -> torch.Tensor:
        """() int64: slots of hash function 0 sighted at least once (≈ distinct items seen)."""
        return (self.table[0, :, _C] > 0).sum()

    def _decay_pow(self, exponent: torch.Tensor) -> torch.Tensor:
        """(1 − α)^x for float64 x ≥ 0, as one exp (cheaper than pow on CPU); α = 1 gives [x = 0]."""
        if self.alpha >= 1.0:
            return (exponent == 0).double()
        return torch.exp(exponent * math.log1p(-self.alpha))

    @torch.no_grad()
    def mean_gap(self, keys: torch.Tensor) -> torch.Tensor:
        """(n,) float64 estimated mean gap in events between occurrences of each key (1/q̂)."""
        flat = self._hash.flat(keys)  # (m, n)
        entry = self.table.view(-1, 3).index_select(0, flat.reshape(-1)).view(*flat.shape, 3)  # (m, n, 3)
        count, ema = entry[..., _C], entry[..., _G]  # (m, n)
        elapsed = self.events - entry[..., _A]  # (m, n) e
        gaps = (count - 1.0).clamp_min(0.0)  # n per slot
        bias = self._decay_pow(gaps)  # (1−α)^n
        # Where c < 2 the first denominator is 0 and the quotient unused; clamp to stay finite.
        mean = ema / (1.0 - bias).clamp_min(1e-300)
        decay = 1.0 - self.alpha
        pending = (decay * ema + self.alpha * elapsed) / (1.0 - bias * decay)
        if self.first_sighting_gap is not None:
            prior = torch.full((), float(self.first_sighting_gap), dtype=torch.float64, device=self.device)
        else:
            prior = self._distinct.double().clamp_min(max(self.last_batch, 1))
        once = torch.maximum(elapsed, prior)
        never = prior.clamp_min(self.events)
        gap = torch.where(count >= 2, torch.maximum(mean, pending), torch.where(count >= 1, once, never))
        return gap.amax(dim=0)

    @torch.no_grad()
    def log_prob(self, keys: torch.Tensor) -> torch.Tensor:
        """(n,) float32 log q̂ = −log(mean gap): log expected occurrences per event. No state change."""
        return (-torch.log(self.mean_gap(keys))).float()

    def state_dict(self) -> dict[str, Any]:
        """Format 2: ``A`` (m, H) int64 positions, ``G`` (m, H) float64, ``c`` (m, H) int64, the
        counters ``step``, ``events``, ``last_batch`` and the hash parameters, as numpy copies."""
        table = self.table.cpu().numpy()
        return {
            "format": np.asarray(OCCURRENCE_FORMAT, dtype=np.int64),
            "A": table[..., _A].astype(np.int64),
            "G": table[..., _G].copy(),
            "c": table[..., _C].astype(np.int64),
            "step": np.asarray(self.step, dtype=np.int64),
            "events": np.asarray(self.events, dtype=np.int64),
            "last_batch": np.asarray(self.last_batch, dtype=np.int64),
            **self._hash.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output. Raises ``ValueError`` when the shapes disagree with the
        configured (m, H) (changing them across a restart would scramble every slot).

        A format-1 state (the presence method: ``A``, ``B``, ``step``, no ``format`` key) measures
        another quantity in other units (batch presence per step) and cannot be converted; it is
        migrated by keeping its hash functions and step count and restarting the per-slot
        statistics empty (each item is estimated again from its second sighting on), with a
        warning. To keep using such statistics, set ``frequency.method=presence``.
        """
        fmt = int(np.asarray(state.get("format", 1)))
        if fmt not in (1, OCCURRENCE_FORMAT):
            raise ValueError(f"unknown frequency statistics format {fmt}; this version reads formats 1 and 2")
        shape = (self.num_hashes, self.hash_size)
        arrays = [np.asarray(state[key]) for key in (("A",) if fmt == 1 else ("A", "G", "c"))]
        if any(a.shape != shape for a in arrays):
            raise ValueError(
                f"saved frequency statistics have shape {arrays[0].shape}; this estimator is configured as "
                f"(m, H) = {shape}; keep frequency.hash_size/num_hashes unchanged"
            )
        self._hash.load_state_dict(state)
        self.step = int(np.asarray(state["step"]))
        if fmt == 1:
            log.warning(
                "frequency statistics are format 1 (frequency.method=presence, batch presence per step); "
                "they cannot be converted to per-event occurrences, so the occurrences estimator restarts "
                "them empty (kept: hash functions and step). Set frequency.method=presence to keep them."
            )
            self.events, self.last_batch = 0, 0
            self.table = torch.zeros(*shape, 3, dtype=torch.float64, device=self.device)
            self._distinct = self._slots_in_use()
            return
        table = np.stack([a.astype(np.float64) for a in arrays], axis=-1)  # (m, H, 3) [A, G, c]
        self.table = torch.as_tensor(table).to(self.device)
        self._distinct = self._slots_in_use()
        self.events = int(np.asarray(state["events"]))
        self.last_batch = int(np.asarray(state["last_batch"]))

    def exact_equal(self, other: Any) -> bool:
        """True when both hold identical statistics and hash functions (for tests and audits)."""
        mine, theirs = self.state_dict(), other.state_dict()
        return mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)
