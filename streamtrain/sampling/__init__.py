"""Negative samplers. Importing this package registers every sampler in :data:`SAMPLERS`.

What each sampler draws and how it corrects: docs/algorithms.md, section 2. The names a config may
give are :data:`streamtrain.config.SamplerName`; importing this package checks that every one of them
has a sampler and no sampler lacks a name there.
"""

from __future__ import annotations

from typing import Any, get_args

import torch

from streamtrain.config import SamplerName
from streamtrain.sampling import bir, cbns, full, inbatch, inbatch_logq, mns, uniform, xir  # noqa: F401
from streamtrain.sampling.base import SAMPLERS, Sampler, SamplerInput, SamplerOutput, register

__all__ = ["SAMPLERS", "Sampler", "SamplerInput", "SamplerOutput", "build_sampler", "register"]

if set(SAMPLERS) != set(get_args(SamplerName)):
    raise ImportError(f"samplers {sorted(SAMPLERS)} != config names {sorted(get_args(SamplerName))}")


def build_sampler(config: Any, *, batch_size: int, seed: int, device: torch.device) -> Sampler:
    """Build the sampler named by ``config`` (a :class:`streamtrain.config.SamplerConfig`)."""
    cls = SAMPLERS[config.name]  # the config's Literal admits registered names only
    return cls.from_config(config, batch_size=batch_size, seed=seed, device=device)  # type: ignore[attr-defined]
