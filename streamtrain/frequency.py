"""Streaming item-frequency estimation for the logQ correction (Yi et al., RecSys 2019, Alg. 2-3).

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

Memory is O(mH) whatever the catalogue size; ``A``, ``B`` and t are the persisted "frequency
statistics". Hashing is multiply-shift on the 64-bit key (random odd multiplier and offset
from ``seed``; the high 32 bits of ``a·key + b mod 2^64``, reduced mod H).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["StreamingFrequencyEstimator"]


class StreamingFrequencyEstimator:
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
        rng = np.random.default_rng(seed)
        # Odd multipliers make multiply-shift a universal family; kept as int64 bit patterns.
        mult = rng.integers(0, 2**63, size=num_hashes, dtype=np.int64) * 2 + 1
        add = rng.integers(-(2**63), 2**63 - 1, size=num_hashes, dtype=np.int64)
        self._mult = torch.as_tensor(mult, device=self.device).unsqueeze(1)  # (m, 1)
        self._add = torch.as_tensor(add, device=self.device).unsqueeze(1)  # (m, 1)
        self._offsets = (torch.arange(num_hashes, device=self.device) * hash_size).unsqueeze(1)  # (m, 1)
        self.step = 0  # global step t (number of update calls)
        self.last_seen = torch.zeros(num_hashes, hash_size, dtype=torch.long, device=self.device)  # A (m, H)
        self.gap = torch.full((num_hashes, hash_size), float(initial_gap), dtype=torch.float64, device=self.device)  # B

    @classmethod
    def from_config(cls, config: Any, *, seed: int, device: torch.device | str) -> StreamingFrequencyEstimator:
        """Build from a :class:`~streamtrain.config.FrequencyConfig`."""
        return cls(config.hash_size, config.num_hashes, config.alpha, config.initial_gap, seed=seed, device=device)

    def slots(self, keys: torch.Tensor) -> torch.Tensor:
        """(m, n) slot of each key under each hash function, in [0, H)."""
        keys = keys.to(device=self.device, dtype=torch.long).reshape(1, -1)  # (1, n)
        mixed = keys * self._mult + self._add  # (m, n), wraps mod 2^64
        high = (mixed >> 32) & 0xFFFF_FFFF  # top 32 bits (>> is arithmetic; the mask drops the sign)
        return high % self.hash_size

    @torch.no_grad()
    def update(self, keys: torch.Tensor) -> None:
        """Advance t by one and fold this batch's keys (n,) into A and B; called once per step."""
        self.step += 1
        if keys.numel() == 0:
            return
        flat = (self.slots(keys) + self._offsets).reshape(-1)  # (m·n,) into the flattened (m, H)
        gap, seen = self.gap.view(-1), self.last_seen.view(-1)
        # Duplicates read the same old values and so write the same new ones: one update per slot.
        new_gap = (1.0 - self.alpha) * gap[flat] + self.alpha * (self.step - seen[flat]).double()
        gap[flat] = new_gap
        seen[flat] = self.step

    @torch.no_grad()
    def log_prob(self, keys: torch.Tensor) -> torch.Tensor:
        """(n,) float32 log p̂ = −log max_i B_i[h_i(key)], with p̂ clamped to ≤ 1. No state change."""
        flat = self.slots(keys) + self._offsets  # (m, n)
        gap = self.gap.view(-1)[flat].amax(dim=0)  # (n,)
        return (-torch.log(gap.clamp(min=1.0))).float()

    def state_dict(self) -> dict[str, Any]:
        """``A`` (m, H) int64, ``B`` (m, H) float64, ``step`` and the hash parameters, as numpy copies."""
        return {
            "A": self.last_seen.cpu().numpy().copy(),
            "B": self.gap.cpu().numpy().copy(),
            "step": np.asarray(self.step, dtype=np.int64),
            "hash_mult": self._mult.squeeze(1).cpu().numpy().copy(),
            "hash_add": self._add.squeeze(1).cpu().numpy().copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; raises ``ValueError`` when shapes disagree with the
        configured H and m (changing them across a restart would scramble every slot)."""
        shape = (self.num_hashes, self.hash_size)
        a, b = np.asarray(state["A"]), np.asarray(state["B"])
        mult, add = np.asarray(state["hash_mult"]).reshape(-1), np.asarray(state["hash_add"]).reshape(-1)
        if a.shape != shape or b.shape != shape or mult.shape != (self.num_hashes,) or add.shape != mult.shape:
            raise ValueError(
                f"saved frequency statistics have shape {a.shape} with {mult.size} hash functions; this "
                f"estimator is configured as (m, H) = {shape}; keep frequency.hash_size/num_hashes unchanged"
            )
        self.last_seen = torch.as_tensor(a.astype(np.int64)).to(self.device)
        self.gap = torch.as_tensor(b.astype(np.float64)).to(self.device)
        self.step = int(np.asarray(state["step"]))
        self._mult = torch.as_tensor(mult.astype(np.int64)).to(self.device).unsqueeze(1)
        self._add = torch.as_tensor(add.astype(np.int64)).to(self.device).unsqueeze(1)

    def exact_equal(self, other: StreamingFrequencyEstimator) -> bool:
        """True when both hold identical statistics and hash functions (for tests and audits)."""
        mine, theirs = self.state_dict(), other.state_dict()
        return mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)
