"""A base for samplers that draw at random: one seeded generator, forked when state must not move."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from streamtrain.sampling.base import Sampler
from streamtrain.sampling.rng import fork_generator, generator_state, make_generator, set_generator_state

__all__ = ["SeededSampler"]


class SeededSampler(Sampler):
    """Owns ``self.generator``; ``state_dict`` holds its state under ``"rng"``.

    Subclasses call :meth:`_generator` once per ``loss`` call: the live generator when the step
    may change state, a fork of it when ``update_state=False`` (the probe), so a probe between two
    steps does not change the draws of the next step.
    """

    def __init__(self, *, seed: int, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.generator = make_generator(seed, self.device)

    def _generator(self, update_state: bool) -> torch.Generator:
        return self.generator if update_state else fork_generator(self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": generator_state(self.generator)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - self._state_keys()
        if unknown:
            raise ValueError(f"{type(self).__name__} state has unknown keys {sorted(unknown)}")
        if "rng" not in state:
            raise ValueError(f"{type(self).__name__} state lacks 'rng'; was it saved by another sampler?")
        set_generator_state(self.generator, np.asarray(state["rng"]))

    def _state_keys(self) -> set[str]:
        """Keys :meth:`load_state_dict` accepts; subclasses with more state extend it."""
        return {"rng"}
