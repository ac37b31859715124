"""The hash family both frequency estimators share: m multiply-shift functions of a 64-bit key.

Each function is ``h(key) = (high 32 bits of a·key + b mod 2^64) mod H`` with a random odd
multiplier ``a`` and offset ``b`` drawn from ``seed``; odd multipliers make multiply-shift a
universal family. The parameters are part of the persisted statistics (a restart must hash every
key to the same slots), saved as int64 bit patterns under ``hash_mult`` and ``hash_add``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["MultiplyShiftHash"]


class MultiplyShiftHash:
    """m hash functions into H slots each, flattened so slot ``j`` of function ``i`` is ``i·H + j``."""

    def __init__(self, hash_size: int, num_hashes: int, *, seed: int, device: torch.device) -> None:
        self.hash_size = hash_size
        self.num_hashes = num_hashes
        self.device = device
        rng = np.random.default_rng(seed)
        mult = rng.integers(0, 2**63, size=num_hashes, dtype=np.int64) * 2 + 1
        add = rng.integers(-(2**63), 2**63 - 1, size=num_hashes, dtype=np.int64)
        self._set(mult, add)

    def _set(self, mult: np.ndarray, add: np.ndarray) -> None:
        self._mult = torch.as_tensor(mult.astype(np.int64)).to(self.device).unsqueeze(1)  # (m, 1)
        self._add = torch.as_tensor(add.astype(np.int64)).to(self.device).unsqueeze(1)  # (m, 1)
        self._offsets = (torch.arange(self.num_hashes, device=self.device) * self.hash_size).unsqueeze(1)  # (m, 1)

    def slots(self, keys: torch.Tensor) -> torch.Tensor:
        """(m, n) slot of each key (n,) under each hash function, in [0, H)."""
        keys = keys.to(device=self.device, dtype=torch.long).reshape(1, -1)  # (1, n)
        mixed = keys * self._mult + self._add  # (m, n), wraps mod 2^64
        high = (mixed >> 32) & 0xFFFF_FFFF  # top 32 bits (>> is arithmetic; the mask drops the sign)
        return high % self.hash_size

    def flat(self, keys: torch.Tensor) -> torch.Tensor:
        """(m, n) indices into the flattened (m·H,) statistics."""
        return self.slots(keys) + self._offsets

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            "hash_mult": self._mult.squeeze(1).cpu().numpy().copy(),
            "hash_add": self._add.squeeze(1).cpu().numpy().copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Adopt saved parameters; raises ``ValueError`` when their count is not m."""
        mult = np.asarray(state["hash_mult"]).reshape(-1)
        add = np.asarray(state["hash_add"]).reshape(-1)
        if mult.shape != (self.num_hashes,) or add.shape != mult.shape:
            raise ValueError(
                f"saved frequency statistics use {mult.size} hash functions, this estimator {self.num_hashes}; "
                "keep frequency.num_hashes unchanged across restarts"
            )
        self._set(mult, add)
