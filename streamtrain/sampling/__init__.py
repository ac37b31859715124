"""Negative samplers. Importing this package registers every sampler in :data:`SAMPLERS`.

What each sampler draws and how it corrects: docs/algorithms.md, section 2.
"""

from streamtrain.sampling import bir, cbns, full, inbatch, inbatch_logq, mns, uniform, xir  # noqa: F401
from streamtrain.sampling.base import SAMPLERS, Sampler, SamplerInput, SamplerOutput, build_sampler, register

__all__ = ["SAMPLERS", "Sampler", "SamplerInput", "SamplerOutput", "build_sampler", "register"]
