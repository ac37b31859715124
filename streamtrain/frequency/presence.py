"""``frequency.method=presence``: Yi et al., RecSys 2019, Algorithms 2-3 as published (the method
before format 2; kept so benchmarks can compare it with :mod:`~streamtrain.frequency.occurrence`).

m hash functions h_1..h_m map an item key into H slots each. Per slot, ``A`` holds the last
global step an item hashed there was seen and ``B`` the estimated mean gap (in steps) between
two sightings. At global step t, for every item y of the batch and every hash function i:

    B_i[h_i(y)] ← (1 − α) · B_i[h_i(y)] + α · (t − A_i[h_i(y)]);    A_i[h_i(y)] ← t

and the estimate is p̂(y) = 1 / max_i B_i[h_i(y)], the probability that y appears in a batch
(collisions only shorten gaps, so the max over hash functions is the least-collided one).

Duplicates within one step: each *distinct slot* is updated once per step. An item that appears
twice in a batch has appeared in that batch, so p̂ stays "probability of appearing in a batch";
processing it twice (as a sequential loop would) would add a gap of 0 and inflate p̂. Different
items that collide in a slot within one step likewise update it once.

Known weaknesses (why it is no longer the default, see ../shared/ALGORITHMS.md): p̂ saturates at
1 for head items, erasing their differences; and the first sighting of a slot folds the gap since
step 0, so an item first seen at step t reads log p̂ ≈ −log(α·t) for hundreds of sightings.

Memory is O(mH) whatever the catalogue size; ``A``, ``B`` and t are the persisted "frequency
statistics" (state format 1). Hashing: :class:`~streamtrain.frequency.hashing.MultiplyShiftHash`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from streamtrain.frequency.hashing import MultiplyShiftHash

__all__ = ["PRESENCE_FORMAT", "PresenceFrequencyEstimator"]

PRESENCE_FORMAT = 1  # states saved before formats were recorded carry no "format" key and are format 1


class PresenceFrequencyEstimator:
    """Estimates log p̂(item in batch) from a stream of batches of item keys.

    Called by the trainer: :meth:`update` once per training step with the batch's item keys
    (before the loss), :meth:`log_prob` whenever a sampler needs log p̂.
    """

    def __init__(
        self,
        hash_size: int,
        num_hashes: int,
        alpha: float,
        initial_gap: float,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if hash_size < 1 or num_hashes < 1 or not 0 < alpha <= 1 or initial_gap <= 0:
            raise ValueError(
                f"need hash_size >= 1, num_hashes >= 1, 0 < alpha <= 1, initial_gap > 0; got "
                f"{hash_size}, {num_hashes}, {alpha}, {initial_gap}"
            )
        self.hash_size = hash_size
        self.num_hashes = num_hashes
        self.alpha = alpha
        self.initial_gap = initial_gap
        self.device = torch.device(device)
        self._hash = MultiplyShiftHash(hash_size, num_hashes, seed=seed, device=self.device)
        self.step = 0  # global step t (number of update calls)
        self.last_seen = torch.zeros(num_hashes, hash_size, dtype=torch.long, device=self.device)  # A (m, H)
        self.gap = torch.full((num_hashes, hash_size), float(initial_gap), dtype=torch.float64, device=self.device)  # B

    @classmethod
    def from_config(cls, config: Any, *, seed: int, device: torch.device | str) -> PresenceFrequencyEstimator:
        """Build from a :class:`~streamtrain.config.FrequencyConfig` (``initial_gap`` is B₀)."""
        return cls(config.hash_size, config.num_hashes, config.alpha, config.initial_gap, seed=seed, device=device)

    def slots(self, keys: torch.Tensor) -> torch.Tensor:
        """(m, n) slot of each key under each hash function, in [0, H)."""
        return self._hash.slots(keys)

    @torch.no_grad()
    def update(self, keys: torch.Tensor) -> None:
        """Advance t by one and fold this batch's keys (n,) into A and B; called once per step."""
        self.step += 1
        if keys.numel() == 0:
            return
        flat = self._hash.flat(keys).reshape(-1)  # (m·n,) into the flattened (m, H)
        gap, seen = self.gap.view(-1), self.last_seen.view(-1)
        # Duplicates read the same old values and so write the same new ones: one update per slot.
        new_gap = (1.0 - self.alpha) * gap[flat] + self.alpha * (self.step - seen[flat]).double()
        gap[flat] = new_gap
        seen[flat] = self.step

    @torch.no_grad()
    def log_prob(self, keys: torch.Tensor) -> torch.Tensor:
        """(n,) float32 log p̂ = −log max_i B_i[h_i(key)], with p̂ clamped to ≤ 1. No state change."""
        flat = self._hash.flat(keys)  # (m, n)
        gap = self.gap.view(-1)[flat].amax(dim=0)  # (n,)
        return (-torch.log(gap.clamp(min=1.0))).float()

    def state_dict(self) -> dict[str, Any]:
        """``format`` (1), ``A`` (m, H) int64, ``B`` (m, H) float64, ``step`` and the hash parameters."""
        return {
            "format": np.asarray(PRESENCE_FORMAT, dtype=np.int64),
            "A": self.last_seen.cpu().numpy().copy(),
            "B": self.gap.cpu().numpy().copy(),
            "step": np.asarray(self.step, dtype=np.int64),
            **self._hash.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; raises ``ValueError`` when shapes disagree with the
        configured H and m (changing them across a restart would scramble every slot) or when the
        state was saved by another method (format 2: ``frequency.method=occurrences``). A state
        without a ``format`` key predates the key and is format 1."""
        fmt = int(np.asarray(state.get("format", PRESENCE_FORMAT)))
        if fmt != PRESENCE_FORMAT:
            raise ValueError(
                f"saved frequency statistics are format {fmt} (frequency.method=occurrences), not the presence "
                "method's format 1; set frequency.method=occurrences to resume them, or delete the run's "
                "frequency statistics in Redis to start presence statistics afresh"
            )
        shape = (self.num_hashes, self.hash_size)
        a, b = np.asarray(state["A"]), np.asarray(state["B"])
        if a.shape != shape or b.shape != shape:
            raise ValueError(
                f"saved frequency statistics have shape {a.shape}; this estimator is configured as "
                f"(m, H) = {shape}; keep frequency.hash_size/num_hashes unchanged"
            )
        self._hash.load_state_dict(state)
        self.last_seen = torch.as_tensor(a.astype(np.int64)).to(self.device)
        self.gap = torch.as_tensor(b.astype(np.float64)).to(self.device)
        self.step = int(np.asarray(state["step"]))

    def exact_equal(self, other: PresenceFrequencyEstimator) -> bool:
        """True when both hold identical statistics and hash functions (for tests and audits)."""
        mine, theirs = self.state_dict(), other.state_dict()
        return mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)
