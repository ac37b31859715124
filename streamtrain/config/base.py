"""What every configuration section shares: the frozen, extra-forbidding base model and the constants
other modules read (the environment prefix, the sampler names)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

ENV_PREFIX = "STREAMTRAIN_"
DEFAULT_TEMPERATURE = 0.1
RESAMPLING_TEMPERATURE = 0.3
_MASK = "**********"

SamplerName = Literal["full", "uniform", "inbatch", "inbatch_logq", "mns", "cbns", "bir", "xir"]
"""Every sampler a config may name; :mod:`streamtrain.sampling` checks its registry against it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
